// Python bindings of the CPU concept-map kernels: pointers arrive as integers (see ops/_bridge.py).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/checks.h"
#include "common/registry.h"
#include "cpu/concept_maps.h"

namespace py = pybind11;
using std::int64_t;
using std::uintptr_t;

namespace {

template <typename T>
void bind_dtype(py::module_& m, const char* suffix) {
  using pyconcepts::as_ptr;
  m.def(
      (std::string("concept_maps_forward_") + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t bias,
         uintptr_t out, int64_t batch, int64_t n_channels, int64_t n_maps, int64_t n_positions) {
        pyconcepts::concept_maps_forward<T>(as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w),
                                            as_ptr<const T>(bias), as_ptr<T>(out), batch,
                                            n_channels, n_maps, n_positions);
      },
      "out[B,M,P] = relu(W[M,D] · x[B,D,P] + bias) with x read through strides (sxb, sxd, sxp).",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      (std::string("concept_maps_backward_") + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t out,
         uintptr_t grad_out, uintptr_t grad_x, uintptr_t grad_w, uintptr_t grad_b, int64_t batch,
         int64_t n_channels, int64_t n_maps, int64_t n_positions) {
        pyconcepts::concept_maps_backward<T>(
            as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w), as_ptr<const T>(out),
            as_ptr<const T>(grad_out), as_ptr<T>(grad_x), as_ptr<T>(grad_w), as_ptr<T>(grad_b),
            batch, n_channels, n_maps, n_positions);
      },
      "Gradients of concept_maps from the saved output; a null (0) gradient pointer is skipped.",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      (std::string("concept_map_stats_") + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t bias,
         double threshold, uintptr_t out_max, uintptr_t out_mean, uintptr_t out_frac,
         int64_t batch, int64_t n_channels, int64_t n_maps, int64_t n_positions) {
        pyconcepts::concept_map_stats<T>(as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w),
                                         as_ptr<const T>(bias), static_cast<T>(threshold),
                                         as_ptr<T>(out_max), as_ptr<T>(out_mean),
                                         as_ptr<T>(out_frac), batch, n_channels, n_maps,
                                         n_positions);
      },
      "Per image and map of relu(W · x + bias): max, mean, fraction > threshold, each [B,M].",
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_concept_maps) {
  bind_dtype<float>(m, "f32");
  bind_dtype<double>(m, "f64");
}
