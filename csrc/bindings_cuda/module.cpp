// pybind11 module _core_cuda: thin; every op registers itself from its own file in this folder.
#include <cuda_runtime_api.h>

#include "common/registry.h"

PYBIND11_MODULE(_core_cuda, m) {
  m.doc() = "pyconcepts CUDA kernels (torch-ABI-free: raw device pointers, sizes and the stream)";
  m.def("device_count", []() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls start clean
      return 0;
    }
    return n;
  }, "CUDA devices visible to the runtime (0 when no driver is present).");
  pyconcepts::bind_all(m);
}
