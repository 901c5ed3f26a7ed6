// mapped_file.h: a read-only memory map of a whole file (weights are views into it).
#ifndef SPARK_UTIL_MAPPED_FILE_H_
#define SPARK_UTIL_MAPPED_FILE_H_

#include <stddef.h>
#include <stdint.h>

#include <string>

namespace spark {

class MappedFile {
 public:
  // Throws std::system_error-like std::runtime_error (FileNotFound -> std::invalid_argument).
  explicit MappedFile(const std::string& path);
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
};

}  // namespace spark

#endif  // SPARK_UTIL_MAPPED_FILE_H_
