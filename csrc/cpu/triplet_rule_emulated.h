// The CUDA semi-hard triplet kernel's steps (csrc/common/triplet_rule.h) run one after another
// on one CPU thread: lets the tests check, without a GPU, that the rule as the kernel splits it
// picks the CPU kernel's triplets. Not a production path (no parallelism, O(N²·Q) time).
#pragma once
#include <cstdint>

namespace pyconcepts::cpu {

// Inputs as the CUDA launcher takes them: members[s] is the row at class-order position s
// (rows grouped by label, index order within a label); class_start[s] / class_stop[s] bound
// the positions of that row's label. Writes the triplets (anchor a's pairs from offsets[a],
// positives in index order), anchor_loss [n] and, unless grad is null, the gradient of
// sum(anchor_loss) into grad [n, q] (overwritten).
template <typename T>
void semihard_rule_emulated(const T* emb, std::int64_t n, std::int64_t q,
                            const std::int64_t* members, const std::int64_t* class_start,
                            const std::int64_t* class_stop, double margin, bool squared,
                            const std::int64_t* offsets, std::int64_t* anchors,
                            std::int64_t* positives, std::int64_t* negatives, double* anchor_loss,
                            T* grad);

}  // namespace pyconcepts::cpu
