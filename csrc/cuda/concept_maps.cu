// Concept maps on CUDA: one tiled shared-memory GEMM kernel, specialised by element loaders and
// fused epilogues (same column view as the CPU core: N = B*P columns spanning the batch).
//   forward  out[M, N]  = W · X        epilogue: + bias, ReLU, scatter to [B, M, P]
//   stats    same GEMM, epilogue reduces each tile row per image into [B, M] with atomics
//   grad_x   gx[D, N]   = Wᵀ · G       G = grad_out where out > 0 (masked while loading)
//   grad_W   gW[M, D]   = G · Xᵀ       split over K with atomicAdd when there are few tiles
//   grad_b   one block per map reduces G over N
// Each 256-thread block computes a 64 x 64 tile (4 x 4 per thread) in steps of 16 along K.
#include <algorithm>
#include <cstdint>

#include "cuda/concept_maps.h"
#include "cuda/cuda_check.h"

namespace pyconcepts::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256, kTM = 4, kTN = 4;
constexpr int kTileSmem = kBM * (kBN + 1);  // stats reduction tile; larger than the A+B panels
static_assert(2 * kBK * (kBM + 1) <= kTileSmem, "GEMM panels must fit in the reduction tile");

template <typename T>
__device__ __forceinline__ T relu(T z) {
  return z <= T(0) ? T(0) : z;  // -0 -> +0, NaN stays NaN (as torch.relu)
}

// A(row, k) loaders.
template <typename T>
struct WeightRows {  // A = W [M, D]
  const T* w;
  i64 n_channels;
  __device__ T operator()(i64 m, i64 d) const { return w[m * n_channels + d]; }
};
template <typename T>
struct WeightCols {  // A = Wᵀ [D, M]
  const T* w;
  i64 n_channels;
  __device__ T operator()(i64 d, i64 m) const { return w[m * n_channels + d]; }
};

// (k, column) loaders over the column view c = b*P + p.
template <typename T>
struct XCols {  // X [D, N]
  const T* x;
  i64 sxb, sxd, sxp, n_positions;
  __device__ T operator()(i64 d, i64 c) const {
    const i64 b = c / n_positions;
    return x[b * sxb + d * sxd + (c - b * n_positions) * sxp];
  }
};
template <typename T>
struct MaskedGradCols {  // G [M, N]
  const T* grad_out;
  const T* out;
  i64 n_maps, n_positions;
  __device__ T operator()(i64 m, i64 c) const {
    const i64 b = c / n_positions;
    const i64 i = (b * n_maps + m) * n_positions + (c - b * n_positions);
    return out[i] <= T(0) ? T(0) : grad_out[i];  // as torch's ReLU backward: NaN passes
  }
};
template <typename F>
struct Transposed {  // F(a, b) read as (b, a)
  F f;
  template <typename I>
  __device__ auto operator()(I a, I b) const {
    return f(b, a);
  }
};

// Epilogues get the thread's 4 x 4 accumulators; element (i, j) is row row0 + ty + 16 i,
// column col0 + tx + 16 j, so consecutive threads write consecutive columns.
template <typename T, bool kBiasRelu>
struct StoreToImages {  // dst [B, rows, P]
  T* dst;
  const T* bias;
  i64 n_positions;
  __device__ void operator()(const T (&acc)[kTM][kTN], i64 rows, i64 cols, i64 row0, i64 col0,
                             T*) const {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    for (int i = 0; i < kTM; ++i) {
      const i64 r = row0 + ty + 16 * i;
      if (r >= rows) continue;
      const T bi = (kBiasRelu && bias) ? bias[r] : T(0);
      for (int j = 0; j < kTN; ++j) {
        const i64 c = col0 + tx + 16 * j;
        if (c >= cols) continue;
        const i64 b = c / n_positions;
        const T v = acc[i][j] + bi;
        dst[(b * rows + r) * n_positions + (c - b * n_positions)] = kBiasRelu ? relu(v) : v;
      }
    }
  }
};

template <typename T>
struct AtomicAddRowMajor {  // dst [rows, cols] += tile
  T* dst;
  __device__ void operator()(const T (&acc)[kTM][kTN], i64 rows, i64 cols, i64 row0, i64 col0,
                             T*) const {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    for (int i = 0; i < kTM; ++i)
      for (int j = 0; j < kTN; ++j) {
        const i64 r = row0 + ty + 16 * i, c = col0 + tx + 16 * j;
        if (r < rows && c < cols) atomicAdd(dst + r * cols + c, acc[i][j]);
      }
  }
};

// Bit patterns of non-negative floats order as unsigned integers, so atomicMax on the bits is a
// float max for ReLU outputs (a NaN may win; finish_stats turns a NaN sum into a NaN max anyway).
__device__ __forceinline__ void atomic_max_nonneg(float* p, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(p), __float_as_uint(v));
}
__device__ __forceinline__ void atomic_max_nonneg(double* p, double v) {
  atomicMax(reinterpret_cast<unsigned long long*>(p),
            static_cast<unsigned long long>(__double_as_longlong(v)));
}

