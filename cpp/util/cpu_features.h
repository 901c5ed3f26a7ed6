// cpu_features.h: CPU features the kernels check beyond Highway's targets. Highway 1.0.3's AVX3
// target does not enable AVX512_VNNI, and its AVX3_DL target requires the VEX AVX-VNNI that Zen 4
// lacks, so the q4 / q5 decode tiles test for AVX512_VNNI themselves (ops/matvec-inl.h).
#ifndef SPARK_UTIL_CPU_FEATURES_H_
#define SPARK_UTIL_CPU_FEATURES_H_

#include <atomic>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace spark {

// AVX512_VNNI: CPUID leaf 7, subleaf 0, ECX bit 11; read once. (The OS's AVX-512 state is
// Highway's AVX3 check, which every caller is already under.)
inline bool CpuHasAvx512Vnni() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return ((c >> 11) & 1u) != 0;
  }();
  return has;
#else
  return false;
#endif
}

// Whether the AVX3 decode tiles take the VNNI path: the CPU's feature, unless switched off
// (tests and benchmarks run the plain AVX3 tiles on a VNNI machine this way).
inline std::atomic<bool>& Avx512VnniSwitch() {
  static std::atomic<bool> on{CpuHasAvx512Vnni()};
  return on;
}
inline bool UseAvx512Vnni() { return Avx512VnniSwitch().load(std::memory_order_relaxed); }

}  // namespace spark

#endif  // SPARK_UTIL_CPU_FEATURES_H_
