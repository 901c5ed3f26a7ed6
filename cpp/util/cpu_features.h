// cpu_features.h: CPU features the kernels check beyond Highway's targets. Highway 1.0.3's AVX3
// target does not enable AVX512_VNNI, and its AVX3_DL target requires the VEX AVX-VNNI that Zen 4
// lacks, so the q4 / q5 decode tiles test for AVX512_VNNI themselves (ops/matvec-inl.h); no
// Highway 1.0.3 target has AVX512_BF16, which the bf16 chunk tile tests for the same way.
#ifndef SPARK_UTIL_CPU_FEATURES_H_
#define SPARK_UTIL_CPU_FEATURES_H_

#include <atomic>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace spark {

// Bit `bit` of CPUID leaf 7, subleaf `sub`, register `reg` (0..3: EAX, EBX, ECX, EDX); false
// where the subleaf does not exist (subleaf 0's EAX is the highest). (The OS's AVX-512 state
// is Highway's AVX3 check, which every caller is already under.)
inline bool CpuidLeaf7Bit(unsigned sub, int reg, unsigned bit) {
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(7, 0, &r[0], &r[1], &r[2], &r[3]) || r[0] < sub) return false;
  if (!__get_cpuid_count(7, sub, &r[0], &r[1], &r[2], &r[3])) return false;
  return ((r[reg] >> bit) & 1u) != 0;
#else
  (void)sub, (void)reg, (void)bit;
  return false;
#endif
}

// AVX512_VNNI (vpdpbusd): leaf 7, subleaf 0, ECX bit 11; read once.
inline bool CpuHasAvx512Vnni() {
  static const bool has = CpuidLeaf7Bit(0, 2, 11);
  return has;
}

// AVX512_BF16 (vdpbf16ps): leaf 7, subleaf 1, EAX bit 5; read once.
inline bool CpuHasAvx512Bf16() {
  static const bool has = CpuidLeaf7Bit(1, 0, 5);
  return has;
}

// Run-time switches of the kernels' paths for these features: on where the CPU has the feature,
// unless switched off (tests and benchmarks run the plain AVX3 code on such a machine this way).
// VNNI: the AVX3 q4 / q5 decode tiles; BF16: the AVX3 bf16 chunk matmul's tile.
inline std::atomic<bool>& Avx512VnniSwitch() {
  static std::atomic<bool> on{CpuHasAvx512Vnni()};
  return on;
}
inline bool UseAvx512Vnni() { return Avx512VnniSwitch().load(std::memory_order_relaxed); }
inline std::atomic<bool>& Avx512Bf16Switch() {
  static std::atomic<bool> on{CpuHasAvx512Bf16()};
  return on;
}
inline bool UseAvx512Bf16() { return Avx512Bf16Switch().load(std::memory_order_relaxed); }

}  // namespace spark

#endif  // SPARK_UTIL_CPU_FEATURES_H_
