// CUDA kernels for batched NNLS (one warp per problem) and IBD's greedy NNLS basis (one block
// per target, threads over candidates). The Lawson–Hanson solver and the per-candidate trial are
// the host-tested code of common/nnls_gram.h, compiled for the device.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/nnls_gram.h"
#include "cuda/cuda_check.h"
#include "cuda/nnls.h"

namespace pyconcepts {

namespace {

namespace ng = nnls_gram;

constexpr int kGreedyThreads = 128;

// One warp per problem: the lanes form G = A^T A, h = A^T b and b^T b (one lane per entry of
// the upper triangle, looping over the rows), then lane 0 runs the Gram-form solver.
template <typename T>
__global__ void nnls_kernel(const T* __restrict__ A, const T* __restrict__ rhs, T* __restrict__ x,
                            std::int32_t* __restrict__ info, double* __restrict__ ws_d,
                            int* __restrict__ ws_i, std::int64_t batch, std::int64_t m,
                            std::int64_t n, int max_iter) {
  const std::int64_t warps_per_block = blockDim.x / 32;
  const std::int64_t p = static_cast<std::int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (p >= batch) return;
  const std::int64_t per = n * n + n + n + ng::work_doubles(n);
  double* G = ws_d + p * per;
  double* h = G + n * n;
  double* xd = h + n;
  double* wd = xd + n;
  int* wi = ws_i + p * ng::work_ints(n);
  const T* a = A + p * m * n;
  const T* b = rhs + p * m;
  const std::int64_t pairs = n * (n + 1) / 2;
  __shared__ double bb_shared[32];
  for (std::int64_t e = lane; e <= pairs + n; e += 32) {
    std::int64_t j = 0, k = 0;
    bool is_pair = e < pairs, is_h = e >= pairs && e < pairs + n;
    if (is_pair) {  // e -> (j, k) with j <= k, row by row of the upper triangle
      std::int64_t rem = e;
      while (rem >= n - j) {
        rem -= n - j;
        ++j;
      }
      k = j + rem;
    } else if (is_h) {
      j = e - pairs;
    }
    double acc = 0.0;
    for (std::int64_t r = 0; r < m; ++r) {
      const double bj = is_pair || is_h ? static_cast<double>(a[r * n + j]) : static_cast<double>(b[r]);
      const double bk = is_pair ? static_cast<double>(a[r * n + k]) : static_cast<double>(b[r]);
      acc += bj * bk;
    }
    if (is_pair) {
      G[j * n + k] = acc;
      G[k * n + j] = acc;
    } else if (is_h) {
      h[j] = acc;
    } else {
      bb_shared[threadIdx.x / 32] = acc;
    }
  }
  __syncwarp();
  if (lane == 0) {
    const ng::Work work = ng::make_work(wd, wi, n);
    int passive = 0;
    info[p] = ng::solve(G, n, h, bb_shared[threadIdx.x / 32], static_cast<int>(n), max_iter, xd,
                        work, &passive);
    for (std::int64_t j = 0; j < n; ++j) x[p * n + j] = static_cast<T>(xd[j]);
  }
}

// One block per target; every thread tries its candidates, the block picks the smallest
// residual (ties: lower index) and thread 0 refits the basis.
__global__ void greedy_kernel(const double* __restrict__ G, const double* __restrict__ H,
                              const double* __restrict__ tt, std::int64_t* __restrict__ indices,
                              double* __restrict__ coefs, double* __restrict__ residual_norms,
                              std::int64_t N, int T) {
  constexpr int TM = kGreedyMaxTerms;
  __shared__ int sel[TM], order[TM], zs[TM];
  __shared__ double coef[TM], xp[TM], L[TM * TM], y[TM];
  __shared__ double best_r2[kGreedyThreads];
  __shared__ int best_j[kGreedyThreads];
  __shared__ ng::Basis B;
  double sd[2 * TM * TM + 8 * TM];
  int si[3 * TM];
  const std::int64_t k = blockIdx.x;
  const double* h = H + k * N;
  const double t2 = tt[k];
  if (threadIdx.x == 0) B = ng::Basis{0, 0, sel, order, coef, xp, zs, 0, L, y, t2};
  __syncthreads();
  for (int step = 0; step < T; ++step) {
    double mine = INFINITY;
    int mj = -1;
    for (std::int64_t j = threadIdx.x; j < N; j += blockDim.x) {
      bool chosen = false;
      for (int a = 0; a < B.t; ++a) chosen = chosen || sel[a] == j;
      if (chosen) continue;
      const double r2 = ng::trial(G, N, h, t2, B, static_cast<int>(j), sd, si, TM);
      if (r2 < mine || mj < 0) {
        mine = r2;
        mj = static_cast<int>(j);
      }
    }
    best_r2[threadIdx.x] = mine;
    best_j[threadIdx.x] = mj;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        const double r_o = best_r2[threadIdx.x + s];
        const int j_o = best_j[threadIdx.x + s];
        const double r_m = best_r2[threadIdx.x];
        const int j_m = best_j[threadIdx.x];
        const bool take = j_o >= 0 && (j_m < 0 || r_o < r_m || (r_o == r_m && j_o < j_m));
        if (take) {
          best_r2[threadIdx.x] = r_o;
          best_j[threadIdx.x] = j_o;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      ng::commit(G, N, h, t2, &B, best_j[0], sd, si, TM);
      residual_norms[k * T + step] = sqrt(fmax(B.res2, 0.0));
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    for (int a = 0; a < T; ++a) {
      indices[k * T + a] = sel[a];
      coefs[k * T + a] = coef[a];
    }
  }
}

}  // namespace

template <typename T>
void nnls_cuda(const T* A, const T* rhs, T* x, std::int32_t* info, double* ws_d, int* ws_i,
               std::int64_t batch, std::int64_t m, std::int64_t n, std::int64_t max_iter,
               std::uintptr_t stream) {
  if (batch == 0) return;
  constexpr int kWarps = 4;
  const std::int64_t blocks = (batch + kWarps - 1) / kWarps;
  const int iters = static_cast<int>(max_iter < 0x3fffffff ? max_iter : 0x3fffffff);
  nnls_kernel<T><<<static_cast<unsigned>(blocks), kWarps * 32, 0,
                   reinterpret_cast<cudaStream_t>(stream)>>>(A, rhs, x, info, ws_d, ws_i, batch,
                                                             m, n, iters);
  cuda_check_launch("nnls");
}

template void nnls_cuda<float>(const float*, const float*, float*, std::int32_t*, double*, int*,
                               std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                               std::uintptr_t);
template void nnls_cuda<double>(const double*, const double*, double*, std::int32_t*, double*,
                                int*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                                std::uintptr_t);

void greedy_nnls_basis_cuda(const double* G, const double* H, const double* tt,
                            std::int64_t* indices, double* coefs, double* residual_norms,
                            std::int64_t K, std::int64_t N, std::int64_t T,
                            std::uintptr_t stream) {
  if (K == 0 || T == 0) return;
  greedy_kernel<<<static_cast<unsigned>(K), kGreedyThreads, 0,
                  reinterpret_cast<cudaStream_t>(stream)>>>(G, H, tt, indices, coefs,
                                                            residual_norms, N,
                                                            static_cast<int>(T));
  cuda_check_launch("greedy_nnls_basis");
}

}  // namespace pyconcepts
