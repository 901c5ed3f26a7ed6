// bench_bindings.cc: helpers for benchmarks (memory bandwidth probe).
#include <pybind11/pybind11.h>

namespace spark {
void RegisterBench(pybind11::module_& m) { (void)m; }
}  // namespace spark
