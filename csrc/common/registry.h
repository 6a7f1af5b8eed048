// Binding registry: each csrc/bindings*/<op>.cpp registers a function that adds its ops to the
// module, so ops are added by adding files (no shared list to edit). Used by _core and _core_cuda.
#pragma once
#include <pybind11/pybind11.h>

namespace pyconcepts {

using BindFn = void (*)(pybind11::module_&);

// Adds fn to the list run by bind_all(); returns a dummy so it can initialise a static.
int register_binding(BindFn fn);

// Runs every registered binding function on m (called once, from PYBIND11_MODULE).
void bind_all(pybind11::module_& m);

}  // namespace pyconcepts

// PYCONCEPTS_BINDINGS(bind_nnls) { m.def(...); }  defines and registers bind_nnls.
#define PYCONCEPTS_BINDINGS(fn)                                                   \
  static void fn(pybind11::module_& m);                                           \
  [[maybe_unused]] static const int fn##_registered = ::pyconcepts::register_binding(&fn); \
  static void fn(pybind11::module_& m)
