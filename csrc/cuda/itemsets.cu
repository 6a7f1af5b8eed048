// CUDA itemset support counting over vertical bitsets (AND + __popcll, block reduction).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/itemsets.cuh"

namespace pyconcepts {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kWordsPerBlock = 8 * kThreads;  // each thread ANDs up to 8 words

__global__ void fill_bitsets_kernel(const std::int64_t* __restrict__ indptr,
                                    const std::int32_t* __restrict__ dense, std::int64_t n,
                                    std::int64_t n_words, unsigned long long* __restrict__ bits) {
  for (std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const unsigned long long bit = 1ull << (t & 63);
    for (std::int64_t j = indptr[t]; j < indptr[t + 1]; ++j) {
      atomicOr(bits + dense[j] * n_words + (t >> 6), bit);
    }
  }
}

__global__ void count_support_kernel(const unsigned long long* __restrict__ bits, std::int64_t n,
                                     std::int64_t n_words,
                                     const std::int64_t* __restrict__ query_offsets,
                                     const std::int32_t* __restrict__ query_items,
                                     std::int64_t n_queries,
                                     unsigned long long* __restrict__ counts) {
  __shared__ unsigned long long warp_sums[kThreads / 32];
  const std::int64_t w0 = blockIdx.x * kWordsPerBlock;
  for (std::int64_t q = blockIdx.y; q < n_queries; q += gridDim.y) {
    const std::int64_t k0 = query_offsets[q], k1 = query_offsets[q + 1];
    if (k0 == k1) {  // the empty itemset is in every transaction
      if (blockIdx.x == 0 && threadIdx.x == 0) counts[q] = static_cast<unsigned long long>(n);
      continue;
    }
    bool absent = false;
    for (std::int64_t k = k0; k < k1; ++k) absent |= query_items[k] < 0;
    if (absent) continue;  // uniform across the block
    unsigned long long sum = 0;
    for (std::int64_t w = w0 + threadIdx.x; w < n_words && w < w0 + kWordsPerBlock; w += kThreads) {
      unsigned long long x = bits[query_items[k0] * n_words + w];
      for (std::int64_t k = k0 + 1; k < k1; ++k) x &= bits[query_items[k] * n_words + w];
      sum += __popcll(x);
    }
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long block_sum = 0;
      for (int i = 0; i < kThreads / 32; ++i) block_sum += warp_sums[i];
      if (block_sum) atomicAdd(counts + q, block_sum);
    }
    __syncthreads();
  }
}

}  // namespace

void itemsets_fill_bitsets_cuda(const std::int64_t* indptr, const std::int32_t* dense,
                                std::int64_t n_transactions, std::int64_t n_words,
                                unsigned long long* bits, std::uintptr_t stream) {
  if (n_transactions == 0) return;
  const std::int64_t blocks = std::min<std::int64_t>((n_transactions + kThreads - 1) / kThreads, 65535);
  fill_bitsets_kernel<<<static_cast<unsigned>(blocks), kThreads, 0,
                        reinterpret_cast<cudaStream_t>(stream)>>>(indptr, dense, n_transactions,
                                                                  n_words, bits);
  cuda_check_launch("itemsets_fill_bitsets");
}

void itemsets_count_support_cuda(const unsigned long long* bits, std::int64_t n_transactions,
                                 std::int64_t n_words, const std::int64_t* query_offsets,
                                 const std::int32_t* query_items, std::int64_t n_queries,
                                 unsigned long long* counts, std::uintptr_t stream) {
  if (n_queries == 0 || n_words == 0) return;
  const std::int64_t x_blocks = (n_words + kWordsPerBlock - 1) / kWordsPerBlock;
  const dim3 grid(static_cast<unsigned>(std::min<std::int64_t>(x_blocks, 1 << 30)),
                  static_cast<unsigned>(std::min<std::int64_t>(n_queries, 65535)));
  count_support_kernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      bits, n_transactions, n_words, query_offsets, query_items, n_queries, counts);
  cuda_check_launch("itemsets_count_support");
}

}  // namespace pyconcepts
