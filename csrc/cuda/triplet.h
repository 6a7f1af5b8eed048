// Launchers for the CUDA semi-hard triplet kernels (same rule as csrc/cpu/triplet.h).
// Plain C++ declarations: device pointers, the stream as an integer; nothing synchronizes.
#pragma once
#include <cstdint>

namespace pyconcepts::cuda {

// The rows in class order, as the kernels take them: members[s] is the row at position s (rows
// grouped by label, index order within a label), class_start[s] / class_stop[s] bound the
// positions of that row's label, max_class is the largest label's count (< n: every label
// needs a negative). All three arrays are [n] int64 on the device.
struct ClassLayout {
  const std::int64_t* members;
  const std::int64_t* class_start;
  const std::int64_t* class_stop;
  std::int64_t max_class;
};

// Bytes of global workspace the kernels need for these sizes on the current device: 0 unless
// the largest class's per-anchor state outgrows shared memory.
template <typename T>
std::int64_t semihard_workspace_bytes(std::int64_t n, std::int64_t q, std::int64_t max_class);

// anchor_loss [n] (float64) receives each anchor's loss sum; grad [n, q] (may be null) must be
// zeroed by the caller and receives the gradient of sum(anchor_loss), accumulated with atomics
// (float results may differ in the last bits from run to run).
template <typename T>
void semihard_triplet_loss(const T* emb, std::int64_t n, std::int64_t q, ClassLayout layout,
                           void* workspace, std::int64_t workspace_bytes, double margin,
                           bool squared, double* anchor_loss, T* grad, std::uintptr_t stream);

// The mined triplets: anchor a's pairs from offsets[a], positives in index order.
template <typename T>
void semihard_triplets(const T* emb, std::int64_t n, std::int64_t q, ClassLayout layout,
                       void* workspace, std::int64_t workspace_bytes, const std::int64_t* offsets,
                       std::int64_t* anchors, std::int64_t* positives, std::int64_t* negatives,
                       std::uintptr_t stream);

}  // namespace pyconcepts::cuda
