// Semi-hard triplet mining without the N×N×N tensor: per anchor, O(N·Q) distance work and O(N)
// scratch. The positives' distances are sorted once; each negative is dropped into the bucket
// "how many positives are strictly closer than it" (a binary search), and a suffix minimum over
// the buckets gives every positive its closest farther negative: O(N·Q + P log P + M log P) per
// anchor for P positives and M negatives.
#include "cpu/triplet.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"

namespace pyconcepts::cpu {
namespace {

constexpr std::int64_t kDistBlock = 1024;  // keeps a block of distances in L1 across the q loop

// Per-thread scratch reused across anchors.
template <typename T>
struct Miner {
  std::vector<T> dist;                               // squared distances from the anchor
  std::vector<std::int64_t> pos;                     // positives in index order
  std::vector<std::pair<T, std::int64_t>> sorted;    // (distance, rank in pos), by distance
  std::vector<T> sorted_dist;
  std::vector<T> bucket_dist;
  std::vector<std::int64_t> bucket_idx;
  std::vector<std::int64_t> neg_of;                  // chosen negative per rank in pos

  // Squared distances from anchor a to every row, from the transposed embeddings [q][n]:
  // vectorises over rows without reassociating any sum.
  void distances(const T* emb, const T* emb_t, std::int64_t n, std::int64_t q, std::int64_t a) {
    dist.assign(static_cast<size_t>(n), T(0));
    const T* xa = emb + a * q;
    for (std::int64_t j0 = 0; j0 < n; j0 += kDistBlock) {
      const std::int64_t j1 = std::min(n, j0 + kDistBlock);
      T* d = dist.data();
      for (std::int64_t k = 0; k < q; ++k) {
        const T ak = xa[k];
        const T* col = emb_t + k * n;
        for (std::int64_t j = j0; j < j1; ++j) {
          const T t = col[j] - ak;
          d[j] += t * t;
        }
      }
    }
  }

  // Number of sorted positive distances strictly below x (branchless binary search).
  std::int64_t count_below(T x) const {
    const T* base = sorted_dist.data();
    std::int64_t len = static_cast<std::int64_t>(sorted_dist.size());
    while (len > 1) {
      const std::int64_t half = len / 2;
      base = (base[half] < x) ? base + half : base;
      len -= half;
    }
    return (base - sorted_dist.data()) + (*base < x ? 1 : 0);
  }

  // Fills pos and neg_of for anchor a (dist must be filled). Returns the number of positives.
  std::int64_t mine(const std::int64_t* labels, std::int64_t n, std::int64_t a) {
    const std::int64_t la = labels[a];
    pos.clear();
    for (std::int64_t j = 0; j < n; ++j) {
      if (j != a && labels[j] == la) pos.push_back(j);
    }
    const std::int64_t p_count = static_cast<std::int64_t>(pos.size());
    if (p_count == 0) return 0;
    sorted.resize(pos.size());
    for (std::int64_t r = 0; r < p_count; ++r) sorted[r] = {dist[pos[r]], r};
    std::sort(sorted.begin(), sorted.end());
    sorted_dist.resize(pos.size());
    for (std::int64_t r = 0; r < p_count; ++r) sorted_dist[r] = sorted[r].first;

    const T inf = std::numeric_limits<T>::infinity();
    bucket_dist.assign(pos.size() + 1, inf);
    bucket_idx.assign(pos.size() + 1, -1);
    T far_dist = -inf;
    std::int64_t far_idx = -1;
    const T lowest = sorted_dist.front();
    const T highest = sorted_dist.back();
    for (std::int64_t j = 0; j < n; ++j) {
      if (labels[j] == la) continue;
      const T d = dist[j];
      if (d > far_dist) {  // strict: the lowest index wins ties
        far_dist = d;
        far_idx = j;
      }
      if (!(d > lowest)) continue;  // closer than every positive: serves none
      const std::int64_t b = d > highest ? p_count : count_below(d);
      if (d < bucket_dist[b]) {
        bucket_dist[b] = d;
        bucket_idx[b] = j;
      }
    }
    // Positive at sorted position s is served by buckets s+1..P; the buckets cover disjoint
    // distance ranges, so the running minimum never meets a tie.
    neg_of.resize(pos.size());
    T cur_dist = inf;
    std::int64_t cur_idx = -1;
    for (std::int64_t s = p_count - 1; s >= 0; --s) {
      if (bucket_dist[s + 1] < cur_dist) {
        cur_dist = bucket_dist[s + 1];
        cur_idx = bucket_idx[s + 1];
      }
      neg_of[sorted[s].second] = cur_idx >= 0 ? cur_idx : far_idx;
    }
    return p_count;
  }
};

template <typename T>
std::vector<T> transpose(const T* emb, std::int64_t n, std::int64_t q) {
  std::vector<T> out(static_cast<size_t>(n * q));
  parallel_for(n, 4096, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i)
      for (std::int64_t k = 0; k < q; ++k) out[k * n + i] = emb[i * q + k];
  });
  return out;
}

