// Batched non-negative least squares and IBD's greedy NNLS basis selection (CPU, OpenMP).
#pragma once
#include <cstdint>

namespace pyconcepts {

// x[b] = argmin_{x >= 0} ||A[b] x - b[b]|| for every problem b of the batch. A is
// [batch, m, n] row-major, rhs [batch, m], x [batch, n]; info[b] receives a
// nnls_gram::Status (0 ok, 1 more than max_iter column additions).
template <typename T>
void nnls_cpu(const T* A, const T* rhs, T* x, std::int32_t* info, std::int64_t batch,
              std::int64_t m, std::int64_t n, std::int64_t max_iter);

// IBD's greedy selection (eq. 6) from the Gram form: G [N, N] = C C^T, H [K, N] = targets C^T,
// tt [K] = |target|^2. Writes indices [K, T], coefs [K, T] (NNLS coefficients of the final
// basis, in selection order) and residual norms [K, T] (after 1..T terms).
void greedy_nnls_basis_cpu(const double* G, const double* H, const double* tt,
                           std::int64_t* indices, double* coefs, double* residual_norms,
                           std::int64_t K, std::int64_t N, std::int64_t T);

}  // namespace pyconcepts
