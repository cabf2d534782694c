// Internal helpers shared by the searches: streaming top-k lists, a deterministic parallel loop,
// float16 conversion of rows, power-of-two rescaling, padded-map gathering and the argument checks.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "cnn_core/matcher.hpp"

namespace cnn_core::detail {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// ---- argument checks: every message starts with the argument's name -------------------------------

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

// Python tuple notation, so messages read the same as numpy's shapes: (3,), (4, 5), ().
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

// "queries'" / "query's", for messages comparing two arguments.
inline std::string possessive(const char* name) {
  const std::string n = name;
  return n + (!n.empty() && n.back() == 's' ? "'" : "'s");
}

inline int64_t check_range(const char* name, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi)
    fail(std::string(name) + ": " + std::to_string(v) + " outside [" + std::to_string(lo) + ", " +
         std::to_string(hi) + "]");
  return v;
}

// `t` must have exactly `ndim` dimensions (any number >= min_ndim when ndim < 0).
inline void check_tensor(const Tensor& t, const char* name, int ndim, int min_ndim = 0) {
  const int nd = static_cast<int>(t.shape.size());
  if (ndim >= 0 && nd != ndim)
    fail(std::string(name) + ": expected " + std::to_string(ndim) + " dimensions, got shape " + shape_str(t.shape));
  if (ndim < 0 && nd < min_ndim)
    fail(std::string(name) + ": expected at least " + std::to_string(min_ndim) + " dimensions, got shape " +
         shape_str(t.shape));
  for (int64_t s : t.shape)
    if (s < 0) fail(std::string(name) + ": negative dimension in shape " + shape_str(t.shape));
  if (t.data == nullptr && t.size() > 0) fail(std::string(name) + ": no data");
}

constexpr int kAnyNdim = -1;

// Store rows to search: all n when `rows` is empty, else `rows` (in range, no duplicates).
inline std::vector<int64_t> resolve_rows(const std::vector<int64_t>& rows, int64_t n, const char* database) {
  if (rows.empty()) {
    if (n == 0) fail(std::string(database) + ": has no rows to search");
    std::vector<int64_t> r(n);
    for (int64_t i = 0; i < n; ++i) r[i] = i;
    return r;
  }
  for (int64_t v : rows)
    if (v < 0 || v >= n)
      fail("rows: row " + std::to_string(v) + " outside [0, " + std::to_string(n) + ")");
  std::vector<int64_t> sorted = rows;
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) fail("rows: contains duplicates (row " + std::to_string(*dup) + ")");
  return rows;
}

inline void require_finite(const float* v, int64_t n, const char* what) {
  // An all-ones exponent marks NaN or Inf; integer OR-reduction vectorizes, a float sum would not.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, v + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  if (bad) fail(std::string(what) + ": contains NaN or Inf values");
}

// ---- top-k lists ----------------------------------------------------------------------------------

// Total order of candidates: higher similarity first, then lower database index.
inline bool better(float s1, int64_t i1, float s2, int64_t i2) {
  return s1 > s2 || (s1 == s2 && i1 < i2);
}

