// Error checks for CUDA launchers (plain C++, no pybind11 inside nvcc-compiled files).
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace pyconcepts {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Checks the launch that was just queued (asynchronous errors surface at the next sync).
inline void cuda_check_launch(const char* what) { cuda_check(cudaGetLastError(), what); }

}  // namespace pyconcepts
