// libFuzzer harness of pyconcepts::itemset_support: every count equals brute-force support.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/itemsets.h"
#include "transactions.h"

namespace {

template <typename Index>
void run(fuzz::Input& in) {
  const fuzz::Database db = fuzz::database<Index>(in);
  const std::vector<Index> indices = fuzz::narrowed<Index>(db.indices);
  const std::int64_t n_queries = in.range(0, 8);
  std::vector<std::int64_t> offsets{0}, items;
  std::vector<std::vector<std::int64_t>> queries;
  for (std::int64_t q = 0; q < n_queries; ++q) {
    std::vector<std::int64_t> query;  // may repeat an item, or name one no row holds
    for (std::int64_t k = in.range(0, 4); k > 0; --k) query.push_back(fuzz::item<Index>(in, 14));
    items.insert(items.end(), query.begin(), query.end());
    offsets.push_back(static_cast<std::int64_t>(items.size()));
    std::sort(query.begin(), query.end());
    query.erase(std::unique(query.begin(), query.end()), query.end());
    queries.push_back(query);
  }
  std::vector<std::int64_t> counts(static_cast<std::size_t>(n_queries) + 1, -7);
  auto count = [&](std::int64_t n_rows, const std::int64_t* query_offsets, std::int64_t n_q) {
    pyconcepts::itemset_support<Index>(db.indptr.data(), indices.data(), n_rows, query_offsets,
                                       items.data(), n_q, counts.data());
  };
  if (in.rarely(16)) {
    std::vector<std::int64_t> shifted = offsets;
    shifted[0] = 1;
    fuzz::require_rejects([&] { count(-1, offsets.data(), n_queries); }, "negative n");
    fuzz::require_rejects([&] { count(db.n(), offsets.data(), -1); }, "negative n_queries");
    fuzz::require_rejects([&] { count(db.n(), shifted.data(), n_queries); }, "offsets[0] != 0");
    return;
  }
  count(db.n(), offsets.data(), n_queries);
  for (std::int64_t q = 0; q < n_queries; ++q) {
    fuzz::require(counts[q] == fuzz::support(db, queries[q]), "count differs from brute force");
  }
  fuzz::require(counts[n_queries] == -7, "wrote past the counts");
}

}  // namespace

PYCONCEPTS_FUZZ_ENTRY(std::int32_t, std::int64_t)
