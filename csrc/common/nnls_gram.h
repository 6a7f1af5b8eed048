// Lawson–Hanson non-negative least squares in Gram form, shared by the CPU and CUDA cores.
//
// The problem min ||A x - b||, x >= 0 is solved from G = A^T A, h = A^T b and bb = b^T b, so the
// cost of an iteration does not depend on the number of rows of A. The passive-set systems are
// solved with a Cholesky factor of G[P,P] that is extended by one row when a column enters and
// rebuilt when columns leave. Everything is double precision, header-only and free of the
// standard library so the same code compiles for the host and (with nvcc) for the device.
//
// Numerical rules (documented in docs/methods.md, IBD section):
//  * a zero-set column j enters only when its gradient w_j = h_j - G[j,P] x_P exceeds
//    kGradTol * (sqrt(G_jj * bb) + sum_i |G_ji x_i|), a bound on the rounding of w_j;
//  * a column whose part orthogonal to the passive columns has squared norm <= kRankTol * G_jj
//    is numerically dependent and is rejected until x changes (rank-deficient and n > m inputs
//    give one of the minimisers, with the minimal objective; a column whose orthogonal part is
//    within rounding of the tolerance is decided by rounding: docs/reliability.md, finding 3);
//  * such a dependent column with a positive gradient is swapped in for the passive column it
//    can replace (swap_in: the trade Lawson–Hanson makes in exact arithmetic), when the move is
//    of the size of b and lowers the residual even at the rank bound; at most n swaps a call;
//  * like Lawson–Hanson, a column whose fresh coefficient is not positive is rejected;
//  * every column addition counts as one iteration; more than max_iter gives kMaxIter.
#pragma once
#include <math.h>

#include <cstdint>

#ifdef __CUDACC__
#define PYC_HD __host__ __device__ inline
#define PYC_NOINLINE __host__ __device__ __noinline__
#else
#define PYC_HD inline
#define PYC_NOINLINE inline __attribute__((noinline))
#endif

