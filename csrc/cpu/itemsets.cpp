// Frequent itemsets (depth-first eclat on vertical bitsets) and itemset support counting.
#include "cpu/itemsets.h"

#if defined(__BMI2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <limits>
#include <numeric>

#include "common/checks.h"
#include "common/parallel.h"

namespace pyconcepts {
namespace {

using Word = std::uint64_t;

// Below these sizes the work runs on one thread: thread start-up and barriers cost more than they
// save (and far more on a loaded machine, where a spinning barrier waits for a descheduled thread).
constexpr std::int64_t kParallelEntries = 1 << 18;  // (transaction, item) entries
constexpr std::int64_t kRowGrain = 1 << 16;         // transactions per parallel chunk

inline std::int64_t n_words(std::int64_t bits) { return (bits + 63) / 64; }
inline std::int64_t popcount(Word w) { return __builtin_popcountll(w); }

// Dense renumbering 0..D-1 of arbitrary 64-bit ids, in ascending order of the ids: a lookup
// table when the ids span a small range, else the sorted distinct ids and binary search.
class IdMap {
 public:
  template <typename Index>
  IdMap(const Index* ids, std::int64_t n) {
    if (n == 0) return;
    std::int64_t lo = ids[0], hi = ids[0];
    for (std::int64_t i = 1; i < n; ++i) {
      lo = std::min<std::int64_t>(lo, ids[i]);
      hi = std::max<std::int64_t>(hi, ids[i]);
    }
    const std::uint64_t range = static_cast<std::uint64_t>(hi) - static_cast<std::uint64_t>(lo);
    const std::uint64_t table_limit = std::max<std::uint64_t>(std::uint64_t{1} << 20, n);
    if (range < table_limit) {
      lo_ = lo;
      table_.assign(range + 1, -1);
      for (std::int64_t i = 0; i < n; ++i) table_[static_cast<std::uint64_t>(ids[i]) - lo] = 0;
      for (std::size_t k = 0; k < table_.size(); ++k) {
        if (table_[k] == 0) {
          table_[k] = static_cast<std::int32_t>(ids_.size());
          ids_.push_back(static_cast<std::int64_t>(static_cast<std::uint64_t>(lo) + k));
        }
      }
    } else {
      ids_.assign(ids, ids + n);
      std::sort(ids_.begin(), ids_.end());
      ids_.erase(std::unique(ids_.begin(), ids_.end()), ids_.end());
      check(ids_.size() < static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
            "itemsets: at most 2^31-1 distinct items are supported, got ", ids_.size());
    }
  }

  // Dense id of `id`, or -1 when it is not one of the mapped ids.
  std::int32_t operator()(std::int64_t id) const {
    if (!table_.empty()) {
      const std::uint64_t off = static_cast<std::uint64_t>(id) - static_cast<std::uint64_t>(lo_);
      return off < table_.size() ? table_[off] : -1;
    }
    const auto it = std::lower_bound(ids_.begin(), ids_.end(), id);
    return (it != ids_.end() && *it == id) ? static_cast<std::int32_t>(it - ids_.begin()) : -1;
  }
  std::int64_t size() const { return static_cast<std::int64_t>(ids_.size()); }
  std::int64_t original(std::int32_t dense) const { return ids_[dense]; }

