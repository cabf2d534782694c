// Internal helpers shared by the searches: streaming top-k lists, a deterministic parallel loop,
// float16 conversion of rows, padded-map gathering and argument checks.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cnn_core/matcher.hpp"

namespace cnn_core::detail {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kNoIndex = std::numeric_limits<int64_t>::max();

// Total order of candidates: higher similarity first, then lower database index.
inline bool better(float s1, int64_t i1, float s2, int64_t i2) {
  return s1 > s2 || (s1 == s2 && i1 < i2);
}

// k best (similarity, index) pairs for each of n queries, kept sorted best first. Merging lists is
// order independent, which is what makes results identical for any split of the work.
struct TopK {
  int64_t n = 0;
  int k = 0;
  std::vector<float> sim;
  std::vector<int64_t> idx;
  TopK() = default;
  TopK(int64_t n_, int k_) : n(n_), k(k_), sim(n_ * k_, kNegInf), idx(n_ * k_, kNoIndex) {}
  float threshold(int64_t q) const { return sim[q * k + k - 1]; }
  void insert(int64_t q, float s, int64_t i) {
    float* S = &sim[q * k];
    int64_t* I = &idx[q * k];
    if (!better(s, i, S[k - 1], I[k - 1])) return;
    int p = k - 1;
    while (p > 0 && better(s, i, S[p - 1], I[p - 1])) {
      S[p] = S[p - 1];
      I[p] = I[p - 1];
      --p;
    }
    S[p] = s;
    I[p] = i;
  }
  void merge(const TopK& o) {
    for (int64_t q = 0; q < n; ++q)
      for (int j = 0; j < k; ++j) {
        if (o.idx[q * k + j] == kNoIndex) break;
        insert(q, o.sim[q * k + j], o.idx[q * k + j]);
      }
  }
};

// Runs body(unit, worker) for unit in [0, units) on `threads` workers; each worker owns its state, so
// the caller keeps one accumulator per worker and merges them. Rethrows the first exception.
template <class Body>
void parallel_units(int64_t units, int threads, Body&& body) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&](int w) {
    try {
      for (int64_t u; (u = next.fetch_add(1)) < units;) body(u, w);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(units);
    }
  };
  if (threads == 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    for (int w = 0; w < threads; ++w) pool.emplace_back(worker, w);
    for (auto& t : pool) t.join();
  }
  if (error) std::rethrow_exception(error);
}

inline int workers_for(int threads, int64_t units) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
}

// C (m×n) = A (m×k) · B (n×k)ᵀ, row-major with leading dimensions; Eigen or the loaded BLAS.
void gemm_nt(const float* a, int64_t m, int64_t lda, const float* b, int64_t n, int64_t ldb, int64_t k, float* c,
             int64_t ldc);

// Zero-padded float32 copy of map `offset` (h, w, c) for a K-wide 'SAME' window: rows
// [y0 - a, y0 + rows + K-1 - a) × cols [x0 - a, x0 + cols + K-1 - a), a = (K-1)/2; checks finiteness.
void gather_padded(const Tensor& t, int64_t offset, int64_t h, int64_t w, int64_t c, int kernel, int64_t y0,
                   int64_t rows, int64_t x0, int64_t cols, float* dst, const char* what);
// Inverse patch norms of a padded (rows+K-1, cols+K-1, c) block: box filter of squared pixel norms.
void patch_inv_norms(const float* padded, int64_t rows, int64_t cols, int64_t c, int kernel, float* out);

// Copies n values starting at element `offset` of t into dst as float32.
inline void load_f32(const Tensor& t, int64_t offset, int64_t n, float* dst) {
  if (t.dtype == DType::F32) {
    const float* s = static_cast<const float*>(t.data) + offset;
    std::copy(s, s + n, dst);
  } else {
    half_to_float(static_cast<const uint16_t*>(t.data) + offset, dst, n);
  }
}

inline void require_finite(const float* v, int64_t n, const char* what) {
  // An all-ones exponent marks NaN or Inf; integer OR-reduction vectorizes, a float sum would not.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, v + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7f800000u) == 0x7f800000u);
  }
  if (bad)
    throw std::invalid_argument(std::string(what) + " contains NaN or Inf values");
}

// 1/||v|| from a squared norm; zero (and denormal-small) vectors get 0 so their similarity is 0.
inline float inv_norm(double sq) { return sq > 1e-60 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.f; }

inline std::vector<int64_t> resolve_rows(const std::vector<int64_t>& rows, int64_t n, const char* what) {
  std::vector<int64_t> r = rows;
  if (r.empty()) {
    r.resize(n);
    for (int64_t i = 0; i < n; ++i) r[i] = i;
  }
  for (int64_t v : r)
    if (v < 0 || v >= n)
      throw std::invalid_argument(std::string(what) + ": row " + std::to_string(v) + " outside [0, " +
                                  std::to_string(n) + ")");
  return r;
}

// Window offsets of a K-wide 'SAME' kernel: -(K-1)/2 .. K/2.
inline int pad_before(int kernel) { return (kernel - 1) / 2; }

}  // namespace cnn_core::detail
