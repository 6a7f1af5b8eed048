// Semi-hard triplet mining on the GPU: every anchor mined in parallel, no serial work per
// positive, never an N×N matrix. Anchors are taken in class order (rows grouped by label), and a
// block mines a run of up to `anchors` consecutive anchors of one class at once: they share
// their positives and negatives, so each embedding row the block loads serves all of them. Per
// run, with the per-anchor state in shared memory (a global workspace only for classes too
// large for it), the steps of csrc/common/triplet_rule.h:
//   keys     the positives' squared distances as order keys, bitonic-sorted per anchor;
//   buckets  a thread per negative: its bucket (positives strictly closer) by binary search,
//            the bucket's closest negative by a 64-bit atomicMin on (distance, index) (a second
//            pass finds the lowest index at the winning distance for double);
//   suffix   minima over the buckets by a block-wide scan: each positive's closest farther
//            negative;
//   pairs    a thread per (anchor, positive): its negative, its loss (summed per anchor by a
//            fixed-order block reduction) and its gradient (atomicAdd).
// Distances are summed over k in order with one rounding per term, as the CPU kernel, so the
// choices are the CPU kernel's (csrc/cpu/triplet_rule_emulated.cpp runs these steps on the CPU
// for the tests).
#include <cuda/atomic>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/checks.h"
#include "common/triplet_rule.h"
#include "cuda/cuda_check.h"
#include "cuda/triplet.h"

