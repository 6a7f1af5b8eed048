// Bindings for the CUDA semi-hard triplet kernels (csrc/cuda/triplet.cu).
#include <pybind11/pybind11.h>

#include "common/checks.h"
#include "common/registry.h"
#include "cuda/triplet.h"

namespace py = pybind11;

namespace {

using pyconcepts::as_ptr;

pyconcepts::cuda::ClassLayout class_layout(std::uintptr_t members, std::uintptr_t class_start,
                                           std::uintptr_t class_stop, std::int64_t max_class) {
  return {as_ptr<const std::int64_t>(members), as_ptr<const std::int64_t>(class_start),
          as_ptr<const std::int64_t>(class_stop), max_class};
}

template <typename T>
void loss(std::uintptr_t emb, std::int64_t n, std::int64_t q, std::uintptr_t members,
          std::uintptr_t class_start, std::uintptr_t class_stop, std::int64_t max_class,
          std::uintptr_t workspace, std::int64_t workspace_bytes, double margin, bool squared,
          std::uintptr_t anchor_loss, std::uintptr_t grad, std::uintptr_t stream) {
  pyconcepts::cuda::semihard_triplet_loss<T>(
      as_ptr<const T>(emb), n, q, class_layout(members, class_start, class_stop, max_class),
      as_ptr<void>(workspace), workspace_bytes, margin, squared, as_ptr<double>(anchor_loss),
      as_ptr<T>(grad), stream);
}

template <typename T>
void triplets(std::uintptr_t emb, std::int64_t n, std::int64_t q, std::uintptr_t members,
              std::uintptr_t class_start, std::uintptr_t class_stop, std::int64_t max_class,
              std::uintptr_t workspace, std::int64_t workspace_bytes, std::uintptr_t offsets,
              std::uintptr_t anchors, std::uintptr_t positives, std::uintptr_t negatives,
              std::uintptr_t stream) {
  pyconcepts::cuda::semihard_triplets<T>(
      as_ptr<const T>(emb), n, q, class_layout(members, class_start, class_stop, max_class),
      as_ptr<void>(workspace), workspace_bytes, as_ptr<const std::int64_t>(offsets),
      as_ptr<std::int64_t>(anchors), as_ptr<std::int64_t>(positives),
      as_ptr<std::int64_t>(negatives), stream);
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_triplet_cuda) {
  const char* workspace_doc =
      "(n, q, max_class): bytes of global workspace the triplet kernels need on the current "
      "device (0 unless the largest class's state outgrows shared memory).";
  const char* loss_doc =
      "(emb, n, q, members, class_start, class_stop, max_class, workspace, workspace_bytes, "
      "margin, squared, anchor_loss, grad, stream): per-anchor semi-hard triplet loss sums "
      "(float64) and their gradient (grad may be 0), rows given in class order.";
  const char* mine_doc =
      "(emb, n, q, members, class_start, class_stop, max_class, workspace, workspace_bytes, "
      "offsets, anchors, positives, negatives, stream): the mined triplets, anchor a's pairs "
      "from offsets[a].";
  m.def("semihard_workspace_bytes_f32", &pyconcepts::cuda::semihard_workspace_bytes<float>,
        workspace_doc);
  m.def("semihard_workspace_bytes_f64", &pyconcepts::cuda::semihard_workspace_bytes<double>,
        workspace_doc);
  m.def("semihard_triplet_loss_f32", &loss<float>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplet_loss_f64", &loss<double>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f32", &triplets<float>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f64", &triplets<double>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
}