 private:
  std::int64_t lo_ = 0;
  std::vector<std::int32_t> table_;
  std::vector<std::int64_t> ids_;
};

void check_csr(const std::int64_t* indptr, std::int64_t n_transactions) {
  check(n_transactions >= 0, "itemsets: n_transactions must be >= 0, got ", n_transactions);
  check(n_transactions < std::numeric_limits<std::int32_t>::max(),
        "itemsets: at most 2^31-1 transactions are supported, got ", n_transactions);
  check(indptr[0] == 0, "itemsets: indptr[0] must be 0, got ", indptr[0]);
  for (std::int64_t t = 0; t < n_transactions; ++t) {
    check(indptr[t] <= indptr[t + 1], "itemsets: indptr must be non-decreasing, but indptr[",
          t + 1, "] = ", indptr[t + 1], " < indptr[", t, "] = ", indptr[t]);
  }
}

// Number of transactions containing each dense item (duplicates in a transaction count once).
template <typename Index>
std::vector<std::int64_t> item_supports(const std::int64_t* indptr, const Index* indices,
                                        std::int64_t n_transactions, const IdMap& map) {
  const std::int64_t n_items = map.size();
  std::vector<std::vector<std::int64_t>> partial(max_threads());
#pragma omp parallel if (indptr[n_transactions] >= kParallelEntries)
  {
    std::vector<std::int64_t>& support = partial[omp_get_thread_num()];
    support.assign(n_items, 0);
    std::vector<std::int64_t> last(n_items, -1);
#pragma omp for schedule(static)
    for (std::int64_t t = 0; t < n_transactions; ++t) {
      for (std::int64_t j = indptr[t]; j < indptr[t + 1]; ++j) {
        const std::int32_t d = map(indices[j]);
        if (last[d] != t) {
          last[d] = t;
          ++support[d];
        }
      }
    }
  }
  std::vector<std::int64_t> total(n_items, 0);
  for (const auto& support : partial) {
    for (std::int64_t d = 0; d < static_cast<std::int64_t>(support.size()); ++d) total[d] += support[d];
  }
  return total;
}

// Transactions restricted to the frequent items, as ranks (0 = least frequent): row t of h holds
// its ranks in descending order without duplicates, then at least one -1 (which stops every scan
// for ranks above r >= 0). v lists, for each rank, the row starts of the transactions containing
// it in ascending order, so a branch reads its transactions with a single (prefetched) indirection.
struct RankedDatabase {
  std::vector<std::int32_t> h;
  std::vector<std::int64_t> v_begin;
  std::vector<std::uint32_t> v;
};

// Sorts a transaction's ranks in descending order. Rows of up to 16 ranks (the common case) are
// placed by counting, without data-dependent branches: position of x[i] = #{x[j] > x[i]} +
// #{j < i : x[j] == x[i]}.
inline void sort_descending(std::int32_t* row, std::int64_t k) {
  constexpr std::int64_t kSmall = 16;
  if (k > kSmall) {
    std::sort(row, row + k, [](std::int32_t a, std::int32_t b) { return a > b; });
    return;
  }
  std::int32_t x[kSmall];
  for (std::int64_t i = 0; i < kSmall; ++i) x[i] = i < k ? row[i] : -2;
  for (std::int64_t i = 0; i < k; ++i) {
    std::int32_t pos = 0;
    for (std::int64_t j = 0; j < kSmall; ++j) pos += (x[j] > x[i]) | ((x[j] == x[i]) & (j < i));
    row[pos] = x[i];
  }
}

template <typename Index>
RankedDatabase rank_database(const std::int64_t* indptr, const Index* indices,
                             std::int64_t n_transactions, const IdMap& map,
                             const std::vector<std::int32_t>& rank_of_dense,
                             const std::vector<std::int64_t>& support_of_rank) {
  RankedDatabase db;
  std::vector<std::int64_t> row(n_transactions + 1, 0);
  parallel_for(n_transactions, kRowGrain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t t = begin; t < end; ++t) {
      std::int64_t k = 1;
      for (std::int64_t j = indptr[t]; j < indptr[t + 1]; ++j) k += rank_of_dense[map(indices[j])] >= 0;
      row[t + 1] = k;
    }
  });
  std::partial_sum(row.begin(), row.end(), row.begin());
  check(row[n_transactions] <= std::numeric_limits<std::uint32_t>::max(),
        "frequent_itemsets: at most 2^32-1 occurrences of frequent items are supported, got ",
        row[n_transactions]);
  db.h.resize(row[n_transactions]);
  parallel_for(n_transactions, kRowGrain, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t t = begin; t < end; ++t) {
      std::int32_t* out = db.h.data() + row[t];
      std::int64_t k = 0;
      for (std::int64_t j = indptr[t]; j < indptr[t + 1]; ++j) {
        const std::int32_t r = rank_of_dense[map(indices[j])];
        if (r >= 0) out[k++] = r;
      }
      sort_descending(out, k);
      std::fill(std::unique(out, out + k), db.h.data() + row[t + 1], -1);
    }
  });
  const std::int64_t n_ranks = static_cast<std::int64_t>(support_of_rank.size());
  db.v_begin.assign(n_ranks + 1, 0);
  std::partial_sum(support_of_rank.begin(), support_of_rank.end(), db.v_begin.begin() + 1);
  db.v.resize(db.v_begin[n_ranks]);
  std::vector<std::int64_t> fill(db.v_begin.begin(), db.v_begin.end() - 1);
  for (std::int64_t t = 0; t < n_transactions; ++t) {
    for (std::int64_t p = row[t]; db.h[p] >= 0; ++p) db.v[fill[db.h[p]]++] = static_cast<std::uint32_t>(row[t]);
  }
  return db;
}

