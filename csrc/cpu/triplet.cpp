// Semi-hard triplet mining without the N×N×N tensor: per anchor, O(N·Q) distance work and O(N)
// scratch. Each negative is dropped into the bucket "how many positives are strictly closer
// than it" and a suffix minimum over the buckets (positives in distance order) gives every
// positive its closest farther negative. Sorting and bucketing share one table: the positives'
// distance range is cut into about 2P equal cells (P positives); a counting sort by cell, then a
// small sort inside each cell, orders the positives, and a negative's bucket is the first slot
// of its cell plus a fixed-length, branch-free count of the positives in that cell below it (a
// binary search only in a crowded cell). O(N·Q + N) expected work per anchor.
// Distances are computed for blocks of anchors that share every tile of embeddings they load.
#include "cpu/triplet.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"

namespace pyconcepts::cpu {
namespace {

constexpr std::int64_t kLanes = 16;        // rows per tile: their distances stay in registers
constexpr std::int64_t kAnchorBlock = 8;   // anchors sharing each tile loaded from memory
constexpr std::int32_t kScan = 4;          // positives per cell counted without a search
constexpr std::int32_t kSmallCell = 16;    // larger cells are sorted with std::sort
constexpr std::int64_t kSearchBlock = 64;  // rows bucketed together, loop by loop

// acc + t², with one rounding where the target has FMA instructions: that is what GCC's default
// contraction made of the kernel's `d += t * t` so far (results stay bit for bit the same), and
// spelling it out keeps the rounding independent of how a loop happens to be vectorised.
template <typename T>
inline T add_square(T acc, T t) {
#ifdef __FMA__
  return std::fma(t, t, acc);
#else
  return acc + t * t;
#endif
}

// The embeddings in tiles of kLanes rows, [tile][k][lane], the last tile padded with zero rows:
// one tile's Q columns are contiguous and fit in L1 for the whole anchor block.
template <typename T>
std::vector<T> tile_rows(const T* emb, std::int64_t n, std::int64_t q) {
  const std::int64_t n_tiles = (n + kLanes - 1) / kLanes;
  std::vector<T> out(static_cast<size_t>(n_tiles * q * kLanes), T(0));
  parallel_for(n_tiles, 256, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t t = b; t < e; ++t)
      for (std::int64_t l = 0; l < kLanes && t * kLanes + l < n; ++l)
        for (std::int64_t k = 0; k < q; ++k)
          out[(t * q + k) * kLanes + l] = emb[(t * kLanes + l) * q + k];
  });
  return out;
}

// Rows grouped by label: members[class_begin[i] .. class_end[i]) are the rows labelled like
// row i, in index order; place[members[s]] = s.
struct Classes {
  std::vector<std::int64_t> members, class_begin, class_end, place;

  Classes(const std::int64_t* labels, std::int64_t n)
      : members(static_cast<size_t>(n)),
        class_begin(static_cast<size_t>(n)),
        class_end(static_cast<size_t>(n)),
        place(static_cast<size_t>(n)) {
    std::iota(members.begin(), members.end(), std::int64_t{0});
    std::stable_sort(members.begin(), members.end(),
                     [&](std::int64_t i, std::int64_t j) { return labels[i] < labels[j]; });
    for (std::int64_t b = 0, e; b < n; b = e) {
      for (e = b + 1; e < n && labels[members[e]] == labels[members[b]];) ++e;
      for (std::int64_t s = b; s < e; ++s) {
        class_begin[members[s]] = b;
        class_end[members[s]] = e;
        place[members[s]] = s;
      }
    }
  }
};

// Per-thread scratch reused across anchors.
template <typename T>
struct Miner {
  std::vector<T> dist;                             // kAnchorBlock rows of squared distances
  std::vector<std::int64_t> pos;                   // positives in index order
  std::vector<T> pos_dist;                         // their distances
  std::vector<std::pair<T, std::int64_t>> sorted;  // (distance, rank in pos), by distance
  std::vector<T> sorted_dist;                      // the same distances, padded with +inf
  std::vector<std::int32_t> cell_start;            // first sorted slot of every cell
  std::vector<T> bucket_dist;
  std::vector<std::int64_t> bucket_idx;
  std::vector<std::int64_t> neg_of;  // chosen negative per rank in pos

