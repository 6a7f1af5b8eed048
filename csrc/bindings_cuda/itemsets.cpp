// Bindings of the CUDA itemset support kernels (raw device pointers, sizes, stream last).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/checks.h"
#include "common/registry.h"
#include "cuda/itemsets.cuh"

namespace py = pybind11;

PYCONCEPTS_BINDINGS(bind_itemsets_cuda) {
  m.def(
      "itemsets_fill_bitsets",
      [](std::uintptr_t indptr, std::uintptr_t dense, std::int64_t n_transactions,
         std::int64_t n_words, std::uintptr_t bits, std::uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({n_transactions, n_words}, "itemsets_fill_bitsets");
        pyconcepts::itemsets_fill_bitsets_cuda(
            pyconcepts::as_ptr<const std::int64_t>(indptr),
            pyconcepts::as_ptr<const std::int32_t>(dense), n_transactions, n_words,
            pyconcepts::as_ptr<unsigned long long>(bits), stream);
      },
      "(indptr, dense, n_transactions, n_words, bits, stream)",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "itemsets_count_support",
      [](std::uintptr_t bits, std::int64_t n_transactions, std::int64_t n_words,
         std::uintptr_t query_offsets, std::uintptr_t query_items, std::int64_t n_queries,
         std::uintptr_t counts, std::uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({n_transactions, n_words, n_queries},
                                            "itemsets_count_support");
        pyconcepts::itemsets_count_support_cuda(
            pyconcepts::as_ptr<const unsigned long long>(bits), n_transactions, n_words,
            pyconcepts::as_ptr<const std::int64_t>(query_offsets),
            pyconcepts::as_ptr<const std::int32_t>(query_items), n_queries,
            pyconcepts::as_ptr<unsigned long long>(counts), stream);
      },
      "(bits, n_transactions, n_words, query_offsets, query_items, n_queries, counts, stream)",
      py::call_guard<py::gil_scoped_release>());
}
