// huge_pages.h: memory for the bytes decode streams, in transparent huge pages where the kernel
// allows them.
//
// Why: a decode step streams every weight once, and the screen, the layers and a long KV cache
// are far larger than the caches. From 4 KiB pages (a file's mmap, or a large malloc under THP
// "madvise") each 4 KiB is a TLB miss and the hardware prefetchers stop at its edge. Measured on
// the AMD EPYC VM (Zen 4, THP "madvise"): Gemma 3 270M q4 decode 5-11 % faster from huge pages
// than from the file's map, int8 and bf16 1-4 % (README, "Weights in memory").
#ifndef SPARK_UTIL_HUGE_PAGES_H_
#define SPARK_UTIL_HUGE_PAGES_H_

#include <stddef.h>
#include <stdint.h>

namespace spark {

constexpr size_t kHugePageBytes = size_t{2} << 20;

// Asks the kernel to back the whole 2 MiB pages inside [p, p + n) with huge pages (madvise
// MADV_HUGEPAGE) before they are first touched. A hint: without THP support it does nothing.
void AdviseHugePages(void* p, size_t n);

// n bytes of zeroed, private, anonymous memory starting on a 2 MiB boundary, advised for huge
// pages; freed by the destructor. Throws std::bad_alloc when the kernel refuses the mapping.
class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t n);
  ~HugeBuffer();
  HugeBuffer(HugeBuffer&& other) noexcept;
  HugeBuffer& operator=(HugeBuffer&& other) noexcept;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  uint8_t* data() const { return data_; }
  // Makes the buffer read-only (weights: a stray write faults instead of corrupting them).
  void Protect();

 private:
  uint8_t* data_ = nullptr;
  size_t mapped_ = 0;  // bytes mapped: n rounded up to whole huge pages
};

}  // namespace spark

#endif  // SPARK_UTIL_HUGE_PAGES_H_
