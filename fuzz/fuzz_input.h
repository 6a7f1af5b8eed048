// Shared helpers of the libFuzzer harnesses: decode the fuzzer's bytes into bounded sizes and
// values (with NaN, infinities, denormals and extremes mixed in), and fail loudly when a kernel
// breaks an invariant.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <vector>

namespace fuzz {

// Reads the input front to back; past its end every read returns zero bytes.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint64_t bits(int n_bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < n_bytes; ++i) v = (v << 8) | (pos_ < size_ ? data_[pos_++] : 0);
    return v;
  }

  // Uniform-ish integer in [lo, hi].
  std::int64_t range(std::int64_t lo, std::int64_t hi) {
    const std::uint64_t span = static_cast<std::uint64_t>(hi - lo) + 1;
    return lo + static_cast<std::int64_t>(bits(2) % span);
  }

  bool flag() { return bits(1) & 1; }

  // True with probability about 1/n (used for deliberately invalid arguments).
  bool rarely(int n) { return bits(1) % n == 0; }

  // A value of T: mostly small "nice" numbers, sometimes special ones when `special` is set.
  template <typename T>
  T value(bool special) {
    const std::uint64_t kind = bits(1);
    const T small = static_cast<T>(static_cast<std::int64_t>(bits(1)) - 128) / T(32);
    if (!special || kind < 224) return small;
    using L = std::numeric_limits<T>;
    switch (kind % 8) {
      case 0: return L::quiet_NaN();
      case 1: return L::infinity();
      case 2: return -L::infinity();
      case 3: return L::denorm_min();
      case 4: return -L::denorm_min() * T(3);
      case 5: return L::max();
      case 6: return L::lowest() / T(2);
      default: return small * L::min();
    }
  }

  template <typename T>
  std::vector<T> values(std::int64_t n, bool special) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = value<T>(special);
    return v;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// Aborts (a finding for libFuzzer) with a message when `ok` is false.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

// Runs fn, which must throw std::invalid_argument (the kernels' "bad arguments" error).
template <typename Fn>
void require_rejects(const Fn& fn, const char* what) {
  try {
    fn();
  } catch (const std::invalid_argument&) {
    return;
  }
  require(false, what);
}

template <typename T>
bool all_finite(const std::vector<T>& v) {
  for (const T& x : v) {
    if (!std::isfinite(static_cast<double>(x))) return false;
  }
  return true;
}

// |a - b| <= tol * (1 + |a| + |b|)
inline bool close(double a, double b, double tol) {
  return std::fabs(a - b) <= tol * (1.0 + std::fabs(a) + std::fabs(b));
}

}  // namespace fuzz

// The libFuzzer entry point of a harness whose `run<T>(fuzz::Input&)` is a template over the two
// element types it fuzzes: the input's first flag picks the type.
#define PYCONCEPTS_FUZZ_ENTRY(TypeA, TypeB)                                        \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) { \
    fuzz::Input in(data, size);                                                      \
    if (in.flag()) {                                                                 \
      run<TypeA>(in);                                                                \
    } else {                                                                         \
      run<TypeB>(in);                                                                \
    }                                                                                \
    return 0;                                                                        \
  }
