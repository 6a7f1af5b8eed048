// CUDA launchers for batched NNLS and the greedy NNLS basis (plain C++ interface, no pybind11).
#pragma once
#include <cstdint>

namespace pyconcepts {

// Largest basis the CUDA greedy kernel builds (its per-thread scratch is sized at compile time).
constexpr std::int64_t kGreedyMaxTerms = 16;

// As nnls_cpu, on device pointers. ws_d: batch * (n*n + 3n + work) doubles, ws_i: batch * 2n
// ints (nnls_workspace_sizes gives both); runs on `stream`, does not synchronize.
template <typename T>
void nnls_cuda(const T* A, const T* rhs, T* x, std::int32_t* info, double* ws_d, int* ws_i,
               std::int64_t batch, std::int64_t m, std::int64_t n, std::int64_t max_iter,
               std::uintptr_t stream);

// As greedy_nnls_basis_cpu, on device pointers; T <= kGreedyMaxTerms.
void greedy_nnls_basis_cuda(const double* G, const double* H, const double* tt,
                            std::int64_t* indices, double* coefs, double* residual_norms,
                            std::int64_t K, std::int64_t N, std::int64_t T,
                            std::uintptr_t stream);

}  // namespace pyconcepts
