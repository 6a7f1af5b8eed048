// Semi-hard triplet mining on the GPU: blocks stride over anchors; a block writes its anchor's
// N squared distances into its workspace row, then each thread takes a positive and scans the
// row for the closest farther negative (and the farthest one). Time O(N² · P) for P positives
// per anchor, memory O(ws_rows · N); never the N×N×N tensor. Threads of a warp read the same
// distance at the same time (broadcast). Gradients are accumulated with atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/checks.h"
#include "cuda/cuda_check.h"
#include "cuda/triplet.h"

namespace pyconcepts::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ T infinity();
template <>
__device__ float infinity<float>() { return __int_as_float(0x7f800000); }
template <>
__device__ double infinity<double>() { return __longlong_as_double(0x7ff0000000000000LL); }

// Loss mode when offsets == nullptr (anchor_loss, grad), mining mode otherwise.
template <typename T>
__global__ void semihard_kernel(const T* __restrict__ emb, const std::int64_t* __restrict__ labels,
                                std::int64_t n, std::int64_t q, T margin, bool squared,
                                T* __restrict__ workspace, double* __restrict__ anchor_loss,
                                T* __restrict__ grad, const std::int64_t* __restrict__ offsets,
                                std::int64_t* __restrict__ out_a, std::int64_t* __restrict__ out_p,
                                std::int64_t* __restrict__ out_n) {
  T* dist = workspace + static_cast<std::int64_t>(blockIdx.x) * n;
  const T inf = infinity<T>();
  for (std::int64_t a = blockIdx.x; a < n; a += gridDim.x) {
    const std::int64_t la = labels[a];
    const T* xa = emb + a * q;
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const T* xj = emb + j * q;
      T s = T(0);
      for (std::int64_t k = 0; k < q; ++k) {
        const T t = xj[k] - xa[k];
        s += t * t;
      }
      dist[j] = s;
    }
    __syncthreads();
    double local = 0.0;
    for (std::int64_t p = threadIdx.x; p < n; p += blockDim.x) {
      if (p == a || labels[p] != la) continue;
      const T sq_ap = dist[p];
      T best = inf, far = -inf;
      std::int64_t best_i = -1, far_i = -1, rank = 0;
      for (std::int64_t j = 0; j < n; ++j) {  // ascending j + strict tests: lowest index on ties
        const T d = dist[j];
        if (labels[j] == la) {
          rank += (j < p && j != a) ? 1 : 0;
          continue;
        }
        if (far_i < 0 || d > far) {  // the first negative unconditionally: NaN-proof index
          far = d;
          far_i = j;
        }
        if (d > sq_ap && d < best) {
          best = d;
          best_i = j;
        }
      }
      const std::int64_t ng = best_i >= 0 ? best_i : far_i;
      if (offsets != nullptr) {
        const std::int64_t o = offsets[a] + rank;
        out_a[o] = a;
        out_p[o] = p;
        out_n[o] = ng;
        continue;
      }
      const T sq_an = dist[ng];
      const T d_ap = squared ? sq_ap : sqrt(sq_ap);
      const T d_an = squared ? sq_an : sqrt(sq_an);
      const T l = d_ap - d_an + margin;
      if (!(l > T(0))) continue;
      local += static_cast<double>(l);
      if (grad == nullptr) continue;
      const T u = squared ? T(2) : (d_ap > T(0) ? T(1) / d_ap : T(0));
      const T v = squared ? T(2) : (d_an > T(0) ? T(1) / d_an : T(0));
      const T* xp = emb + p * q;
      const T* xn = emb + ng * q;
      for (std::int64_t k = 0; k < q; ++k) {
        const T dp = u * (xa[k] - xp[k]);
        const T dn = v * (xa[k] - xn[k]);
        atomicAdd(grad + a * q + k, dp - dn);
        atomicAdd(grad + p * q + k, -dp);
        atomicAdd(grad + ng * q + k, dn);
      }
    }
    if (offsets == nullptr && local != 0.0) atomicAdd(anchor_loss + a, local);
    __syncthreads();  // the row is rewritten for the next anchor
  }
}

template <typename T>
void launch(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
            double margin, bool squared, T* workspace, std::int64_t ws_rows, double* anchor_loss,
            T* grad, const std::int64_t* offsets, std::int64_t* out_a, std::int64_t* out_p,
            std::int64_t* out_n, std::uintptr_t stream) {
  check_sizes_nonnegative({n, q, ws_rows}, "semihard triplets (cuda)");
  check(n >= 2, "semihard triplets (cuda): need at least 2 embeddings, got ", n);
  check(ws_rows >= 1 && ws_rows <= n, "semihard triplets (cuda): workspace rows must be in [1, ",
        n, "], got ", ws_rows);
  semihard_kernel<T><<<static_cast<unsigned>(ws_rows), kThreads, 0,
                       reinterpret_cast<cudaStream_t>(stream)>>>(
      emb, labels, n, q, static_cast<T>(margin), squared, workspace, anchor_loss, grad, offsets,
      out_a, out_p, out_n);
  cuda_check_launch("semihard triplets (cuda)");
}

}  // namespace

template <typename T>
void semihard_triplet_loss(const T* emb, const std::int64_t* labels, std::int64_t n,
                           std::int64_t q, double margin, bool squared, T* workspace,
                           std::int64_t ws_rows, double* anchor_loss, T* grad,
                           std::uintptr_t stream) {
  launch<T>(emb, labels, n, q, margin, squared, workspace, ws_rows, anchor_loss, grad, nullptr,
            nullptr, nullptr, nullptr, stream);
}

template <typename T>
void semihard_triplets(const T* emb, const std::int64_t* labels, std::int64_t n, std::int64_t q,
                       T* workspace, std::int64_t ws_rows, const std::int64_t* offsets,
                       std::int64_t* anchors, std::int64_t* positives, std::int64_t* negatives,
                       std::uintptr_t stream) {
  check(offsets != nullptr, "semihard triplets (cuda): offsets must not be null");
  launch<T>(emb, labels, n, q, 0.0, true, workspace, ws_rows, nullptr, nullptr, offsets, anchors,
            positives, negatives, stream);
}

template void semihard_triplet_loss<float>(const float*, const std::int64_t*, std::int64_t,
                                           std::int64_t, double, bool, float*, std::int64_t,
                                           double*, float*, std::uintptr_t);
template void semihard_triplet_loss<double>(const double*, const std::int64_t*, std::int64_t,
                                            std::int64_t, double, bool, double*, std::int64_t,
                                            double*, double*, std::uintptr_t);
template void semihard_triplets<float>(const float*, const std::int64_t*, std::int64_t,
                                       std::int64_t, float*, std::int64_t, const std::int64_t*,
                                       std::int64_t*, std::int64_t*, std::int64_t*,
                                       std::uintptr_t);
template void semihard_triplets<double>(const double*, const std::int64_t*, std::int64_t,
                                        std::int64_t, double*, std::int64_t, const std::int64_t*,
                                        std::int64_t*, std::int64_t*, std::int64_t*,
                                        std::uintptr_t);

}  // namespace pyconcepts::cuda