// Checked before the parallel region (nothing may throw inside it): with two labels present,
// every anchor has a negative.
void check_args(const std::int64_t* labels, std::int64_t n, std::int64_t q) {
  check_sizes_nonnegative({n, q}, "semihard triplets");
  check(n >= 2, "semihard triplets: need at least 2 embeddings, got ", n);
  bool two_labels = false;
  for (std::int64_t j = 1; j < n && !two_labels; ++j) two_labels = labels[j] != labels[0];
  check(two_labels, "semihard triplets: need at least 2 distinct labels (negatives)");
}

}  // namespace

template <typename T>
void semihard_triplet_loss(const T* emb, const std::int64_t* labels, std::int64_t n,
                           std::int64_t q, double margin, bool squared, double* anchor_loss,
                           T* grad) {
  check_args(labels, n, q);
  const std::vector<T> emb_t = transpose(emb, n, q);
  const int n_threads = max_threads();
  // Gradient rows of positives and negatives are scattered: one accumulator per thread.
  std::vector<std::vector<T>> acc(grad ? n_threads : 0);
  std::vector<Miner<T>> miners(n_threads);
  const T m = static_cast<T>(margin);
  parallel_for(n, 16, [&](std::int64_t begin, std::int64_t end) {
    const int tid = std::min(omp_get_thread_num(), n_threads - 1);
    Miner<T>& miner = miners[tid];
    T* g = nullptr;
    if (grad) {
      if (acc[tid].empty()) acc[tid].assign(static_cast<size_t>(n * q), T(0));
      g = acc[tid].data();
    }
    for (std::int64_t a = begin; a < end; ++a) {
      miner.distances(emb, emb_t.data(), n, q, a);
      const std::int64_t p_count = miner.mine(labels, n, a);
      double total = 0.0;
      const T* xa = emb + a * q;
      for (std::int64_t r = 0; r < p_count; ++r) {
        const std::int64_t p = miner.pos[r];
        const std::int64_t ng = miner.neg_of[r];
        const T sq_ap = miner.dist[p];
        const T sq_an = miner.dist[ng];
        const T d_ap = squared ? sq_ap : std::sqrt(sq_ap);
        const T d_an = squared ? sq_an : std::sqrt(sq_an);
        const T l = d_ap - d_an + m;
        if (!(l > T(0))) continue;
        total += static_cast<double>(l);
        if (!g) continue;
        // d/dx of d(x, y): 2(x - y) squared, (x - y)/d Euclidean (0 at d = 0).
        const T u = squared ? T(2) : (d_ap > T(0) ? T(1) / d_ap : T(0));
        const T v = squared ? T(2) : (d_an > T(0) ? T(1) / d_an : T(0));
        const T* xp = emb + p * q;
        const T* xn = emb + ng * q;
        T* ga = g + a * q;
        T* gp = g + p * q;
        T* gn = g + ng * q;
        for (std::int64_t k = 0; k < q; ++k) {
          const T dp = u * (xa[k] - xp[k]);
          const T dn = v * (xa[k] - xn[k]);
          ga[k] += dp - dn;
          gp[k] -= dp;
          gn[k] += dn;
        }
      }
      anchor_loss[a] = total;
    }
  });
  if (!grad) return;
  parallel_for(n, 256, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin * q; i < end * q; ++i) {
      T s = T(0);
      for (const auto& buf : acc)
        if (!buf.empty()) s += buf[i];
      grad[i] = s;
    }
  });
}

template <typename T>
void semihard_triplets(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
                       const std::int64_t* offsets, std::int64_t* anchors,
                       std::int64_t* positives, std::int64_t* negatives) {
  check_args(labels, n, q);
  const std::vector<T> emb_t = transpose(emb, n, q);
  const int n_threads = max_threads();
  std::vector<Miner<T>> miners(n_threads);
  parallel_for(n, 16, [&](std::int64_t begin, std::int64_t end) {
    Miner<T>& miner = miners[std::min(omp_get_thread_num(), n_threads - 1)];
    for (std::int64_t a = begin; a < end; ++a) {
      miner.distances(emb, emb_t.data(), n, q, a);
      const std::int64_t p_count = miner.mine(labels, n, a);
      const std::int64_t o = offsets[a];
      for (std::int64_t r = 0; r < p_count; ++r) {
        anchors[o + r] = a;
        positives[o + r] = miner.pos[r];
        negatives[o + r] = miner.neg_of[r];
      }
    }
  });
}

template void semihard_triplet_loss<float>(const float*, const std::int64_t*, std::int64_t,
                                           std::int64_t, double, bool, double*, float*);
template void semihard_triplet_loss<double>(const double*, const std::int64_t*, std::int64_t,
                                            std::int64_t, double, bool, double*, double*);
template void semihard_triplets<float>(const float*, const std::int64_t*, std::int64_t,
                                       std::int64_t, const std::int64_t*, std::int64_t*,
                                       std::int64_t*, std::int64_t*);
template void semihard_triplets<double>(const double*, const std::int64_t*, std::int64_t,
                                        std::int64_t, const std::int64_t*, std::int64_t*,
                                        std::int64_t*, std::int64_t*);

}  // namespace pyconcepts::cpu
