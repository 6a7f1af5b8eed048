// Bindings of the itemset kernels, plus the conversion of Python lists of transactions to CSR
// arrays (done here, with the GIL held, because it walks Python objects).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/registry.h"
#include "cpu/itemsets.h"

namespace py = pybind11;

namespace {

// A 1-D numpy array that takes ownership of v (no copy).
template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owned = new std::vector<T>(std::move(v));
  py::capsule owner(owned, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(owned->size())}, {sizeof(T)}, owned->data(),
                        owner);
}

// Mines without the GIL, then builds the [(items_tuple, count), ...] list from the flat table
// (the Python objects are made here, after the kernel, not inside it).
template <typename Index>
py::list mine(std::uintptr_t indptr, std::uintptr_t indices, std::int64_t n_transactions,
              std::int64_t min_count, std::int64_t max_len, std::int64_t max_itemsets) {
  pyconcepts::ItemsetTable table;
  {
    py::gil_scoped_release release;
    table = pyconcepts::frequent_itemsets(pyconcepts::as_ptr<const std::int64_t>(indptr),
                                          pyconcepts::as_ptr<const Index>(indices), n_transactions,
                                          min_count, max_len, max_itemsets);
  }
  const std::size_t n_sets = table.counts.size();
  py::list result(n_sets);
  for (std::size_t k = 0; k < n_sets; ++k) {
    const std::int64_t begin = table.offsets[k], end = table.offsets[k + 1];
    py::tuple items(end - begin);
    for (std::int64_t i = begin; i < end; ++i) {
      PyTuple_SET_ITEM(items.ptr(), i - begin, PyLong_FromLongLong(table.items[i]));
    }
    PyList_SET_ITEM(result.ptr(), k, py::make_tuple(std::move(items), table.counts[k]).release().ptr());
  }
  return result;
}

template <typename Index>
void support(std::uintptr_t indptr, std::uintptr_t indices, std::int64_t n_transactions,
             std::uintptr_t query_offsets, std::uintptr_t query_items, std::int64_t n_queries,
             std::uintptr_t counts) {
  pyconcepts::itemset_support(pyconcepts::as_ptr<const std::int64_t>(indptr),
                              pyconcepts::as_ptr<const Index>(indices), n_transactions,
                              pyconcepts::as_ptr<const std::int64_t>(query_offsets),
                              pyconcepts::as_ptr<const std::int64_t>(query_items), n_queries,
                              pyconcepts::as_ptr<std::int64_t>(counts));
}

std::string type_name(PyObject* o) { return Py_TYPE(o)->tp_name; }

// One item as a 64-bit integer (Python ints and anything with __index__, e.g. numpy integers).
std::int64_t item_value(PyObject* x, const std::string& name, std::int64_t tx) {
  py::object owned;
  if (!PyLong_Check(x)) {
    PyObject* index = PyNumber_Index(x);
    if (index == nullptr) {
      PyErr_Clear();
      throw py::type_error(pyconcepts::concat(name, "[", tx, "]: expected integer items, got ",
                                              type_name(x)));
    }
    owned = py::reinterpret_steal<py::object>(index);
    x = index;
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
  if (overflow != 0) {
    throw py::value_error(pyconcepts::concat(name, "[", tx, "]: item ",
                                             py::str(x).cast<std::string>(),
                                             " does not fit in a signed 64-bit integer"));
  }
  return static_cast<std::int64_t>(v);
}

// A sequence of iterables of integers -> (indptr int64 [n+1], indices int64 [nnz]).
py::tuple transactions_to_csr(py::handle transactions, const std::string& name) {
  PyObject* seq = PySequence_Fast(transactions.ptr(), "");
  if (seq == nullptr) {
    PyErr_Clear();
    throw py::type_error(name + ": expected a sequence of iterables of integers, got " +
                         type_name(transactions.ptr()));
  }
  const py::object seq_owner = py::reinterpret_steal<py::object>(seq);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** rows = PySequence_Fast_ITEMS(seq);
  // Lists and tuples tell their length: size the output once (no regrowth copies).
  std::size_t known = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (PyList_Check(rows[i]) || PyTuple_Check(rows[i])) known += Py_SIZE(rows[i]);
  }
  std::vector<std::int64_t> indptr(n + 1, 0), indices;
  indices.reserve(known);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* row = PySequence_Fast(rows[i], "");
    if (row == nullptr) {
      PyErr_Clear();
      throw py::type_error(pyconcepts::concat(name, "[", i,
                                              "]: expected an iterable of integers, got ",
                                              type_name(rows[i])));
    }
    const py::object row_owner = py::reinterpret_steal<py::object>(row);
    const Py_ssize_t k = PySequence_Fast_GET_SIZE(row);
    PyObject** items = PySequence_Fast_ITEMS(row);
    for (Py_ssize_t j = 0; j < k; ++j) indices.push_back(item_value(items[j], name, i));
    indptr[i + 1] = static_cast<std::int64_t>(indices.size());
  }
  return py::make_tuple(to_numpy(std::move(indptr)), to_numpy(std::move(indices)));
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_itemsets) {
  m.def("frequent_itemsets_i32", &mine<std::int32_t>,
        "(indptr, indices, n_transactions, min_count, max_len, max_itemsets) -> [(items, count)]");
  m.def("frequent_itemsets_i64", &mine<std::int64_t>,
        "(indptr, indices, n_transactions, min_count, max_len, max_itemsets) -> [(items, count)]");
  m.def("itemset_support_i32", &support<std::int32_t>,
        "(indptr, indices, n_transactions, query_offsets, query_items, n_queries, counts)",
        py::call_guard<py::gil_scoped_release>());
  m.def("itemset_support_i64", &support<std::int64_t>,
        "(indptr, indices, n_transactions, query_offsets, query_items, n_queries, counts)",
        py::call_guard<py::gil_scoped_release>());
  m.def("transactions_to_csr", &transactions_to_csr,
        "(sequence of iterables of ints, name for errors) -> (indptr int64, indices int64)");
}
