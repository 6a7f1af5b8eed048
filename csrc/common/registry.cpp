#include "common/registry.h"

#include <vector>

namespace pyconcepts {

namespace {
std::vector<BindFn>& registry() {
  static std::vector<BindFn> fns;  // function-local: safe against static-init order
  return fns;
}
}  // namespace

int register_binding(BindFn fn) {
  registry().push_back(fn);
  return static_cast<int>(registry().size());
}

void bind_all(pybind11::module_& m) {
  for (BindFn fn : registry()) fn(m);
}

}  // namespace pyconcepts