  // Squared distances from anchors a0 .. a0+nb-1 (nb <= kAnchorBlock) to every row into the
  // rows of dist (stride: n rounded up to whole tiles). Each pair's sum runs over k in order,
  // as in the reference: d += (x_k - a_k)^2, never reassociated. The block's anchors interleave
  // so that their sums are independent chains (a short block repeats its last anchor).
  void distances(const T* emb, const T* tiles, std::int64_t n, std::int64_t q, std::int64_t a0,
                 std::int64_t nb) {
    const std::int64_t n_tiles = (n + kLanes - 1) / kLanes;
    const std::int64_t stride = n_tiles * kLanes;
    dist.resize(static_cast<size_t>(kAnchorBlock * stride));
    const T* xa[kAnchorBlock];
    for (std::int64_t b = 0; b < kAnchorBlock; ++b) xa[b] = emb + (a0 + std::min(b, nb - 1)) * q;
    for (std::int64_t t = 0; t < n_tiles; ++t) {
      const T* tile = tiles + t * q * kLanes;
      T acc[kAnchorBlock][kLanes] = {};
      for (std::int64_t k = 0; k < q; ++k) {
        const T* col = tile + k * kLanes;
#pragma GCC unroll 8  // kAnchorBlock: the block's sums stay in registers
        for (std::int64_t b = 0; b < kAnchorBlock; ++b) {
          const T ak = xa[b][k];
          for (std::int64_t l = 0; l < kLanes; ++l) acc[b][l] = add_square(acc[b][l], col[l] - ak);
        }
      }
      for (std::int64_t b = 0; b < nb; ++b)
        std::copy(acc[b], acc[b] + kLanes, dist.data() + b * stride + t * kLanes);
    }
  }

  // Distances of the block's row b.
  const T* row(std::int64_t n, std::int64_t b) const {
    return dist.data() + b * ((n + kLanes - 1) / kLanes) * kLanes;
  }

  // Fills pos and neg_of for anchor a from its distances d. Returns the number of positives.
  std::int64_t mine(const std::int64_t* labels, const Classes& classes, std::int64_t n,
                    std::int64_t a, const T* d) {
    pos.clear();
    for (std::int64_t s = classes.class_begin[a]; s < classes.class_end[a]; ++s) {
      if (classes.members[s] != a) pos.push_back(classes.members[s]);
    }
    const std::int64_t p_count = static_cast<std::int64_t>(pos.size());
    if (p_count == 0) return 0;
    sort_positives(d, p_count);
    fill_buckets(labels, n, labels[a], d, p_count);

    // Positive at sorted position s is served by buckets s+1..P; the buckets cover disjoint
    // distance ranges, so the running minimum never meets a tie. Positives beyond every
    // negative take the farthest one.
    neg_of.resize(pos.size());
    const T inf = std::numeric_limits<T>::infinity();
    T cur_dist = inf;
    std::int64_t cur_idx = -1;
    std::int64_t far_idx = -1;
    for (std::int64_t s = p_count - 1; s >= 0; --s) {
      if (bucket_dist[s + 1] < cur_dist) {
        cur_dist = bucket_dist[s + 1];
        cur_idx = bucket_idx[s + 1];
      }
      if (cur_idx < 0 && far_idx < 0) far_idx = farthest_negative(labels, n, labels[a], d);
      neg_of[sorted[s].second] = cur_idx >= 0 ? cur_idx : far_idx;
    }
    return p_count;
  }

 private:
  // Cell of a distance: monotone non-decreasing in x (rounding is monotone), so a positive in a
  // lower cell is strictly closer than x and one in a higher cell strictly farther. Anything
  // below the range (and NaN) lands in cell 0, anything above in the last cell.
  static std::int32_t cell_of(T x, T lo, T scale, std::int32_t cells) {
    const T f = (x - lo) * scale;
    return f >= T(cells) ? cells - 1 : (f > T(0) ? static_cast<std::int32_t>(f) : 0);
  }

