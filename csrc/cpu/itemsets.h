// Frequent itemset mining and itemset support counting over transaction databases given as CSR
// arrays (indptr int64 [n+1], indices int32/int64 [nnz]; item ids are arbitrary 64-bit integers,
// duplicates inside a transaction count once). Torch-ABI-free: raw pointers and sizes.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace pyconcepts {

// Itemset k has the (original, ascending) item ids items[offsets[k] : offsets[k+1]] and support
// counts[k]. Rows are sorted by length, then lexicographically by item ids.
struct ItemsetTable {
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> items;
  std::vector<std::int64_t> counts;
};

// Every itemset with support >= min_count (>= 1) and at most max_len items (max_len <= 0: no
// limit). Depth-first eclat on vertical bitsets: items are renumbered by ascending support, each
// first-level branch (one per frequent item, in parallel) projects the transactions containing
// its item into bitsets of ceil(support/64) words, and deeper levels AND + popcount them.
// Memory: 8 bytes per (transaction, item) entry for the horizontal and vertical copies, plus per
// thread at most (max transaction length) x (frequent extensions of a branch) bitsets of the
// branch's length, plus the output.
template <typename Index>
ItemsetTable frequent_itemsets(const std::int64_t* indptr, const Index* indices,
                               std::int64_t n_transactions, std::int64_t min_count,
                               std::int64_t max_len, std::int64_t max_itemsets);

// Thrown (as ValueError in Python) when more than max_itemsets itemsets are frequent: the number
// of frequent itemsets grows exponentially with the transaction length, so without a cap a low
// support on long, similar transactions exhausts memory instead of answering.
class ResultLimitExceeded : public std::invalid_argument {
 public:
  explicit ResultLimitExceeded(std::int64_t limit)
      : std::invalid_argument("frequent_itemsets: more than " + std::to_string(limit) +
                              " itemsets reach min_support (max_itemsets); raise min_support, "
                              "set max_len or raise max_itemsets") {}
};

// counts[q] = number of transactions containing every item of query q, whose (original) ids are
// query_items[query_offsets[q] : query_offsets[q+1]] (an empty query counts every transaction).
// Transactions are scanned in blocks of at most 65536, so memory is O(threads x distinct query
// items x 8 KiB) whatever the database size.
template <typename Index>
void itemset_support(const std::int64_t* indptr, const Index* indices, std::int64_t n_transactions,
                     const std::int64_t* query_offsets, const std::int64_t* query_items,
                     std::int64_t n_queries, std::int64_t* counts);

}  // namespace pyconcepts
