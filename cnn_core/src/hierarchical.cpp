// The paper's hierarchical prune: global shortlist of images -> top coarse positions -> fine patch
// search restricted to the fine regions under the coarse candidates (plus a margin).
#include <Eigen/Core>

#include "internal.hpp"

namespace cnn_core {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

// Fine indices i in [0, fine) whose coarse cell i*coarse/fine equals c: [ceil(c*f/co), ceil((c+1)*f/co)).
inline int64_t cell_begin(int64_t c, int64_t fine, int64_t coarse) { return (c * fine + coarse - 1) / coarse; }

}  // namespace

namespace detail {

// Fine search under the coarse candidates; arguments already checked by the caller.
PatchMatches pruned_fine(const Tensor& query_fine, const Tensor& db_fine, const PatchMatches& coarse,
                         int64_t db_coarse_h, int64_t db_coarse_w, int64_t kernel, int64_t margin, int64_t k,
                         int64_t threads, const Cancel& cancel) {
  const int64_t H = query_fine.shape[0], W = query_fine.shape[1], C = query_fine.shape[2];
  const int64_t N = db_fine.shape[0], Hf = db_fine.shape[1], Wf = db_fine.shape[2];
  const int64_t Hc = coarse.h, Wc = coarse.w, ck = coarse.k;
  const int64_t plane = Hf * Wf;

  const int64_t a = pad_before(kernel);
  const int64_t Wp = W + kernel - 1;
  std::vector<float> qpad((H + kernel - 1) * Wp * C), qinv(H * W);
  gather_padded(query_fine, 0, H, W, C, kernel, 0, H, 0, W, qpad.data(), "query_fine");
  normalise(qpad.data(), (H + kernel - 1) * Wp * C);
  patch_inv_norms(qpad.data(), H, W, C, kernel, qinv.data());

  TopK top(H * W, k);
  const float slack = filter_slack(kernel * kernel * C, kernel);
  parallel_units(Hc * Wc, workers_for(threads, Hc * Wc), cancel, [&](int64_t cell, int) {
    const int64_t cy = cell / Wc, cx = cell % Wc;
    std::vector<int64_t> cand;
    for (int64_t j = 0; j < ck; ++j) {
      const int64_t e = cell * ck + j;
      const int64_t r = coarse.image[e];
      if (r < 0) continue;
      if (r >= N) fail("coarse: matches name row " + std::to_string(r) + ", outside db_fine's " + std::to_string(N));
      const int64_t my = coarse.y[e], mx = coarse.x[e];
      const int64_t ya = std::max<int64_t>(0, cell_begin(my, Hf, db_coarse_h) - margin);
      const int64_t yb = std::min<int64_t>(Hf, cell_begin(my + 1, Hf, db_coarse_h) + margin);
      const int64_t xa = std::max<int64_t>(0, cell_begin(mx, Wf, db_coarse_w) - margin);
      const int64_t xb = std::min<int64_t>(Wf, cell_begin(mx + 1, Wf, db_coarse_w) + margin);
      for (int64_t yy = ya; yy < yb; ++yy)
        for (int64_t xx = xa; xx < xb; ++xx) cand.push_back(r * plane + yy * Wf + xx);
    }
    std::sort(cand.begin(), cand.end());
    cand.erase(std::unique(cand.begin(), cand.end()), cand.end());

    const int64_t qy0 = cell_begin(cy, H, Hc), qy1 = cell_begin(cy + 1, H, Hc);
    const int64_t qx0 = cell_begin(cx, W, Wc), qx1 = cell_begin(cx + 1, W, Wc);
    const int64_t nqy = qy1 - qy0, nqx = qx1 - qx0, nc = static_cast<int64_t>(cand.size());
    if (nqy * nqx == 0 || nc == 0) return;

    // Shift-sums again, on a small scale: every distinct database pixel under the candidates' K×K
    // windows is loaded once, one GEMM gives all query-pixel × database-pixel products, and each
    // patch similarity is the sum of K^2 of them (zero padding = a missing pixel).
    std::vector<int64_t> pix;
    for (int64_t c : cand) {
      const int64_t r = c / plane, y = (c % plane) / Wf, x = c % Wf;
      for (int64_t dy = 0; dy < kernel; ++dy)
        for (int64_t dx = 0; dx < kernel; ++dx) {
          const int64_t yy = y + dy - a, xx = x + dx - a;
          if (yy >= 0 && yy < Hf && xx >= 0 && xx < Wf) pix.push_back(r * plane + yy * Wf + xx);
        }
    }
    std::sort(pix.begin(), pix.end());
    pix.erase(std::unique(pix.begin(), pix.end()), pix.end());
    const int64_t np_ = static_cast<int64_t>(pix.size());
    // Pixels come from several images, so each gets its own power-of-two scale 2^-pexp (see
    // safe_exponent); a candidate's patch is then scaled as a whole by 2^-e, e = the largest pexp of
    // the nonzero pixels under its window, by weighting each pixel's products with 2^(pexp - e) below.
    // Zero pixels (kZero) add nothing and must not set e.
    constexpr int kZero = std::numeric_limits<int>::min();
    RowMat dp(np_, C);
    std::vector<double> dsq(np_);
    std::vector<int> pexp(np_);
    for (int64_t j = 0; j < np_; ++j) {
      float* px = dp.row(j).data();
      load_f32(db_fine, pix[j] * C, C, px);
      require_finite(px, C, "db_fine");
      dsq[j] = dp.row(j).cast<double>().squaredNorm();  // of the unscaled pixel: double has the range
      pexp[j] = max_abs(px, C) == 0.f ? kZero : normalise(px, C);
    }
    const int64_t bw = nqx + kernel - 1, bh = nqy + kernel - 1;
    RowMat qb(bh * bw, C);
    for (int64_t i = 0; i < bh; ++i)
      std::copy_n(qpad.data() + ((qy0 + i) * Wp + qx0) * C, bw * C, qb.data() + i * bw * C);
    // Database pixel × query pixel, so the sums below read contiguous query rows.
    RowMat prod(np_, bh * bw);
    gemm_nt(dp.data(), np_, C, qb.data(), bh * bw, C, C, prod.data(), bh * bw);

    std::vector<int64_t> win(kernel * kernel);
    std::vector<float> scratch(2 * C);
    std::vector<float> dots(nqy * nqx);
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t r = cand[j] / plane, y = (cand[j] % plane) / Wf, x = cand[j] % Wf;
      double sq = 0;
      int e = kZero;
      for (int64_t dy = 0; dy < kernel; ++dy)
        for (int64_t dx = 0; dx < kernel; ++dx) {
          const int64_t yy = y + dy - a, xx = x + dx - a;
          int64_t w = -1;
          if (yy >= 0 && yy < Hf && xx >= 0 && xx < Wf) {
            w = std::lower_bound(pix.begin(), pix.end(), r * plane + yy * Wf + xx) - pix.begin();
            sq += dsq[w];
            e = std::max(e, pexp[w]);
            if (pexp[w] == kZero) w = -1;
          }
          win[dy * kernel + dx] = w;
        }
      if (e == kZero) e = 0;  // an all-zero patch: similarity 0
      const float dinv = filter_inv_norm(std::ldexp(sq, -2 * e));
      std::fill(dots.begin(), dots.end(), 0.f);
      for (int64_t dy = 0; dy < kernel; ++dy)
        for (int64_t dx = 0; dx < kernel; ++dx) {
          const int64_t w = win[dy * kernel + dx];
          if (w < 0) continue;
          const float* pw = prod.data() + w * bh * bw + dy * bw + dx;
          if (pexp[w] == e) {
            for (int64_t i = 0; i < nqy; ++i)
              for (int64_t jj = 0; jj < nqx; ++jj) dots[i * nqx + jj] += pw[i * bw + jj];
          } else {
            const float f = static_cast<float>(std::ldexp(1.0, pexp[w] - e));
            for (int64_t i = 0; i < nqy; ++i)
              for (int64_t jj = 0; jj < nqx; ++jj) dots[i * nqx + jj] += pw[i * bw + jj] * f;
          }
        }
      // Each fine query position belongs to exactly one cell, so workers write disjoint entries.
      for (int64_t i = 0; i < nqy; ++i)
        for (int64_t jj = 0; jj < nqx; ++jj) {
          const int64_t q = (qy0 + i) * W + qx0 + jj;
          if (!passes_filter(dots[i * nqx + jj] * qinv[q] * dinv, top.threshold(q), slack)) continue;
          const float cv = canonical_patch_cosine(query_fine, 0, H, W, qy0 + i, qx0 + jj, db_fine, r * plane * C, Hf,
                                                  Wf, y, x, C, kernel, scratch.data());
          top.insert(q, cv, cand[j]);
        }
    }
  });