// k best (similarity, index) pairs for each of n queries. Up to kSortedMax a list kept sorted (cheapest
// for small k); above, a binary heap whose root is the worst kept pair, so an insertion costs O(log k)
// rather than O(k) (while a heap is not yet full, a new pair goes to the end and sifts up: O(1) on
// average). Both hold exactly the k best pairs seen, and finish() sorts them best first: the result is
// the same set whatever the order of insertions, which is what makes merging per-worker lists give
// identical results for any split of the work. Empty slots hold (-inf, kNoIndex).
struct TopK {
  static constexpr int64_t kSortedMax = 16;
  int64_t n = 0, k = 0;
  bool heap = false;
  std::vector<float> sim;
  std::vector<int64_t> idx;
  std::vector<int64_t> count;  // heap mode: pairs held per query
  TopK() = default;
  TopK(int64_t n_, int64_t k_)
      : n(n_), k(k_), heap(k_ > kSortedMax), sim(n_ * k_, kNegInf), idx(n_ * k_, kNoIndex), count(heap ? n_ : 0, 0) {}
  // Candidates with similarity below this cannot enter query q's list.
  float threshold(int64_t q) const {
    if (heap) return count[q] < k ? kNegInf : sim[q * k];
    return sim[q * k + k - 1];
  }
  void insert(int64_t q, float s, int64_t i) {
    float* S = &sim[q * k];
    int64_t* I = &idx[q * k];
    if (heap) {
      int64_t p;
      if (count[q] < k) {  // not full: add at the end and sift up past the parents better than it
        p = count[q]++;
        while (p > 0) {
          const int64_t parent = (p - 1) / 2;
          if (!better(S[parent], I[parent], s, i)) break;
          S[p] = S[parent];
          I[p] = I[parent];
          p = parent;
        }
      } else {
        if (!better(s, i, S[0], I[0])) return;
        p = 0;  // replace the root (worst) and sift down, moving the worse child up while (s, i) beats it
        for (int64_t c = 1; c < k; c = 2 * p + 1) {
          if (c + 1 < k && better(S[c], I[c], S[c + 1], I[c + 1])) ++c;
          if (!better(s, i, S[c], I[c])) break;
          S[p] = S[c];
          I[p] = I[c];
          p = c;
        }
      }
      S[p] = s;
      I[p] = i;
      return;
    }
    if (!better(s, i, S[k - 1], I[k - 1])) return;
    int64_t p = k - 1;
    while (p > 0 && better(s, i, S[p - 1], I[p - 1])) {
      S[p] = S[p - 1];
      I[p] = I[p - 1];
      --p;
    }
    S[p] = s;
    I[p] = i;
  }
  void merge(const TopK& o) {
    for (int64_t e = 0; e < n * k; ++e)
      if (o.idx[e] != kNoIndex) insert(e / k, o.sim[e], o.idx[e]);
  }
  // Sorts every list best first (the sorted lists already are); call once all insertions are done.
  void finish() {
    if (!heap) return;
    std::vector<std::pair<float, int64_t>> row(k);
    for (int64_t q = 0; q < n; ++q) {
      const int64_t c = count[q];  // slots past c are still empty, and stay last
      for (int64_t j = 0; j < c; ++j) row[j] = {sim[q * k + j], idx[q * k + j]};
      std::sort(row.begin(), row.begin() + c, [](const auto& a, const auto& b) {
        return better(a.first, a.second, b.first, b.second);
      });
      for (int64_t j = 0; j < c; ++j) sim[q * k + j] = row[j].first, idx[q * k + j] = row[j].second;
    }
    heap = false;
  }
};

// ---- progress -------------------------------------------------------------------------------------

// Where the polling thread reports (units done, units) of the parallel loop it runs; set for the
// current thread by cnn_core::ProgressScope.
const Progress*& progress_sink();

// ---- parallel loop --------------------------------------------------------------------------------

// Test hook: when >= 0, at most this many threads besides the caller start, as if the OS refused the
// rest (the C++ unit tests use it to exercise the fallback).
inline std::atomic<int> g_test_thread_start_limit{-1};

// Workers for `units` units of work: threads (checked by the caller) capped by max_threads() and units.
inline int workers_for(int64_t threads, int64_t units) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({threads, max_threads(), units})));
}

// When the calling thread last polled a Cancel: kept across parallel loops, so a search made of many
// short loops (the flat reference search, the hierarchy's stages) still polls every 100 ms.
inline std::chrono::steady_clock::time_point& last_cancel_poll() {
  thread_local std::chrono::steady_clock::time_point t{};
  return t;
}