// Output of one first-level branch: itemsets as ranks, in discovery order.
struct BranchOut {
  std::vector<std::int32_t> items;
  std::vector<std::int32_t> lens;
  std::vector<std::int64_t> counts;

  void emit(const std::vector<std::int32_t>& prefix, std::int32_t last, std::int64_t count) {
    items.insert(items.end(), prefix.begin(), prefix.end());
    items.push_back(last);
    lens.push_back(static_cast<std::int32_t>(prefix.size() + 1));
    counts.push_back(count);
  }
};

// out = x & y over n words; returns the number of set bits.
inline std::int64_t and_count(const Word* x, const Word* y, Word* out, std::int64_t n) {
  std::int64_t c = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const Word w = x[i] & y[i];
    out[i] = w;
    c += popcount(w);
  }
  return c;
}

#if defined(__BMI2__)
constexpr bool kCanCompact = true;
// out = the bits of src at the positions where mask is set, packed (tidset of src restricted to
// mask's transactions, renumbered); returns the number of set bits.
inline std::int64_t compact_count(const Word* src, const Word* mask, Word* out, std::int64_t n) {
  std::int64_t o = 0, c = 0;
  int fill = 0;
  Word acc = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const Word m = mask[i];
    if (m == 0) continue;
    const Word x = _pext_u64(src[i], m);
    const int k = static_cast<int>(popcount(m));
    c += popcount(x);
    acc |= x << fill;
    if (fill + k >= 64) {
      out[o++] = acc;
      acc = fill == 0 ? 0 : x >> (64 - fill);
      fill = fill + k - 64;
    } else {
      fill += k;
    }
  }
  if (fill > 0) out[o] = acc;
  return c;
}
#else
constexpr bool kCanCompact = false;
inline std::int64_t compact_count(const Word*, const Word*, Word*, std::int64_t) { return 0; }
#endif

// The number of itemsets all threads may still report; once it is overdrawn every Miner stops
// (the result would not fit the caller's limit, so mining further is wasted work).
class ResultBudget {
 public:
  explicit ResultBudget(std::int64_t limit) : left_(limit) {}
  // Takes n itemsets from the budget; false (and stays false) once the limit is exceeded.
  bool take(std::int64_t n) { return left_.fetch_sub(n, std::memory_order_relaxed) - n >= 0; }
  bool exceeded() const { return left_.load(std::memory_order_relaxed) < 0; }

 private:
  std::atomic<std::int64_t> left_;
};

// Depth-first eclat inside first-level branches; one Miner per thread.
class Miner {
 public:
  static constexpr std::int64_t kPrefetch = 16;  // transactions read ahead in a branch's scans

  Miner(const RankedDatabase& db, std::int64_t n_ranks, std::int64_t min_count, std::int64_t max_len,
        ResultBudget& budget)
      : db_(db), min_count_(min_count), max_len_(max_len), budget_(budget), count_(n_ranks, 0),
        local_(n_ranks, -1) {}