  top.finish();
  PatchMatches m;
  m.h = H;
  m.w = W;
  m.k = k;
  const int64_t n = H * W * k;
  m.image.assign(n, -1);
  m.y.assign(n, -1);
  m.x.assign(n, -1);
  m.similarity = top.sim;
  for (int64_t i = 0; i < n; ++i) {
    if (top.idx[i] == kNoIndex) continue;
    m.image[i] = static_cast<int32_t>(top.idx[i] / plane);
    m.y[i] = static_cast<int32_t>((top.idx[i] % plane) / Wf);
    m.x[i] = static_cast<int32_t>(top.idx[i] % Wf);
  }
  return m;
}

// Coarse grid `coarse` (h, w) must be non-empty and no larger than the fine grid.
void check_grid(const char* name, int64_t ch, int64_t cw, int64_t fh, int64_t fw) {
  if (!(1 <= ch && ch <= fh && 1 <= cw && cw <= fw))
    fail(std::string(name) + ": grid " + shape_str({ch, cw}) + " must be non-empty and no larger than the fine grid " +
         shape_str({fh, fw}));
}

}  // namespace detail

PatchMatches pruned_fine_topk(const Tensor& query_fine, const Tensor& db_fine, const PatchMatches& coarse,
                              int64_t db_coarse_h, int64_t db_coarse_w, int64_t kernel, int64_t margin, int64_t k,
                              int64_t threads, const Cancel& cancel) {
  using namespace detail;
  const MapDims fine = check_maps(query_fine, db_fine, {"query_fine", "db_fine", "k"});
  check_range("kernel", kernel, 1, kMaxKernel);
  check_range("margin", margin, 0, kInt32Max);
  check_range("k", k, 1, kInt32Max);
  check_threads(threads);
  check_grid("coarse", coarse.h, coarse.w, query_fine.shape[0], query_fine.shape[1]);
  check_grid("db_coarse", db_coarse_h, db_coarse_w, fine.h, fine.w);
  const size_t entries = static_cast<size_t>(coarse.h * coarse.w * coarse.k);
  if (coarse.k < 0 || coarse.image.size() != entries || coarse.y.size() != entries || coarse.x.size() != entries)
    fail("coarse: arrays do not hold h*w*k entries");
  for (size_t e = 0; e < entries; ++e)
    if (coarse.image[e] >= 0 && (coarse.y[e] < 0 || coarse.y[e] >= db_coarse_h || coarse.x[e] < 0 ||
                                 coarse.x[e] >= db_coarse_w))
      fail("coarse: match position outside the db_coarse grid");
  return pruned_fine(query_fine, db_fine, coarse, db_coarse_h, db_coarse_w, kernel, margin, k, threads, cancel);
}

