// CUDA launchers of the concept-map kernels (same contracts as csrc/cpu/concept_maps.h).
// Plain C++ declarations, so the pybind11 bindings compile without CUDA headers; pointers are
// device pointers and `stream` is a cudaStream_t passed as an integer. Nothing synchronizes.
#pragma once
#include <cstdint>

namespace pyconcepts::cuda {

template <typename T>
void concept_maps_forward(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                          const T* weight, const T* bias, T* out, std::int64_t batch,
                          std::int64_t n_channels, std::int64_t n_maps, std::int64_t n_positions,
                          std::uintptr_t stream);

template <typename T>
void concept_maps_backward(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                           const T* weight, const T* out, const T* grad_out, T* grad_x,
                           T* grad_weight, T* grad_bias, std::int64_t batch,
                           std::int64_t n_channels, std::int64_t n_maps, std::int64_t n_positions,
                           std::uintptr_t stream);

// Sums are accumulated with atomics, so float results may differ in the last bits run to run.
template <typename T>
void concept_map_stats(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                       const T* weight, const T* bias, T threshold, T* out_max, T* out_mean,
                       T* out_frac, std::int64_t batch, std::int64_t n_channels,
                       std::int64_t n_maps, std::int64_t n_positions, std::uintptr_t stream);

}  // namespace pyconcepts::cuda
