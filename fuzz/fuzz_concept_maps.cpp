// libFuzzer harness of pyconcepts::concept_maps_forward / _backward / concept_map_stats (float
// and double, NCHW and channels-last strides, with and without bias, any gradient output null):
// each agrees with a naive double-precision evaluation where the inputs are finite, ReLU outputs
// are never negative, and nothing is written outside the outputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/concept_maps.h"
#include "fuzz_input.h"

namespace {

using fuzz::require;
using i64 = std::int64_t;

template <typename T>
bool close_all(const std::vector<T>& got, const std::vector<double>& want, i64 n, double tol) {
  for (i64 i = 0; i < n; ++i) {
    if (!fuzz::close(got[i], want[i], tol)) return false;
  }
  return true;
}

template <typename T>
void run(fuzz::Input& in) {
  const i64 B = in.range(0, 3), D = in.range(0, 5), M = in.range(0, 5), P = in.range(0, 9);
  const bool special = in.rarely(4), nchw = in.flag(), with_bias = in.flag();
  const std::vector<T> x = in.values<T>(B * D * P, special), w = in.values<T>(M * D, special);
  const std::vector<T> bias = in.values<T>(M, special), g_out = in.values<T>(B * M * P, special);
  const T threshold = in.value<T>(special);
  const i64 sxb = D * P, sxd = nchw ? P : 1, sxp = nchw ? 1 : D;
  const T* b = with_bias ? bias.data() : nullptr;
  const T sentinel = T(-7);
  std::vector<T> out(B * M * P + 1, sentinel);
  auto forward = [&](i64 batch, i64 positions) {
    pyconcepts::concept_maps_forward<T>(x.data(), sxb, sxd, sxp, w.data(), b, out.data(), batch,
                                        D, M, positions);
  };
  std::vector<T> mx(B * M + 1, sentinel), mean(B * M + 1, sentinel), frac(B * M + 1, sentinel);
  auto stats = [&](i64 batch, i64 positions) {
    pyconcepts::concept_map_stats<T>(x.data(), sxb, sxd, sxp, w.data(), b, threshold, mx.data(),
                                     mean.data(), frac.data(), batch, D, M, positions);
  };
  if (in.rarely(16)) {
    fuzz::require_rejects([&] { forward(-1, P); }, "forward: negative batch");
    fuzz::require_rejects([&] { stats(B, -1); }, "stats: negative positions");
    fuzz::require_rejects([&] { stats(B, 0); }, "stats: no positions");
    return;
  }
  forward(B, P);
  require(out[B * M * P] == sentinel, "forward wrote past out");
  for (i64 i = 0; i < B * M * P; ++i) require(!(out[i] < 0), "negative ReLU output");

  // Naive pre-activations z[b, m, p] in double.
  std::vector<double> z(B * M * P);
  for (i64 bi = 0; bi < B; ++bi)
    for (i64 m = 0; m < M; ++m)
      for (i64 p = 0; p < P; ++p) {
        double s = b ? double(b[m]) : 0.0;
        for (i64 d = 0; d < D; ++d) s += double(w[m * D + d]) * x[bi * sxb + d * sxd + p * sxp];
        z[(bi * M + m) * P + p] = s;
      }
  const double tol = sizeof(T) == 4 ? 1e-4 : 1e-10;
  std::vector<double> relu(z.size());
  std::transform(z.begin(), z.end(), relu.begin(), [](double v) { return v < 0 ? 0.0 : v; });
  if (!special) require(close_all(out, relu, B * M * P, tol), "forward differs from naive");

  if (P > 0) {
    stats(B, P);
    require(mx[B * M] == sentinel && mean[B * M] == sentinel && frac[B * M] == sentinel,
            "stats wrote past outputs");
    for (i64 i = 0; i < B * M; ++i) {
      require(!(mx[i] < 0) && !(mean[i] < 0), "negative max or mean");
      require(std::isnan(frac[i]) || (frac[i] >= 0 && frac[i] <= 1), "fraction outside [0, 1]");
      if (special) continue;
      double want_max = 0, want_sum = 0, above = 0;
      for (i64 p = 0; p < P; ++p) {
        want_max = std::max(want_max, relu[i * P + p]);
        want_sum += relu[i * P + p];
        above += out[i * P + p] > threshold;  // the kernel's rounding decides near the threshold
      }
      require(fuzz::close(mx[i], want_max, tol), "stats max differs");
      require(fuzz::close(mean[i], want_sum / P, tol), "stats mean differs");
      require(std::fabs(frac[i] - above / P) <= 1.0 / P + 1e-6, "stats fraction differs");
    }
  }

  // Backward through the saved output: gz = grad_out where out > 0.
  const bool want_x = in.flag(), want_w = in.flag(), want_b = in.flag();
  std::vector<T> gx(B * D * P + 1, sentinel), gw(M * D + 1, sentinel), gb(M + 1, sentinel);
  pyconcepts::concept_maps_backward<T>(x.data(), sxb, sxd, sxp, w.data(), out.data(),
                                       g_out.data(), want_x ? gx.data() : nullptr,
                                       want_w ? gw.data() : nullptr, want_b ? gb.data() : nullptr,
                                       B, D, M, P);
  require(gx[B * D * P] == sentinel && gw[M * D] == sentinel && gb[M] == sentinel,
          "backward wrote past outputs");
  if (special) return;
  std::vector<double> ref_x(B * D * P, 0.0), ref_w(M * D, 0.0), ref_b(M, 0.0);
  for (i64 bi = 0; bi < B; ++bi)
    for (i64 m = 0; m < M; ++m)
      for (i64 p = 0; p < P; ++p) {
        const i64 o = (bi * M + m) * P + p;
        const double gz = out[o] > 0 ? double(g_out[o]) : 0.0;
        ref_b[m] += gz;
        for (i64 d = 0; d < D; ++d) {
          ref_x[(bi * D + d) * P + p] += double(w[m * D + d]) * gz;
          ref_w[m * D + d] += gz * x[bi * sxb + d * sxd + p * sxp];
        }
      }
  if (want_x) require(close_all(gx, ref_x, B * D * P, tol), "grad_x differs from naive");
  if (want_w) require(close_all(gw, ref_w, M * D, tol), "grad_weight differs from naive");
  if (want_b) require(close_all(gb, ref_b, M, tol), "grad_bias differs from naive");
}

}  // namespace

PYCONCEPTS_FUZZ_ENTRY(float, double)