namespace pyconcepts::cuda {
namespace {

using i64 = std::int64_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;
namespace rule = pyconcepts::triplet_rule;

constexpr int kThreads = 512;
constexpr int kMaxAnchors = 8;  // anchors of one run: distances of a row to them in registers

// Byte offsets of one run's state in the block's scratch (shared memory or its workspace slice).
struct Layout {
  i64 anchors;  // anchors per run
  i64 p_cap;    // a power of two >= the largest class: keys per anchor (slots: p_cap + 1)
  size_t word, index, key, anchor_rows, anchor_grad, bytes;
};

template <typename T>
Layout make_layout(i64 q, i64 p_cap, i64 anchors) {
  Layout l{anchors, p_cap, 0, 0, 0, 0, 0, 0};
  size_t offset = 0;
  const auto take = [&offset](size_t bytes) {
    const size_t at = offset;
    offset = (offset + bytes + 15) / 16 * 16;
    return at;
  };
  const size_t slots = static_cast<size_t>(anchors * (p_cap + 1));
  l.word = take(slots * sizeof(u64));
  l.index = take(slots * sizeof(u32));
  l.key = take(static_cast<size_t>(anchors * p_cap) * sizeof(rule::Key<T>));
  l.anchor_rows = take(static_cast<size_t>(anchors * q) * sizeof(T));
  l.anchor_grad = take(static_cast<size_t>(anchors * q) * sizeof(T));
  l.bytes = offset;
  return l;
}

template <typename T>
struct Args {
  const T* emb;
  i64 n, q;
  ClassLayout classes;
  T margin;
  bool squared;
  double* anchor_loss;  // loss mode when not null (then grad may be set)
  T* grad;
  const i64* offsets;  // mining mode when not null
  i64* out_a;
  i64* out_p;
  i64* out_n;
};

// Block-wide scratch of fixed size.
struct Shared {
  u64 scan_word[kThreads];
  u32 scan_index[kThreads];
  double loss_part[kThreads];
  u64 far_word[kMaxAnchors];
  u32 far_index[kMaxAnchors];
  i64 farthest[kMaxAnchors];
  u32 first_negative;
};

// Squared distances of row xj to the run's anchors (rows of xa): the same operations in the
// same order as rule::sq_distance, with xj read once for all anchors.
template <typename T>
__device__ __forceinline__ void distances(const T* xa, int n_anchors, const T* __restrict__ xj,
                                          i64 q, T (&d)[kMaxAnchors]) {
#pragma unroll
  for (int g = 0; g < kMaxAnchors; ++g) d[g] = T(0);
  for (i64 k = 0; k < q; ++k) {
    const T v = xj[k];
#pragma unroll
    for (int g = 0; g < kMaxAnchors; ++g)
      if (g < n_anchors) d[g] = rule::add_square(d[g], v - xa[g * q + k]);
  }
}

// word = min(word, w); the relaxed load first skips the atomic when w cannot win (the common
// case once a bucket holds a close negative).
__device__ __forceinline__ void atomic_min_word(u64& word, u64 w) {
  ::cuda::atomic_ref<unsigned long long, ::cuda::thread_scope_block> ref(
      reinterpret_cast<unsigned long long&>(word));
  if (w < ref.load(::cuda::memory_order_relaxed)) ref.fetch_min(w, ::cuda::memory_order_relaxed);
}

// Suffix minima of (word, index)[0, len) in place: each thread a contiguous chunk, a
// Hillis-Steele scan over the chunks' minima, then each chunk again with its carry.
__device__ void suffix_minima(u64* word, u32* index, i64 len, Shared& sh) {
  const int tid = threadIdx.x;
  const i64 chunk = (len + kThreads - 1) / kThreads;
  const i64 lo = min(len, tid * chunk), hi = min(len, lo + chunk);
  u64 w = rule::kEmpty;
  u32 x = rule::kNoIndex;
  for (i64 b = hi - 1; b >= lo; --b) rule::keep_closer(w, x, word[b], index[b]);
  sh.scan_word[tid] = w;
  sh.scan_index[tid] = x;
  __syncthreads();
  for (int offset = 1; offset < kThreads; offset <<= 1) {
    u64 other_w = rule::kEmpty;
    u32 other_x = rule::kNoIndex;
    if (tid + offset < kThreads) {
      other_w = sh.scan_word[tid + offset];
      other_x = sh.scan_index[tid + offset];
    }
    __syncthreads();
    rule::keep_closer(w, x, other_w, other_x);
    sh.scan_word[tid] = w;
    sh.scan_index[tid] = x;
    __syncthreads();
  }
  u64 carry_w = rule::kEmpty;
  u32 carry_x = rule::kNoIndex;
  if (tid + 1 < kThreads) {
    carry_w = sh.scan_word[tid + 1];
    carry_x = sh.scan_index[tid + 1];
  }
  for (i64 b = hi - 1; b >= lo; --b) {
    rule::keep_closer(carry_w, carry_x, word[b], index[b]);
    word[b] = carry_w;
    index[b] = carry_x;
  }
  __syncthreads();
}

// Sum of every thread's part in a fixed order (the same bits on every run); valid in thread 0.
__device__ double block_sum(double part, Shared& sh) {
  const int tid = threadIdx.x;
  sh.loss_part[tid] = part;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (tid < half) sh.loss_part[tid] += sh.loss_part[tid + half];
    __syncthreads();
  }
  const double total = sh.loss_part[0];
  __syncthreads();  // loss_part is rewritten by the next call
  return total;
}

// Mines the anchors at class-order positions [r0, r1) (one class; r1 - r0 <= layout.anchors).
template <typename T>
__device__ void mine_run(const Args<T>& args, const Layout& lay, unsigned char* base, Shared& sh,
                         i64 r0, i64 r1) {
  using K = rule::Key<T>;
  const int tid = threadIdx.x;
  const i64* members = args.classes.members;
  const i64 cb = args.classes.class_start[r0], n_class = args.classes.class_stop[r0] - cb;
  const i64 p_count = n_class - 1, q = args.q, n = args.n, p_cap = lay.p_cap;
  const int n_anchors = static_cast<int>(r1 - r0);
  if (p_count == 0) {  // a label with one member: no pairs
    if (args.anchor_loss && tid < n_anchors) args.anchor_loss[members[r0 + tid]] = 0.0;
    return;
  }
  u64* word = reinterpret_cast<u64*>(base + lay.word);  // [anchor][p_cap + 1]
  u32* index = reinterpret_cast<u32*>(base + lay.index);
  K* keys = reinterpret_cast<K*>(base + lay.key);  // [anchor][p_cap]
  T* xa = reinterpret_cast<T*>(base + lay.anchor_rows);
  T* ga = reinterpret_cast<T*>(base + lay.anchor_grad);
  const i64 slots = p_cap + 1;
  i64 len = 1;  // sort length: a power of two >= n_class
  while (len < n_class) len *= 2;

  for (i64 i = tid; i < n_anchors * q; i += kThreads) {
    xa[i] = args.emb[members[r0 + i / q] * q + i % q];
    ga[i] = T(0);
  }
  for (i64 i = tid; i < n_anchors * (p_count + 1); i += kThreads) {
    const i64 at = (i / (p_count + 1)) * slots + i % (p_count + 1);
    word[at] = rule::kEmpty;
    index[at] = rule::kNoIndex;
  }
  for (i64 i = tid; i < n_anchors * (len - n_class); i += kThreads)
    keys[(i / (len - n_class)) * p_cap + n_class + i % (len - n_class)] = rule::kPadKey<T>;
  if (tid < n_anchors) {
    sh.far_word[tid] = 0;
    sh.far_index[tid] = rule::kNoIndex;
  }
  if (tid == 0) sh.first_negative = rule::kNoIndex;
  __syncthreads();

  // 1. The positives' keys (each anchor's own slot: a pad key), then a bitonic sort per anchor.
  for (i64 t = tid; t < n_class; t += kThreads) {
    T d[kMaxAnchors];
    distances(xa, n_anchors, args.emb + members[cb + t] * q, q, d);
#pragma unroll
    for (int g = 0; g < kMaxAnchors; ++g)
      if (g < n_anchors)
        keys[g * p_cap + t] = cb + t == r0 + g ? rule::kPadKey<T> : rule::order_key(d[g]);
  }
  __syncthreads();
  for (i64 k = 2; k <= len; k *= 2) {
    for (i64 j = k / 2; j > 0; j /= 2) {
      for (i64 i = tid; i < n_anchors * len; i += kThreads) {
        const i64 w = i % len, partner = w ^ j;
        if (partner <= w) continue;
        K* a = keys + (i / len) * p_cap;
        const K x = a[w], y = a[partner];
        if ((x > y) == ((w & k) == 0)) {
          a[w] = y;
          a[partner] = x;
        }
      }
      __syncthreads();
    }
  }

  // 2. Every negative into its bucket; the farthest and the first negative.
  {
    u64 far[kMaxAnchors] = {};
    u32 first = rule::kNoIndex;
    for (i64 i = tid; i < n - n_class; i += kThreads) {
      const i64 j = members[i < cb ? i : i + n_class];
      T d[kMaxAnchors];
      distances(xa, n_anchors, args.emb + j * q, q, d);
      first = min(first, static_cast<u32>(j));
#pragma unroll
      for (int g = 0; g < kMaxAnchors; ++g) {
        if (g >= n_anchors || rule::is_nan(d[g])) continue;
        const i64 b = rule::count_below(keys + g * p_cap, n_class, rule::order_key(d[g]));
        atomic_min_word(word[g * slots + b], rule::closest_word(d[g], static_cast<u32>(j)));
        const u64 fw = rule::farthest_word(d[g], static_cast<u32>(j));
        if (fw > far[g]) far[g] = fw;
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxAnchors; ++g)
      if (g < n_anchors && far[g] != 0)
        atomicMax(reinterpret_cast<unsigned long long*>(&sh.far_word[g]), far[g]);
    if (first != rule::kNoIndex) atomicMin(&sh.first_negative, first);
  }
  __syncthreads();
  if constexpr (rule::kPacked<T>) {
    for (i64 i = tid; i < n_anchors * (p_count + 1); i += kThreads) {
      const i64 at = (i / (p_count + 1)) * slots + i % (p_count + 1);
      index[at] = rule::closest_index(word[at]);
    }
    if (tid < n_anchors) sh.far_index[tid] = rule::farthest_index(sh.far_word[tid]);
  } else {  // second pass: the lowest index at each winning distance
    u32 far_index[kMaxAnchors];
#pragma unroll
    for (int g = 0; g < kMaxAnchors; ++g) far_index[g] = rule::kNoIndex;
    for (i64 i = tid; i < n - n_class; i += kThreads) {
      const i64 j = members[i < cb ? i : i + n_class];
      T d[kMaxAnchors];
      distances(xa, n_anchors, args.emb + j * q, q, d);
#pragma unroll
      for (int g = 0; g < kMaxAnchors; ++g) {
        if (g >= n_anchors || rule::is_nan(d[g])) continue;
        const u32 ju = static_cast<u32>(j);
        const i64 b = rule::count_below(keys + g * p_cap, n_class, rule::order_key(d[g]));
        if (rule::closest_word(d[g], ju) == word[g * slots + b])
          atomicMin(&index[g * slots + b], ju);
        if (rule::farthest_word(d[g], ju) == sh.far_word[g]) far_index[g] = min(far_index[g], ju);
      }
    }
#pragma unroll
    for (int g = 0; g < kMaxAnchors; ++g)
      if (g < n_anchors && far_index[g] != rule::kNoIndex)
        atomicMin(&sh.far_index[g], far_index[g]);
  }
  __syncthreads();

  // 3. Suffix minima over each anchor's buckets; 4. the farthest negative by the CPU's rule.
  for (int g = 0; g < n_anchors; ++g)
    suffix_minima(word + g * slots, index + g * slots, p_count + 1, sh);
  if (tid < n_anchors) {
    const u32 first = sh.first_negative;
    const T d_first = rule::sq_distance(xa + tid * q, args.emb + first * q, q);
    sh.farthest[tid] =
        rule::farthest_negative(sh.far_word[tid], sh.far_index[tid], first, rule::is_nan(d_first));
  }
  __syncthreads();

  // 5. A thread per (anchor, positive): the negative, then the triplet or the loss and gradient.
  for (int g = 0; g < n_anchors; ++g) {
    const i64 s = r0 + g, a = members[s];
    const T* x_a = xa + g * q;
    double part = 0.0;
    for (i64 t = tid; t < n_class; t += kThreads) {
      if (cb + t == s) continue;
      const i64 p = members[cb + t];
      const T* xp = args.emb + p * q;
      const T sq_ap = rule::sq_distance(x_a, xp, q);
      const i64 ng = rule::choose_negative<T>(keys + g * p_cap, n_class, word + g * slots,
                                              index + g * slots, sq_ap, sh.farthest[g]);
      if (args.offsets) {
        const i64 o = args.offsets[a] + t - (cb + t > s ? 1 : 0);
        args.out_a[o] = a;
        args.out_p[o] = p;
        args.out_n[o] = ng;
        continue;
      }
      const T* xn = args.emb + ng * q;
      const rule::PairTerm<T> term =
          rule::pair_term(sq_ap, rule::sq_distance(x_a, xn, q), args.margin, args.squared);
      if (!(term.loss > T(0))) continue;
      part += static_cast<double>(term.loss);
      if (!args.grad) continue;
      for (i64 k = 0; k < q; ++k) {
        const T dp = term.u * (x_a[k] - xp[k]);
        const T dn = term.v * (x_a[k] - xn[k]);
        atomicAdd(ga + g * q + k, dp - dn);
        atomicAdd(args.grad + p * q + k, -dp);
        atomicAdd(args.grad + ng * q + k, dn);
      }
    }
    if (args.anchor_loss) {
      const double total = block_sum(part, sh);
      if (tid == 0) args.anchor_loss[a] = total;
    }
  }
  if (args.grad) {
    __syncthreads();
    for (i64 i = tid; i < n_anchors * q; i += kThreads)
      atomicAdd(args.grad + members[r0 + i / q] * q + i % q, ga[i]);
  }
  __syncthreads();  // the scratch is reused by the block's next run
}

// Block b mines the class-order positions [r·A, r·A + A) for r = b, b + grid, ... (A anchors
// per run), split where a class ends.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    semihard_kernel(Args<T> args, Layout lay, unsigned char* workspace) {
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  __shared__ Shared sh;
  unsigned char* base =
      workspace ? workspace + static_cast<size_t>(blockIdx.x) * lay.bytes : dynamic_shared;
  const i64 runs = (args.n + lay.anchors - 1) / lay.anchors;
  for (i64 r = blockIdx.x; r < runs; r += gridDim.x) {
    const i64 end = min(args.n, (r + 1) * lay.anchors);
    for (i64 r0 = r * lay.anchors; r0 < end;) {
      const i64 r1 = min(end, args.classes.class_stop[r0]);
      mine_run(args, lay, base, sh, r0, r1);
      r0 = r1;
    }
  }
}

// How a launch is shaped: the most anchors per run whose state fits in shared memory, else one
// anchor per run with its state in a global workspace (one slice per block).
struct Plan {
  Layout layout;
  bool global;
  unsigned grid;
  i64 workspace_bytes;
};

template <typename T>
Plan make_plan(i64 n, i64 q, i64 max_class) {
  check_sizes_nonnegative({n, q}, "semihard triplets (cuda)");
  check(n >= 2 && n < (i64{1} << 31),
        "semihard triplets (cuda): need 2 <= n < 2^31 embeddings, got ", n);
  check(max_class >= 1 && max_class < n,
        "semihard triplets (cuda): the largest label must have between 1 and n - 1 = ", n - 1,
        " rows (every label needs a negative), got ", max_class);
  i64 p_cap = 1;
  while (p_cap < max_class) p_cap *= 2;
  int device = 0, optin = 0, sms = 0;
  cuda_check(cudaGetDevice(&device), "semihard triplets: cudaGetDevice");
  cuda_check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
             "semihard triplets: cudaDeviceGetAttribute");
  cuda_check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device),
             "semihard triplets: cudaDeviceGetAttribute");
  cudaFuncAttributes attr{};
  cuda_check(cudaFuncGetAttributes(&attr, semihard_kernel<T>),
             "semihard triplets: cudaFuncGetAttributes");
  const size_t limit = static_cast<size_t>(optin) - attr.sharedSizeBytes;
  Plan plan{make_layout<T>(q, p_cap, 1), true, 1, 0};
  for (i64 anchors = kMaxAnchors; anchors >= 1; --anchors) {
    const Layout l = make_layout<T>(q, p_cap, anchors);
    if (l.bytes <= limit) {
      plan.layout = l;
      plan.global = false;
      break;
    }
  }
  const size_t dynamic = plan.global ? 0 : plan.layout.bytes;
  cuda_check(cudaFuncSetAttribute(semihard_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(dynamic)),
             "semihard triplets: cudaFuncSetAttribute");
  int per_sm = 0;
  cuda_check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, semihard_kernel<T>, kThreads,
                                                           dynamic),
             "semihard triplets: cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const i64 runs = (n + plan.layout.anchors - 1) / plan.layout.anchors;
  plan.grid = static_cast<unsigned>(std::min<i64>(runs, std::max(per_sm, 1) * std::max(sms, 1)));
  plan.workspace_bytes = plan.global ? static_cast<i64>(plan.grid * plan.layout.bytes) : 0;
  return plan;
}

