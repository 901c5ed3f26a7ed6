#include "util/huge_pages.h"

#include <sys/mman.h>

#include <new>
#include <utility>

namespace spark {
namespace {

uintptr_t RoundUp(uintptr_t x, uintptr_t to) { return (x + to - 1) / to * to; }

}  // namespace

void AdviseHugePages(void* p, size_t n) {
#ifdef MADV_HUGEPAGE
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t b = RoundUp(a, kHugePageBytes), e = (a + n) / kHugePageBytes * kHugePageBytes;
  if (b < e) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)p;
  (void)n;
#endif
}

HugeBuffer::HugeBuffer(size_t n) : mapped_(RoundUp(n ? n : 1, kHugePageBytes)) {
  // Map one huge page more than needed and trim both ends, so the buffer starts on a 2 MiB
  // boundary whatever address the kernel picks.
  const size_t over = mapped_ + kHugePageBytes;
  void* raw = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t r = reinterpret_cast<uintptr_t>(raw), a = RoundUp(r, kHugePageBytes);
  if (a > r) munmap(raw, a - r);
  if (r + over > a + mapped_) munmap(reinterpret_cast<void*>(a + mapped_), r + over - (a + mapped_));
  data_ = reinterpret_cast<uint8_t*>(a);
  AdviseHugePages(data_, mapped_);
}

HugeBuffer::~HugeBuffer() {
  if (data_) munmap(data_, mapped_);
}

HugeBuffer::HugeBuffer(HugeBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HugeBuffer& HugeBuffer::operator=(HugeBuffer&& other) noexcept {
  if (this != &other) {
    if (data_) munmap(data_, mapped_);
    data_ = std::exchange(other.data_, nullptr);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void HugeBuffer::Protect() {
  if (data_) mprotect(data_, mapped_, PROT_READ);
}

}  // namespace spark
