// libFuzzer harness of pyconcepts::greedy_nnls_basis_cpu, fed the Gram form of random
// candidates C [N, D] and targets [K, D]: indices distinct and in range, coefficients >= 0,
// residual norms non-increasing and equal to |target - coefs . C[indices]| (to the precision of
// the Gram form).
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/nnls.h"
#include "fuzz_input.h"

namespace {

using fuzz::require;

void run(fuzz::Input& in) {
  const std::int64_t N = in.range(0, 6), D = in.range(1, 6), K = in.range(0, 3);
  const std::int64_t T = in.range(0, N);
  const bool special = in.rarely(8);
  const std::vector<double> C = in.values<double>(N * D, special);
  const std::vector<double> targets = in.values<double>(K * D, special);
  std::vector<double> G(N * N), H(K * N), tt(K);
  auto dot = [&](const double* u, const double* v) {
    double s = 0;
    for (std::int64_t d = 0; d < D; ++d) s += u[d] * v[d];
    return s;
  };
  for (std::int64_t i = 0; i < N; ++i) {
    for (std::int64_t j = 0; j < N; ++j) G[i * N + j] = dot(&C[i * D], &C[j * D]);
  }
  for (std::int64_t k = 0; k < K; ++k) {
    for (std::int64_t j = 0; j < N; ++j) H[k * N + j] = dot(&targets[k * D], &C[j * D]);
    tt[k] = dot(&targets[k * D], &targets[k * D]);
  }
  std::vector<std::int64_t> indices(K * T + 1, -7);
  std::vector<double> coefs(K * T + 1, -7), res(K * T + 1, -7);
  auto select = [&](std::int64_t k, std::int64_t n, std::int64_t t) {
    pyconcepts::greedy_nnls_basis_cpu(G.data(), H.data(), tt.data(), indices.data(), coefs.data(),
                                      res.data(), k, n, t);
  };
  if (in.rarely(16)) {
    fuzz::require_rejects([&] { select(-1, N, T); }, "negative K");
    fuzz::require_rejects([&] { select(K, N, N + 1); }, "max_terms > N");
    fuzz::require_rejects([&] { select(K, N, -1); }, "negative max_terms");
    return;
  }
  select(K, N, T);
  require(indices[K * T] == -7 && coefs[K * T] == -7 && res[K * T] == -7, "wrote past outputs");
  if (special) return;  // non-finite Gram matrices: memory safety only
  // Residual norms come from the Gram form, res^2 = tt - 2 h.c + c.G.c, whose rounding error
  // is about eps x (tt + |c|.|G|.|c|): compare squares, to within that.
  for (std::int64_t k = 0; k < K; ++k) {
    std::vector<char> seen(N, 0);
    std::vector<double> r(&targets[k * D], &targets[k * D] + D);
    double scale = 1 + tt[k], prev = tt[k];
    for (std::int64_t a = 0; a < T; ++a) {
      const std::int64_t j = indices[k * T + a];
      const double c = coefs[k * T + a];
      require(j >= 0 && j < N && !seen[j], "index out of range or repeated");
      seen[j] = 1;
      require(c >= 0 && std::isfinite(c), "negative coefficient");
      for (std::int64_t d = 0; d < D; ++d) r[d] -= c * C[j * D + d];
      for (std::int64_t b = 0; b <= a; ++b) {
        scale += (b == a ? 1 : 2) * c * coefs[k * T + b] * std::fabs(G[j * N + indices[k * T + b]]);
      }
      const double rn = res[k * T + a];
      require(rn >= 0 && rn * rn <= prev + 1e-9 * scale, "residual increased");
      prev = rn * rn;
    }
    if (T > 0) {
      const double direct = dot(r.data(), r.data());
      require(std::fabs(direct - prev) <= 1e-9 * scale, "residual differs from the coefs'");
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  run(in);
  return 0;
}
