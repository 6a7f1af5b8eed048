// Cheap argument checks shared by the CPU and CUDA cores. The Python op layer validates
// everything first and raises with full context; these re-checks guard the raw-pointer entry
// points against misuse and throw std::invalid_argument, which pybind11 maps to ValueError.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace pyconcepts {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
inline void check(bool cond, const Args&... args) {
  if (!cond) throw std::invalid_argument(concat(args...));
}

// Throws unless every size is >= 0 (a negative size means a caller bug).
inline void check_sizes_nonnegative(std::initializer_list<std::int64_t> sizes, const char* what) {
  for (std::int64_t s : sizes) check(s >= 0, what, ": sizes must be >= 0, got ", s);
}

// Raw pointers arrive from Python as integers.
template <typename T>
inline T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace pyconcepts
