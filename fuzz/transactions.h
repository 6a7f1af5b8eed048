// Random transaction databases in CSR form for the itemset harnesses, and brute-force support.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "fuzz_input.h"

namespace fuzz {

struct Database {
  std::vector<std::int64_t> indptr{0};
  std::vector<std::int64_t> indices;          // item ids, duplicates allowed within a row
  std::vector<std::vector<std::int64_t>> sets;  // each row sorted, without duplicates
  std::int64_t n() const { return static_cast<std::int64_t>(sets.size()); }
};

// An item id: mostly from a small alphabet, sometimes an extreme id of the index type.
template <typename Index>
std::int64_t item(Input& in, std::int64_t alphabet) {
  if (!in.rarely(24)) return in.range(0, alphabet - 1);
  using L = std::numeric_limits<Index>;
  const std::int64_t extremes[] = {L::min(), L::max(), -1, L::max() / 3};
  return extremes[in.range(0, 3)];
}

template <typename Index>
Database database(Input& in) {
  Database db;
  const std::int64_t n = in.range(0, 20), alphabet = in.range(1, 12);
  for (std::int64_t t = 0; t < n; ++t) {
    std::vector<std::int64_t> row;
    for (std::int64_t k = in.range(0, 7); k > 0; --k) row.push_back(item<Index>(in, alphabet));
    db.indices.insert(db.indices.end(), row.begin(), row.end());
    db.indptr.push_back(static_cast<std::int64_t>(db.indices.size()));
    std::sort(row.begin(), row.end());
    row.erase(std::unique(row.begin(), row.end()), row.end());
    db.sets.push_back(row);
  }
  return db;
}

// Number of rows containing every item of the sorted, duplicate-free `items`.
inline std::int64_t support(const Database& db, const std::vector<std::int64_t>& items) {
  std::int64_t count = 0;
  for (const auto& row : db.sets) {
    count += std::includes(row.begin(), row.end(), items.begin(), items.end());
  }
  return count;
}

template <typename Index>
std::vector<Index> narrowed(const std::vector<std::int64_t>& v) {
  return std::vector<Index>(v.begin(), v.end());
}

}  // namespace fuzz
