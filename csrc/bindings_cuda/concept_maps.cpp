// Python bindings of the CUDA concept-map launchers: device pointers and the stream as integers.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/checks.h"
#include "common/registry.h"
#include "cuda/concept_maps.h"

namespace py = pybind11;
using std::int64_t;
using std::uintptr_t;

namespace {

template <typename T>
void bind_dtype(py::module_& m, const std::string& suffix) {
  using pyconcepts::as_ptr;
  m.def(
      ("concept_maps_forward_" + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t bias,
         uintptr_t out, int64_t batch, int64_t n_channels, int64_t n_maps, int64_t n_positions,
         uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({batch, n_channels, n_maps, n_positions},
                                            "concept_maps_forward");
        pyconcepts::cuda::concept_maps_forward<T>(
            as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w), as_ptr<const T>(bias),
            as_ptr<T>(out), batch, n_channels, n_maps, n_positions, stream);
      },
      "out[B,M,P] = relu(W[M,D] · x[B,D,P] + bias) on the given stream.",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      ("concept_maps_backward_" + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t out,
         uintptr_t grad_out, uintptr_t grad_x, uintptr_t grad_w, uintptr_t grad_b, int64_t batch,
         int64_t n_channels, int64_t n_maps, int64_t n_positions, uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({batch, n_channels, n_maps, n_positions},
                                            "concept_maps_backward");
        pyconcepts::cuda::concept_maps_backward<T>(
            as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w), as_ptr<const T>(out),
            as_ptr<const T>(grad_out), as_ptr<T>(grad_x), as_ptr<T>(grad_w), as_ptr<T>(grad_b),
            batch, n_channels, n_maps, n_positions, stream);
      },
      "Gradients of concept_maps from the saved output; a null (0) gradient pointer is skipped.",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      ("concept_map_stats_" + suffix).c_str(),
      [](uintptr_t x, int64_t sxb, int64_t sxd, int64_t sxp, uintptr_t w, uintptr_t bias,
         double threshold, uintptr_t out_max, uintptr_t out_mean, uintptr_t out_frac,
         int64_t batch, int64_t n_channels, int64_t n_maps, int64_t n_positions,
         uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({batch, n_channels, n_maps, n_positions},
                                            "concept_map_stats");
        pyconcepts::check(n_positions >= 1, "concept_map_stats: needs at least one position, got ",
                          n_positions);
        pyconcepts::cuda::concept_map_stats<T>(
            as_ptr<const T>(x), sxb, sxd, sxp, as_ptr<const T>(w), as_ptr<const T>(bias),
            static_cast<T>(threshold), as_ptr<T>(out_max), as_ptr<T>(out_mean),
            as_ptr<T>(out_frac), batch, n_channels, n_maps, n_positions, stream);
      },
      "Per image and map of relu(W · x + bias): max, mean, fraction > threshold, each [B,M].",
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_concept_maps_cuda) {
  bind_dtype<float>(m, "f32");
  bind_dtype<double>(m, "f64");
}