  // sorted, sorted_dist and cell_start from the positives' distances. NaN distances go last.
  void sort_positives(const T* d, std::int64_t p_count) {
    const T inf = std::numeric_limits<T>::infinity();
    const T max = std::numeric_limits<T>::max();
    pos_dist.resize(pos.size());
    T lo = inf, hi = -inf;  // range of the finite distances
    for (std::int64_t r = 0; r < p_count; ++r) {
      const T v = d[pos[r]];
      pos_dist[r] = v;
      lo = v < lo ? v : lo;
      hi = v > hi && v <= max ? v : hi;
    }
    const std::int32_t cells = static_cast<std::int32_t>(2 * p_count);
    T scale = T(cells) / (hi - lo);
    if (!(hi > lo) || !std::isfinite(scale)) scale = T(0);  // one cell: binary searches
    lo_ = lo;
    scale_ = scale;
    cells_ = cells;

    // Counting sort by cell (NaN after the last cell), ranks in order within a cell.
    cell_start.assign(static_cast<size_t>(cells + 2), 0);
    for (const T v : pos_dist) ++cell_start[(v == v ? cell_of(v, lo, scale, cells) : cells) + 1];
    std::int32_t largest = 0;
    for (std::int32_t c = 0; c <= cells; ++c) {
      largest = std::max(largest, cell_start[c + 1]);
      cell_start[c + 1] += cell_start[c];
    }
    sorted.resize(pos.size());
    for (std::int64_t r = 0; r < p_count; ++r) {
      const T v = pos_dist[r];
      sorted[cell_start[v == v ? cell_of(v, lo, scale, cells) : cells]++] = {v, r};
    }
    for (std::int32_t c = cells; c > 0; --c) cell_start[c] = cell_start[c - 1];
    cell_start[0] = 0;
    // Then within the cells: std::sort for crowded ones, one insertion pass over all (nothing
    // moves past a cell boundary, nor past a NaN).
    const auto by_dist = [](const std::pair<T, std::int64_t>& x,
                            const std::pair<T, std::int64_t>& y) { return x.first < y.first; };
    for (std::int32_t c = 0; largest > kSmallCell && c < cells; ++c) {
      if (cell_start[c + 1] - cell_start[c] > kSmallCell)
        std::sort(sorted.begin() + cell_start[c], sorted.begin() + cell_start[c + 1], by_dist);
    }
    for (auto it = sorted.begin() + 1; it < sorted.end(); ++it)
      for (auto j = it; j > sorted.begin() && by_dist(*j, *(j - 1)); --j) std::iter_swap(j, j - 1);
    sorted_dist.resize(static_cast<size_t>(p_count + kScan));
    for (std::int64_t s = 0; s < p_count; ++s) sorted_dist[s] = sorted[s].first;
    std::fill(sorted_dist.begin() + p_count, sorted_dist.end(), inf);
  }

  // Closest negative per bucket (bucket: number of positives strictly closer), in index order
  // so that ties keep the lowest index. Positives and the anchor enter as NaN, which never wins
  // a bucket. Per block of rows: the buckets by the cell table without branches (whether a
  // cell is crowded is rare but unpredictable), a binary search for those in a crowded cell,
  // then the bucket minima.
  void fill_buckets(const std::int64_t* labels, std::int64_t n, std::int64_t la, const T* d,
                    std::int64_t p_count) {
    const T inf = std::numeric_limits<T>::infinity();
    const T nan = std::numeric_limits<T>::quiet_NaN();
    bucket_dist.assign(static_cast<size_t>(p_count + 1), inf);
    bucket_idx.assign(static_cast<size_t>(p_count + 1), -1);
    const T* sv = sorted_dist.data();
    const std::int32_t* start = cell_start.data();
    T x[kSearchBlock];
    std::int32_t first[kSearchBlock], count[kSearchBlock], slot[kSearchBlock];
    for (std::int64_t j0 = 0; j0 < n; j0 += kSearchBlock) {
      const std::int64_t len = std::min(kSearchBlock, n - j0);
      for (std::int64_t i = 0; i < len; ++i) x[i] = labels[j0 + i] != la ? d[j0 + i] : nan;
      for (std::int64_t i = 0; i < len; ++i) {
        const T v = x[i];
        const std::int32_t c = cell_of(v, lo_, scale_, cells_);
        const std::int32_t s0 = start[c];
        // kScan compares. Slots past the cell hold farther positives, +inf padding or NaN:
        // they never count.
        static_assert(kScan == 4, "the count below spells out kScan compares");
        slot[i] = s0 + (sv[s0] < v) + (sv[s0 + 1] < v) + (sv[s0 + 2] < v) + (sv[s0 + 3] < v);
        first[i] = s0;
        count[i] = start[c + 1] - s0;
      }
      for (std::int64_t i = 0; i < len; ++i) {
        if (count[i] > kScan) {
          const T* s0 = sv + first[i];
          slot[i] = static_cast<std::int32_t>(std::lower_bound(s0, s0 + count[i], x[i]) - sv);
        }
        // Whether a negative beats its bucket is unpredictable: a min and a mask, no branch
        // (a NaN never does).
        const std::int32_t b = slot[i];
        const T cur_dist = bucket_dist[b];
        const std::int64_t keep_new = -static_cast<std::int64_t>(x[i] < cur_dist);
        bucket_dist[b] = std::min(cur_dist, x[i]);
        bucket_idx[b] = ((j0 + i) & keep_new) | (bucket_idx[b] & ~keep_new);
      }
    }
  }