  void branch(std::int32_t r, BranchOut& out) {
    if (!budget_.take(1)) return;
    const std::uint32_t* rows = db_.v.data() + db_.v_begin[r];
    const std::int64_t support = db_.v_begin[r + 1] - db_.v_begin[r];
    const std::int32_t* h = db_.h.data();
    prefix_.clear();
    out.emit(prefix_, r, support);
    if (max_len_ < 2) return;
    // Count the items ranked above r in r's transactions: supports of the 2-itemsets {r, q}.
    // The ranks read are kept in scratch_ (rows separated by -1) so that the projection below
    // reads them sequentially instead of revisiting the rows.
    touched_.clear();
    scratch_.clear();
    for (std::int64_t u = 0; u < support; ++u) {
      if (u + kPrefetch < support) __builtin_prefetch(h + rows[u + kPrefetch]);
      for (const std::int32_t* q = h + rows[u]; *q > r; ++q) {
        if (count_[*q]++ == 0) touched_.push_back(*q);
        scratch_.push_back(*q);
      }
      scratch_.push_back(-1);
    }
    std::sort(touched_.begin(), touched_.end());
    std::vector<Ext> level;
    for (const std::int32_t q : touched_) {
      if (count_[q] >= min_count_) level.push_back({q, count_[q], 0});
      count_[q] = 0;
    }
    if (!budget_.take(static_cast<std::int64_t>(level.size()))) return;
    prefix_.push_back(r);
    for (const Ext& e : level) out.emit(prefix_, e.rank, e.count);
    if (max_len_ >= 3 && level.size() >= 2) {
      // Project: one bitset of ceil(support/64) words per frequent extension, bit u = u-th transaction of r.
      const std::int64_t n_w = n_words(support);
      top_ = 0;
      for (std::size_t l = 0; l < level.size(); ++l) {
        local_[level[l].rank] = static_cast<std::int32_t>(l);
        level[l].offset = push(n_w);
      }
      std::fill(arena_.begin(), arena_.begin() + top_, Word{0});
      const std::int32_t* q = scratch_.data();
      for (std::int64_t u = 0; u < support; ++u, ++q) {
        const Word bit = Word{1} << (u & 63);
        for (; *q >= 0; ++q) {
          const std::int32_t l = local_[*q];
          if (l >= 0) arena_[level[l].offset + (u >> 6)] |= bit;
        }
      }
      for (const Ext& e : level) local_[e.rank] = -1;
      expand(level, n_w, out);
    }
    prefix_.pop_back();
  }

 private:
  struct Ext {
    std::int32_t rank;
    std::int64_t count;
    std::size_t offset;  // its bitset in arena_
  };

  // Reserves n words on top of the arena and returns their offset (contents undefined).
  std::size_t push(std::int64_t n) {
    const std::size_t at = top_;
    top_ += static_cast<std::size_t>(n);
    if (top_ > arena_.size()) arena_.resize(std::max(top_, 2 * arena_.size()));
    return at;
  }

  // level: the frequent one-item extensions of prefix_, with bitsets of n_w words. Emits and
  // recurses into the itemsets prefix_ + level[a] + level[b] (b > a).
  void expand(const std::vector<Ext>& level, std::int64_t n_w, BranchOut& out) {
    if (static_cast<std::int64_t>(prefix_.size()) + 2 > max_len_) return;
    std::vector<Ext> child;
    for (std::size_t a = 0; a + 1 < level.size(); ++a) {
      const std::size_t base = top_;
      // Sparse node: pack the children to the node's own transactions (fewer words below).
      const bool compact = kCanCompact && n_w >= 16 && level[a].count * 16 <= n_w * 64;
      const std::int64_t child_w = compact ? n_words(level[a].count) : n_w;
      child.clear();
      for (std::size_t b = a + 1; b < level.size(); ++b) {
        const std::size_t at = push(child_w);
        const Word* x = arena_.data() + level[a].offset;
        const Word* y = arena_.data() + level[b].offset;
        Word* dst = arena_.data() + at;
        const std::int64_t c = compact ? compact_count(y, x, dst, n_w) : and_count(x, y, dst, n_w);
        if (c >= min_count_) {
          child.push_back({level[b].rank, c, at});
        } else {
          top_ = at;
        }
      }
      if (!child.empty()) {
        if (!budget_.take(static_cast<std::int64_t>(child.size()))) {
          top_ = base;
          return;
        }
        prefix_.push_back(level[a].rank);
        for (const Ext& e : child) out.emit(prefix_, e.rank, e.count);
        if (child.size() >= 2) expand(child, child_w, out);
        prefix_.pop_back();
      }
      top_ = base;
    }
  }

  const RankedDatabase& db_;
  const std::int64_t min_count_, max_len_;
  ResultBudget& budget_;
  std::vector<std::int64_t> count_;
  std::vector<std::int32_t> local_;
  std::vector<std::int32_t> touched_;
  std::vector<std::int32_t> scratch_;
  std::vector<std::int32_t> prefix_;
  std::vector<Word> arena_;
  std::size_t top_ = 0;
};

