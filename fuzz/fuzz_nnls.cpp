// libFuzzer harness of pyconcepts::nnls_cpu (float and double): x >= 0 and the KKT conditions
// hold where info says "ok"; a NaN or infinity in a problem gives info 2 (the Python layer turns
// it into ValueError); nothing is written outside x and info.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/nnls.h"
#include "fuzz_input.h"

namespace {

using fuzz::require;

template <typename T>
void run(fuzz::Input& in) {
  const std::int64_t batch = in.range(0, 3), m = in.range(0, 8), n = in.range(0, 8);
  const std::int64_t max_iter = in.range(0, 3 * n + 3);
  const bool special = in.rarely(4);
  const std::vector<T> A = in.values<T>(batch * m * n, special);
  const std::vector<T> b = in.values<T>(batch * m, special);
  std::vector<T> x(batch * n + 1, T(-7));
  std::vector<std::int32_t> info(batch + 1, -7);
  auto solve = [&](std::int64_t bt, std::int64_t mm, std::int64_t nn, std::int64_t iters) {
    pyconcepts::nnls_cpu<T>(A.data(), b.data(), x.data(), info.data(), bt, mm, nn, iters);
  };
  if (in.rarely(16)) {
    fuzz::require_rejects([&] { solve(-1, m, n, max_iter); }, "negative batch");
    fuzz::require_rejects([&] { solve(batch, -1, n, max_iter); }, "negative m");
    fuzz::require_rejects([&] { solve(batch, m, -1, max_iter); }, "negative n");
    fuzz::require_rejects([&] { solve(batch, m, n, -1); }, "negative max_iter");
    return;
  }
  solve(batch, m, n, max_iter);
  require(x[batch * n] == T(-7) && info[batch] == -7, "wrote past x or info");
  const double tol = sizeof(T) == 4 ? 1e-3 : 1e-8;
  for (std::int64_t p = 0; p < batch; ++p) {
    const T* Ap = A.data() + p * m * n;
    const T* bp = b.data() + p * m;
    const T* xp = x.data() + p * n;
    bool finite = true;
    for (std::int64_t i = 0; i < m * n; ++i) finite = finite && std::isfinite(Ap[i]);
    for (std::int64_t i = 0; i < m; ++i) finite = finite && std::isfinite(bp[i]);
    require(info[p] >= 0 && info[p] <= 2, "info out of range");
    if (!finite && m > 0 && n > 0) require(info[p] == 2, "non-finite input not reported");
    if (info[p] == 2) continue;
    for (std::int64_t j = 0; j < n; ++j) require(xp[j] >= 0, "x < 0 or NaN");
    // Extreme finite inputs (1e38 / 1e-38) may have a solution beyond the range of T.
    if (info[p] != 0 || special) continue;
    for (std::int64_t j = 0; j < n; ++j) require(std::isfinite(xp[j]), "x not finite");
    // KKT: w = A^T (b - A x) is <= 0 on the zero set and ~0 on the positive set, to within the
    // rounding of w (scale = sum of |terms|).
    std::vector<double> r(m);
    std::vector<double> r_scale(m);
    for (std::int64_t i = 0; i < m; ++i) {
      r[i] = bp[i];
      r_scale[i] = std::fabs(bp[i]);
      for (std::int64_t j = 0; j < n; ++j) {
        r[i] -= double(Ap[i * n + j]) * xp[j];
        r_scale[i] += std::fabs(double(Ap[i * n + j]) * xp[j]);
      }
    }
    for (std::int64_t j = 0; j < n; ++j) {
      double w = 0, scale = 0;
      for (std::int64_t i = 0; i < m; ++i) {
        w += double(Ap[i * n + j]) * r[i];
        scale += std::fabs(double(Ap[i * n + j])) * r_scale[i];
      }
      require(w <= tol * (1 + scale), "KKT: a zero-set column would still decrease the residual");
      if (xp[j] > 0) require(std::fabs(w) <= tol * (1 + scale), "KKT: gradient on the positive set");
    }
  }
}

}  // namespace

PYCONCEPTS_FUZZ_ENTRY(float, double)
