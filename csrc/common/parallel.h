// OpenMP helpers for the CPU core.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace pyconcepts {

// Runs body(begin, end) over [0, n) in chunks of at least `grain` items, in parallel when the
// work is large enough to pay for the threads. body must be thread-safe across chunks.
// Chunks go to threads as they free up (dynamic), or with kFixed by a fixed rule (OpenMP's
// static schedule: thread t runs a fixed, increasing run of chunks) — for bodies that accumulate
// into per-thread buffers summed afterwards, whose sums are then bit-reproducible from run to run
// for a given number of threads.
enum class Schedule { kDynamic, kFixed };

template <Schedule kSchedule = Schedule::kDynamic, typename Body>
void parallel_for(std::int64_t n, std::int64_t grain, const Body& body) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const std::int64_t n_chunks = (n + grain - 1) / grain;
  if (n_chunks == 1 || omp_in_parallel()) {
    body(std::int64_t{0}, n);
    return;
  }
  const auto chunk = [&](std::int64_t c) { body(c * grain, std::min(n, c * grain + grain)); };
  if constexpr (kSchedule == Schedule::kFixed) {
#pragma omp parallel for schedule(static)
    for (std::int64_t c = 0; c < n_chunks; ++c) chunk(c);
  } else {
#pragma omp parallel for schedule(dynamic, 1)
    for (std::int64_t c = 0; c < n_chunks; ++c) chunk(c);
  }
}

inline int max_threads() { return omp_get_max_threads(); }

}  // namespace pyconcepts
