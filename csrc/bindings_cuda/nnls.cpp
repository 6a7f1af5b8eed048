// Bindings of the CUDA NNLS kernels into _core_cuda (device pointers and the stream as integers).
#include <cstdint>

#include "common/checks.h"
#include "common/nnls_gram.h"
#include "common/registry.h"
#include "cuda/nnls.h"

namespace py = pybind11;
using pyconcepts::as_ptr;
using pyconcepts::check;

template <typename T>
static void nnls_entry(std::uintptr_t A, std::uintptr_t b, std::uintptr_t x, std::uintptr_t info,
                       std::uintptr_t ws_d, std::uintptr_t ws_i, std::int64_t batch,
                       std::int64_t m, std::int64_t n, std::int64_t max_iter,
                       std::uintptr_t stream) {
  pyconcepts::check_sizes_nonnegative({batch, m, n, max_iter}, "nnls");
  pyconcepts::nnls_cuda<T>(as_ptr<const T>(A), as_ptr<const T>(b), as_ptr<T>(x),
                           as_ptr<std::int32_t>(info), as_ptr<double>(ws_d), as_ptr<int>(ws_i),
                           batch, m, n, max_iter, stream);
}

PYCONCEPTS_BINDINGS(bind_nnls_cuda) {
  m.def(
      "nnls_workspace",
      [](std::int64_t n) {
        namespace ng = pyconcepts::nnls_gram;
        return py::make_tuple(n * n + 2 * n + ng::work_doubles(n), ng::work_ints(n));
      },
      "Per-problem workspace of nnls on n variables: (doubles, int32s).");
  m.attr("greedy_max_terms") = pyconcepts::kGreedyMaxTerms;
  const char* doc =
      "nnls(A, b, x, info, ws_d, ws_i, batch, m, n, max_iter, stream): one warp per problem.";
  m.def("nnls_f32", &nnls_entry<float>, doc, py::call_guard<py::gil_scoped_release>());
  m.def("nnls_f64", &nnls_entry<double>, doc, py::call_guard<py::gil_scoped_release>());
  m.def(
      "greedy_nnls_basis_f64",
      [](std::uintptr_t G, std::uintptr_t H, std::uintptr_t tt, std::uintptr_t indices,
         std::uintptr_t coefs, std::uintptr_t res, std::int64_t K, std::int64_t N, std::int64_t T,
         std::uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({K, N, T}, "greedy_nnls_basis");
        check(T <= N, "greedy_nnls_basis: max_terms must be <= the number of candidates, got ",
              T, " > ", N);
        check(T <= pyconcepts::kGreedyMaxTerms, "greedy_nnls_basis: the CUDA kernel builds at most ",
              pyconcepts::kGreedyMaxTerms, " terms, got max_terms=", T);
        pyconcepts::greedy_nnls_basis_cuda(as_ptr<const double>(G), as_ptr<const double>(H),
                                           as_ptr<const double>(tt),
                                           as_ptr<std::int64_t>(indices), as_ptr<double>(coefs),
                                           as_ptr<double>(res), K, N, T, stream);
      },
      "greedy_nnls_basis(G, H, tt, indices, coefs, residual_norms, K, N, T, stream): one block "
      "per target.",
      py::call_guard<py::gil_scoped_release>());
}
