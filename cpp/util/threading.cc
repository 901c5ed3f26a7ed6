#include "util/threading.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace spark {
namespace {

int CountPhysicalCores() {
  std::set<std::pair<std::string, std::string>> cores;  // (package, core id)
  const unsigned logical = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned cpu = 0; cpu < logical; ++cpu) {
    const std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
    std::string p, c;
    if (!(pkg >> p) || !(core >> c)) return static_cast<int>(logical);
    cores.emplace(p, c);
  }
  return std::max<int>(1, static_cast<int>(cores.size()));
}

int g_num_threads = 0;  // 0: not yet set

}  // namespace

int PhysicalCores() {
  static const int n = CountPhysicalCores();
  return n;
}

int NumThreads() {
  if (g_num_threads <= 0) g_num_threads = PhysicalCores();
  return g_num_threads;
}

void SetNumThreads(int n) { g_num_threads = std::max(1, n); }

void ParallelFor(size_t n, size_t granule, const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  granule = std::max<size_t>(1, granule);
  const size_t granules = (n + granule - 1) / granule;
  const int parts = static_cast<int>(std::min<size_t>(NumThreads(), granules));
  if (parts <= 1) {
    fn(0, n, 0);
    return;
  }
  auto part_range = [&](int t, size_t* begin, size_t* end) {
    const size_t g0 = granules * t / parts, g1 = granules * (t + 1) / parts;
    *begin = g0 * granule;
    *end = std::min(n, g1 * granule);
  };
#ifdef _OPENMP
  // A team may be smaller than asked (nested inside another parallel region, or the runtime
  // is short of threads): each member then takes every num_threads-th part.
#pragma omp parallel num_threads(parts)
  {
    for (int t = omp_get_thread_num(); t < parts; t += omp_get_num_threads()) {
      size_t b, e;
      part_range(t, &b, &e);
      if (b < e) fn(b, e, t);
    }
  }
#else
  for (int t = 0; t < parts; ++t) {
    size_t b, e;
    part_range(t, &b, &e);
    if (b < e) fn(b, e, t);
  }
#endif
}

}  // namespace spark
