// Semi-hard triplet mining (FaceNet / TF-Addons rule) on the CPU.
//
// For every ordered positive pair (a, p) — a != p, labels[a] == labels[p] — the negative is the
// closest n (labels[n] != labels[a]) with d(a, n) > d(a, p), ties broken by the lowest index;
// when no negative is farther than p, the farthest negative of a (lowest index on ties).
// Selection compares squared Euclidean distances (monotone in the Euclidean ones).
// Pairs are ordered by anchor, then by positive index.
#pragma once
#include <cstdint>

namespace pyconcepts::cpu {

// anchor_loss[a] = sum over a's positive pairs of relu(d_ap - d_an + margin), with d squared
// Euclidean when `squared`, else Euclidean. When grad is not null it receives the gradient of
// sum(anchor_loss) w.r.t. emb ([n, q], row-major); the Euclidean distance's gradient is taken
// as 0 where the distance is 0.
template <typename T>
void semihard_triplet_loss(const T* emb, const std::int64_t* labels, std::int64_t n,
                           std::int64_t q, double margin, bool squared, double* anchor_loss,
                           T* grad);

// Writes the mined triplets: anchor a's pairs start at offsets[a] (exclusive prefix sum of the
// per-anchor positive counts).
template <typename T>
void semihard_triplets(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
                       const std::int64_t* offsets, std::int64_t* anchors,
                       std::int64_t* positives, std::int64_t* negatives);

}  // namespace pyconcepts::cpu
