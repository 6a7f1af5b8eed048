// OpenMP helpers for the CPU core.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace pyconcepts {

// Runs body(begin, end) over [0, n) in chunks of at least `grain` items, in parallel when the
// work is large enough to pay for the threads. body must be thread-safe across chunks.
template <typename Body>
void parallel_for(std::int64_t n, std::int64_t grain, const Body& body) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t n_chunks = (n + grain - 1) / grain;
  if (n_chunks == 1 || omp_in_parallel()) {
    body(std::int64_t{0}, n);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t c = 0; c < n_chunks; ++c) {
    const std::int64_t begin = c * grain;
    body(begin, std::min(n, begin + grain));
  }
}

// As parallel_for, but chunks go to threads by a fixed rule (OpenMP's static schedule: thread t
// runs a fixed, increasing run of chunks). For bodies that accumulate into per-thread buffers
// summed afterwards: the sums are then bit-reproducible from run to run for a given number of
// threads, which a dynamic schedule does not give.
template <typename Body>
void parallel_for_static(std::int64_t n, std::int64_t grain, const Body& body) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t n_chunks = (n + grain - 1) / grain;
  if (n_chunks == 1 || omp_in_parallel()) {
    body(std::int64_t{0}, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < n_chunks; ++c) {
    const std::int64_t begin = c * grain;
    body(begin, std::min(n, begin + grain));
  }
}

inline int max_threads() { return omp_get_max_threads(); }

}  // namespace pyconcepts
