// The semi-hard rule of csrc/cpu/triplet.h cut into the per-anchor steps that the CUDA kernel
// (csrc/cuda/triplet.cu) runs with a block of threads: shared by that kernel and by the CPU
// module's step-by-step emulation (csrc/cpu/triplet_rule_emulated.cpp), which the tests compare
// with the CPU kernel where no GPU is present.
//
// Per anchor a with P positives (the other members of its class):
//   1. the positives' squared distances as order keys, sorted (the anchor itself: a pad key);
//   2. each negative n goes to bucket b(n) = number of positives strictly closer than n; a
//      bucket keeps its closest negative, lowest index among equals;
//   3. suffix minima over the buckets: the positive with s positives strictly closer is served
//      by buckets s+1..P (the negatives strictly farther than it), the closest of them wins;
//   4. a positive with no farther negative takes the farthest negative of a.
// Buckets cover disjoint distance ranges, so the suffix minimum never meets a tie.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define PYCONCEPTS_HD __host__ __device__ __forceinline__
#else
#define PYCONCEPTS_HD inline
#endif

namespace pyconcepts::triplet_rule {

// Unsigned integer of a distance's width: the order key of a distance.
template <typename T>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = std::uint32_t;
};
template <>
struct KeyOf<double> {
  using type = std::uint64_t;
};
template <typename T>
using Key = typename KeyOf<T>::type;

// The anchor's own slot and the padding of a sort: above the key of every distance.
template <typename T>
constexpr Key<T> kPadKey = ~Key<T>(0);

// A bucket word: the closest negative of a bucket (kEmpty: none); the farthest negative word
// (0: none). See closest_word / farthest_word.
constexpr std::uint64_t kEmpty = ~std::uint64_t(0);
constexpr std::uint32_t kNoIndex = ~std::uint32_t(0);

// A float distance and a row index fit in one 64-bit word ordered by (distance, index): one
// atomicMin per negative then keeps the closest and the lowest index among equals. A double
// distance fills the word: the index of the closest is found in a second pass over the
// negatives at exactly that distance.
template <typename T>
constexpr bool kPacked = sizeof(T) == 4;

