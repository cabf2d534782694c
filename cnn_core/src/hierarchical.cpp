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

PatchMatches pruned_fine_topk(const Tensor& query_fine, const Tensor& db_fine, const PatchMatches& coarse,
                              int64_t db_coarse_h, int64_t db_coarse_w, int kernel, int margin, int k,
                              int threads) {
  using namespace detail;
  if (query_fine.shape.size() != 3) throw std::invalid_argument("query_fine must be (H, W, C)");
  if (db_fine.shape.size() != 4) throw std::invalid_argument("db_fine must be (N, H, W, C)");
  const int64_t H = query_fine.shape[0], W = query_fine.shape[1], C = query_fine.shape[2];
  const int64_t N = db_fine.shape[0], Hf = db_fine.shape[1], Wf = db_fine.shape[2];
  if (db_fine.shape[3] != C) throw std::invalid_argument("db_fine: channels do not match query_fine's");
  if (kernel < 1 || k < 1 || margin < 0) throw std::invalid_argument("kernel, k must be >= 1, margin >= 0");
  const int64_t Hc = coarse.h, Wc = coarse.w, ck = coarse.k;
  if (Hc < 1 || Wc < 1 || Hc > H || Wc > W || db_coarse_h < 1 || db_coarse_w < 1 || db_coarse_h > Hf ||
      db_coarse_w > Wf)
    throw std::invalid_argument("coarse grids must be non-empty and no larger than the fine grids");
  const int64_t plane = Hf * Wf;

  const int a = pad_before(kernel);
  const int64_t Wp = W + kernel - 1;
  std::vector<float> qpad((H + kernel - 1) * Wp * C), qinv(H * W);
  gather_padded(query_fine, 0, H, W, C, kernel, 0, H, 0, W, qpad.data(), "query_fine");
  patch_inv_norms(qpad.data(), H, W, C, kernel, qinv.data());

  TopK top(H * W, k);
  parallel_units(Hc * Wc, threads, [&](int64_t cell, int) {
    const int64_t cy = cell / Wc, cx = cell % Wc;
    std::vector<int64_t> cand;
    for (int64_t j = 0; j < ck; ++j) {
      const int64_t e = cell * ck + j;
      const int64_t r = coarse.image[e];
      if (r < 0) continue;
      if (r >= N) throw std::invalid_argument("coarse matches name a row outside db_fine");
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
      for (int dy = 0; dy < kernel; ++dy)
        for (int dx = 0; dx < kernel; ++dx) {
          const int64_t yy = y + dy - a, xx = x + dx - a;
          if (yy >= 0 && yy < Hf && xx >= 0 && xx < Wf) pix.push_back(r * plane + yy * Wf + xx);
        }
    }
    std::sort(pix.begin(), pix.end());
    pix.erase(std::unique(pix.begin(), pix.end()), pix.end());
    const int64_t np_ = static_cast<int64_t>(pix.size());
    RowMat dp(np_, C);
    std::vector<double> dsq(np_);
    for (int64_t j = 0; j < np_; ++j) {
      load_f32(db_fine, pix[j] * C, C, dp.row(j).data());
      dsq[j] = dp.row(j).cast<double>().squaredNorm();
    }
    require_finite(dp.data(), np_ * C, "db_fine");
    const int64_t bw = nqx + kernel - 1, bh = nqy + kernel - 1;
    RowMat qb(bh * bw, C);
    for (int64_t i = 0; i < bh; ++i)
      std::copy_n(qpad.data() + ((qy0 + i) * Wp + qx0) * C, bw * C, qb.data() + i * bw * C);
    // Database pixel × query pixel, so the sums below read contiguous query rows.
    RowMat prod(np_, bh * bw);
    gemm_nt(dp.data(), np_, C, qb.data(), bh * bw, C, C, prod.data(), bh * bw);

    std::vector<int32_t> win(kernel * kernel);
    std::vector<float> dots(nqy * nqx);
    for (int64_t j = 0; j < nc; ++j) {
      const int64_t r = cand[j] / plane, y = (cand[j] % plane) / Wf, x = cand[j] % Wf;
      double sq = 0;
      for (int dy = 0; dy < kernel; ++dy)
        for (int dx = 0; dx < kernel; ++dx) {
          const int64_t yy = y + dy - a, xx = x + dx - a;
          int32_t w = -1;
          if (yy >= 0 && yy < Hf && xx >= 0 && xx < Wf) {
            w = static_cast<int32_t>(std::lower_bound(pix.begin(), pix.end(), r * plane + yy * Wf + xx) - pix.begin());
            sq += dsq[w];
          }
          win[dy * kernel + dx] = w;
        }
      const float dinv = inv_norm(sq);
      std::fill(dots.begin(), dots.end(), 0.f);
      for (int dy = 0; dy < kernel; ++dy)
        for (int dx = 0; dx < kernel; ++dx) {
          const int32_t w = win[dy * kernel + dx];
          if (w < 0) continue;
          const float* pw = prod.data() + static_cast<int64_t>(w) * bh * bw + dy * bw + dx;
          for (int64_t i = 0; i < nqy; ++i)
            for (int64_t jj = 0; jj < nqx; ++jj) dots[i * nqx + jj] += pw[i * bw + jj];
        }
      // Each fine query position belongs to exactly one cell, so workers write disjoint entries.
      for (int64_t i = 0; i < nqy; ++i)
        for (int64_t jj = 0; jj < nqx; ++jj) {
          const int64_t q = (qy0 + i) * W + qx0 + jj;
          top.insert(q, dots[i * nqx + jj] * qinv[q] * dinv, cand[j]);
        }
    }
  });

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

PatchMatches hierarchical(const Tensor& query_fine, const Tensor& db_fine, const Tensor& query_coarse,
                          const Tensor& db_coarse, const Tensor& query_global, const Tensor& db_global,
                          const std::vector<int64_t>& rows_in, const HierarchicalParams& p) {
  using namespace detail;
  if (db_fine.shape.size() != 4 || db_coarse.shape.size() != 4 || db_global.shape.empty())
    throw std::invalid_argument("db_fine, db_coarse must be (N, H, W, C) and db_global (N, ...)");
  const int64_t N = db_fine.shape[0];
  if (db_coarse.shape[0] != N || db_global.shape[0] != N)
    throw std::invalid_argument("db_fine, db_coarse and db_global must have the same number of rows");
  const std::vector<int64_t> rows = resolve_rows(rows_in, N, "rows");
  const int64_t R = static_cast<int64_t>(rows.size());
  if (p.shortlist < 1 || p.shortlist > R)
    throw std::invalid_argument("shortlist must be in [1, " + std::to_string(R) + "]");

  Tensor qg = query_global, dg = db_global;
  qg.shape = {1, query_global.size()};
  dg.shape = {N, N ? db_global.size() / N : 0};
  std::vector<int64_t> shortlist(p.shortlist);
  std::vector<float> gsim(p.shortlist);
  exact_topk(qg, dg, rows, static_cast<int>(p.shortlist), p.threads, shortlist.data(), gsim.data());

  const int64_t Hcd = db_coarse.shape[1], Wcd = db_coarse.shape[2];
  const int64_t all = p.shortlist * Hcd * Wcd;
  if (p.coarse_k <= 0) return patch_topk(query_fine, db_fine, shortlist, p.kernel_fine, p.k, p.threads);
  const PatchMatches coarse = patch_topk(query_coarse, db_coarse, shortlist, p.kernel_coarse,
                                         static_cast<int>(std::min(p.coarse_k, all)), p.threads);
  return pruned_fine_topk(query_fine, db_fine, coarse, Hcd, Wcd, p.kernel_fine, p.margin, p.k, p.threads);
}

}  // namespace cnn_core
