// Launchers for the CUDA semi-hard triplet kernels (same rule as csrc/cpu/triplet.h).
#pragma once
#include <cstdint>

namespace pyconcepts::cuda {

// workspace: [ws_rows, n] scalars (one distance row per resident block), allocated by the
// caller; anchor_loss [n] (float64) and grad [n, q] (may be null) must be zeroed by the caller.
template <typename T>
void semihard_triplet_loss(const T* emb, const std::int64_t* labels, std::int64_t n,
                           std::int64_t q, double margin, bool squared, T* workspace,
                           std::int64_t ws_rows, double* anchor_loss, T* grad,
                           std::uintptr_t stream);

template <typename T>
void semihard_triplets(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
                       T* workspace, std::int64_t ws_rows, const std::int64_t* offsets,
                       std::int64_t* anchors, std::int64_t* positives, std::int64_t* negatives,
                       std::uintptr_t stream);

}  // namespace pyconcepts::cuda
