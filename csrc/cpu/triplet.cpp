// Semi-hard triplet mining without the N×N×N tensor: per anchor, O(N·Q) distance work and O(N)
// scratch. The positives' distances are sorted once; each negative is dropped into the bucket
// "how many positives are strictly closer than it" and a suffix minimum over the buckets gives
// every positive its closest farther negative: O(N·Q + P log P + M log P) per anchor for P
// positives and M negatives. The binary searches run over blocks of negatives, one step for the
// whole block at a time (a fixed number of steps over a power-of-two padded array), so they are
// independent and branch-free instead of one latency-bound chain per negative.
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

constexpr std::int64_t kDistBlock = 1024;   // keeps a block of distances in L1 across the q loop
constexpr std::int64_t kSearchBlock = 64;   // negatives searched together, step by step

// Per-thread scratch reused across anchors.
template <typename T>
struct Miner {
  std::vector<T> dist;                               // squared distances from the anchor
  std::vector<std::int64_t> pos;                     // positives in index order
  std::vector<std::pair<T, std::int64_t>> sorted;    // (distance, rank in pos), by distance
  std::vector<T> sorted_dist;                        // padded with +inf to a power of two
  std::vector<T> cand_dist;                          // candidate negatives (farther than a positive)
  std::vector<std::int64_t> cand_idx;
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

    const T inf = std::numeric_limits<T>::infinity();
    // Padded to a power of two >= P + 1 with +inf, so every search takes the same steps.
    std::int64_t padded = 1;
    while (padded < p_count + 1) padded *= 2;
    sorted_dist.resize(static_cast<size_t>(padded));
    for (std::int64_t r = 0; r < padded; ++r) sorted_dist[r] = r < p_count ? sorted[r].first : inf;

    // Negatives farther than the closest positive (the others serve no positive), and the
    // farthest negative (strict comparisons: the lowest index wins ties). The first negative is
    // taken unconditionally, so a NaN distance can never leave the anchor without one (an index
    // of -1 would be read and, for the gradient, written out of bounds).
    cand_dist.resize(static_cast<size_t>(n));
    cand_idx.resize(static_cast<size_t>(n));
    std::int64_t n_cand = 0;
    T far_dist = -inf;
    std::int64_t far_idx = -1;
    const T lowest = sorted_dist[0];
    for (std::int64_t j = 0; j < n; ++j) {
      if (labels[j] == la) continue;
      const T d = dist[j];
      const bool farther = far_idx < 0 || d > far_dist;
      far_dist = farther ? d : far_dist;
      far_idx = farther ? j : far_idx;
      cand_dist[n_cand] = d;
      cand_idx[n_cand] = j;
      n_cand += d > lowest ? 1 : 0;
    }

    bucket_dist.assign(pos.size() + 1, inf);
    bucket_idx.assign(pos.size() + 1, -1);
    const T* sv = sorted_dist.data();
    std::int64_t slot[kSearchBlock];
    for (std::int64_t c0 = 0; c0 < n_cand; c0 += kSearchBlock) {
      const std::int64_t len = std::min(kSearchBlock, n_cand - c0);
      const T* x = cand_dist.data() + c0;
      for (std::int64_t i = 0; i < len; ++i) slot[i] = 0;
      for (std::int64_t h = padded / 2; h >= 1; h /= 2) {
        for (std::int64_t i = 0; i < len; ++i) slot[i] += sv[slot[i] + h - 1] < x[i] ? h : 0;
      }
      for (std::int64_t i = 0; i < len; ++i) {  // slot = number of positives closer than x
        const std::int64_t b = slot[i];
        const bool better = x[i] < bucket_dist[b];  // candidates in index order: ties keep the first
        bucket_dist[b] = better ? x[i] : bucket_dist[b];
        bucket_idx[b] = better ? cand_idx[c0 + i] : bucket_idx[b];
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

// Anchors per parallel chunk: about 2^18 distance terms, so small batches (MACE's per-class
// triplet losses) run on one thread instead of paying for a parallel region.
std::int64_t anchor_grain(std::int64_t n, std::int64_t q) {
  return std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(1, n * q));
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
  parallel_for(n, anchor_grain(n, q), [&](std::int64_t begin, std::int64_t end) {
    const int tid = std::min(omp_get_thread_num(), n_threads - 1);
    Miner<T>& miner = miners[tid];
    T* g = nullptr;
    std::vector<T> acc_row(static_cast<size_t>(q));
    std::vector<T> coef;  // per-negative gradient weight of the current anchor
    std::vector<std::int64_t> touched;
    if (grad) {
      if (acc[tid].empty()) acc[tid].assign(static_cast<size_t>(n * q), T(0));
      g = acc[tid].data();
      coef.assign(static_cast<size_t>(n), T(0));
    }
    for (std::int64_t a = begin; a < end; ++a) {
      miner.distances(emb, emb_t.data(), n, q, a);
      const std::int64_t p_count = miner.mine(labels, n, a);
      double total = 0.0;
      const T* __restrict xa = emb + a * q;
      T* __restrict acc_a = acc_row.data();
      std::fill(acc_row.begin(), acc_row.end(), T(0));
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
        // d/dx of d(x, y): 2(x - y) squared, (x - y)/d Euclidean (0 at d = 0). Row a gathers
        // locally; each positive row is updated once; negatives are combined per anchor first.
        const T u = squared ? T(2) : (d_ap > T(0) ? T(1) / d_ap : T(0));
        const T v = squared ? T(2) : (d_an > T(0) ? T(1) / d_an : T(0));
        const T* __restrict xp = emb + p * q;
        T* __restrict gp = g + p * q;
        for (std::int64_t k = 0; k < q; ++k) {
          const T dp = u * (xa[k] - xp[k]);
          acc_a[k] += dp;
          gp[k] -= dp;
        }
        if (coef[ng] == T(0)) touched.push_back(ng);
        coef[ng] += v;
      }
      if (g) {
        for (const std::int64_t ng : touched) {
          const T c = coef[ng];
          coef[ng] = T(0);
          const T* __restrict xn = emb + ng * q;
          T* __restrict gn = g + ng * q;
          for (std::int64_t k = 0; k < q; ++k) {
            const T dn = c * (xa[k] - xn[k]);
            acc_a[k] -= dn;
            gn[k] += dn;
          }
        }
        touched.clear();
        T* __restrict ga = g + a * q;
        for (std::int64_t k = 0; k < q; ++k) ga[k] += acc_a[k];
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
  parallel_for(n, anchor_grain(n, q), [&](std::int64_t begin, std::int64_t end) {
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
