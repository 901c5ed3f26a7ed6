// module.cc: the pybind11 module spark_infer._core.
#include <pybind11/pybind11.h>

namespace spark {
void RegisterOps(pybind11::module_& m);
void RegisterEngine(pybind11::module_& m);
void RegisterEngineFile(pybind11::module_& m);
void RegisterBench(pybind11::module_& m);
}  // namespace spark

PYBIND11_MODULE(_core, m) {
  m.doc() = "spark-infer C++ core: Highway SIMD kernels and the transformer engine";
  spark::RegisterOps(m);
  spark::RegisterEngine(m);
  spark::RegisterEngineFile(m);
  spark::RegisterBench(m);
}
