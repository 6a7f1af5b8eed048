// CUDA launchers of the concept-map epilogues; the GEMMs themselves are cuBLAS's, called through
// torch.matmul by pyconcepts/ops/concept_maps.py. Plain C++ declarations, so the pybind11
// bindings compile without CUDA headers; pointers are device pointers, `stream` is a
// cudaStream_t passed as an integer. Nothing synchronizes.
#pragma once
#include <cstdint>

namespace pyconcepts::cuda {

// out [B, M, P] (contiguous) = relu(z + bias[m]) with z read through strides (szb, szm, szp);
// out may be z itself when z is contiguous. bias may be null.
template <typename T>
void concept_maps_bias_relu(const T* z, std::int64_t szb, std::int64_t szm, std::int64_t szp,
                            const T* bias, T* out, std::int64_t batch, std::int64_t n_maps,
                            std::int64_t n_positions, std::uintptr_t stream);

// Folds one chunk of pre-activations z [batch, M, n_positions] (strided) into the running
// statistics run_max / run_sum / run_count [batch, M] (contiguous, zeroed before the first
// chunk) of relu(z + bias): max (NaN ignored), sum and count of values > threshold.
template <typename T>
void concept_map_stats_chunk(const T* z, std::int64_t szb, std::int64_t szm, std::int64_t szp,
                             const T* bias, T threshold, T* run_max, T* run_sum, T* run_count,
                             std::int64_t batch, std::int64_t n_maps, std::int64_t n_positions,
                             std::uintptr_t stream);

}  // namespace pyconcepts::cuda
