#include "cpu/nnls.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/nnls_gram.h"
#include "common/parallel.h"

namespace pyconcepts {

namespace {

constexpr std::int64_t kTile = 64;  // rows of A transposed at a time for the Gram products

// G = A^T A (upper triangle mirrored), h = A^T b, returns b^T b; double accumulation. Rows are
// transposed tile by tile so the inner products run over contiguous memory and vectorize.
template <typename T>
double gram(const T* A, const T* b, std::int64_t m, std::int64_t n, double* G, double* h,
            double* tile) {
  std::fill(G, G + n * n, 0.0);
  std::fill(h, h + n, 0.0);
  double bb = 0.0;
  double* tb = tile + n * kTile;
  for (std::int64_t r0 = 0; r0 < m; r0 += kTile) {
    const std::int64_t rows = std::min(kTile, m - r0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* row = A + (r0 + r) * n;
      for (std::int64_t j = 0; j < n; ++j) tile[j * kTile + r] = static_cast<double>(row[j]);
      tb[r] = static_cast<double>(b[r0 + r]);
    }
    for (std::int64_t j = 0; j < n; ++j) {
      const double* cj = tile + j * kTile;
      for (std::int64_t k = j; k < n; ++k) {
        const double* ck = tile + k * kTile;
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (std::int64_t r = 0; r < rows; ++r) acc += cj[r] * ck[r];
        G[j * n + k] += acc;
      }
      double acc = 0.0;
#pragma omp simd reduction(+ : acc)
      for (std::int64_t r = 0; r < rows; ++r) acc += cj[r] * tb[r];
      h[j] += acc;
    }
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (std::int64_t r = 0; r < rows; ++r) acc += tb[r] * tb[r];
    bb += acc;
  }
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t k = 0; k < j; ++k) G[j * n + k] = G[k * n + j];
  return bb;
}

// Same for n <= 7: the row [a_r, b_r] fits one 8-lane vector, so G_aug += v v^T runs as eight
// vector FMAs per row with the accumulators in registers (no transposition).
template <int N, typename T>
double gram_narrow(const T* A, const T* b, std::int64_t m, double* G, double* h) {
  constexpr int W = 8;
  static_assert(N < W, "gram_narrow needs n < 8");
  double acc[W][W] = {};
  for (std::int64_t r = 0; r < m; ++r) {
    double v[W] = {};
    for (int k = 0; k < N; ++k) v[k] = static_cast<double>(A[r * N + k]);
    v[N] = static_cast<double>(b[r]);
    for (int j = 0; j <= N; ++j) {
#pragma omp simd
      for (int k = 0; k < W; ++k) acc[j][k] += v[j] * v[k];
    }
  }
  for (int j = 0; j < N; ++j) {
    for (int k = 0; k < N; ++k) G[j * N + k] = acc[j][k];
    h[j] = acc[j][N];
  }
  return acc[N][N];
}

// Same for 8 < N <= 16: a row of A is covered by two overlapping 8-lane vectors, columns 0-7
// and N-8 .. N-1 (GCC/Clang vector extensions, lowered to whatever the target has). One pass over
// the rows keeps the upper triangle in registers: rows 0-7 of G (both vectors), rows 8 .. N-1
// (second vector), h = A^T b and b^T b; the lower triangle is mirrored. Every entry is one
// running sum over the rows. No transposition and no workspace.
typedef double v8d __attribute__((vector_size(64)));

// Loads through an out-parameter: returning a 64-byte vector by value has an ABI that depends on
// AVX-512 being enabled (GCC's -Wpsabi note).
template <typename T>
inline void load8(const T* a, v8d& v) {
  double t[8];
  for (int k = 0; k < 8; ++k) t[k] = static_cast<double>(a[k]);
  std::memcpy(&v, t, sizeof(v8d));
}

inline void store8(const v8d& v, double* t) { std::memcpy(t, &v, sizeof(v8d)); }

template <int N, typename T>
double gram_fixed(const T* A, const T* b, std::int64_t m, double* G, double* h) {
  static_assert(N > 8 && N <= 16, "gram_fixed needs 8 < n <= 16");
  constexpr int R2 = N - 8;  // rows 8 .. N-1
  constexpr int O = N - 8;   // first column of the second vector
  v8d lo[8][2] = {};
  v8d hi[R2] = {};
  v8d h0 = {}, h1 = {};
  double bb = 0.0;
  for (std::int64_t r = 0; r < m; ++r) {
    const T* a = A + r * N;
    v8d v0, v1;
    load8(a, v0);
    load8(a + O, v1);
    for (int j = 0; j < 8; ++j) {
      const double s = static_cast<double>(a[j]);
      lo[j][0] += s * v0;
      lo[j][1] += s * v1;
    }
    for (int j = 0; j < R2; ++j) hi[j] += static_cast<double>(a[8 + j]) * v1;
    const double s = static_cast<double>(b[r]);
    h0 += s * v0;
    h1 += s * v1;
    bb += s * s;
  }
  double t[8];
  for (int j = 0; j < 8; ++j) {
    store8(lo[j][0], t);
    for (int k = 0; k < 8; ++k) G[j * N + k] = t[k];
    store8(lo[j][1], t);
    for (int k = 8; k < N; ++k) G[j * N + k] = t[k - O];
  }
  for (int j = 8; j < N; ++j) {
    store8(hi[j - 8], t);
    for (int k = 0; k < 8; ++k) G[j * N + k] = G[k * N + j];
    for (int k = 8; k < N; ++k) G[j * N + k] = t[k - O];
  }
  store8(h0, t);
  for (int k = 0; k < 8; ++k) h[k] = t[k];
  store8(h1, t);
  for (int k = 8; k < N; ++k) h[k] = t[k - O];
  return bb;
}

template <typename T>
double gram_any(const T* A, const T* b, std::int64_t m, std::int64_t n, double* G, double* h,
                double* tile) {
  switch (n) {
    case 1: return gram_narrow<1>(A, b, m, G, h);
    case 2: return gram_narrow<2>(A, b, m, G, h);
    case 3: return gram_narrow<3>(A, b, m, G, h);
    case 4: return gram_narrow<4>(A, b, m, G, h);
    case 5: return gram_narrow<5>(A, b, m, G, h);
    case 6: return gram_narrow<6>(A, b, m, G, h);
    case 7: return gram_narrow<7>(A, b, m, G, h);
    case 9: return gram_fixed<9>(A, b, m, G, h);
    case 10: return gram_fixed<10>(A, b, m, G, h);
    case 11: return gram_fixed<11>(A, b, m, G, h);
    case 12: return gram_fixed<12>(A, b, m, G, h);
    case 13: return gram_fixed<13>(A, b, m, G, h);
    case 14: return gram_fixed<14>(A, b, m, G, h);
    case 15: return gram_fixed<15>(A, b, m, G, h);
    case 16: return gram_fixed<16>(A, b, m, G, h);
    default: return gram(A, b, m, n, G, h, tile);
  }
}

}  // namespace