PatchMatches hierarchical(const Tensor& query_fine, const Tensor& db_fine, const Tensor& query_coarse,
                          const Tensor& db_coarse, const Tensor& query_global, const Tensor& db_global,
                          const std::vector<int64_t>& rows_in, const HierarchicalParams& p, const Cancel& cancel,
                          BoundStats* stats) {
  using namespace detail;
  const Names fine_names{"query_fine", "db_fine", "k", "kernel_fine"};
  const Names coarse_names{"query_coarse", "db_coarse", "coarse_k", "kernel_coarse"};
  const Names global_names{"query_global", "db_global", "shortlist"};
  const MapDims fine = check_maps(query_fine, db_fine, fine_names);
  const MapDims crs = check_maps(query_coarse, db_coarse, coarse_names);
  check_tensor(query_global, "query_global", kAnyNdim);
  check_tensor(db_global, "db_global", kAnyNdim, 1);
  const int64_t N = fine.n;
  if (crs.n != N) fail("db_coarse: " + std::to_string(crs.n) + " rows, expected " + std::to_string(N) + " like db_fine");
  if (db_global.shape[0] != N)
    fail("db_global: " + std::to_string(db_global.shape[0]) + " rows, expected " + std::to_string(N) + " like db_fine");
  check_grid("query_coarse", query_coarse.shape[0], query_coarse.shape[1], query_fine.shape[0], query_fine.shape[1]);
  check_grid("db_coarse", crs.h, crs.w, fine.h, fine.w);
  check_range("kernel_fine", p.kernel_fine, 1, kMaxKernel);
  check_range("kernel_coarse", p.kernel_coarse, 1, kMaxKernel);
  const std::vector<int64_t> rows = resolve_rows(rows_in, N, "db_fine");
  const int64_t R = static_cast<int64_t>(rows.size());
  check_range("shortlist", p.shortlist, 1, R);
  if (p.coarse_k != kNoCoarseStage && p.coarse_k < 1)
    fail("coarse_k: " + std::to_string(p.coarse_k) + " must be >= 1 (or " + std::to_string(kNoCoarseStage) +
         ": no coarse stage)");
  check_range("margin", p.margin, 0, kInt32Max);
  check_range("k", p.k, 1, p.shortlist * fine.h * fine.w);
  check_threads(p.threads);

  const Neighbours shortlist = global_topk(query_global, db_global, rows, p.shortlist, p.threads, cancel, global_names);
  if (p.prune == Prune::Bounds)
    return detail::bounded_patch_topk(query_fine, db_fine, shortlist.index, p.kernel_fine, p.k, p.threads, cancel,
                                      fine_names, stats);
  if (p.coarse_k == kNoCoarseStage)
    return detail::patch_topk(query_fine, db_fine, shortlist.index, p.kernel_fine, p.k, p.threads, cancel, fine_names);
  const int64_t all = p.shortlist * crs.h * crs.w;
  const PatchMatches coarse = detail::patch_topk(query_coarse, db_coarse, shortlist.index, p.kernel_coarse,
                                                 std::min(p.coarse_k, all), p.threads, cancel, coarse_names);
  return pruned_fine(query_fine, db_fine, coarse, crs.h, crs.w, p.kernel_fine, p.margin, p.k, p.threads, cancel);
}

}  // namespace cnn_core
