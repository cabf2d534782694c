// PatchIndex: a feature-map database prepared once (per-map scale exponent, inverse K×K patch norms) for
// many searches of a few query positions each — one click of the provenance explorer. A search needs
// only K^2 × C multiply-adds per database position and query position, so it is bound by streaming the
// maps; the shift-sum machinery of patch_topk (a whole query map at once) would be wasted here.
//
// Work is split in fixed units (database row × band of image rows, the band height fixed by the map
// width) and per-worker top-k lists merge into the same set. Float32 products only filter candidates;
// the similarities reported are the canonical ones (internal.hpp), so a search gives exactly what
// patch_topk gives for those positions, ties included, for any thread count.
#include <Eigen/Core>

#include "internal.hpp"

namespace cnn_core {

using detail::fail;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

// Pixels per band (rows × padded width): ~1 MB of float32 at C = 64, so a band stays in cache while its
// K^2 shifted sums are read. Depends only on the map's geometry, never on the thread count.
constexpr int64_t kBandPixels = 4096;

int64_t band_rows(int64_t h, int64_t w, int64_t kernel) {
  return std::max<int64_t>(1, std::min<int64_t>(h, kBandPixels / (w + kernel - 1)));
}

// Padded row i of a band starting at map row y0 (map row y0 + i - a, a = (K-1)/2) as float32 (pc, C),
// columns [-a, w + K-1 - a), zero outside the map, each value multiplied by 2^-e. Returns false for a row
// wholly outside the map (left untouched: its products are zero).
bool load_row(const Tensor& t, int64_t offset, int64_t h, int64_t w, int64_t c, int64_t K, int64_t y, int e,
              float* d) {
  if (y < 0 || y >= h) return false;
  const int64_t a = detail::pad_before(K), pc = w + K - 1;
  std::fill(d, d + a * c, 0.f);
  detail::load_f32(t, offset + y * w * c, w * c, d + a * c);
  std::fill(d + (a + w) * c, d + pc * c, 0.f);
  detail::scale_pow2(d + a * c, w * c, e);
  return true;
}

}  // namespace

PatchIndex::PatchIndex(const Tensor& database, int64_t kernel, int64_t threads, const Cancel& cancel) {
  detail::check_tensor(database, "database", 4);
  kernel_ = detail::check_range("kernel", kernel, 1, kMaxKernel);
  detail::check_threads(threads);
  n_ = database.shape[0], h_ = database.shape[1], w_ = database.shape[2], c_ = database.shape[3];
  if (c_ == 0) fail("database: has no channels");
  if (n_ * h_ * w_ == 0) fail("database: has no positions to search");
  db_ = database;
  db_.shape = {n_, h_, w_, c_};
  inv_norm_.assign(n_ * h_ * w_, 0.f);
  exponent_.assign(n_, 0);
  const int64_t K = kernel_, plane = h_ * w_, C = c_;
  const int nw = detail::workers_for(threads, n_);
  // One unit per map: finiteness and largest |value| (its scale exponent), then the squared norms of its
  // scaled pixels and their K×K box sums, as patch_topk computes them (double, dy then dx).
  detail::parallel_units(n_, nw, cancel, [&](int64_t r, int) {
    std::vector<float> row(w_ * C);
    float m = 0.f;
    for (int64_t y = 0; y < h_; ++y) {
      detail::load_f32(db_, (r * plane + y * w_) * C, w_ * C, row.data());
      detail::require_finite(row.data(), w_ * C, "database");
      m = std::max(m, detail::max_abs(row.data(), w_ * C));
    }
    const int e = detail::safe_exponent(m);
    exponent_[r] = static_cast<int16_t>(e);
    const int64_t a = detail::pad_before(K), ph = h_ + K - 1, pw = w_ + K - 1;
    std::vector<double> sq(ph * pw, 0.0);
    for (int64_t y = 0; y < h_; ++y) {
      detail::load_f32(db_, (r * plane + y * w_) * C, w_ * C, row.data());
      detail::scale_pow2(row.data(), w_ * C, e);
      for (int64_t x = 0; x < w_; ++x) {
        double s = 0;
        for (int64_t j = 0; j < C; ++j) s += static_cast<double>(row[x * C + j]) * row[x * C + j];
        sq[(y + a) * pw + x + a] = s;
      }
    }
    for (int64_t y = 0; y < h_; ++y)
      for (int64_t x = 0; x < w_; ++x) {
        double s = 0;
        for (int64_t dy = 0; dy < K; ++dy)
          for (int64_t dx = 0; dx < K; ++dx) s += sq[(y + dy) * pw + x + dx];
        inv_norm_[r * plane + y * w_ + x] = detail::filter_inv_norm(s);
      }
  });
}

