// Concept maps on the CPU: a packed, register-tiled GEMM with fused epilogues.
//
// Layout of the computation (P = H*W, N = B*P "columns" spanning the whole batch):
//   forward   out[M, N]    = W[M, D]  · X[D, N]        epilogue: + bias, ReLU, scatter to [B,M,P]
//   stats     same GEMM, epilogue reduces each register tile into [B, M] max / sum / count
//   grad_x    gx[D, N]     = Wᵀ[D, M] · G[M, N]        G = grad_out ⊙ (out > 0), masked while packing
//   grad_W    gW[M, D]     = G[M, N]  · Xᵀ[N, D]       grad_bias summed while packing G
// The micro-kernel keeps an MR x NR tile of C in vector registers (GCC/Clang vector extensions,
// so the same source becomes AVX-512, AVX2 or SSE code) and streams packed panels of A (MR rows,
// broadcast) and B (NR columns, vector loads). B panels are packed per chunk of columns sized to
// stay in L2; A (the weight) is packed once per call and shared by all threads.
#include "cpu/concept_maps.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/parallel.h"

namespace pyconcepts {
namespace {

using i64 = std::int64_t;

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kTileRows = 12;  // 24 accumulators of 32 zmm registers
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
constexpr int kTileRows = 6;  // 12 accumulators of 16 ymm registers
#else
constexpr int kVecBytes = 16;
constexpr int kTileRows = 6;
#endif

constexpr i64 kL2Budget = 512 * 1024;  // bytes of packed B per column chunk
constexpr i64 kTransposeBlock = 64;    // rows per block when packing transposes a strided source
constexpr i64 kGradWDepth = 512;       // k-block of the grad_W GEMM (one pass over grad_W each)
constexpr i64 kGradWRows = 144;         // rows of G packed per grad_W block

// Vector types (V) and same-width integer vectors for comparison results (Mask).
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float V __attribute__((vector_size(kVecBytes)));
  typedef std::int32_t Mask __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double V __attribute__((vector_size(kVecBytes)));
  typedef std::int64_t Mask __attribute__((vector_size(kVecBytes)));
};

template <typename T>
struct Tile {
  using V = typename VecOf<T>::V;
  using Mask = typename VecOf<T>::Mask;
  static constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(T));
  static constexpr int kVecs = 2;
  static constexpr int MR = kTileRows;
  static constexpr int NR = kLanes * kVecs;
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// 64-byte aligned scratch; contents are uninitialised.
template <typename T>
class Scratch {
 public:
  explicit Scratch(i64 n) {
    const std::size_t bytes = ((static_cast<std::size_t>(std::max<i64>(n, 1)) * sizeof(T) + 63) / 64) * 64;
    data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    check(data_ != nullptr, "concept_maps: out of memory allocating ", bytes, " bytes of scratch");
  }
  T* get() const { return data_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
};

inline i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

// tile[MR][NR] = A_panel[K][MR]ᵀ · B_panel[K][NR], accumulated in registers.
template <typename T>
inline void micro_kernel(i64 depth, const T* __restrict a, const T* __restrict b, T* __restrict tile) {
  using C = Tile<T>;
  using V = typename C::V;
  V acc[C::MR][C::kVecs];
#pragma GCC unroll 16
  for (int i = 0; i < C::MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < C::kVecs; ++v) acc[i][v] = V{};
  for (i64 k = 0; k < depth; ++k) {
    V bv[C::kVecs];
#pragma GCC unroll 4
    for (int v = 0; v < C::kVecs; ++v) bv[v] = load<V>(b + k * C::NR + v * C::kLanes);
#pragma GCC unroll 16
    for (int i = 0; i < C::MR; ++i) {
      const V av = V{} + a[k * C::MR + i];
#pragma GCC unroll 4
      for (int v = 0; v < C::kVecs; ++v) acc[i][v] += av * bv[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < C::MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < C::kVecs; ++v) store(tile + i * C::NR + v * C::kLanes, acc[i][v]);
}

// packed[p][k][i] = src[(p*MR + i)*row_stride + k*k_stride]; rows past n_rows are zero.
template <typename T>
void pack_rows(const T* src, i64 n_rows, i64 depth, i64 row_stride, i64 k_stride, T* packed) {
  constexpr int MR = Tile<T>::MR;
  const i64 n_panels = ceil_div(n_rows, MR);
  parallel_for(n_panels, 4, [&](i64 p0, i64 p1) {
    for (i64 p = p0; p < p1; ++p) {
      T* dst = packed + p * depth * MR;
      for (int i = 0; i < MR; ++i) {
        const i64 row = p * MR + i;
        if (row < n_rows) {
          const T* s = src + row * row_stride;
          for (i64 k = 0; k < depth; ++k) dst[k * MR + i] = s[k * k_stride];
        } else {
          for (i64 k = 0; k < depth; ++k) dst[k * MR + i] = T(0);
        }
      }
    }
  });
}

// Column c = b*P + p of x viewed as [D, B*P]: element (k, c) = x[b*sxb + p*sxp + k*sxd].
template <typename T>
struct XColumns {
  const T* x;
  i64 sxb, sxd, sxp, n_positions;
  i64 base(i64 c) const { return (c / n_positions) * sxb + (c % n_positions) * sxp; }
  i64 col_stride() const { return sxp; }
  i64 k_stride() const { return sxd; }
  T at(i64 base, i64 k) const { return x[base + k * sxd]; }
};

// Column c = b*P + p of the masked gradient viewed as [M, B*P]: G = grad_out where out > 0
// (and where out is NaN, as torch's ReLU backward).
template <typename T>
struct MaskedGradColumns {
  const T* grad_out;
  const T* out;
  i64 n_maps, n_positions;
  i64 base(i64 c) const { return (c / n_positions) * n_maps * n_positions + c % n_positions; }
  i64 col_stride() const { return 1; }
  i64 k_stride() const { return n_positions; }
  T at(i64 base, i64 k) const {
    const i64 i = base + k * n_positions;
    return out[i] <= T(0) ? T(0) : grad_out[i];  // as torch's threshold_backward: NaN passes
  }
};

// Calls fn(image, position, j0, len) for each run of columns [col0+j0, col0+j0+len) inside one
// image (consecutive positions of one image are evenly strided in memory).
template <typename Fn>
inline void for_each_image_run(i64 col0, i64 n_cols, i64 n_positions, const Fn& fn) {
  for (i64 j0 = 0; j0 < n_cols;) {
    const i64 c = col0 + j0;
    const i64 p = c % n_positions;
    const i64 len = std::min<i64>(n_cols - j0, n_positions - p);
    fn(c / n_positions, p, j0, len);
    j0 += len;
  }
}

// Packs columns [c0, c0+n_cols) of src (depth rows) into panels packed[j][k][NR], zero padded.
// Within one image consecutive columns are evenly strided, so each image run is a strided copy.
template <typename T, typename Src>
void pack_columns(const Src& src, i64 c0, i64 n_cols, i64 depth, i64 n_positions, T* packed) {
  constexpr int NR = Tile<T>::NR;
  const i64 cs = src.col_stride();
  for (i64 j0 = 0; j0 < n_cols; j0 += NR) {
    T* dst = packed + (j0 / NR) * depth * NR;
    const i64 n = std::min<i64>(NR, n_cols - j0);
    for_each_image_run(c0 + j0, n, n_positions, [&](i64, i64, i64 r0, i64 len) {
      const i64 b0 = src.base(c0 + j0 + r0);
      if (src.k_stride() == 1) {  // e.g. channels_last x: each column is contiguous in k
        for (i64 kc = 0; kc < depth; kc += kTransposeBlock)  // keep the written rows in L1
          for (i64 j = 0; j < len; ++j)
            for (i64 k = kc; k < std::min(depth, kc + kTransposeBlock); ++k)
              dst[k * NR + r0 + j] = src.at(b0 + j * cs, k);
      } else {
        for (i64 k = 0; k < depth; ++k)
          for (i64 j = 0; j < len; ++j) dst[k * NR + r0 + j] = src.at(b0 + j * cs, k);
      }
    });
    if (n < NR)
      for (i64 k = 0; k < depth; ++k) std::fill(dst + k * NR + n, dst + (k + 1) * NR, T(0));
  }
}

struct Range {
  i64 begin, end;
};

// Splits the N = B*P columns into ranges: whole images when `whole_images` (the stats epilogue
// owns each (image, map) pair), else equal chunks that may cut images.
std::vector<Range> column_ranges(i64 batch, i64 n_positions, i64 chunk, bool whole_images,
                                 int threads) {
  std::vector<Range> ranges;
  const i64 n_cols = batch * n_positions;
  if (n_cols == 0) return ranges;
  if (whole_images) {
    // A range is packed chunk by chunk and only its last panel is padded: groups of about 8
    // chunks keep that waste small, unless the batch is needed to keep every thread busy.
    const i64 per_group = std::clamp<i64>(ceil_div(8 * chunk, n_positions), 1,
                                          std::max<i64>(batch / (4 * threads), 1));
    for (i64 b = 0; b < batch; b += per_group)
      ranges.push_back({b * n_positions, std::min(batch, b + per_group) * n_positions});
  } else {
    for (i64 c = 0; c < n_cols; c += chunk) ranges.push_back({c, std::min(n_cols, c + chunk)});
  }
  return ranges;
}

// C[rows, N] = A[rows, depth] · Src[depth, N], each MR x NR tile handed to epi(tile, row0,
// n_rows_valid, col0, n_cols_valid). Work items are (column range, row range) pairs.
template <typename T, typename Src, typename Epi>
void column_gemm(const T* a_packed, i64 n_rows, i64 depth, const Src& src, i64 batch,
                 i64 n_positions, bool whole_images, const Epi& epi) {
  using C = Tile<T>;
  const int threads = max_threads();
  const i64 chunk = std::clamp<i64>(
      (kL2Budget / (std::max<i64>(depth, 1) * static_cast<i64>(sizeof(T))) / C::NR) * C::NR,
      C::NR, 16 * C::NR);
  const std::vector<Range> cols = column_ranges(batch, n_positions, chunk, whole_images, threads);
  const i64 row_panels = ceil_div(n_rows, C::MR);
  if (cols.empty() || row_panels == 0) return;
  const i64 n_col_ranges = static_cast<i64>(cols.size());
  const i64 row_splits =
      std::clamp<i64>(ceil_div(4 * threads, n_col_ranges), 1, ceil_div(row_panels, 2));
  const i64 panels_per_split = ceil_div(row_panels, row_splits);
  parallel_for(n_col_ranges * row_splits, 1, [&](i64 it0, i64 it1) {
    Scratch<T> b_packed(chunk * std::max<i64>(depth, 1));
    alignas(64) T tile[C::MR * C::NR];
    for (i64 it = it0; it < it1; ++it) {
      const Range cr = cols[static_cast<std::size_t>(it / row_splits)];
      const i64 rp0 = (it % row_splits) * panels_per_split;
      const i64 rp1 = std::min(row_panels, rp0 + panels_per_split);
      for (i64 c = cr.begin; c < cr.end; c += chunk) {
        const i64 n = std::min(chunk, cr.end - c);
        pack_columns(src, c, n, depth, n_positions, b_packed.get());
        for (i64 rp = rp0; rp < rp1; ++rp) {
          const int rows = static_cast<int>(std::min<i64>(C::MR, n_rows - rp * C::MR));
          for (i64 j0 = 0; j0 < n; j0 += C::NR) {
            micro_kernel(depth, a_packed + rp * depth * C::MR, b_packed.get() + (j0 / C::NR) * depth * C::NR,
                         tile);
            epi(tile, rp * C::MR, rows, c + j0, static_cast<int>(std::min<i64>(C::NR, n - j0)));
          }
        }
      }
    }
  });
}

// Writes tile (+ bias, ReLU) to dst laid out [B, n_rows_total, P].
template <typename T, bool kRelu>
struct StoreEpilogue {
  T* dst;
  const T* bias;
  i64 n_rows_total, n_positions;
  void operator()(const T* tile, i64 row0, int n_rows, i64 col0, int n_cols) const {
    constexpr int NR = Tile<T>::NR;
    for_each_image_run(col0, n_cols, n_positions, [&](i64 b, i64 p, i64 j0, i64 len) {
      for (int i = 0; i < n_rows; ++i) {
        T* d = dst + (b * n_rows_total + row0 + i) * n_positions + p;
        const T* t = tile + i * NR + j0;
        const T bi = bias ? bias[row0 + i] : T(0);
        for (int q = 0; q < len; ++q) {
          const T z = t[q] + bi;
          d[q] = kRelu ? (z < T(0) ? T(0) : z) : z;
        }
      }
    });
  }
};

// Reduces each tile row into running [B, M] max / sum / count (finished by finish_stats).
template <typename T>
struct StatsEpilogue {
  const T* bias;
  T threshold;
  T* run_max;
  T* run_sum;
  T* run_count;
  i64 n_maps, n_positions;
  void operator()(const T* tile, i64 row0, int n_rows, i64 col0, int n_cols) const {
    using C = Tile<T>;
    using V = typename C::V;
    using M = typename C::Mask;
    M lane;
    for (int l = 0; l < C::kLanes; ++l) lane[l] = l;
    const V zero = V{};
    for_each_image_run(col0, n_cols, n_positions, [&](i64 b, i64, i64 j0, i64 len) {
      using Lane = std::remove_reference_t<decltype(lane[0])>;
      const Lane first = static_cast<Lane>(j0), last = static_cast<Lane>(j0 + len);
      M valid[C::kVecs];
      for (int v = 0; v < C::kVecs; ++v) {
        const M idx = lane + static_cast<Lane>(v * C::kLanes);
        valid[v] = (idx >= first) & (idx < last);
      }
      for (int i = 0; i < n_rows; ++i) {
        const T bi = bias ? bias[row0 + i] : T(0);
        V vmax = zero, vsum = zero;
        M vcount = M{};
        for (int v = 0; v < C::kVecs; ++v) {
          const V z = load<V>(tile + i * C::NR + v * C::kLanes) + bi;
          const V r = valid[v] ? (z < zero ? zero : z) : zero;  // ReLU keeps NaN
          vmax = vmax > r ? vmax : r;
          vsum += r;
          vcount -= valid[v] & (r > threshold);
        }
        T smax = T(0), ssum = T(0), scount = T(0);
        for (int l = 0; l < C::kLanes; ++l) {
          smax = std::max(smax, vmax[l]);
          ssum += vsum[l];
          scount += static_cast<T>(vcount[l]);
        }
        const i64 o = b * n_maps + row0 + i;
        run_max[o] = std::max(run_max[o], smax);
        run_sum[o] += ssum;
        run_count[o] += scount;
      }
    });
  }
};

template <typename T>
void check_common(const T* x, const T* weight, i64 batch, i64 n_channels, i64 n_maps, i64 n_positions,
                  const char* op) {
  check_sizes_nonnegative({batch, n_channels, n_maps, n_positions}, op);
  check(weight != nullptr || n_maps * n_channels == 0, op, ": weight is null");
  check(x != nullptr || batch * n_channels * n_positions == 0, op, ": x is null");
}

// grad_W[M, D] += G[M, N] · Xᵀ[N, D]; grad_bias[M] += row sums of G (when not null).
// Work items are column ranges of grad_W (so no two threads write the same element), one per
// thread because each item packs all of G (a masked transpose, the costly part at small M); each
// item walks all N in k-blocks, packing Xᵀ[kb, d-range] once per block and G[m-block, kb] per
// m-block.
template <typename T>
void grad_weight_gemm(const XColumns<T>& xs, const MaskedGradColumns<T>& gs, i64 n_cols, i64 n_maps,
                      i64 n_channels, i64 n_positions, T* grad_w, T* grad_b) {
  using C = Tile<T>;
  const int threads = max_threads();
  const i64 d_panels = ceil_div(n_channels, C::NR);
  const i64 n_items = std::min<i64>(d_panels, threads);  // each item repacks all of G: few items
  const i64 panels_per_item = ceil_div(d_panels, n_items);
  const i64 kb = kGradWDepth;
  const i64 mb = ceil_div(kGradWRows, C::MR) * C::MR;
  parallel_for(ceil_div(d_panels, panels_per_item), 1, [&](i64 it0, i64 it1) {
    Scratch<T> b_packed(kb * panels_per_item * C::NR);
    Scratch<T> a_packed(kb * mb);
    alignas(64) T tile[C::MR * C::NR];
    for (i64 it = it0; it < it1; ++it) {
      const i64 d0 = it * panels_per_item * C::NR;
      const i64 d1 = std::min(n_channels, d0 + panels_per_item * C::NR);
      const bool with_bias = grad_b != nullptr && it == 0;
      for (i64 k0 = 0; k0 < n_cols; k0 += kb) {
        const i64 depth = std::min(kb, n_cols - k0);
        // Xᵀ block: packed[j][k][NR], element (k, d) = x at column k0+k, channel d.
        for (i64 dj = d0; dj < d1; dj += C::NR) {
          T* dst = b_packed.get() + ((dj - d0) / C::NR) * depth * C::NR;
          const i64 n = std::min<i64>(C::NR, d1 - dj);
          for_each_image_run(k0, depth, n_positions, [&](i64, i64, i64 t0, i64 len) {
            const i64 base = xs.base(k0 + t0);
            if (xs.sxd == 1) {  // channels_last: the channels of one column are contiguous
              for (i64 t = 0; t < len; ++t)
                for (i64 j = 0; j < n; ++j) dst[(t0 + t) * C::NR + j] = xs.at(base + t * xs.sxp, dj + j);
            } else {
              for (i64 tc = 0; tc < len; tc += kTransposeBlock)  // keep the written rows in L1
                for (i64 j = 0; j < n; ++j)
                  for (i64 t = tc; t < std::min(len, tc + kTransposeBlock); ++t)
                    dst[(t0 + t) * C::NR + j] = xs.at(base + t * xs.sxp, dj + j);
            }
          });
          if (n < C::NR)
            for (i64 k = 0; k < depth; ++k) std::fill(dst + k * C::NR + n, dst + (k + 1) * C::NR, T(0));
        }
        for (i64 m0 = 0; m0 < n_maps; m0 += mb) {
          const i64 m1 = std::min(n_maps, m0 + mb);
          const i64 a_panels = ceil_div(m1 - m0, C::MR);
          for (i64 ip = 0; ip < a_panels; ++ip) {
            T* dst = a_packed.get() + ip * depth * C::MR;
            for (int i = 0; i < C::MR; ++i) {
              const i64 m = m0 + ip * C::MR + i;
              if (m >= m1) {
                for (i64 k = 0; k < depth; ++k) dst[k * C::MR + i] = T(0);
                continue;
              }
              T row_sum = T(0);
              for_each_image_run(k0, depth, n_positions, [&](i64, i64, i64 t0, i64 len) {
                const i64 base = gs.base(k0 + t0);
                for (i64 t = 0; t < len; ++t) {
                  const T g = gs.at(base + t, m);
                  dst[(t0 + t) * C::MR + i] = g;
                  row_sum += g;
                }
              });
              if (with_bias) grad_b[m] += row_sum;
            }
          }
          for (i64 dj = d0; dj < d1; dj += C::NR) {
            const int n = static_cast<int>(std::min<i64>(C::NR, d1 - dj));
            const T* bp = b_packed.get() + ((dj - d0) / C::NR) * depth * C::NR;
            for (i64 ip = 0; ip < a_panels; ++ip) {
              micro_kernel(depth, a_packed.get() + ip * depth * C::MR, bp, tile);
              const int rows = static_cast<int>(std::min<i64>(C::MR, m1 - m0 - ip * C::MR));
              for (int i = 0; i < rows; ++i) {
                T* d = grad_w + (m0 + ip * C::MR + i) * n_channels + dj;
                const T* t = tile + i * C::NR;
                for (int j = 0; j < n; ++j) d[j] += t[j];
              }
            }
          }
        }
      }
    }
  });
}

}  // namespace

template <typename T>
void concept_maps_forward(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* bias,
                          T* out, i64 batch, i64 n_channels, i64 n_maps, i64 n_positions) {
  check_common(x, weight, batch, n_channels, n_maps, n_positions, "concept_maps_forward");
  if (batch * n_maps * n_positions == 0) return;
  Scratch<T> a(ceil_div(n_maps, Tile<T>::MR) * Tile<T>::MR * std::max<i64>(n_channels, 1));
  pack_rows(weight, n_maps, n_channels, n_channels, 1, a.get());
  const XColumns<T> xs{x, sxb, sxd, sxp, n_positions};
  const StoreEpilogue<T, true> epi{out, bias, n_maps, n_positions};
  column_gemm(a.get(), n_maps, n_channels, xs, batch, n_positions, false, epi);
}

template <typename T>
void concept_maps_backward(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* out,
                           const T* grad_out, T* grad_x, T* grad_weight, T* grad_bias, i64 batch,
                           i64 n_channels, i64 n_maps, i64 n_positions) {
  check_common(x, weight, batch, n_channels, n_maps, n_positions, "concept_maps_backward");
  const i64 n_cols = batch * n_positions;
  check(n_cols * n_maps == 0 || (out != nullptr && grad_out != nullptr),
        "concept_maps_backward: out and grad_out must not be null");
  const XColumns<T> xs{x, sxb, sxd, sxp, n_positions};
  const MaskedGradColumns<T> gs{grad_out, out, n_maps, n_positions};
  if (grad_weight) std::fill(grad_weight, grad_weight + n_maps * n_channels, T(0));
  if (grad_bias) std::fill(grad_bias, grad_bias + n_maps, T(0));
  if (grad_x) {
    if (n_maps == 0) {
      std::fill(grad_x, grad_x + n_cols * n_channels, T(0));
    } else if (n_cols * n_channels > 0) {
      // A = Wᵀ: row d, depth m -> weight[m*D + d].
      Scratch<T> a(ceil_div(n_channels, Tile<T>::MR) * Tile<T>::MR * n_maps);
      pack_rows(weight, n_channels, n_maps, 1, n_channels, a.get());
      const StoreEpilogue<T, false> epi{grad_x, nullptr, n_channels, n_positions};
      column_gemm(a.get(), n_channels, n_maps, gs, batch, n_positions, false, epi);
    }
  }
  if (n_cols == 0 || n_maps == 0) return;
  if (grad_weight && n_channels > 0) {
    grad_weight_gemm(xs, gs, n_cols, n_maps, n_channels, n_positions, grad_weight, grad_bias);
  } else if (grad_bias) {
    parallel_for(n_maps, 8, [&](i64 m0, i64 m1) {
      for (i64 m = m0; m < m1; ++m) {
        T s = T(0);
        for (i64 c = 0; c < n_cols; ++c) s += gs.at(gs.base(c), m);
        grad_bias[m] = s;
      }
    });
  }
}

template <typename T>
void concept_map_stats(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* bias,
                       T threshold, T* out_max, T* out_mean, T* out_frac, i64 batch,
                       i64 n_channels, i64 n_maps, i64 n_positions) {
  check_common(x, weight, batch, n_channels, n_maps, n_positions, "concept_map_stats");
  check(n_positions >= 1, "concept_map_stats: needs at least one position, got ", n_positions);
  const i64 n = batch * n_maps;
  std::fill(out_max, out_max + n, T(0));  // every value is a ReLU output, so >= 0 (or NaN)
  std::fill(out_mean, out_mean + n, T(0));
  std::fill(out_frac, out_frac + n, T(0));
  if (n == 0) return;
  Scratch<T> a(ceil_div(n_maps, Tile<T>::MR) * Tile<T>::MR * std::max<i64>(n_channels, 1));
  pack_rows(weight, n_maps, n_channels, n_channels, 1, a.get());
  const XColumns<T> xs{x, sxb, sxd, sxp, n_positions};
  const StatsEpilogue<T> epi{bias, threshold, out_max, out_mean, out_frac, n_maps, n_positions};
  column_gemm(a.get(), n_maps, n_channels, xs, batch, n_positions, true, epi);
  const T n_pos = static_cast<T>(n_positions);
  for (i64 i = 0; i < n; ++i) {
    if (std::isnan(out_mean[i])) out_max[i] = out_mean[i];  // a sum of ReLU outputs is NaN only from a NaN
    out_mean[i] /= n_pos;
    out_frac[i] /= n_pos;
  }
}

#define PYCONCEPTS_INSTANTIATE(T)                                                               \
  template void concept_maps_forward<T>(const T*, i64, i64, i64, const T*, const T*, T*, i64, \
                                        i64, i64, i64);                                         \
  template void concept_maps_backward<T>(const T*, i64, i64, i64, const T*, const T*, const T*, \
                                         T*, T*, T*, i64, i64, i64, i64);                       \
  template void concept_map_stats<T>(const T*, i64, i64, i64, const T*, const T*, T, T*, T*, T*, \
                                     i64, i64, i64, i64);
PYCONCEPTS_INSTANTIATE(float)
PYCONCEPTS_INSTANTIATE(double)
#undef PYCONCEPTS_INSTANTIATE

}  // namespace pyconcepts
