// Sequential emulation of the CUDA semi-hard triplet kernel (see triplet_rule_emulated.h): the
// same steps as csrc/cuda/triplet.cu per anchor, with loops where the kernel has a block of
// threads, std::sort where it has a bitonic sort and plain min/max where it has atomics.
#include "cpu/triplet_rule_emulated.h"

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/triplet_rule.h"

namespace pyconcepts::cpu {

namespace rule = pyconcepts::triplet_rule;

template <typename T>
void semihard_rule_emulated(const T* emb, std::int64_t n, std::int64_t q,
                            const std::int64_t* members, const std::int64_t* class_start,
                            const std::int64_t* class_stop, double margin, bool squared,
                            const std::int64_t* offsets, std::int64_t* anchors,
                            std::int64_t* positives, std::int64_t* negatives, double* anchor_loss,
                            T* grad) {
  check_sizes_nonnegative({n, q}, "semihard rule emulation");
  check(n >= 2 && n < (std::int64_t{1} << 31),
        "semihard rule emulation: need 2 <= n < 2^31 embeddings, got ", n);
  using K = rule::Key<T>;
  const T m = static_cast<T>(margin);
  if (grad) std::fill(grad, grad + n * q, T(0));
  std::vector<K> sorted;
  std::vector<std::uint64_t> word;
  std::vector<std::uint32_t> index;
  for (std::int64_t s = 0; s < n; ++s) {
    const std::int64_t a = members[s], cb = class_start[s], ce = class_stop[s];
    check(0 <= cb && cb <= s && s < ce && ce <= n && ce - cb < n,
          "semihard rule emulation: bad class bounds at position ", s);
    const std::int64_t n_class = ce - cb, p_count = n_class - 1;
    const T* xa = emb + a * q;
    anchor_loss[a] = 0.0;
    if (p_count == 0) continue;

    // 1. The positives' keys, sorted (the anchor's own slot is a pad key).
    sorted.resize(static_cast<size_t>(n_class));
    for (std::int64_t t = 0; t < n_class; ++t) {
      const T* xp = emb + members[cb + t] * q;
      sorted[t] = cb + t == s ? rule::kPadKey<T> : rule::order_key(rule::sq_distance(xa, xp, q));
    }
    std::sort(sorted.begin(), sorted.end());

    // 2. Every negative into its bucket; the farthest and the first negative.
    word.assign(static_cast<size_t>(p_count + 1), rule::kEmpty);
    index.assign(static_cast<size_t>(p_count + 1), rule::kNoIndex);
    std::uint64_t far_word = 0;
    std::uint32_t far_index = rule::kNoIndex, first = rule::kNoIndex;
    const auto for_each_negative = [&](const auto& visit) {
      for (std::int64_t i = 0; i < n - n_class; ++i) {  // the positions outside [cb, ce)
        const std::int64_t j = members[i < cb ? i : i + n_class];
        visit(static_cast<std::uint32_t>(j), rule::sq_distance(xa, emb + j * q, q));
      }
    };
    for_each_negative([&](std::uint32_t j, T d) {
      first = std::min(first, j);
      if (rule::is_nan(d)) return;
      const std::int64_t b = rule::count_below(sorted.data(), n_class, rule::order_key(d));
      word[b] = std::min(word[b], rule::closest_word(d, j));
      far_word = std::max(far_word, rule::farthest_word(d, j));
    });
    if constexpr (rule::kPacked<T>) {
      for (std::int64_t b = 0; b <= p_count; ++b) index[b] = rule::closest_index(word[b]);
      far_index = rule::farthest_index(far_word);
    } else {  // second pass: the lowest index at each winning distance
      for_each_negative([&](std::uint32_t j, T d) {
        if (rule::is_nan(d)) return;
        const std::int64_t b = rule::count_below(sorted.data(), n_class, rule::order_key(d));
        if (rule::closest_word(d, j) == word[b]) index[b] = std::min(index[b], j);
        if (rule::farthest_word(d, j) == far_word) far_index = std::min(far_index, j);
      });
    }

    // 3. Suffix minima over the buckets.
    for (std::int64_t b = p_count - 1; b >= 0; --b)
      rule::keep_closer(word[b], index[b], word[b + 1], index[b + 1]);

    // 4. The farthest negative by the CPU kernel's rule.
    const std::int64_t farthest = rule::farthest_negative(
        far_word, far_index, first, rule::is_nan(rule::sq_distance(xa, emb + first * q, q)));

    // 5. Each positive's negative, its loss and gradient.
    double total = 0.0;
    for (std::int64_t t = 0; t < n_class; ++t) {
      if (cb + t == s) continue;
      const std::int64_t p = members[cb + t];
      const T* xp = emb + p * q;
      const T sq_ap = rule::sq_distance(xa, xp, q);
      const std::int64_t ng = rule::choose_negative<T>(sorted.data(), n_class, word.data(),
                                                       index.data(), sq_ap, farthest);
      const std::int64_t o = offsets[a] + t - (cb + t > s ? 1 : 0);
      anchors[o] = a;
      positives[o] = p;
      negatives[o] = ng;
      const T* xn = emb + ng * q;
      const rule::PairTerm<T> term =
          rule::pair_term(sq_ap, rule::sq_distance(xa, xn, q), m, squared);
      if (!(term.loss > T(0))) continue;
      total += static_cast<double>(term.loss);
      if (!grad) continue;
      for (std::int64_t k = 0; k < q; ++k) {
        const T dp = term.u * (xa[k] - xp[k]);
        const T dn = term.v * (xa[k] - xn[k]);
        grad[a * q + k] += dp - dn;
        grad[p * q + k] -= dp;
        grad[ng * q + k] += dn;
      }
    }
    anchor_loss[a] = total;
  }
}

#define PYCONCEPTS_INSTANTIATE(T)                                                              \
  template void semihard_rule_emulated<T>(const T*, std::int64_t, std::int64_t,               \
                                          const std::int64_t*, const std::int64_t*,           \
                                          const std::int64_t*, double, bool,                  \
                                          const std::int64_t*, std::int64_t*, std::int64_t*,  \
                                          std::int64_t*, double*, T*);
PYCONCEPTS_INSTANTIATE(float)
PYCONCEPTS_INSTANTIATE(double)
#undef PYCONCEPTS_INSTANTIATE

}  // namespace pyconcepts::cpu
