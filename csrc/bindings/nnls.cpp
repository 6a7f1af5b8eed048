// Bindings of the batched NNLS and greedy NNLS basis kernels (pointers arrive as integers).
#include <cstdint>

#include "common/checks.h"
#include "common/registry.h"
#include "cpu/nnls.h"

namespace py = pybind11;
using pyconcepts::as_ptr;

template <typename T>
static void nnls_entry(std::uintptr_t A, std::uintptr_t b, std::uintptr_t x, std::uintptr_t info,
                       std::int64_t batch, std::int64_t m, std::int64_t n,
                       std::int64_t max_iter) {
  pyconcepts::nnls_cpu<T>(as_ptr<const T>(A), as_ptr<const T>(b), as_ptr<T>(x),
                          as_ptr<std::int32_t>(info), batch, m, n, max_iter);
}

PYCONCEPTS_BINDINGS(bind_nnls) {
  const char* doc =
      "nnls(A, b, x, info, batch, m, n, max_iter): batched Lawson-Hanson NNLS; info[b] = 1 "
      "when problem b needed more than max_iter column additions.";
  m.def("nnls_f32", &nnls_entry<float>, doc, py::call_guard<py::gil_scoped_release>());
  m.def("nnls_f64", &nnls_entry<double>, doc, py::call_guard<py::gil_scoped_release>());
  m.def(
      "greedy_nnls_basis_f64",
      [](std::uintptr_t G, std::uintptr_t H, std::uintptr_t tt, std::uintptr_t indices,
         std::uintptr_t coefs, std::uintptr_t res, std::int64_t K, std::int64_t N,
         std::int64_t T) {
        pyconcepts::greedy_nnls_basis_cpu(as_ptr<const double>(G), as_ptr<const double>(H),
                                          as_ptr<const double>(tt), as_ptr<std::int64_t>(indices),
                                          as_ptr<double>(coefs), as_ptr<double>(res), K, N, T);
      },
      "greedy_nnls_basis(G, H, tt, indices, coefs, residual_norms, K, N, T): IBD eq. 6 in Gram "
      "form (G = C C^T, H = targets C^T, tt = |target|^2, all float64).",
      py::call_guard<py::gil_scoped_release>());
}