PYCONCEPTS_HD std::uint32_t bits_of(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

PYCONCEPTS_HD std::uint64_t bits_of(double x) {
#ifdef __CUDA_ARCH__
  return static_cast<std::uint64_t>(__double_as_longlong(x));
#else
  std::uint64_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

template <typename T>
PYCONCEPTS_HD bool is_nan(T x) {
  return x != x;
}

// A squared distance is +0, positive, +inf or NaN (a sum of squares is never negative nor -0),
// and the bit patterns of non-negative floats are ordered as their values, NaNs above +inf.
template <typename T>
PYCONCEPTS_HD Key<T> order_key(T sq_dist) {
  return bits_of(sq_dist);
}

// acc + t², rounded once: what the CPU kernel computes where the target has FMA (its default
// -march=native build on x86-64 does), and what the GPU always does.
template <typename T>
PYCONCEPTS_HD T add_square(T acc, T t) {
#if defined(__CUDA_ARCH__)
  if constexpr (kPacked<T>) {
    return fmaf(t, t, acc);
  } else {
    return fma(t, t, acc);
  }
#elif defined(__FMA__)
  return std::fma(t, t, acc);
#else
  return acc + t * t;
#endif
}

// Squared distance of rows xa and xj: the terms (xj[k] - xa[k])² summed over k in order, as the
// CPU kernel does (any other order would round differently and could change a choice).
template <typename T>
PYCONCEPTS_HD T sq_distance(const T* xa, const T* xj, std::int64_t q) {
  T acc = T(0);
  for (std::int64_t k = 0; k < q; ++k) acc = add_square(acc, xj[k] - xa[k]);
  return acc;
}

// Number of entries of sorted[0, len) (ascending) below key: for a negative's key, its bucket.
// Pad and NaN keys are above every key of a non-NaN distance, so they never count.
template <typename K>
PYCONCEPTS_HD std::int64_t count_below(const K* sorted, std::int64_t len, K key) {
  std::int64_t first = 0;
  while (len > 0) {
    const std::int64_t half = len / 2;
    if (sorted[first + half] < key) {
      first += half + 1;
      len -= half + 1;
    } else {
      len = half;
    }
  }
  return first;
}

// Bucket word of negative j at squared distance d (d not NaN).
template <typename T>
PYCONCEPTS_HD std::uint64_t closest_word(T d, std::uint32_t j) {
  if constexpr (kPacked<T>) {
    return (static_cast<std::uint64_t>(bits_of(d)) << 32) | j;
  } else {
    return bits_of(d);
  }
}

// Farthest-negative word of j at d (d not NaN), ordered by (distance, -index), never 0.
template <typename T>
PYCONCEPTS_HD std::uint64_t farthest_word(T d, std::uint32_t j) {
  if constexpr (kPacked<T>) {
    return (static_cast<std::uint64_t>(bits_of(d)) << 32) | (kNoIndex - j);
  } else {
    return bits_of(d) + 1;  // a non-NaN double's bits are below 0x7ff0...01
  }
}

// The row index held by a packed word (float only).
PYCONCEPTS_HD std::uint32_t closest_index(std::uint64_t word) {
  return word == kEmpty ? kNoIndex : static_cast<std::uint32_t>(word);
}
PYCONCEPTS_HD std::uint32_t farthest_index(std::uint64_t word) {
  return word == 0 ? kNoIndex : kNoIndex - static_cast<std::uint32_t>(word);
}

// Suffix-minimum step: the closer of two buckets' winners (words never tie unless empty).
PYCONCEPTS_HD void keep_closer(std::uint64_t& word, std::uint32_t& index, std::uint64_t other_word,
                               std::uint32_t other_index) {
  if (other_word < word) {
    word = other_word;
    index = other_index;
  }
}

// The farthest negative as the CPU kernel picks it: the first negative (lowest index) unless a
// later one is strictly farther, which a NaN distance never is. far_word / far_index: the
// farthest non-NaN negative, lowest index among equals (far_word 0: every distance is NaN).
PYCONCEPTS_HD std::int64_t farthest_negative(std::uint64_t far_word, std::uint32_t far_index,
                                             std::uint32_t first, bool first_is_nan) {
  return (first_is_nan || far_word == 0) ? first : far_index;
}

// The negative of a positive at squared distance d_ap: the closest strictly farther negative
// (the suffix minimum after the positive's own rank among n_sorted sorted keys), else the
// farthest negative. suffix_word/suffix_index: the suffix minima of the P+1 buckets.
template <typename T>
PYCONCEPTS_HD std::int64_t choose_negative(const Key<T>* sorted, std::int64_t n_sorted,
                                           const std::uint64_t* suffix_word,
                                           const std::uint32_t* suffix_index, T d_ap,
                                           std::int64_t farthest) {
  if (is_nan(d_ap)) return farthest;  // sorted after every positive: no bucket serves it
  const std::int64_t s = count_below(sorted, n_sorted, order_key(d_ap));  // s + 1 <= P
  return suffix_word[s + 1] != kEmpty ? suffix_index[s + 1] : farthest;
}

// One pair's loss and the weights of its gradient: d/dx of d(x, y) is u·(x - y) for the
// positive and v·(x - y) for the negative (2 when squared, 1/d Euclidean, 0 at d = 0).
template <typename T>
struct PairTerm {
  T loss;
  T u;
  T v;
};

template <typename T>
PYCONCEPTS_HD T square_root(T x) {
#ifdef __CUDA_ARCH__  // IEEE round-to-nearest (nvcc's default -prec-sqrt=true), as std::sqrt
  if constexpr (kPacked<T>) {
    return sqrtf(x);
  } else {
    return sqrt(x);
  }
#else
  return std::sqrt(x);
#endif
}

template <typename T>
PYCONCEPTS_HD PairTerm<T> pair_term(T sq_ap, T sq_an, T margin, bool squared) {
  const T d_ap = squared ? sq_ap : square_root(sq_ap);
  const T d_an = squared ? sq_an : square_root(sq_an);
  const T u = squared ? T(2) : (d_ap > T(0) ? T(1) / d_ap : T(0));
  const T v = squared ? T(2) : (d_an > T(0) ? T(1) / d_an : T(0));
  return {d_ap - d_an + margin, u, v};
}

}  // namespace pyconcepts::triplet_rule