  // The farthest negative, lowest index on ties. The first negative is taken unconditionally,
  // so a NaN distance can never leave the anchor without one (an index of -1 would be read and,
  // for the gradient, written out of bounds).
  static std::int64_t farthest_negative(const std::int64_t* labels, std::int64_t n,
                                        std::int64_t la, const T* d) {
    T far_dist = T(0);
    std::int64_t far_idx = -1;
    for (std::int64_t j = 0; j < n; ++j) {
      if (labels[j] == la) continue;
      if (far_idx < 0 || d[j] > far_dist) {
        far_dist = d[j];
        far_idx = j;
      }
    }
    return far_idx;
  }

  T lo_ = T(0), scale_ = T(0);  // the cell table of the current anchor
  std::int32_t cells_ = 1;
};

// Anchor blocks per parallel chunk: about 2^18 distance terms, so small batches (MACE's
// per-class triplet losses) run on one thread instead of paying for a parallel region.
std::int64_t block_grain(std::int64_t n, std::int64_t q) {
  const std::int64_t anchors =
      std::max<std::int64_t>(1, (std::int64_t{1} << 18) / std::max<std::int64_t>(1, n * q));
  return (anchors + kAnchorBlock - 1) / kAnchorBlock;
}

// Checked before the parallel region (nothing may throw inside it): with two labels present,
// every anchor has a negative; the cell tables count positives (2 cells each) in 32 bits.
void check_args(const std::int64_t* labels, std::int64_t n, std::int64_t q) {
  check_sizes_nonnegative({n, q}, "semihard triplets");
  check(n >= 2, "semihard triplets: need at least 2 embeddings, got ", n);
  check(n <= (std::int64_t{1} << 30), "semihard triplets: at most 2^30 embeddings, got ", n);
  bool two_labels = false;
  for (std::int64_t j = 1; j < n && !two_labels; ++j) two_labels = labels[j] != labels[0];
  check(two_labels, "semihard triplets: need at least 2 distinct labels (negatives)");
}

// Runs per_anchor(miner, thread, a, number of positives, distances of a) for every anchor, in
// parallel over blocks of anchors. Blocks go to threads by a fixed rule, so the per-thread
// gradient accumulators of the loss sum the same terms in the same order on every run.
template <typename T, typename PerAnchor>
void for_each_anchor(const T* emb, const std::int64_t* labels, const Classes& classes,
                     std::int64_t n, std::int64_t q, const PerAnchor& per_anchor) {
  const std::vector<T> tiles = tile_rows(emb, n, q);
  const int n_threads = max_threads();
  std::vector<Miner<T>> miners(n_threads);
  const std::int64_t n_blocks = (n + kAnchorBlock - 1) / kAnchorBlock;
  const std::int64_t grain = block_grain(n, q);
  parallel_for<Schedule::kFixed>(n_blocks, grain, [&](std::int64_t begin, std::int64_t end) {
    const int tid = std::min(omp_get_thread_num(), n_threads - 1);
    Miner<T>& miner = miners[tid];
    for (std::int64_t blk = begin; blk < end; ++blk) {
      const std::int64_t a0 = blk * kAnchorBlock;
      const std::int64_t nb = std::min(kAnchorBlock, n - a0);
      miner.distances(emb, tiles.data(), n, q, a0, nb);
      for (std::int64_t b = 0; b < nb; ++b) {
        const T* d = miner.row(n, b);
        const std::int64_t p_count = miner.mine(labels, classes, n, a0 + b, d);
        per_anchor(miner, tid, a0 + b, p_count, d);
      }
    }
  });
}

}  // namespace

