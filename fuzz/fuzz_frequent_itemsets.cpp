// libFuzzer harness of pyconcepts::frequent_itemsets: the result must be exactly the frequent
// itemsets (brute-force support, downward closed, complete), in the documented order.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "cpu/itemsets.h"
#include "transactions.h"

namespace {

using fuzz::require;
using Items = std::vector<std::int64_t>;

template <typename Index>
void run(fuzz::Input& in) {
  const fuzz::Database db = fuzz::database<Index>(in);
  const std::vector<Index> indices = fuzz::narrowed<Index>(db.indices);
  const std::int64_t n = db.n();
  const std::int64_t min_count = in.range(1, n + 1), max_len = in.range(-1, 4);
  const std::int64_t max_itemsets = in.range(0, 64);
  auto mine = [&](const std::int64_t* indptr, std::int64_t n_rows, std::int64_t min_c,
                  std::int64_t limit) {
    return pyconcepts::frequent_itemsets<Index>(indptr, indices.data(), n_rows, min_c, max_len,
                                                limit);
  };
  if (in.rarely(16)) {
    std::vector<std::int64_t> shifted = db.indptr;
    shifted[0] = 1;
    fuzz::require_rejects([&] { mine(db.indptr.data(), -1, min_count, 0); }, "negative n");
    fuzz::require_rejects([&] { mine(db.indptr.data(), n, 0, 0); }, "min_count 0");
    fuzz::require_rejects([&] { mine(shifted.data(), n, min_count, 0); }, "indptr[0] != 0");
    return;
  }
  pyconcepts::ItemsetTable table;
  try {
    table = mine(db.indptr.data(), n, min_count, max_itemsets);
  } catch (const pyconcepts::ResultLimitExceeded&) {
    require(max_itemsets > 0, "result limit exceeded without a limit");
    const auto all = mine(db.indptr.data(), n, min_count, 0);
    require(static_cast<std::int64_t>(all.counts.size()) > max_itemsets,
            "result limit exceeded by a result within the limit");
    return;
  }
  const std::size_t n_sets = table.counts.size();
  require(table.offsets.size() == n_sets + 1 && table.offsets[0] == 0 &&
              table.offsets.back() == static_cast<std::int64_t>(table.items.size()),
          "table offsets");
  std::vector<Items> sets;
  for (std::size_t k = 0; k < n_sets; ++k) {
    const Items items(table.items.begin() + table.offsets[k],
                      table.items.begin() + table.offsets[k + 1]);
    require(!items.empty(), "empty itemset");
    require(max_len <= 0 || static_cast<std::int64_t>(items.size()) <= max_len, "max_len");
    require(std::adjacent_find(items.begin(), items.end(), std::greater_equal<>()) == items.end(),
            "items not strictly ascending");
    require(table.counts[k] >= min_count && table.counts[k] <= n, "count out of range");
    require(table.counts[k] == fuzz::support(db, items), "count differs from brute force");
    if (!sets.empty()) {
      const Items& prev = sets.back();
      require(prev.size() < items.size() || (prev.size() == items.size() && prev < items),
              "rows not sorted by length, then items");
    }
    sets.push_back(items);
  }
  auto present = [&](const Items& items) {
    return std::binary_search(sets.begin(), sets.end(), items, [](const Items& a, const Items& b) {
      return a.size() != b.size() ? a.size() < b.size() : a < b;
    });
  };
  Items distinct(db.indices);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  for (std::int64_t id : distinct) {
    require(present({id}) == (fuzz::support(db, {id}) >= min_count), "frequent item missing");
  }
  for (const Items& items : sets) {
    for (std::size_t drop = 0; items.size() > 1 && drop < items.size(); ++drop) {
      Items subset(items);
      subset.erase(subset.begin() + static_cast<std::ptrdiff_t>(drop));
      require(present(subset), "not downward closed");
    }
    if (max_len > 0 && static_cast<std::int64_t>(items.size()) >= max_len) continue;
    for (std::int64_t id : distinct) {
      Items grown(items);
      if (std::binary_search(grown.begin(), grown.end(), id)) continue;
      grown.insert(std::upper_bound(grown.begin(), grown.end(), id), id);
      require(present(grown) == (fuzz::support(db, grown) >= min_count), "extension missing");
    }
  }
}

}  // namespace

PYCONCEPTS_FUZZ_ENTRY(std::int32_t, std::int64_t)
