// libFuzzer harness of pyconcepts::cpu::semihard_triplets and semihard_triplet_loss (float and
// double): the mined triplets follow the semi-hard rule (brute force), the loss is the sum of
// relu(d_ap - d_an + margin) over them, and the gradient sums to zero over the embeddings (the
// loss only sees differences of embeddings).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/triplet.h"
#include "fuzz_input.h"

namespace {

using fuzz::require;
using i64 = std::int64_t;

template <typename T>
void run(fuzz::Input& in) {
  const i64 n = in.range(0, 10), q = in.range(0, 4);
  std::vector<i64> labels(n);
  for (auto& l : labels) {
    l = in.rarely(16) ? std::numeric_limits<i64>::min() + in.range(0, 1) : in.range(0, 3);
  }
  const bool special = in.rarely(4), squared = in.flag();
  const std::vector<T> emb = in.values<T>(n * q, special);
  const double margins[] = {0.0, 0.25, 1.0, 3.0};
  const double margin = margins[in.range(0, 3)];
  bool two_labels = false;
  for (i64 j = 1; j < n; ++j) two_labels = two_labels || labels[j] != labels[0];

  std::vector<i64> offsets(n + 1, 0);
  for (i64 a = 0; a < n; ++a) {
    offsets[a + 1] = offsets[a];
    for (i64 p = 0; p < n; ++p) offsets[a + 1] += p != a && labels[p] == labels[a];
  }
  const i64 total = offsets[n];
  std::vector<i64> anchors(total + 1, -7), positives(total + 1, -7), negatives(total + 1, -7);
  std::vector<double> loss(n + 1, -7);
  std::vector<T> grad(n * q + 1, T(-7));
  T* grad_ptr = in.flag() ? grad.data() : nullptr;
  auto mine = [&](i64 rows, i64 cols) {
    pyconcepts::cpu::semihard_triplets<T>(emb.data(), labels.data(), rows, cols, offsets.data(),
                                          anchors.data(), positives.data(), negatives.data());
  };
  auto loss_of = [&](i64 rows, i64 cols) {
    pyconcepts::cpu::semihard_triplet_loss<T>(emb.data(), labels.data(), rows, cols, margin,
                                              squared, loss.data(), grad_ptr);
  };
  if (!two_labels || in.rarely(16)) {  // fewer than 2 labels (or n < 2) must be refused
    const i64 rows = two_labels ? -1 : n;
    fuzz::require_rejects([&] { mine(rows, q); }, "mining: invalid arguments accepted");
    fuzz::require_rejects([&] { loss_of(rows, q); }, "loss: invalid arguments accepted");
    if (two_labels) fuzz::require_rejects([&] { mine(n, -1); }, "mining: negative q accepted");
    return;
  }
  mine(n, q);
  loss_of(n, q);
  require(anchors[total] == -7 && negatives[total] == -7 && loss[n] == -7, "wrote past outputs");
  require(grad[n * q] == T(-7), "wrote past grad");

  auto sq_dist = [&](i64 a, i64 j) {  // the kernel's order of summation
    T d = T(0);
    for (i64 k = 0; k < q; ++k) {
      const T t = emb[j * q + k] - emb[a * q + k];
      d += t * t;
    }
    return d;
  };
  i64 i = 0;
  for (i64 a = 0; a < n; ++a) {
    double want_loss = 0;
    for (i64 p = 0; p < n; ++p) {
      if (p == a || labels[p] != labels[a]) continue;
      require(anchors[i] == a && positives[i] == p, "pairs out of order");
      const i64 neg = negatives[i++];
      require(neg >= 0 && neg < n && labels[neg] != labels[a], "negative is not a negative");
      if (special) continue;
      const T d_ap = sq_dist(a, p);
      i64 closest = -1, farthest = -1;
      for (i64 j = 0; j < n; ++j) {
        if (labels[j] == labels[a]) continue;
        const T d = sq_dist(a, j);
        if (d > d_ap && (closest < 0 || d < sq_dist(a, closest))) closest = j;
        if (farthest < 0 || d > sq_dist(a, farthest)) farthest = j;
      }
      require(neg == (closest >= 0 ? closest : farthest), "not the semi-hard negative");
      const T sq_an = sq_dist(a, neg);
      const double ap = squared ? d_ap : std::sqrt(d_ap), an = squared ? sq_an : std::sqrt(sq_an);
      want_loss += std::max(0.0, ap - an + margin);
    }
    require(!(loss[a] < 0), "negative loss");
    if (!special) require(fuzz::close(loss[a], want_loss, 1e-4), "loss differs from the triplets'");
  }
  if (special || grad_ptr == nullptr) return;
  for (i64 k = 0; k < q; ++k) {
    double sum = 0, scale = 1;
    for (i64 j = 0; j < n; ++j) {
      sum += grad[j * q + k];
      scale += std::fabs(double(grad[j * q + k]));
    }
    require(std::fabs(sum) <= 1e-4 * scale, "gradient does not sum to zero");
  }
}

}  // namespace

PYCONCEPTS_FUZZ_ENTRY(float, double)
