// mapped_file.h: a whole file's bytes in read-only memory (weights are views into them): a map
// of the file, or a private copy in huge pages (util/huge_pages.h says why).
#ifndef SPARK_UTIL_MAPPED_FILE_H_
#define SPARK_UTIL_MAPPED_FILE_H_

#include <stddef.h>
#include <stdint.h>

#include <string>

#include "util/huge_pages.h"

namespace spark {

class MappedFile {
 public:
  enum class Access {
    kMap,   // mmap: pages come from the page cache on first touch, shared between processes
    kRead,  // read whole into private memory advised for huge pages: a load-time copy, faster
            // streaming after it
  };
  // Throws std::runtime_error (no such file, or kRead of a file larger than the machine's
  // memory -> std::invalid_argument; empty -> FormatError).
  explicit MappedFile(const std::string& path, Access access = Access::kMap);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  HugeBuffer copy_;  // Access::kRead: holds the bytes (data_ points into it)
};

}  // namespace spark

#endif  // SPARK_UTIL_MAPPED_FILE_H_