template <typename T>
void nnls_cpu(const T* A, const T* rhs, T* x, std::int32_t* info, std::int64_t batch,
              std::int64_t m, std::int64_t n, std::int64_t max_iter) {
  check_sizes_nonnegative({batch, m, n}, "nnls");
  check(max_iter >= 0, "nnls: max_iter must be >= 0, got ", max_iter);
  check(n <= std::numeric_limits<int>::max() / 4, "nnls: n too large, got ", n);
  const int iters = static_cast<int>(std::min<std::int64_t>(max_iter, std::numeric_limits<int>::max()));
  // Grain: enough problems per chunk (about 256k flops) to amortise the workspace and the
  // scheduling; the workspace, transposition tile for gram() included, is one allocation.
  const std::int64_t grain =
      std::max<std::int64_t>(1, 262144 / std::max<std::int64_t>(1, (m + n) * n * n));
  const std::int64_t n_doubles = n * n + 2 * n + nnls_gram::work_doubles(n) + (n + 1) * kTile;
  parallel_for(batch, grain, [&](std::int64_t begin, std::int64_t end) {
    std::vector<double> wsd(n_doubles);
    std::vector<int> wi(nnls_gram::work_ints(n));
    double* G = wsd.data();
    double* h = G + n * n;
    double* xd = h + n;
    const nnls_gram::Work work = nnls_gram::make_work(xd + n, wi.data(), n);
    double* tile = xd + n + nnls_gram::work_doubles(n);
    for (std::int64_t p = begin; p < end; ++p) {
      const double bb = gram_any(A + p * m * n, rhs + p * m, m, n, G, h, tile);
      int passive = 0;
      info[p] = nnls_gram::solve(G, n, h, bb, static_cast<int>(n), iters, xd, work, &passive);
      for (std::int64_t j = 0; j < n; ++j) x[p * n + j] = static_cast<T>(xd[j]);
    }
  });
}

template void nnls_cpu<float>(const float*, const float*, float*, std::int32_t*, std::int64_t,
                              std::int64_t, std::int64_t, std::int64_t);
template void nnls_cpu<double>(const double*, const double*, double*, std::int32_t*,
                               std::int64_t, std::int64_t, std::int64_t, std::int64_t);

void greedy_nnls_basis_cpu(const double* G, const double* H, const double* tt,
                           std::int64_t* indices, double* coefs, double* residual_norms,
                           std::int64_t K, std::int64_t N, std::int64_t T) {
  check_sizes_nonnegative({K, N, T}, "greedy_nnls_basis");
  check(T <= N, "greedy_nnls_basis: max_terms must be <= the number of candidates, got ", T,
        " > ", N);
  check(N <= std::numeric_limits<int>::max(), "greedy_nnls_basis: too many candidates, got ", N);
  if (T == 0) return;
  parallel_for(K, 1, [&](std::int64_t begin, std::int64_t end) {
    std::vector<int> sel(T), order(T), zs(T), si(nnls_gram::trial_ints(T));
    std::vector<double> coef(T), xp(T), L(T * T), y(T), sd(nnls_gram::trial_doubles(T));
    std::vector<char> chosen(N);
    for (std::int64_t k = begin; k < end; ++k) {
      const double* h = H + k * N;
      nnls_gram::Basis B{0, 0, sel.data(), order.data(), coef.data(), xp.data(), zs.data(), 0,
                         L.data(), y.data(), tt[k]};
      std::fill(chosen.begin(), chosen.end(), 0);
      for (std::int64_t step = 0; step < T; ++step) {
        double best = std::numeric_limits<double>::infinity();
        int jbest = -1;
        for (std::int64_t j = 0; j < N; ++j) {
          if (chosen[j]) continue;
          const double r2 = nnls_gram::trial(G, N, h, tt[k], B, static_cast<int>(j), sd.data(),
                                             si.data(), T);
          if (r2 < best || jbest < 0) {  // strict: ties keep the lower index
            best = r2;
            jbest = static_cast<int>(j);
          }
        }
        chosen[jbest] = 1;
        nnls_gram::commit(G, N, h, tt[k], &B, jbest, sd.data(), si.data(), T);
        residual_norms[k * T + step] = std::sqrt(std::max(B.res2, 0.0));
      }
      for (std::int64_t a = 0; a < T; ++a) {
        indices[k * T + a] = sel[a];
        coefs[k * T + a] = coef[a];
      }
    }
  });
}

}  // namespace pyconcepts
