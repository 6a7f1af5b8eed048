// Concept maps on CUDA: the products are cuBLAS GEMMs, called through torch.matmul by
// pyconcepts/ops/concept_maps.py (this build links no cuBLAS); these kernels add what cuBLAS
// lacks, each one pass over the GEMM's output read through its strides (torch.matmul may return
// a transposed view):
//   bias_relu  out[b, m, p] = relu(z[b, m, p] + bias[m]) into a contiguous [B, M, P] (in place
//              when z is that tensor): the GEMM's epilogue;
//   stats      per (image, map) row of a chunk of pre-activations z [b, M, p-chunk]: max, sum
//              and count above the threshold of relu(z + bias), folded into running [B, M]
//              statistics, a warp per row with a fixed reduction order (the same bits on every
//              run). The caller multiplies chunk by chunk, so [B, M, H, W] is never stored.
#include <algorithm>
#include <cstdint>

#include "cuda/concept_maps.h"
#include "cuda/cuda_check.h"

namespace pyconcepts::cuda {
namespace {

using i64 = std::int64_t;

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T relu(T z) {
  return z <= T(0) ? T(0) : z;  // -0 -> +0, NaN stays NaN (as torch.relu)
}

template <typename T>
__global__ void bias_relu_kernel(const T* z, i64 szb, i64 szm, i64 szp, const T* bias, T* out,
                                 i64 n_maps, i64 n_positions, i64 total) {
  const i64 step = static_cast<i64>(gridDim.x) * blockDim.x;
  for (i64 i = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
    const i64 p = i % n_positions, bm = i / n_positions, m = bm % n_maps, b = bm / n_maps;
    out[i] = relu(z[b * szb + m * szm + p * szp] + (bias ? bias[m] : T(0)));
  }
}

template <typename T>
__global__ void stats_kernel(const T* z, i64 szb, i64 szm, i64 szp, const T* bias, T threshold,
                             T* run_max, T* run_sum, T* run_count, i64 n_maps, i64 n_positions,
                             i64 rows) {
  const int lane = threadIdx.x % 32;
  const i64 warps = static_cast<i64>(gridDim.x) * (blockDim.x / 32);
  for (i64 r = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) / 32; r < rows;
       r += warps) {
    const i64 m = r % n_maps, b = r / n_maps;
    const T* zr = z + b * szb + m * szm;
    const T bi = bias ? bias[m] : T(0);
    T vmax = T(0), vsum = T(0), vcount = T(0);
    for (i64 p = lane; p < n_positions; p += 32) {
      const T v = relu(zr[p * szp] + bi);
      vmax = v > vmax ? v : vmax;  // NaN never wins here: the NaN sum marks the map instead
      vsum += v;
      vcount += v > threshold ? T(1) : T(0);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
      const T other_max = __shfl_down_sync(0xffffffffu, vmax, offset);
      vmax = other_max > vmax ? other_max : vmax;
      vsum += __shfl_down_sync(0xffffffffu, vsum, offset);
      vcount += __shfl_down_sync(0xffffffffu, vcount, offset);
    }
    if (lane == 0) {
      run_max[r] = vmax > run_max[r] ? vmax : run_max[r];
      run_sum[r] += vsum;
      run_count[r] += vcount;
    }
  }
}

unsigned grid_for(i64 work, i64 per_block) {
  int device = 0, sms = 0;
  cuda_check(cudaGetDevice(&device), "concept_maps: cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "concept_maps: cudaDeviceGetAttribute");
  const i64 blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<i64>(blocks, 1, 32 * static_cast<i64>(std::max(sms, 1))));
}

}  // namespace

template <typename T>
void concept_maps_bias_relu(const T* z, i64 szb, i64 szm, i64 szp, const T* bias, T* out,
                            i64 batch, i64 n_maps, i64 n_positions, std::uintptr_t stream) {
  const i64 total = batch * n_maps * n_positions;
  if (total == 0) return;
  bias_relu_kernel<T><<<grid_for(total, kThreads), kThreads, 0,
                        reinterpret_cast<cudaStream_t>(stream)>>>(z, szb, szm, szp, bias, out,
                                                                  n_maps, n_positions, total);
  cuda_check_launch("concept_maps_bias_relu");
}

template <typename T>
void concept_map_stats_chunk(const T* z, i64 szb, i64 szm, i64 szp, const T* bias, T threshold,
                             T* run_max, T* run_sum, T* run_count, i64 batch, i64 n_maps,
                             i64 n_positions, std::uintptr_t stream) {
  const i64 rows = batch * n_maps;
  if (rows == 0 || n_positions == 0) return;
  stats_kernel<T><<<grid_for(rows, kThreads / 32), kThreads, 0,
                    reinterpret_cast<cudaStream_t>(stream)>>>(z, szb, szm, szp, bias, threshold,
                                                              run_max, run_sum, run_count, n_maps,
                                                              n_positions, rows);
  cuda_check_launch("concept_map_stats_chunk");
}

#define PYCONCEPTS_INSTANTIATE(T)                                                               \
  template void concept_maps_bias_relu<T>(const T*, i64, i64, i64, const T*, T*, i64, i64, i64, \
                                          std::uintptr_t);                                      \
  template void concept_map_stats_chunk<T>(const T*, i64, i64, i64, const T*, T, T*, T*, T*,    \
                                           i64, i64, i64, std::uintptr_t);
PYCONCEPTS_INSTANTIATE(float)
PYCONCEPTS_INSTANTIATE(double)
#undef PYCONCEPTS_INSTANTIATE

}  // namespace pyconcepts::cuda
