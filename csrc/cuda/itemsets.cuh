// CUDA itemset support counting: launchers (plain C++ interface, no pybind11).
#pragma once
#include <cstdint>

namespace pyconcepts {

// Sets bit t of row dense[j] for every entry j of transaction t: bits is [n_items, n_words]
// uint64 words, zeroed by the caller. One thread per transaction.
void itemsets_fill_bitsets_cuda(const std::int64_t* indptr, const std::int32_t* dense,
                                std::int64_t n_transactions, std::int64_t n_words,
                                unsigned long long* bits, std::uintptr_t stream);

// counts[q] = popcount of the AND of the rows of query q's items (query_items[query_offsets[q] :
// query_offsets[q+1]], dense ids, -1 = absent from the database -> 0; an empty query counts all
// n_transactions). counts is zeroed by the caller. Blocks of 256 threads each take one query and
// a slice of words, reduce with warp shuffles and add one partial sum per block.
void itemsets_count_support_cuda(const unsigned long long* bits, std::int64_t n_transactions,
                                 std::int64_t n_words, const std::int64_t* query_offsets,
                                 const std::int32_t* query_items, std::int64_t n_queries,
                                 unsigned long long* counts, std::uintptr_t stream);

}  // namespace pyconcepts