namespace pyconcepts {
namespace nnls_gram {

constexpr double kEps = 2.220446049250313e-16;
constexpr double kGradTol = 1024.0 * kEps;
// d = G_jj - |L^{-1} G[P,j]|^2 carries a rounding error of a few eps x G_jj: 1e-14 (about 45
// eps) still tells it from dependence. (1e-12 rejected a column with d = 6.6e-13 G_jj that lies
// outside the cone of the passive columns, and left a non-minimal objective: found by
// fuzz/fuzz_greedy_nnls_basis, regression in tests/ops/test_kernel_regressions.py.)
constexpr double kRankTol = 1e-14;

// swap_in: the largest move, in units of |b|, that a swap may make in any column's term x_k a_k.
constexpr double kSwapScale = 4.0;

enum Status : int { kOk = 0, kMaxIter = 1, kNonFinite = 2 };

// Workspace of a solve on n variables: n*n + 5n doubles and 2n ints.
struct Work {
  double* L;       // n*n, lower Cholesky factor of G[P,P], row stride n
  double* y;       // n, L^{-1} h_P
  double* s;       // n, passive-set solution
  double* w;       // n, gradient h - G[:,P] x_P
  double* mag;     // n, sum_k |G_jk x_k| over P (the rounding bound of w_j)
  double* gd;      // n, sqrt(|G_jj bb|)
  int* order;      // n, passive indices in factor order
  int* state;      // n, 0 zero set, 1 passive, 2 rejected until x changes
};

PYC_HD int64_t work_doubles(int64_t n) { return n * n + 5 * n; }
PYC_HD int64_t work_ints(int64_t n) { return 2 * n; }

PYC_HD Work make_work(double* d, int* i, int64_t n) {
  Work w;
  w.L = d;
  w.y = d + n * n;
  w.s = w.y + n;
  w.w = w.s + n;
  w.mag = w.w + n;
  w.gd = w.mag + n;
  w.order = i;
  w.state = i + n;
  return w;
}

// Appends row p of the Cholesky factor for column j given the first p passive columns `order`.
// Returns false when j is numerically dependent on them (or G is not finite).
PYC_HD bool chol_append(const double* G, int64_t ldg, double* L, int64_t ld, const int* order,
                        int p, int j) {
  double dd = 0.0;
  for (int k = 0; k < p; ++k) {
    double v = G[static_cast<int64_t>(order[k]) * ldg + j];
    for (int i = 0; i < k; ++i) v -= L[k * ld + i] * L[p * ld + i];
    v /= L[k * ld + k];
    L[p * ld + k] = v;
    dd += v * v;
  }
  const double gjj = G[static_cast<int64_t>(j) * ldg + j];
  const double d = gjj - dd;
  if (!(d > kRankTol * gjj)) return false;  // also false for gjj == 0 and NaN
  L[p * ld + p] = sqrt(d);
  return true;
}

// y = L^{-1} h_P (forward, entries k0.. only: the first k0 are kept, valid when the first k0
// rows of L and order did not change), s = L^{-T} y (backward).
PYC_HD void chol_forward(const double* L, int64_t ld, const double* h, const int* order, int k0,
                         int p, double* y) {
  for (int k = k0; k < p; ++k) {
    double v = h[order[k]];
    for (int i = 0; i < k; ++i) v -= L[k * ld + i] * y[i];
    y[k] = v / L[k * ld + k];
  }
}

PYC_HD void chol_solve(const double* L, int64_t ld, const double* h, const int* order, int k0,
                       int p, double* y, double* s) {
  chol_forward(L, ld, h, order, k0, p, y);
  for (int k = p - 1; k >= 0; --k) {
    double v = y[k];
    for (int i = k + 1; i < p; ++i) v -= L[i * ld + k] * s[i];
    s[k] = v / L[k * ld + k];
  }
}

// Rebuilds the factor for `order` (p entries) from row q0 on (rows before q0 are those of the
// same leading columns, so they would come out the same); drops (and zeroes in x) columns that
// became dependent through rounding. Returns the new p.
PYC_HD int chol_rebuild(const double* G, int64_t ldg, double* L, int64_t ld, int* order, int q0,
                        int p, double* x, int* state) {
  int q = q0;
  for (int k = q0; k < p; ++k) {
    const int j = order[k];
    order[q] = j;
    if (chol_append(G, ldg, L, ld, order, q, j)) {
      ++q;
    } else {
      x[j] = 0.0;
      state[j] = 0;
    }
  }
  return q;
}

// Column j has a positive gradient w_j but is numerically in the span of the passive columns
// (chol_append failed; row p of L holds v = L^{-1} G[P,j]). In exact arithmetic Lawson–Hanson
// would add j and, through a near-singular system, end by trading passive weight for j. This
// takes that trade directly: along x_j = t, x_P -= t c with c = G[P,P]^{-1} G[P,j] (so A x moves
// only by t times j's part orthogonal to P, squared norm d), the residual falls by
// 2 t w_j - t^2 d, and t stops where the first passive coefficient with c_k > 0 reaches 0. The
// Gram form cannot resolve d at this size (it is within rounding of G_jj), so the swap is taken
// only when even t^2 d with d at its rank bound (kRankTol G_jj, or the computed d if larger)
// leaves the residual falling by t w_j or more: without it such a column used to stay out and
// leave a residual above the minimum (fuzzing finding 5, docs/reliability.md). The passive
// columns that reach 0 leave, j is appended to `order` (*p_io becomes its length), x is
// feasible and the caller rebuilds the factor from the returned row (or gets -1: no swap,
// nothing changed). `c` is scratch for p doubles.
PYC_HD int swap_in(const double* L, int64_t ld, int* order, int* p_io, double gjj, double wj,
                   const double* gd, double bb, int j, double* x, int* state, double* c) {
  const int p = *p_io;
  if (p == 0) return -1;
  const double* v = L + static_cast<int64_t>(p) * ld;
  double dd = 0.0;
  for (int k = p - 1; k >= 0; --k) {  // c = L^{-T} v
    double u = v[k];
    for (int i = k + 1; i < p; ++i) u -= L[i * ld + k] * c[i];
    c[k] = u / L[k * ld + k];
    dd += v[k] * v[k];
  }
  double t = -1.0;
  int kout = -1;
  for (int k = 0; k < p; ++k) {
    if (c[k] > 0.0) {
      const double tk = x[order[k]] / c[k];
      if (kout < 0 || tk < t) {
        t = tk;
        kout = k;
      }
    }
  }
  const double d = fmax(gjj - dd, kRankTol * gjj);
  if (kout < 0 || !(t > 0.0) || !isfinite(t) || !(t * d <= wj)) return -1;
  // Only moves of the size of b: a trade that makes A x a difference of far larger terms is
  // beyond what the Gram form resolves (|x_k a_k| <= kSwapScale |b| for j and every change).
  if (!(t * gd[j] <= kSwapScale * bb)) return -1;
  for (int k = 0; k < p; ++k)
    if (!(t * fabs(c[k]) * gd[order[k]] <= kSwapScale * bb)) return -1;
  int q = 0, q0 = -1;
  for (int k = 0; k < p; ++k) {
    const int col = order[k];
    const double xk = k == kout ? 0.0 : x[col] - t * c[k];
    if (xk > 0.0) {
      x[col] = xk;
      order[q++] = col;
    } else {
      x[col] = 0.0;
      state[col] = 0;
      if (q0 < 0) q0 = k;
    }
  }
  x[j] = t;
  state[j] = 1;
  order[q] = j;
  *p_io = q + 1;
  return q0;
}

// The Lawson–Hanson iterations from a valid state on n variables: the first *p_io entries of
// work.order are the passive set P (state 1) with x_P > 0 the least-squares solution on P and
// work.L the factor of G[P,P]; every other variable has x = 0 and state 0. Cold starts (solve)
// begin with P empty; IBD's greedy basis resumes from the previous step's solution. On return
// the first *p_io entries of work.order are the passive set and work.y holds L^{-1} h_P, so
// bb - |y|^2 is the squared residual. Returns kOk or kMaxIter (the last iterate is kept).
//
// Symmetric: G is exactly symmetric (the batched kernels form both triangles alike), so the
// gradient can run over the contiguous rows G[k,:] of the passive columns, n at a time, instead
// of G[j,k] for each j: the same products summed in the same order. IBD's resume passes a Gram
// matrix from a matrix product that need not be exactly symmetric and reads G[j,k].
template <bool Symmetric>
PYC_HD int iterate(const double* G, int64_t ldg, const double* h, double bb, int n, int max_iter,
                   double* x, Work work, int* p_io) {
  double* L = work.L;
  int* order = work.order;
  int* state = work.state;
  double* wv = work.w;
  double* mag = work.mag;
  double* gd = work.gd;
  int p = *p_io;
  int ny = 0;  // work.y holds L^{-1} h_P for the first ny passive columns
  int iter = 0;
  int swaps = 0;
  int status = kOk;
  for (int j = 0; j < n; ++j) gd[j] = sqrt(fabs(G[static_cast<int64_t>(j) * ldg + j] * bb));
  bool fresh = false;  // wv and mag are those of the current x
  while (true) {
    if (!fresh) {
      // Gradient w_j = h_j - sum_k G_jk x_k and its rounding bound mag_j = sum_k |G_jk x_k|,
      // summed over P in factor order; recomputed only when x changed.
      for (int j = 0; j < n; ++j) {
        wv[j] = h[j];
        mag[j] = 0.0;
      }
      for (int k = 0; k < p; ++k) {
        const int c = order[k];
        const double xc = x[c];
        if (Symmetric) {
          const double* gc = G + static_cast<int64_t>(c) * ldg;
          for (int j = 0; j < n; ++j) {
            const double t = gc[j] * xc;
            wv[j] -= t;
            mag[j] += fabs(t);
          }
        } else {
          for (int j = 0; j < n; ++j) {
            const double t = G[static_cast<int64_t>(j) * ldg + c] * xc;
            wv[j] -= t;
            mag[j] += fabs(t);
          }
        }
      }
      fresh = true;
    }
    // The zero-set column with the largest gradient above its tolerance (ties: the lower
    // index), without data-dependent branches: the candidates' gradients (0 for the others),
    // their maximum, then its first index.
    double* cand = work.s;  // free until the next solve
    for (int j = 0; j < n; ++j) {
      const double w = wv[j];
      const bool ok = (state[j] == 0) & (w > kGradTol * (gd[j] + mag[j])) & (w > 0.0);
      cand[j] = ok ? w : 0.0;
    }
    double wbest = 0.0;
    for (int j = 0; j < n; ++j) wbest = cand[j] > wbest ? cand[j] : wbest;
    if (!(wbest > 0.0)) break;
    int jbest = 0;
    while (cand[jbest] != wbest) ++jbest;
    if (++iter > max_iter) {
      status = kMaxIter;
      break;
    }
    bool first = true;
    bool changed = false;
    if (chol_append(G, ldg, L, n, order, p, jbest)) {
      order[p++] = jbest;
      state[jbest] = 1;
    } else {
      const int q0 = swaps < n ? swap_in(L, n, order, &p,
                                         G[static_cast<int64_t>(jbest) * ldg + jbest], wbest,
                                         gd, bb, jbest, x, state, work.s)
                               : -1;
      if (q0 < 0) {
        state[jbest] = 2;
        continue;
      }
      ++swaps;  // at most n per call, not counted as column additions: rounding cannot cycle
      --iter;
      p = chol_rebuild(G, ldg, L, n, order, q0, p, x, state);
      if (ny > q0) ny = q0;
      first = false;  // x moved to a feasible point of the new passive set: step from there
      changed = true;
    }
    while (p > 0) {
      chol_solve(L, n, h, order, ny, p, work.y, work.s);
      ny = p;
      if (first && !(work.s[p - 1] > 0.0)) {  // Lawson–Hanson's test on the entering column
        --p;
        ny = p;
        state[jbest] = 2;
        break;
      }
      first = false;
      changed = true;
      double alpha = 2.0;
      int kmin = -1;
      for (int k = 0; k < p; ++k) {
        const double sk = work.s[k];
        if (!(sk > 0.0)) {
          const double xk = x[order[k]];
          const double a = xk / (xk - sk);
          if (a < alpha) {
            alpha = a;
            kmin = k;
          }
        }
      }
      if (kmin < 0) {
        for (int k = 0; k < p; ++k) x[order[k]] = work.s[k];
        break;
      }
      int q = 0;
      int q0 = -1;  // first column that leaves: the factor rows before it stay
      for (int k = 0; k < p; ++k) {
        const int j = order[k];
        const double v = x[j] + alpha * (work.s[k] - x[j]);
        if (k == kmin || !(v > 0.0)) {
          x[j] = 0.0;
          state[j] = 0;
          if (q0 < 0) q0 = k;
        } else {
          x[j] = v;
          order[q++] = j;
        }
      }
      p = chol_rebuild(G, ldg, L, n, order, q0, q, x, state);
      if (ny > q0) ny = q0;
    }
    if (changed) {
      fresh = false;
      for (int j = 0; j < n; ++j)
        if (state[j] == 2) state[j] = 0;
    }
  }
  if (ny < p) chol_forward(L, n, h, order, ny, p, work.y);
  *p_io = p;
  return status;
}

// Solves the NNLS problem given by (G, h, bb) on n variables from x = 0; x (n) receives the
// solution. On return the first *p_out entries of work.order are the passive set and work.y
// holds L^{-1} h_P, so bb - |y|^2 is the squared residual. Returns a Status.
PYC_HD int solve(const double* G, int64_t ldg, const double* h, double bb, int n, int max_iter,
                 double* x, Work work, int* p_out) {
  *p_out = 0;
  for (int j = 0; j < n; ++j) {
    x[j] = 0.0;
    work.state[j] = 0;
  }
  // A NaN or inf anywhere in A or b makes bb, a diagonal entry of G or an entry of h non-finite.
  if (!isfinite(bb)) return kNonFinite;
  for (int j = 0; j < n; ++j)
    if (!isfinite(G[static_cast<int64_t>(j) * ldg + j]) || !isfinite(h[j])) return kNonFinite;
  return iterate<true>(G, ldg, h, bb, n, max_iter, x, work, p_out);
}

// ---- IBD's greedy basis selection (eq. 6) for one target, in Gram form ----------------------
//
// G: candidate Gram matrix (N x N, row stride ldg); h: candidate-target inner products (N);
// tt: |target|^2. The state holds the chosen set S, the NNLS solution on S, its passive set and
// the factor of G[P,P] (row stride max_terms).
//
// A step never solves the NNLS problem on S + {j} from scratch: it resumes Lawson–Hanson from the
// solution on S (j at 0), so the fit on S + {j} is never worse than the one on S, and the step
// that commits j applies exactly the computation that the trial of j evaluated. (Commit used to
// re-solve S + {j} from x = 0; on nearly dependent candidates that path could stop at another,
// non-minimal point and the residual grew: fuzzing finding 3, docs/reliability.md.)
struct Basis {
  int t;          // |S|
  int p;          // |P|
  int* sel;       // max_terms, chosen candidates in order
  int* order;     // max_terms, passive candidates (global ids) in factor order
  double* coef;   // max_terms, NNLS coefficients of sel
  double* xp;     // max_terms, coefficients of order (the passive ones)
  int* zs;        // max_terms, chosen candidates with coefficient 0
  int nz;         // |zs|
  double* L;      // max_terms^2
  double* y;      // max_terms, L^{-1} h_P
  double res2;    // tt - |y|^2
};

// Scratch of one trial on at most T = max_terms terms: doubles and ints.
PYC_HD int64_t trial_doubles(int64_t T) {
  return T * T + 2 * T + work_doubles(T) + 3 * T;
}
PYC_HD int64_t trial_ints(int64_t T) { return work_ints(T) + T; }

// What adding candidate j does to the NNLS solution on S.
enum StepKind : int {
  kKeep = 0,     // nothing: j stays at 0 (no descent, dependent on P, or no better fit found)
  kAppend = 1,   // j joins P, no coefficient changes sign and the chosen zeros stay optimal
  kResume = 2,   // Lawson–Hanson resumed on S + {j}; its state is in the scratch
};
struct Step {
  int kind;
  double delta;  // kAppend: new diagonal entry of the factor
  double yj;     // kAppend: new entry of y
  double sj;     // kAppend: coefficient of j
  int p;         // kResume: passive-set size
};

// Scratch layout of extend (T = max_terms): z (T), u (T), x on S + {j} (T), G and h of S + {j}
// (T*T + T), solver work; ints: ids of S + {j} (T), solver work.
PYC_HD Work resume_work(double* dscratch, int* iscratch, int n, int64_t T) {
  return make_work(dscratch + 4 * T + T * T, iscratch + T, n);
}

// The general case of extend: resumes Lawson–Hanson on S + {j} (local ids: sel in order, then
// j) from the solution on S, its passive set and factor. Kept out of line: the trials that need
// it are rare, and inlining it into the trial loop slows the common path down.
PYC_NOINLINE double resume(const double* G, int64_t ldg, const double* h, double tt,
                           const Basis& B, int j, double* dscratch, int* iscratch, int64_t T,
                           Step* st) {
  const int p = B.p;
  const int n = B.t + 1;
  double* x = dscratch + 2 * T;
  double* Gs = x + T;  // n*n (stride n)
  double* hs = Gs + T * T;
  int* ids = iscratch;
  Work wk = resume_work(dscratch, iscratch, n, T);
  for (int a = 0; a < n; ++a) {
    ids[a] = a < B.t ? B.sel[a] : j;
    x[a] = a < B.t ? B.coef[a] : 0.0;
    wk.state[a] = 0;
  }
  for (int a = 0; a < n; ++a) {
    hs[a] = h[ids[a]];
    for (int b = 0; b < n; ++b) Gs[a * n + b] = G[static_cast<int64_t>(ids[a]) * ldg + ids[b]];
  }
  for (int k = 0; k < p; ++k) {
    int a = 0;
    while (ids[a] != B.order[k]) ++a;
    wk.order[k] = a;
    wk.state[a] = 1;
    for (int i = 0; i <= k; ++i) wk.L[k * n + i] = B.L[k * T + i];
  }
  int pp = p;
  // Each addition after the first follows a strict decrease, so 3n + 3 suffice unless rounding
  // makes it cycle; the last iterate is then kept (its fit is checked below like any other).
  iterate<false>(Gs, n, hs, tt, n, 3 * n + 3, x, wk, &pp);
  double y2 = 0.0;
  for (int k = 0; k < pp; ++k) y2 += wk.y[k] * wk.y[k];
  const double r2 = tt - y2;
  // The solution on S (j at 0) is feasible on S + {j}: never commit a worse fit than it, which
  // rounding on nearly dependent columns could otherwise produce.
  if (!(r2 <= B.res2)) return B.res2;
  st->kind = kResume;
  st->p = pp;
  return r2;
}

// The NNLS fit on S + {j} for a candidate j not in S, from the solution on S: returns its
// squared residual; *st (kind preset to kKeep by the caller) says how to get there.
PYC_HD double extend(const double* G, int64_t ldg, const double* h, double tt, const Basis& B,
                     int j, double* dscratch, int* iscratch, int64_t T, Step* st) {
  const int p = B.p;
  const double* row = G + static_cast<int64_t>(j) * ldg;
  // Gradient of the current solution in direction j; no descent -> no improvement.
  double w = h[j];
  double mag = 0.0;
  for (int k = 0; k < p; ++k) {
    const double v = row[B.order[k]] * B.xp[k];
    w -= v;
    mag += fabs(v);
  }
  if (!(w > kGradTol * (sqrt(fabs(row[j] * tt)) + mag))) return B.res2;
  // Extend the factor by column j: z = L^{-1} G[P,j], d = G_jj - |z|^2.
  double* z = dscratch;
  double* u = z + T;
  double zz = 0.0;
  double zy = 0.0;
  for (int k = 0; k < p; ++k) {
    double v = row[B.order[k]];
    for (int i = 0; i < k; ++i) v -= B.L[k * T + i] * z[i];
    v /= B.L[k * T + k];
    z[k] = v;
    zz += v * v;
    zy += v * B.y[k];
  }
  const double d = row[j] - zz;
  if (!(d > kRankTol * row[j])) return B.res2;  // j lies in the span of P (as chol_append decides)
  const double delta = sqrt(d);
  const double yj = (h[j] - zy) / delta;
  if (!(yj > 0.0)) return B.res2;  // Lawson–Hanson's test on the entering column
  const double sj = yj / delta;
  // Unconstrained solution on P + {j}: s_P' = s_P - sj * L^{-T} z.
  bool fast = true;
  for (int k = p - 1; k >= 0; --k) {
    double v = z[k];
    for (int i = k + 1; i < p; ++i) v -= B.L[i * T + k] * u[i];
    u[k] = v / B.L[k * T + k];
  }
  for (int k = 0; k < p && fast; ++k) {
    if (!(B.xp[k] - sj * u[k] > 0.0)) fast = false;
  }
  // Chosen columns outside P must keep a non-positive gradient at the new point.
  for (int a = 0; a < B.nz && fast; ++a) {
    const int i = B.zs[a];
    const double* ri = G + static_cast<int64_t>(i) * ldg;
    double wi = h[i] - ri[j] * sj;
    double mi = fabs(ri[j] * sj);
    for (int k = 0; k < p; ++k) {
      const double v = ri[B.order[k]] * (B.xp[k] - sj * u[k]);
      wi -= v;
      mi += fabs(v);
    }
    if (wi > kGradTol * (sqrt(fabs(ri[i] * tt)) + mi)) fast = false;
  }
  if (fast) {
    st->kind = kAppend;
    st->delta = delta;
    st->yj = yj;
    st->sj = sj;
    return B.res2 - yj * yj;
  }
  return resume(G, ldg, h, tt, B, j, dscratch, iscratch, T, st);
}

// Squared residual of the NNLS fit on S + {j}, for a candidate j not in S.
PYC_HD double trial(const double* G, int64_t ldg, const double* h, double tt, const Basis& B,
                    int j, double* dscratch, int* iscratch, int64_t T) {
  Step st;
  st.kind = kKeep;
  return extend(G, ldg, h, tt, B, j, dscratch, iscratch, T, &st);
}

// Adds candidate j to S and stores the fit that trial(j) evaluated.
PYC_HD void commit(const double* G, int64_t ldg, const double* h, double tt, Basis* B, int j,
                   double* dscratch, int* iscratch, int64_t T) {
  Step st;
  st.kind = kKeep;
  const double res2 = extend(G, ldg, h, tt, *B, j, dscratch, iscratch, T, &st);
  const int t = B->t;
  const int n = t + 1;
  B->sel[t] = j;
  B->t = n;
  B->res2 = res2;
  if (st.kind == kKeep) {
    B->coef[t] = 0.0;
    B->zs[B->nz++] = j;
    return;
  }
  if (st.kind == kAppend) {
    const double* z = dscratch;
    const double* u = dscratch + T;
    const int p = B->p;
    for (int k = 0; k < p; ++k) B->xp[k] = B->xp[k] - st.sj * u[k];
    for (int i = 0; i < p; ++i) B->L[p * T + i] = z[i];
    B->L[p * T + p] = st.delta;
    B->y[p] = st.yj;
    B->order[p] = j;
    B->xp[p] = st.sj;
    B->p = p + 1;
  } else {
    const double* x = dscratch + 2 * T;
    const Work wk = resume_work(dscratch, iscratch, n, T);
    B->p = st.p;
    for (int k = 0; k < st.p; ++k) {
      B->order[k] = B->sel[wk.order[k]];  // local -> global ids
      B->xp[k] = x[wk.order[k]];
      B->y[k] = wk.y[k];
      for (int i = 0; i <= k; ++i) B->L[k * T + i] = wk.L[k * n + i];
    }
  }
  for (int a = 0; a < n; ++a) B->coef[a] = 0.0;
  for (int k = 0; k < B->p; ++k) {
    int a = 0;
    while (B->sel[a] != B->order[k]) ++a;
    B->coef[a] = B->xp[k];
  }
  B->nz = 0;
  for (int a = 0; a < n; ++a)
    if (!(B->coef[a] > 0.0)) B->zs[B->nz++] = B->sel[a];
}

}  // namespace nnls_gram
}  // namespace pyconcepts
