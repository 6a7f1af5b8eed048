// Bindings for the CUDA semi-hard triplet kernels (csrc/cuda/triplet.cu).
#include <pybind11/pybind11.h>

#include "common/checks.h"
#include "common/registry.h"
#include "cuda/triplet.h"

namespace py = pybind11;

namespace {

template <typename T>
void loss(std::uintptr_t emb, std::uintptr_t labels, std::int64_t n, std::int64_t q,
          double margin, bool squared, std::uintptr_t workspace, std::int64_t ws_rows,
          std::uintptr_t anchor_loss, std::uintptr_t grad, std::uintptr_t stream) {
  pyconcepts::cuda::semihard_triplet_loss<T>(
      pyconcepts::as_ptr<const T>(emb), pyconcepts::as_ptr<const std::int64_t>(labels), n, q,
      margin, squared, pyconcepts::as_ptr<T>(workspace), ws_rows,
      pyconcepts::as_ptr<double>(anchor_loss), pyconcepts::as_ptr<T>(grad), stream);
}

template <typename T>
void triplets(std::uintptr_t emb, std::uintptr_t labels, std::int64_t n, std::int64_t q,
              std::uintptr_t workspace, std::int64_t ws_rows, std::uintptr_t offsets,
              std::uintptr_t anchors, std::uintptr_t positives, std::uintptr_t negatives,
              std::uintptr_t stream) {
  pyconcepts::cuda::semihard_triplets<T>(
      pyconcepts::as_ptr<const T>(emb), pyconcepts::as_ptr<const std::int64_t>(labels), n, q,
      pyconcepts::as_ptr<T>(workspace), ws_rows, pyconcepts::as_ptr<const std::int64_t>(offsets),
      pyconcepts::as_ptr<std::int64_t>(anchors), pyconcepts::as_ptr<std::int64_t>(positives),
      pyconcepts::as_ptr<std::int64_t>(negatives), stream);
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_triplet_cuda) {
  const char* loss_doc =
      "(emb, labels, n, q, margin, squared, workspace, ws_rows, anchor_loss, grad, stream): "
      "per-anchor semi-hard triplet loss sums (float64) and their gradient (grad may be 0).";
  const char* mine_doc =
      "(emb, labels, n, q, workspace, ws_rows, offsets, anchors, positives, negatives, stream): "
      "the mined triplets, anchor a's pairs from offsets[a].";
  m.def("semihard_triplet_loss_f32", &loss<float>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplet_loss_f64", &loss<double>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f32", &triplets<float>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f64", &triplets<double>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
}