// Branch outputs (ranks) -> original ids, ascending inside each itemset, rows sorted by
// (length, items).
ItemsetTable assemble(const std::vector<BranchOut>& branches, const std::vector<std::int64_t>& id_of_rank) {
  std::int64_t n_sets = 0, n_entries = 0;
  for (const auto& b : branches) {
    n_sets += static_cast<std::int64_t>(b.lens.size());
    n_entries += static_cast<std::int64_t>(b.items.size());
  }
  std::vector<std::int64_t> offsets(n_sets + 1, 0), items(n_entries), counts(n_sets);
  std::int64_t k = 0, e = 0;
  for (const auto& b : branches) {
    std::size_t p = 0;
    for (std::size_t s = 0; s < b.lens.size(); ++s, ++k) {
      for (std::int32_t i = 0; i < b.lens[s]; ++i) items[e + i] = id_of_rank[b.items[p + i]];
      std::sort(items.begin() + e, items.begin() + e + b.lens[s]);
      p += b.lens[s];
      e += b.lens[s];
      offsets[k + 1] = e;
      counts[k] = b.counts[s];
    }
  }
  std::vector<std::int64_t> order(n_sets);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    const std::int64_t la = offsets[a + 1] - offsets[a], lb = offsets[b + 1] - offsets[b];
    if (la != lb) return la < lb;
    return std::lexicographical_compare(items.begin() + offsets[a], items.begin() + offsets[a + 1],
                                        items.begin() + offsets[b], items.begin() + offsets[b + 1]);
  });
  ItemsetTable table;
  table.offsets.assign(1, 0);
  table.offsets.reserve(n_sets + 1);
  table.items.reserve(n_entries);
  table.counts.reserve(n_sets);
  for (const std::int64_t s : order) {
    table.items.insert(table.items.end(), items.begin() + offsets[s], items.begin() + offsets[s + 1]);
    table.offsets.push_back(static_cast<std::int64_t>(table.items.size()));
    table.counts.push_back(counts[s]);
  }
  return table;
}

}  // namespace

template <typename Index>
ItemsetTable frequent_itemsets(const std::int64_t* indptr, const Index* indices,
                               std::int64_t n_transactions, std::int64_t min_count,
                               std::int64_t max_len, std::int64_t max_itemsets) {
  check_csr(indptr, n_transactions);
  check(min_count >= 1, "frequent_itemsets: min_count must be >= 1, got ", min_count);
  if (max_len <= 0) max_len = std::numeric_limits<std::int64_t>::max();
  if (max_itemsets <= 0) max_itemsets = std::numeric_limits<std::int64_t>::max();
  const IdMap map(indices, indptr[n_transactions]);
  const std::vector<std::int64_t> support = item_supports(indptr, indices, n_transactions, map);

  // Rank the frequent items by ascending support (ties: ascending id): small branches get the
  // many extensions, large branches the few.
  std::vector<std::int32_t> by_support;
  for (std::int64_t d = 0; d < map.size(); ++d) {
    if (support[d] >= min_count) by_support.push_back(static_cast<std::int32_t>(d));
  }
  std::stable_sort(by_support.begin(), by_support.end(),
                   [&](std::int32_t a, std::int32_t b) { return support[a] < support[b]; });
  const std::int64_t n_ranks = static_cast<std::int64_t>(by_support.size());
  std::vector<std::int32_t> rank_of_dense(map.size(), -1);
  std::vector<std::int64_t> support_of_rank(n_ranks), id_of_rank(n_ranks);
  for (std::int64_t r = 0; r < n_ranks; ++r) {
    rank_of_dense[by_support[r]] = static_cast<std::int32_t>(r);
    support_of_rank[r] = support[by_support[r]];
    id_of_rank[r] = map.original(by_support[r]);
  }
  const RankedDatabase db =
      rank_database(indptr, indices, n_transactions, map, rank_of_dense, support_of_rank);

  std::vector<BranchOut> branches(n_ranks);
  ResultBudget budget(max_itemsets);
#pragma omp parallel if (n_ranks > 1 && indptr[n_transactions] >= kParallelEntries)
  {
    Miner miner(db, n_ranks, min_count, max_len, budget);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t r = 0; r < n_ranks; ++r) miner.branch(static_cast<std::int32_t>(r), branches[r]);
  }
  if (budget.exceeded()) throw ResultLimitExceeded(max_itemsets);
  return assemble(branches, id_of_rank);
}

