// bench_bindings.cc: helpers for benchmarks (memory bandwidth probe).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bench/bandwidth.h"

namespace spark {
namespace py = pybind11;
using py::arg;

namespace {
void CheckProbeArgs(long long nbytes, std::optional<int> threads, int repeats) {
  if (nbytes < 4) throw py::value_error("nbytes must be >= 4, got " + std::to_string(nbytes));
  if (threads && *threads < 1)
    throw py::value_error("threads must be >= 1, got " + std::to_string(*threads));
  if (repeats < 1) throw py::value_error("repeats must be >= 1, got " + std::to_string(repeats));
}
}  // namespace

void RegisterBench(py::module_& m) {
  m.def("read_bandwidth_samples", [](long long nbytes, std::optional<int> threads, int repeats) {
    CheckProbeArgs(nbytes, threads, repeats);
    py::gil_scoped_release release;
    return ReadBandwidthSamples(static_cast<size_t>(nbytes), threads.value_or(0), repeats);
  }, arg("nbytes") = 1LL << 30, arg("threads") = py::none(), arg("repeats") = 5,
     R"(Memory read bandwidth of each of `repeats` timed passes, in GB/s (1e9 bytes/s).

Allocates `nbytes`, first-touches it, reads it once to warm up, then times full SIMD read passes
split into one contiguous part per thread. threads=None uses num_threads(). Do not run other
kernels meanwhile: the global thread count is changed for the duration of the call.)");
  m.def("read_bandwidth", [](long long nbytes, std::optional<int> threads, int repeats) {
    CheckProbeArgs(nbytes, threads, repeats);
    py::gil_scoped_release release;
    return ReadBandwidth(static_cast<size_t>(nbytes), threads.value_or(0), repeats);
  }, arg("nbytes") = 1LL << 30, arg("threads") = py::none(), arg("repeats") = 5,
     "Median of read_bandwidth_samples(nbytes, threads, repeats): the machine's read "
     "bandwidth in GB/s.");
}

}  // namespace spark