template <typename T>
void launch(const Args<T>& args, void* workspace, i64 workspace_bytes, std::uintptr_t stream) {
  const Plan plan = make_plan<T>(args.n, args.q, args.classes.max_class);
  check(workspace_bytes >= plan.workspace_bytes, "semihard triplets (cuda): the workspace needs ",
        plan.workspace_bytes, " bytes, got ", workspace_bytes);
  check(!plan.global || workspace != nullptr, "semihard triplets (cuda): workspace is null");
  semihard_kernel<T><<<plan.grid, kThreads, plan.global ? 0 : plan.layout.bytes,
                       reinterpret_cast<cudaStream_t>(stream)>>>(
      args, plan.layout, plan.global ? static_cast<unsigned char*>(workspace) : nullptr);
  cuda_check_launch("semihard triplets (cuda)");
}

}  // namespace

template <typename T>
std::int64_t semihard_workspace_bytes(std::int64_t n, std::int64_t q, std::int64_t max_class) {
  return make_plan<T>(n, q, max_class).workspace_bytes;
}

template <typename T>
void semihard_triplet_loss(const T* emb, std::int64_t n, std::int64_t q, ClassLayout layout,
                           void* workspace, std::int64_t workspace_bytes, double margin,
                           bool squared, double* anchor_loss, T* grad, std::uintptr_t stream) {
  check(anchor_loss != nullptr, "semihard triplets (cuda): anchor_loss must not be null");
  launch<T>(Args<T>{emb, n, q, layout, static_cast<T>(margin), squared, anchor_loss, grad, nullptr,
                    nullptr, nullptr, nullptr},
            workspace, workspace_bytes, stream);
}