template <typename T>
void semihard_triplet_loss(const T* emb, const std::int64_t* labels, std::int64_t n,
                           std::int64_t q, double margin, bool squared, double* anchor_loss,
                           T* grad) {
  check_args(labels, n, q);
  const Classes classes(labels, n);
  const int n_threads = max_threads();
  // Gradient rows of positives and negatives are scattered: one accumulator per thread, with
  // the scratch of the current anchor. Accumulators and the copy of the embeddings they read
  // are in class order (row s holds members[s]): an anchor's positives are then one contiguous
  // range of rows.
  struct Grad {
    std::vector<T> acc, acc_row, coef;  // coef: per-negative weight of the current anchor
    std::vector<std::int64_t> touched;
  };
  std::vector<Grad> grads(grad ? n_threads : 0);
  std::vector<T> emb_c(grad ? static_cast<size_t>(n * q) : 0);
  if (grad) {
    parallel_for(n, 1024, [&](std::int64_t begin, std::int64_t end) {
      for (std::int64_t s = begin; s < end; ++s)
        std::copy(emb + classes.members[s] * q, emb + (classes.members[s] + 1) * q,
                  emb_c.data() + s * q);
    });
  }
  const T m = static_cast<T>(margin);
  for_each_anchor(emb, labels, classes, n, q, [&](const Miner<T>& miner, int tid, std::int64_t a,
                                                  std::int64_t p_count, const T* dist) {
    double total = 0.0;
    T* g = nullptr;
    T* __restrict acc_a = nullptr;
    T* coef = nullptr;
    if (grad) {
      Grad& gr = grads[tid];
      if (gr.acc.empty()) {
        gr.acc.assign(static_cast<size_t>(n * q), T(0));
        gr.acc_row.resize(static_cast<size_t>(q));
        gr.coef.assign(static_cast<size_t>(n), T(0));
      }
      g = gr.acc.data();
      acc_a = gr.acc_row.data();
      coef = gr.coef.data();
      std::fill(gr.acc_row.begin(), gr.acc_row.end(), T(0));
    }
    const T* __restrict xa = emb + a * q;
    for (std::int64_t r = 0; r < p_count; ++r) {
      const std::int64_t p = miner.pos[r];
      const std::int64_t ng = miner.neg_of[r];
      const T sq_ap = dist[p];
      const T sq_an = dist[ng];
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
      const std::int64_t sp = classes.place[p];
      const T* __restrict xp = emb_c.data() + sp * q;
      T* __restrict gp = g + sp * q;
      for (std::int64_t k = 0; k < q; ++k) {
        const T dp = u * (xa[k] - xp[k]);
        acc_a[k] += dp;
        gp[k] -= dp;
      }
      if (coef[ng] == T(0)) grads[tid].touched.push_back(ng);
      coef[ng] += v;
    }
    if (g) {
      std::vector<std::int64_t>& touched = grads[tid].touched;
      for (const std::int64_t ng : touched) {
        const T c = coef[ng];
        coef[ng] = T(0);
        const std::int64_t sn = classes.place[ng];
        const T* __restrict xn = emb_c.data() + sn * q;
        T* __restrict gn = g + sn * q;
        for (std::int64_t k = 0; k < q; ++k) {
          const T dn = c * (xa[k] - xn[k]);
          acc_a[k] -= dn;
          gn[k] += dn;
        }
      }
      touched.clear();
      T* __restrict ga = g + classes.place[a] * q;
      for (std::int64_t k = 0; k < q; ++k) ga[k] += acc_a[k];
    }
    anchor_loss[a] = total;
  });
  if (!grad) return;
  parallel_for(n, 256, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t s = begin; s < end; ++s) {
      for (std::int64_t k = 0; k < q; ++k) {
        T sum = T(0);
        for (const Grad& gr : grads)
          if (!gr.acc.empty()) sum += gr.acc[s * q + k];
        grad[classes.members[s] * q + k] = sum;
      }
    }
  });
}

template <typename T>
void semihard_triplets(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
                       const std::int64_t* offsets, std::int64_t* anchors,
                       std::int64_t* positives, std::int64_t* negatives) {
  check_args(labels, n, q);
  const Classes classes(labels, n);
  for_each_anchor(emb, labels, classes, n, q, [&](const Miner<T>& miner, int, std::int64_t a,
                                                  std::int64_t p_count, const T*) {
    const std::int64_t o = offsets[a];
    for (std::int64_t r = 0; r < p_count; ++r) {
      anchors[o + r] = a;
      positives[o + r] = miner.pos[r];
      negatives[o + r] = miner.neg_of[r];
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
