// Python bindings of the CUDA concept-map epilogues: device pointers and the stream as integers.
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
      ("concept_maps_bias_relu_" + suffix).c_str(),
      [](uintptr_t z, int64_t szb, int64_t szm, int64_t szp, uintptr_t bias, uintptr_t out,
         int64_t batch, int64_t n_maps, int64_t n_positions, uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({batch, n_maps, n_positions},
                                            "concept_maps_bias_relu");
        pyconcepts::cuda::concept_maps_bias_relu<T>(as_ptr<const T>(z), szb, szm, szp,
                                                    as_ptr<const T>(bias), as_ptr<T>(out), batch,
                                                    n_maps, n_positions, stream);
      },
      "out[B,M,P] = relu(z + bias) from the GEMM output z (strides szb, szm, szp) on the given "
      "stream; out may be z when z is contiguous.",
      py::call_guard<py::gil_scoped_release>());
  m.def(
      ("concept_map_stats_chunk_" + suffix).c_str(),
      [](uintptr_t z, int64_t szb, int64_t szm, int64_t szp, uintptr_t bias, double threshold,
         uintptr_t run_max, uintptr_t run_sum, uintptr_t run_count, int64_t batch, int64_t n_maps,
         int64_t n_positions, uintptr_t stream) {
        pyconcepts::check_sizes_nonnegative({batch, n_maps, n_positions},
                                            "concept_map_stats_chunk");
        pyconcepts::cuda::concept_map_stats_chunk<T>(
            as_ptr<const T>(z), szb, szm, szp, as_ptr<const T>(bias), static_cast<T>(threshold),
            as_ptr<T>(run_max), as_ptr<T>(run_sum), as_ptr<T>(run_count), batch, n_maps,
            n_positions, stream);
      },
      "Folds a chunk of pre-activations z [b, M, p] into running max / sum / count above the "
      "threshold of relu(z + bias), each [b, M].",
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYCONCEPTS_BINDINGS(bind_concept_maps_cuda) {
  bind_dtype<float>(m, "f32");
  bind_dtype<double>(m, "f64");
}