template <typename T>
struct StatsToImages {  // running [B, M] max / sum / count
  const T* bias;
  T threshold;
  T* run_max;
  T* run_sum;
  T* run_count;
  i64 n_positions;
  __device__ void operator()(const T (&acc)[kTM][kTN], i64 rows, i64 cols, i64 row0, i64 col0,
                             T* smem) const {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    __syncthreads();  // the GEMM panels in smem are dead: reuse them for the tile
    for (int i = 0; i < kTM; ++i) {
      const i64 r = row0 + ty + 16 * i;
      const T bi = (bias && r < rows) ? bias[r] : T(0);
      for (int j = 0; j < kTN; ++j)
        smem[(ty + 16 * i) * (kBN + 1) + tx + 16 * j] = relu(acc[i][j] + bi);
    }
    __syncthreads();
    const int lr = threadIdx.x;
    if (lr >= kBM || row0 + lr >= rows) return;
    const i64 r = row0 + lr;
    const int n = static_cast<int>(min(static_cast<i64>(kBN), cols - col0));
    i64 b = col0 / n_positions, p = col0 - b * n_positions;
    T vmax = T(0), vsum = T(0), vcount = T(0);
    for (int j = 0; j < n; ++j) {
      const T v = smem[lr * (kBN + 1) + j];
      vmax = v > vmax ? v : vmax;
      vsum += v;
      vcount += v > threshold ? T(1) : T(0);
      if (++p == n_positions || j == n - 1) {  // end of an image run: flush
        const i64 o = b * rows + r;
        atomic_max_nonneg(run_max + o, vmax);
        atomicAdd(run_sum + o, vsum);
        atomicAdd(run_count + o, vcount);
        vmax = vsum = vcount = T(0);
        p = 0;
        ++b;
      }
    }
  }
};

template <typename T, typename LoadA, typename LoadB, typename Epi>
__global__ void __launch_bounds__(kThreads)
    gemm_kernel(i64 rows, i64 cols, i64 depth, i64 k_chunk, LoadA load_a, LoadB load_b, Epi epi) {
  __shared__ T smem[kTileSmem];
  T* a_tile = smem;                    // [kBK][kBM + 1]
  T* b_tile = smem + kBK * (kBM + 1);  // [kBK][kBN + 1]
  const int t = threadIdx.x, ty = t / 16, tx = t % 16;
  const i64 row0 = static_cast<i64>(blockIdx.y) * kBM;
  const i64 col0 = static_cast<i64>(blockIdx.x) * kBN;
  const i64 k_begin = static_cast<i64>(blockIdx.z) * k_chunk;
  const i64 k_end = min(depth, k_begin + k_chunk);
  T acc[kTM][kTN] = {};
  for (i64 k0 = k_begin; k0 < k_end; k0 += kBK) {
#pragma unroll
    for (int l = 0; l < kBM * kBK / kThreads; ++l) {
      const int e = t + l * kThreads, r = e / kBK, kk = e % kBK;
      const i64 gr = row0 + r, gk = k0 + kk;
      a_tile[kk * (kBM + 1) + r] = (gr < rows && gk < k_end) ? load_a(gr, gk) : T(0);
    }
#pragma unroll
    for (int l = 0; l < kBN * kBK / kThreads; ++l) {
      const int e = t + l * kThreads, kk = e / kBN, c = e % kBN;
      const i64 gc = col0 + c, gk = k0 + kk;
      b_tile[kk * (kBN + 1) + c] = (gc < cols && gk < k_end) ? load_b(gk, gc) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      T a[kTM], b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = a_tile[kk * (kBM + 1) + ty + 16 * i];
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = b_tile[kk * (kBN + 1) + tx + 16 * j];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
  epi(acc, rows, cols, row0, col0, smem);
}

template <typename T, typename LoadA, typename LoadB, typename Epi>
void launch_gemm(i64 rows, i64 cols, i64 depth, int k_splits, LoadA load_a, LoadB load_b, Epi epi,
                 cudaStream_t stream, const char* what) {
  if (rows == 0 || cols == 0) return;
  const i64 k_chunk = ((depth + k_splits - 1) / k_splits + kBK - 1) / kBK * kBK;
  const dim3 grid(static_cast<unsigned>((cols + kBN - 1) / kBN),
                  static_cast<unsigned>((rows + kBM - 1) / kBM), static_cast<unsigned>(k_splits));
  gemm_kernel<T><<<grid, kThreads, 0, stream>>>(rows, cols, depth, k_chunk, load_a, load_b, epi);
  cuda_check_launch(what);
}

template <typename T>
__global__ void bias_grad_kernel(const T* grad_out, const T* out, T* grad_bias, i64 n_cols,
                                 i64 n_maps, i64 n_positions) {
  __shared__ T partial[kThreads];
  const i64 m = blockIdx.x;
  T s = T(0);
  for (i64 c = threadIdx.x; c < n_cols; c += blockDim.x) {
    const i64 b = c / n_positions;
    const i64 i = (b * n_maps + m) * n_positions + (c - b * n_positions);
    s += out[i] <= T(0) ? T(0) : grad_out[i];
  }
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) grad_bias[m] = partial[0];
}

template <typename T>
__global__ void finish_stats_kernel(T* run_max, T* run_sum, T* run_count, i64 n, T n_positions) {
  const i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (isnan(run_sum[i])) run_max[i] = run_sum[i];  // a sum of ReLU outputs is NaN only from a NaN
  run_sum[i] /= n_positions;
  run_count[i] /= n_positions;
}

int sm_count() {
  int device = 0, count = 0;
  cuda_check(cudaGetDevice(&device), "concept_maps: cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device),
             "concept_maps: cudaDeviceGetAttribute");
  return std::max(count, 1);
}

}  // namespace