template <typename Index>
void itemset_support(const std::int64_t* indptr, const Index* indices, std::int64_t n_transactions,
                     const std::int64_t* query_offsets, const std::int64_t* query_items,
                     std::int64_t n_queries, std::int64_t* counts) {
  check_csr(indptr, n_transactions);
  check(n_queries >= 0, "itemset_support: n_queries must be >= 0, got ", n_queries);
  check(query_offsets[0] == 0, "itemset_support: query_offsets[0] must be 0, got ", query_offsets[0]);
  std::fill(counts, counts + n_queries, 0);
  if (n_queries == 0 || n_transactions == 0) return;
  // One bitset row per distinct query item; items absent from the database keep an empty row.
  const IdMap slots(query_items, query_offsets[n_queries]);
  const std::int64_t n_slots = slots.size();
  const std::int64_t n_threads = max_threads();
  const std::int64_t block =
      std::clamp<std::int64_t>((n_transactions / (4 * n_threads) + 63) / 64 * 64, 4096, 65536);
  const std::int64_t n_blocks = (n_transactions + block - 1) / block;
  const std::int64_t w_max = block / 64;
  std::vector<std::vector<std::int64_t>> partial(n_threads);
#pragma omp parallel if (n_blocks > 1 && indptr[n_transactions] >= kParallelEntries)
  {
    std::vector<std::int64_t>& local = partial[omp_get_thread_num()];
    local.assign(n_queries, 0);
    std::vector<Word> rows(n_slots * w_max), acc(w_max);
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t t0 = blk * block, t1 = std::min(n_transactions, t0 + block);
      const std::int64_t n_w = n_words(t1 - t0);
      std::fill(rows.begin(), rows.end(), Word{0});
      for (std::int64_t t = t0; t < t1; ++t) {
        for (std::int64_t j = indptr[t]; j < indptr[t + 1]; ++j) {
          const std::int32_t s = slots(indices[j]);
          if (s >= 0) rows[s * w_max + ((t - t0) >> 6)] |= Word{1} << ((t - t0) & 63);
        }
      }
      for (std::int64_t q = 0; q < n_queries; ++q) {
        const std::int64_t k0 = query_offsets[q], k1 = query_offsets[q + 1];
        if (k0 == k1) {
          local[q] += t1 - t0;
          continue;
        }
        const Word* first = rows.data() + slots(query_items[k0]) * w_max;
        std::copy(first, first + n_w, acc.begin());
        for (std::int64_t k = k0 + 1; k < k1; ++k) {
          const Word* row = rows.data() + slots(query_items[k]) * w_max;
          for (std::int64_t w = 0; w < n_w; ++w) acc[w] &= row[w];
        }
        std::int64_t c = 0;
        for (std::int64_t w = 0; w < n_w; ++w) c += popcount(acc[w]);
        local[q] += c;
      }
    }
  }
  for (const auto& local : partial) {
    for (std::int64_t q = 0; q < static_cast<std::int64_t>(local.size()); ++q) counts[q] += local[q];
  }
}

template ItemsetTable frequent_itemsets<std::int32_t>(const std::int64_t*, const std::int32_t*,
                                                      std::int64_t, std::int64_t, std::int64_t,
                                                      std::int64_t);
template ItemsetTable frequent_itemsets<std::int64_t>(const std::int64_t*, const std::int64_t*,
                                                      std::int64_t, std::int64_t, std::int64_t,
                                                      std::int64_t);
template void itemset_support<std::int32_t>(const std::int64_t*, const std::int32_t*, std::int64_t,
                                            const std::int64_t*, const std::int64_t*, std::int64_t,
                                            std::int64_t*);
template void itemset_support<std::int64_t>(const std::int64_t*, const std::int64_t*, std::int64_t,
                                            const std::int64_t*, const std::int64_t*, std::int64_t,
                                            std::int64_t*);

}  // namespace pyconcepts
