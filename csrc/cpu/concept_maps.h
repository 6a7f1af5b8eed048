// Concept maps: relu(conv1x1(x, weight) + bias), its backward, and fused per-map statistics.
//
// Shapes (P = H*W spatial positions):
//   x        [B, D, P] read through strides (sxb, sxd, sxp): contiguous NCHW is (D*P, P, 1),
//            channels_last is (P*D, 1, D); any layout whose H and W merge into one stride works.
//   weight   [M, D] contiguous, bias [M] contiguous or null.
//   out      [B, M, P] contiguous.
// Per image this is the GEMM out[M, P] = W[M, D] · X[D, P] (+ bias, ReLU in the epilogue). The
// kernels see the batch as one long column axis of B*P columns, so small images (7x7) fill the
// register tiles as well as large ones.
#pragma once
#include <cstdint>

namespace pyconcepts {

// out = relu(W · x + bias). ReLU keeps NaN (as torch.relu): z < 0 ? 0 : z.
template <typename T>
void concept_maps_forward(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                          const T* weight, const T* bias, T* out, std::int64_t batch,
                          std::int64_t n_channels, std::int64_t n_maps, std::int64_t n_positions);

// Gradients from the saved output (mask = out > 0) and grad_out [B, M, P] contiguous.
// grad_x [B, D, P] contiguous, grad_weight [M, D], grad_bias [M]; any of them may be null (skipped).
// The mask is applied while packing GEMM panels and grad_bias is summed in the same pass, so no
// masked copy of grad_out is ever stored.
template <typename T>
void concept_maps_backward(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                           const T* weight, const T* out, const T* grad_out, T* grad_x,
                           T* grad_weight, T* grad_bias, std::int64_t batch,
                           std::int64_t n_channels, std::int64_t n_maps,
                           std::int64_t n_positions);

// Per image b and map m of relu(W · x + bias): max, mean and the fraction of positions whose
// value is > threshold, written to [B, M] arrays. [B, M, P] is never stored: every register
// tile is reduced as soon as it is computed. n_positions must be >= 1. A NaN anywhere in a map
// makes its max and mean NaN; NaN never counts as above the threshold.
template <typename T>
void concept_map_stats(const T* x, std::int64_t sxb, std::int64_t sxd, std::int64_t sxp,
                       const T* weight, const T* bias, T threshold, T* out_max, T* out_mean,
                       T* out_frac, std::int64_t batch, std::int64_t n_channels,
                       std::int64_t n_maps, std::int64_t n_positions);

}  // namespace pyconcepts
