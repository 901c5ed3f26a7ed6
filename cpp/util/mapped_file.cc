#include "util/mapped_file.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

#include "util/json.h"

namespace spark {
namespace {

// Closes the descriptor on every path out of the constructor, throws included.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

size_t PhysicalMemoryBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}

}  // namespace

MappedFile::MappedFile(const std::string& path, Access access) : path_(path) {
  const Fd f{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) {
    const int err = errno;
    if (err == ENOENT) throw std::invalid_argument("No such file or directory: " + path);
    throw std::runtime_error("cannot open " + path + ": " + strerror(err));
  }
  struct stat st;
  if (fstat(f.fd, &st) != 0 || !S_ISREG(st.st_mode)) throw std::invalid_argument("not a regular file: " + path);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ == 0) throw FormatError(path + ": the file is empty");
  if (access == Access::kMap) {
    void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, f.fd, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cannot map " + path + ": " + strerror(errno));
    data_ = static_cast<const uint8_t*>(p);
    return;
  }
  // A copy larger than the machine's memory would be killed while it is read (anonymous memory
  // is overcommitted); a map of the file still runs, from the page cache.
  const size_t ram = PhysicalMemoryBytes();
  if (ram > 0 && size_ > ram)
    throw std::invalid_argument(path + " (" + std::to_string(size_ >> 20) + " MiB) is larger than this machine's memory (" +
                                std::to_string(ram >> 20) + " MiB): map it instead (use_mmap=True)");
  try {
    copy_ = HugeBuffer(size_);
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("cannot allocate " + std::to_string(size_) + " bytes to read " + path);
  }
  for (size_t done = 0; done < size_;) {
    const ssize_t r = pread(f.fd, copy_.data() + done, size_ - done, static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      throw std::runtime_error("cannot read " + path + ": " + (r == 0 ? "the file shrank while it was read" : strerror(errno)));
    done += static_cast<size_t>(r);
  }
  copy_.Protect();
  data_ = copy_.data();
}

MappedFile::~MappedFile() {
  if (data_ && !copy_.data()) munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace spark