// Runs body(unit, worker) for unit in [0, units) on up to `workers` threads: the calling thread is worker
// 0 and starts the others. Each worker owns its state (the caller keeps one accumulator per worker and
// merges them), units are fixed-shape, so results do not depend on which worker ran what: when starting
// a thread fails, the units simply go to the workers that exist. The calling thread polls `cancel`
// before its units (at most every 100 ms) and throws Cancelled when it says so; the first exception of
// any worker stops the others after their current unit and is rethrown.
template <class Body>
void parallel_units(int64_t units, int workers, const Cancel& cancel, Body&& body) {
  workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(workers, units)));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  std::atomic<int64_t> done{0};
  const Progress* sink = progress_sink();
  auto run = [&](int w, bool poll) {
    try {
      for (int64_t u; (u = next.fetch_add(1)) < units;) {
        if (poll) {
          const auto now = std::chrono::steady_clock::now();
          if (now - last_cancel_poll() >= std::chrono::milliseconds(100)) {
            last_cancel_poll() = now;
            if (cancel && cancel()) throw Cancelled();
            if (sink && *sink) (*sink)(done.load(), units);
          }
        }
        body(u, w);
        done.fetch_add(1);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(units);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  const int limit = g_test_thread_start_limit.load();
  for (int w = 1; w < workers && (limit < 0 || w <= limit); ++w) {
    try {
      pool.emplace_back(run, w, false);
    } catch (const std::system_error&) {
      break;  // the OS is out of threads: go on with those that started
    }
  }
  run(0, static_cast<bool>(cancel) || (sink && *sink));
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  if (sink && *sink) (*sink)(units, units);
}

// ---- data access ----------------------------------------------------------------------------------

// C (m×n) = A (m×k) · B (n×k)ᵀ, row-major with leading dimensions; Eigen or the loaded BLAS.
void gemm_nt(const float* a, int64_t m, int64_t lda, const float* b, int64_t n, int64_t ldb, int64_t k, float* c,
             int64_t ldc);

// Copies n values starting at element `offset` of t into dst as float32.
inline void load_f32(const Tensor& t, int64_t offset, int64_t n, float* dst) {
  if (t.dtype == DType::F32) {
    const float* s = static_cast<const float*>(t.data) + offset;
    std::copy(s, s + n, dst);
  } else {
    half_to_float(static_cast<const uint16_t*>(t.data) + offset, dst, n);
  }
}

// Power-of-two rescaling. Float32 dot products overflow once |a|·|b|·D nears FLT_MAX (|x| ~ 1e19) and
// lose their terms to underflow below ~1e-19 per factor; cosine does not change when a whole vector is
// scaled, so vectors whose largest |value| m lies outside [2^-40, 2^40] are multiplied by 2^-e, bringing
// m into [0.5, 1). Inside that range e = 0 and nothing changes (products stay within 2^±80, far from
// float32 limits), and a power of two only shifts exponents, so scaled results round like unscaled ones.
inline int safe_exponent(float m) {
  if (m == 0.f || (m >= 0x1p-40f && m <= 0x1p40f)) return 0;
  int e;
  std::frexp(m, &e);
  return e;
}

inline float max_abs(const float* v, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
  return m;
}

// v *= 2^-e. The factor is applied in double: 2^-e itself may lie outside float32's normal range.
inline void scale_pow2(float* v, int64_t n, int e) {
  if (e == 0) return;
  const double s = std::ldexp(1.0, -e);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(v[i] * s);
}

// Scales v to the safe range (see safe_exponent) and returns the exponent used.
inline int normalise(float* v, int64_t n) {
  const int e = safe_exponent(max_abs(v, n));
  scale_pow2(v, n, e);
  return e;
}

// 1/||v|| from a squared norm, for the float32 filter (see "Canonical similarities" below): a zero vector
// gets 0 (its similarity is 0); a nonzero one too small for float32 arithmetic (sq <= 1e-60 after the
// power-of-two rescaling, i.e. next to values 1e30 times larger in the same scaled block) gets NaN, so
// every filter value it touches is NaN and goes on to the canonical rescoring (`passes_filter`).
inline float filter_inv_norm(double sq) {
  if (sq > 1e-60) return static_cast<float>(1.0 / std::sqrt(sq));
  return sq == 0 ? 0.f : std::numeric_limits<float>::quiet_NaN();
}

// 1/||v|| from a squared norm; zero (and denormal-small) vectors get 0 (for callers without a
// canonical rescoring step).
inline float inv_norm(double sq) { return sq > 1e-60 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.f; }

// ---- canonical similarities ----------------------------------------------------------------------
//
// Every search reports the same, canonical similarity for a (query, database) pair, whatever computed
// it: the dot product of the original values summed in double, per pixel over channels and then over
// the K×K offsets in (dy, dx) order (out-of-map pixels skipped: they are zero), divided by the product
// of the two norms computed the same way; 0 when either vector is all zeros; rounded once to float32.
// Float32 GEMMs (fast, but their rounding depends on block shapes and the BLAS) only filter: a
// candidate is rescored canonically unless its float32 value v is certainly below the current k-th best
// (`passes_filter`), which holds because |v - canonical| <= filter_slack(D, K) for any summation order
// (the float32 rounding bound of a D-term dot product plus the norms, with a 2x margin). So exact search,
// the flattened reference and the bound-pruned search give bit-identical top-k lists, ties included.

// Largest |float32 filter value - canonical similarity| for descriptors of `dims` values summed over
// `kernel`^2 offsets.
inline float filter_slack(int64_t dims, int64_t kernel) {
  return static_cast<float>(std::ldexp(2.0 * static_cast<double>(dims + kernel * kernel) + 64.0, -24));
}

// Whether float32 value v may still beat threshold thr (NaN: unknown, so yes).
inline bool passes_filter(float v, float thr, float slack) { return !(v + slack < thr); }

// Canonical dot product and squared norms of two rows of `n` values, summed in double per group of
// `group` consecutive values, groups added in order (a flattened K×K×C patch: group = C).
struct CanonicalParts {
  double dot = 0, sq_a = 0, sq_b = 0;
};
CanonicalParts canonical_rows(const float* a, const float* b, int64_t n, int64_t group);
// The canonical dot products of row `a` with rows b[0..n) of c values, one group each: bit for bit the
// `dot` of canonical_rows(a, b[t], c, c), several rows at once (their norms: canonical_rows(x, x, c, c)).
void canonical_dots(const float* a, const float* const* b, int n, int64_t c, double* out);
// The canonical squared norms of rows v[0..n) of c values: bit for bit canonical_rows(v[t], v[t], c, c).sq_a,
// several rows at once.
void canonical_sq_norms(const float* const* v, int n, int64_t c, double* out);
// The similarity from canonical parts.
float canonical_cosine(const CanonicalParts& p);

// Canonical similarity of the K×K patch at (qy, qx) of query map (qh, qw, c) (element offset qoff of
// `query`) and the patch at (dy, dx) of database map (dh, dw, c) at element offset doff of `database`.
// `scratch` holds 2c floats.
float canonical_patch_cosine(const Tensor& query, int64_t qoff, int64_t qh, int64_t qw, int64_t qy, int64_t qx,
                             const Tensor& database, int64_t doff, int64_t dh, int64_t dw, int64_t dy, int64_t dx,
                             int64_t c, int64_t kernel, float* scratch);

// Window offsets of a K-wide 'SAME' kernel: -(K-1)/2 .. K/2.
inline int64_t pad_before(int64_t kernel) { return (kernel - 1) / 2; }

// Zero-padded float32 copy of map `offset` (h, w, c) for a K-wide 'SAME' window: rows
// [y0 - a, y0 + rows + K-1 - a) × cols [x0 - a, x0 + cols + K-1 - a), a = (K-1)/2; checks finiteness.
void gather_padded(const Tensor& t, int64_t offset, int64_t h, int64_t w, int64_t c, int64_t kernel, int64_t y0,
                   int64_t rows, int64_t x0, int64_t cols, float* dst, const char* what);
// Inverse patch norms of a padded (rows+K-1, cols+K-1, c) block: box filter of squared pixel norms.
void patch_inv_norms(const float* padded, int64_t rows, int64_t cols, int64_t c, int64_t kernel, float* out);

// ---- searches with the argument names of their caller ---------------------------------------------

// Argument names for messages: hierarchical's stages report "query_coarse", "db_global", "shortlist"...
struct Names {
  const char* query;
  const char* database;
  const char* k;
  const char* kernel = "kernel";
};

// `group`: canonical sums per group of that many values (0: the whole row; flattened patches: C).
Neighbours exact_topk(const Tensor& queries, const Tensor& database, const std::vector<int64_t>& rows, int64_t k,
                      int64_t threads, const Cancel& cancel, const Names& names, int64_t group = 0);
Neighbours global_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t S,
                       int64_t threads, const Cancel& cancel, const Names& names);
PatchMatches patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                        int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel, const Names& names);

// Sorts `top` and turns its store indices (row * dh * dw + y * dw + x) into (image, y, x) on an (h, w) grid.
PatchMatches to_matches(TopK& top, int64_t h, int64_t w, int64_t dh, int64_t dw);

PatchMatches bounded_patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                                int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel, const Names& names,
                                BoundStats* stats);

// 1×1 patch search with the certified bfloat16 AMX filter (amx.cpp); `rows` already resolved, k checked,
// amx_bf16_ready() true. Fills st.pairs, pairs_scored, pairs_rescored and filter.
PatchMatches amx_pixel_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t k,
                            int64_t threads, const Cancel& cancel, const Names& names, BoundStats& st);

struct MapDims {
  int64_t n, h, w, c;
};
// Query (H, W, C) and database (N, H', W', C) maps: dimensions, channels.
MapDims check_maps(const Tensor& query, const Tensor& database, const Names& names);

inline int64_t check_threads(int64_t threads) { return check_range("threads", threads, 1, kInt32Max); }

}  // namespace cnn_core::detail