template <typename T>
void semihard_triplets(const T* emb, std::int64_t n, std::int64_t q, ClassLayout layout,
                       void* workspace, std::int64_t workspace_bytes, const std::int64_t* offsets,
                       std::int64_t* anchors, std::int64_t* positives, std::int64_t* negatives,
                       std::uintptr_t stream) {
  check(offsets != nullptr, "semihard triplets (cuda): offsets must not be null");
  launch<T>(Args<T>{emb, n, q, layout, T(0), true, nullptr, nullptr, offsets, anchors, positives,
                    negatives},
            workspace, workspace_bytes, stream);
}

#define PYCONCEPTS_INSTANTIATE(T)                                                               \
  template std::int64_t semihard_workspace_bytes<T>(std::int64_t, std::int64_t, std::int64_t);  \
  template void semihard_triplet_loss<T>(const T*, std::int64_t, std::int64_t, ClassLayout,     \
                                         void*, std::int64_t, double, bool, double*, T*,        \
                                         std::uintptr_t);                                       \
  template void semihard_triplets<T>(const T*, std::int64_t, std::int64_t, ClassLayout, void*, \
                                     std::int64_t, const std::int64_t*, std::int64_t*,          \
                                     std::int64_t*, std::int64_t*, std::uintptr_t);
PYCONCEPTS_INSTANTIATE(float)
PYCONCEPTS_INSTANTIATE(double)
#undef PYCONCEPTS_INSTANTIATE

}  // namespace pyconcepts::cuda
