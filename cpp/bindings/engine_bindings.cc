// engine_bindings.cc: the transformer engine (filled in by the engine issue).
#include <pybind11/pybind11.h>

namespace spark {
void RegisterEngine(pybind11::module_& m) { (void)m; }
}  // namespace spark