template <typename T>
void concept_maps_forward(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* bias,
                          T* out, i64 batch, i64 n_channels, i64 n_maps, i64 n_positions,
                          std::uintptr_t stream) {
  launch_gemm<T>(n_maps, batch * n_positions, n_channels, 1, WeightRows<T>{weight, n_channels},
                 XCols<T>{x, sxb, sxd, sxp, n_positions},
                 StoreToImages<T, true>{out, bias, n_positions},
                 reinterpret_cast<cudaStream_t>(stream), "concept_maps_forward");
}

template <typename T>
void concept_maps_backward(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* out,
                           const T* grad_out, T* grad_x, T* grad_weight, T* grad_bias, i64 batch,
                           i64 n_channels, i64 n_maps, i64 n_positions, std::uintptr_t stream) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const i64 n_cols = batch * n_positions;
  const MaskedGradCols<T> grads{grad_out, out, n_maps, n_positions};
  if (grad_x)
    launch_gemm<T>(n_channels, n_cols, n_maps, 1, WeightCols<T>{weight, n_channels}, grads,
                   StoreToImages<T, false>{grad_x, nullptr, n_positions}, s,
                   "concept_maps_backward (grad_x)");
  if (grad_weight) {
    cuda_check(cudaMemsetAsync(grad_weight, 0, sizeof(T) * n_maps * n_channels, s),
               "concept_maps_backward: cudaMemsetAsync");
    const i64 tiles = ((n_maps + kBM - 1) / kBM) * ((n_channels + kBN - 1) / kBN);
    const i64 want = std::max<i64>(1, 4 * sm_count() / std::max<i64>(tiles, 1));
    const int splits = static_cast<int>(std::clamp<i64>(want, 1, std::max<i64>(1, n_cols / 256)));
    launch_gemm<T>(n_maps, n_channels, n_cols, splits, grads,
                   Transposed<XCols<T>>{XCols<T>{x, sxb, sxd, sxp, n_positions}},
                   AtomicAddRowMajor<T>{grad_weight}, s, "concept_maps_backward (grad_weight)");
  }
  if (grad_bias && n_maps > 0) {
    bias_grad_kernel<T><<<static_cast<unsigned>(n_maps), kThreads, 0, s>>>(
        grad_out, out, grad_bias, n_cols, n_maps, n_positions);
    cuda_check_launch("concept_maps_backward (grad_bias)");
  }
}

template <typename T>
void concept_map_stats(const T* x, i64 sxb, i64 sxd, i64 sxp, const T* weight, const T* bias,
                       T threshold, T* out_max, T* out_mean, T* out_frac, i64 batch,
                       i64 n_channels, i64 n_maps, i64 n_positions, std::uintptr_t stream) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const i64 n = batch * n_maps;
  if (n == 0) return;
  for (T* p : {out_max, out_mean, out_frac})
    cuda_check(cudaMemsetAsync(p, 0, sizeof(T) * n, s), "concept_map_stats: cudaMemsetAsync");
  launch_gemm<T>(n_maps, batch * n_positions, n_channels, 1, WeightRows<T>{weight, n_channels},
                 XCols<T>{x, sxb, sxd, sxp, n_positions},
                 StatsToImages<T>{bias, threshold, out_max, out_mean, out_frac, n_positions}, s,
                 "concept_map_stats");
  finish_stats_kernel<T><<<static_cast<unsigned>((n + 255) / 256), 256, 0, s>>>(
      out_max, out_mean, out_frac, n, static_cast<T>(n_positions));
  cuda_check_launch("concept_map_stats (finish)");
}

#define PYCONCEPTS_INSTANTIATE(T)                                                              \
  template void concept_maps_forward<T>(const T*, i64, i64, i64, const T*, const T*, T*, i64, \
                                        i64, i64, i64, std::uintptr_t);                        \
  template void concept_maps_backward<T>(const T*, i64, i64, i64, const T*, const T*,         \
                                         const T*, T*, T*, T*, i64, i64, i64, i64,             \
                                         std::uintptr_t);                                      \
  template void concept_map_stats<T>(const T*, i64, i64, i64, const T*, const T*, T, T*, T*,  \
                                     T*, i64, i64, i64, i64, std::uintptr_t);
PYCONCEPTS_INSTANTIATE(float)
PYCONCEPTS_INSTANTIATE(double)
#undef PYCONCEPTS_INSTANTIATE

}  // namespace pyconcepts::cuda
