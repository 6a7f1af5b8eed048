// Bindings for the semi-hard triplet kernels (csrc/cpu/triplet.cpp).
#include <pybind11/pybind11.h>

#include "common/checks.h"
#include "common/registry.h"
#include "cpu/triplet.h"
#include "cpu/triplet_rule_emulated.h"

namespace py = pybind11;

namespace {

template <typename T>
void loss(std::uintptr_t emb, std::uintptr_t labels, std::int64_t n, std::int64_t q,
          double margin, bool squared, std::uintptr_t anchor_loss, std::uintptr_t grad) {
  pyconcepts::cpu::semihard_triplet_loss<T>(
      pyconcepts::as_ptr<const T>(emb), pyconcepts::as_ptr<const std::int64_t>(labels), n, q,
      margin, squared, pyconcepts::as_ptr<double>(anchor_loss), pyconcepts::as_ptr<T>(grad));
}

template <typename T>
void triplets(std::uintptr_t emb, std::uintptr_t labels, std::int64_t n, std::int64_t q,
              std::uintptr_t offsets, std::uintptr_t anchors, std::uintptr_t positives,
              std::uintptr_t negatives) {
  pyconcepts::cpu::semihard_triplets<T>(
      pyconcepts::as_ptr<const T>(emb), pyconcepts::as_ptr<const std::int64_t>(labels), n, q,
      pyconcepts::as_ptr<const std::int64_t>(offsets),
      pyconcepts::as_ptr<std::int64_t>(anchors), pyconcepts::as_ptr<std::int64_t>(positives),
      pyconcepts::as_ptr<std::int64_t>(negatives));
}

template <typename T>
void rule_emulated(std::uintptr_t emb, std::int64_t n, std::int64_t q, std::uintptr_t members,
                   std::uintptr_t class_start, std::uintptr_t class_stop, double margin,
                   bool squared, std::uintptr_t offsets, std::uintptr_t anchors,
                   std::uintptr_t positives, std::uintptr_t negatives, std::uintptr_t anchor_loss,
                   std::uintptr_t grad) {
  using pyconcepts::as_ptr;
  pyconcepts::cpu::semihard_rule_emulated<T>(
      as_ptr<const T>(emb), n, q, as_ptr<const std::int64_t>(members),
      as_ptr<const std::int64_t>(class_start), as_ptr<const std::int64_t>(class_stop), margin,
      squared, as_ptr<const std::int64_t>(offsets), as_ptr<std::int64_t>(anchors),
      as_ptr<std::int64_t>(positives), as_ptr<std::int64_t>(negatives),
      as_ptr<double>(anchor_loss), as_ptr<T>(grad));
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_triplet) {
  const char* loss_doc =
      "(emb, labels, n, q, margin, squared, anchor_loss, grad): per-anchor semi-hard triplet "
      "loss sums into anchor_loss [n] (float64); gradient of their sum into grad [n, q] "
      "unless grad is 0.";
  const char* mine_doc =
      "(emb, labels, n, q, offsets, anchors, positives, negatives): the mined triplets, anchor "
      "a's pairs from offsets[a], positives in index order.";
  m.def("semihard_triplet_loss_f32", &loss<float>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplet_loss_f64", &loss<double>, loss_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f32", &triplets<float>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_triplets_f64", &triplets<double>, mine_doc,
        py::call_guard<py::gil_scoped_release>());
  const char* emulated_doc =
      "(emb, n, q, members, class_start, class_stop, margin, squared, offsets, anchors, "
      "positives, negatives, anchor_loss, grad): the CUDA triplet kernel's steps run "
      "sequentially on the CPU, for tests without a GPU (csrc/cpu/triplet_rule_emulated.h).";
  m.def("semihard_rule_emulated_f32", &rule_emulated<float>, emulated_doc,
        py::call_guard<py::gil_scoped_release>());
  m.def("semihard_rule_emulated_f64", &rule_emulated<double>, emulated_doc,
        py::call_guard<py::gil_scoped_release>());
}
