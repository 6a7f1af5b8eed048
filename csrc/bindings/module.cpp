// pybind11 module _core: thin; every op registers itself from its own file in this folder.
#include "common/parallel.h"
#include "common/registry.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "pyconcepts CPU kernels (C++17 + OpenMP, torch-ABI-free: raw pointers and sizes)";
  m.def("num_threads", &pyconcepts::max_threads, "OpenMP threads the CPU kernels use.");
  pyconcepts::bind_all(m);
}