int64_t PatchIndex::prepared_bytes() const {
  return static_cast<int64_t>(inv_norm_.size() * sizeof(float) + exponent_.size() * sizeof(int16_t));
}

PatchMatches PatchIndex::search(const Tensor& query, const std::vector<int64_t>& positions,
                                const std::vector<int64_t>& rows_in, int64_t k_in, int64_t threads,
                                const Cancel& cancel, PatchMatches* per_row) const {
  detail::check_tensor(query, "query_map", 3);
  if (query.shape[2] != c_)
    fail("query_map: " + std::to_string(query.shape[2]) + " channels do not match the index's " + std::to_string(c_));
  const int64_t H = query.shape[0], W = query.shape[1], C = c_, K = kernel_;
  if (positions.size() % 2) fail("positions: expected (y, x) pairs, got an odd count of values");
  const int64_t P = static_cast<int64_t>(positions.size() / 2);
  for (int64_t p = 0; p < P; ++p) {
    const int64_t y = positions[2 * p], x = positions[2 * p + 1];
    if (y < 0 || y >= H || x < 0 || x >= W)
      fail("positions: (" + std::to_string(y) + ", " + std::to_string(x) + ") outside the query_map's " +
           std::to_string(H) + "x" + std::to_string(W) + " grid");
  }
  const std::vector<int64_t> rows = detail::resolve_rows(rows_in, n_, "database");
  const int64_t R = static_cast<int64_t>(rows.size()), plane = h_ * w_;
  const int64_t k = detail::check_range("k", k_in, 1, R * plane);
  detail::check_threads(threads);

  // Each position's K×K taps (zero outside the map) as rows of `taps` (P·K², C), finite, scaled by a power
  // of two from the patch's own largest |value| (cosine does not change; only these K² pixels are read, not
  // the whole query map), and its inverse patch norm.
  const int64_t KK = K * K, a = detail::pad_before(K);
  RowMat taps = RowMat::Zero(std::max<int64_t>(1, P * KK), C);
  std::vector<float> qinv(P);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t dy = 0; dy < K; ++dy)
      for (int64_t dx = 0; dx < K; ++dx) {
        const int64_t y = positions[2 * p] + dy - a, x = positions[2 * p + 1] + dx - a;
        if (y < 0 || y >= H || x < 0 || x >= W) continue;
        float* dst = taps.row(p * KK + dy * K + dx).data();
        detail::load_f32(query, (y * W + x) * C, C, dst);
        detail::require_finite(dst, C, "query_map");
      }
    float* patch = taps.row(p * KK).data();
    detail::normalise(patch, KK * C);  // the rows of one position are contiguous
    double sq = 0;
    for (int64_t j = 0; j < KK * C; ++j) sq += static_cast<double>(patch[j]) * patch[j];
    qinv[p] = detail::filter_inv_norm(sq);
  }

  const int64_t brows = band_rows(h_, w_, K), bands = (h_ + brows - 1) / brows, units = R * bands;
  const int nw = detail::workers_for(threads, units);
  std::vector<detail::TopK> best(nw, detail::TopK(P, k));
  // Per worker, per (position, searched row): that row's best (similarity, store index) so far.
  const bool want_rows = per_row != nullptr;
  std::vector<std::vector<float>> row_sim(want_rows ? nw : 0, std::vector<float>(P * R, detail::kNegInf));
  std::vector<std::vector<int64_t>> row_idx(want_rows ? nw : 0, std::vector<int64_t>(P * R, detail::kNoIndex));
  const int64_t pw = w_ + K - 1;
  const float slack = detail::filter_slack(KK * C, K);

  if (P > 0)
    detail::parallel_units(units, nw, cancel, [&](int64_t unit, int wk) {
      const int64_t ri = unit / bands, r = rows[ri], band = unit % bands;
      const int64_t y0 = band * brows, nrows = std::min(brows, h_ - y0);
      const int64_t mp = (nrows + K - 1) * pw;
      // Pixel-by-tap dot products: prod(m, p·K² + t) = band pixel m · tap t of query position p, one
      // padded row at a time so the float32 copy of the row stays in cache.
      RowMat row(pw, C), prod(mp, P * KK);
      for (int64_t i = 0; i < nrows + K - 1; ++i) {
        if (load_row(db_, r * plane * C, h_, w_, C, K, y0 + i - a, exponent_[r], row.data()))
          prod.middleRows(i * pw, pw).noalias() = row * taps.transpose();
        else
          prod.middleRows(i * pw, pw).setZero();
      }
      detail::TopK& top = best[wk];
      std::vector<float> scratch(2 * C);
      for (int64_t p = 0; p < P; ++p) {
        const int64_t qy = positions[2 * p], qx = positions[2 * p + 1];
        float thr = top.threshold(p);
        float* rs = want_rows ? &row_sim[wk][p * R + ri] : nullptr;
        int64_t* rix = want_rows ? &row_idx[wk][p * R + ri] : nullptr;
        const float qi = qinv[p];
        for (int64_t y = 0; y < nrows; ++y) {
          const float* dinv = inv_norm_.data() + r * plane + (y0 + y) * w_;
          for (int64_t x = 0; x < w_; ++x) {
            float s = 0.f;
            for (int64_t dy = 0; dy < K; ++dy)
              for (int64_t dx = 0; dx < K; ++dx) s += prod((y + dy) * pw + x + dx, p * KK + dy * K + dx);
            // The float32 value only filters; a candidate that may beat the k-th best (or its image's best)
            // is rescored canonically, so the similarities are match.patches' to the bit.
            const float v = s * qi * dinv[x];
            const bool for_top = detail::passes_filter(v, thr, slack);
            const bool for_row = rs != nullptr && detail::passes_filter(v, *rs, slack);
            if (!for_top && !for_row) continue;
            const int64_t idx = r * plane + (y0 + y) * w_ + x;
            const float cv = detail::canonical_patch_cosine(query, 0, H, W, qy, qx, db_, r * plane * C, h_, w_, y0 + y,
                                                            x, C, K, scratch.data());
            if (for_top) {
              top.insert(p, cv, idx);
              thr = top.threshold(p);
            }
            if (for_row && detail::better(cv, idx, *rs, *rix)) *rs = cv, *rix = idx;
          }
        }
      }
    });
  for (int w = 1; w < nw; ++w) best[0].merge(best[w]);
  best[0].finish();

  auto fill = [&](PatchMatches& m, int64_t h, int64_t w, int64_t kk, const std::vector<float>& sim,
                  const std::vector<int64_t>& idx) {
    m.h = h, m.w = w, m.k = kk;
    const int64_t n = h * w * kk;
    m.image.assign(n, -1), m.y.assign(n, -1), m.x.assign(n, -1);
    m.similarity.assign(sim.begin(), sim.begin() + n);
    for (int64_t i = 0; i < n; ++i) {
      if (idx[i] == detail::kNoIndex) continue;
      m.image[i] = static_cast<int32_t>(idx[i] / plane);
      m.y[i] = static_cast<int32_t>((idx[i] / w_) % h_);
      m.x[i] = static_cast<int32_t>(idx[i] % w_);
    }
  };
  if (want_rows) {
    for (int w = 1; w < nw; ++w)
      for (int64_t i = 0; i < P * R; ++i)
        if (detail::better(row_sim[w][i], row_idx[w][i], row_sim[0][i], row_idx[0][i]))
          row_sim[0][i] = row_sim[w][i], row_idx[0][i] = row_idx[w][i];
    fill(*per_row, P, R, 1, row_sim[0], row_idx[0]);
  }
  PatchMatches out;
  fill(out, P, 1, k, best[0].sim, best[0].idx);
  return out;
}

}  // namespace cnn_core
