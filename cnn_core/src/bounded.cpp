// Exact patch search pruned by certified cosine bounds (bounded_patch_topk): database positions grouped
// into cells with a centroid and an angular radius, cells visited per query block in bound order and
// skipped once no query of the block can gain from them. Results are patch_topk's, bit for bit: both
// rescore every candidate the float32 filter keeps with the canonical similarity (internal.hpp).
#include <Eigen/Core>

#include "internal.hpp"

namespace cnn_core {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
using namespace detail;

// Query blocks are kQueryBlock² positions; database cells G² positions, G from the descriptor size so
// that the centroids (one descriptor per cell) stay a small fraction of the work and of the memory.
constexpr int64_t kQueryBlock = 8;
constexpr int64_t kMaxBatchCells = 32;  // cells scored per GEMM once the thresholds are set
constexpr int64_t kPilotBlocks = 4;
constexpr int64_t kSampleCells = 64;  // cells measured before any other work
constexpr float kCellRhoMin = 0.866f;  // cos 30°: a sampled median radius wider than this means exact search
// Fewer query positions than this: plain exact search (the AMX operands or the cells are prepared per
// search, and below about 256 positions that costs more than it saves; measured at 90x120 maps).
constexpr int64_t kMinPrunedQueries = 512;

int64_t cell_size(int64_t dims) { return dims <= 256 ? 4 : dims <= 1024 ? 8 : 16; }

// The bound: a unit vector at cosine a from the unit centroid has cosine at most
// cone_bound(a, rho) = cos(max(0, acos a - acos rho)) = (a >= rho ? 1 : a rho + sqrt(1-a^2) sqrt(1-rho^2))
// with any unit vector within angle acos(rho) of the centroid; it increases with a and decreases with rho.

struct Cell {
  int64_t row;            // store row
  int64_t y0, x0, h, w;   // positions covered
  float rho_lo = 1;       // certified lower bound on cos(patch, centroid) over its nonzero patches
  bool has_zero = false;  // holds an all-zero patch (similarity 0 to everything)
  bool unbounded = false; // no usable bound: always scored
};

// Zero-padded, power-of-two-scaled pixels of one cell's K×K windows and their inverse patch norms.
struct CellBlock {
  RowMat pix;               // (h+K-1)*(w+K-1) × C
  std::vector<float> dinv;  // h*w
};

void load_cell(const Tensor& db, int64_t plane, const MapDims& d, int64_t K, const Cell& c, CellBlock& out) {
  const int64_t ph = c.h + K - 1, pw = c.w + K - 1;
  out.pix.resize(ph * pw, d.c);
  gather_padded(db, c.row * plane * d.c, d.h, d.w, d.c, K, c.y0, c.h, c.x0, c.w, out.pix.data(), "database");
  normalise(out.pix.data(), ph * pw * d.c);
  out.dinv.resize(c.h * c.w);
  patch_inv_norms(out.pix.data(), c.h, c.w, d.c, K, out.dinv.data());
}

// Flattened (dy, dx, c) window of position (y, x) of a padded block `pix` with `pw` padded columns.
void window(const float* pix, int64_t pw, int64_t c, int64_t K, int64_t y, int64_t x, float* out) {
  for (int64_t dy = 0; dy < K; ++dy)
    std::copy_n(pix + ((y + dy) * pw + x) * c, K * c, out + dy * K * c);
}

}  // namespace

namespace detail {

PatchMatches bounded_patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows_in,
                                int64_t kernel, int64_t k_in, int64_t threads, const Cancel& cancel,
                                const Names& names, BoundStats* stats) {
  const MapDims d = check_maps(query, database, names);
  const int64_t K = check_range(names.kernel, kernel, 1, kMaxKernel);
  const std::vector<int64_t> rows = resolve_rows(rows_in, d.n, names.database);
  const int64_t R = static_cast<int64_t>(rows.size()), plane = d.h * d.w, positions = R * plane;
  if (positions == 0) fail(std::string(names.database) + ": has no positions to search");
  const int64_t k = check_range(names.k, k_in, 1, positions);
  check_threads(threads);
  const int64_t H = query.shape[0], W = query.shape[1], C = d.c, D = K * K * C;
  BoundStats local;
  BoundStats& st = stats ? *stats : local;
  st = BoundStats{};
  st.pairs = H * W * positions;
  if (H * W == 0) return patch_topk(query, database, rows, K, k, threads, cancel, names);
  if (H * W < kMinPrunedQueries) {  // preparing the database would cost more than it could save
    st.pairs_scored = st.pairs;
    return patch_topk(query, database, rows, K, k, threads, cancel, names);
  }
  if (K == 1 && amx_bf16_ready()) return amx_pixel_topk(query, database, rows, k, threads, cancel, names, st);

  // Query: one power-of-two factor for the whole padded map, as in patch_topk.
  const int64_t Hp = H + K - 1, Wp = W + K - 1;
  std::vector<float> qpad(Hp * Wp * C), qinv(H * W);
  gather_padded(query, 0, H, W, C, K, 0, H, 0, W, qpad.data(), names.query);
  normalise(qpad.data(), Hp * Wp * C);
  patch_inv_norms(qpad.data(), H, W, C, K, qinv.data());

  // Cells: unit centroid of the unit patches, and the smallest cosine of a patch to it.
  const int64_t G = cell_size(D);
  const int64_t cy = (d.h + G - 1) / G, cx = (d.w + G - 1) / G, per_row = cy * cx, NC = R * per_row;
  const float slack = filter_slack(D, K);
  std::vector<Cell> cells(NC);
  RowMat centroids(NC, D);
  // One cell: its positions, unit centroid and certified smallest cosine of its patches to the centroid.
  auto prepare_cell = [&](int64_t ci, CellBlock& blk, Eigen::VectorXd& sum, std::vector<float>& win) {
    const int64_t ri = ci / per_row, j = ci % per_row;
    Cell& c = cells[ci];
    c.row = rows[ri];
    c.y0 = (j / cx) * G;
    c.x0 = (j % cx) * G;
    c.h = std::min(G, d.h - c.y0);
    c.w = std::min(G, d.w - c.x0);
    load_cell(database, plane, d, K, c, blk);
    const int64_t pw = c.w + K - 1;
    sum.setZero();
    for (int64_t p = 0; p < c.h * c.w; ++p) {
      const float di = blk.dinv[p];
      if (std::isnan(di)) c.unbounded = true;
      if (!(di > 0)) {
        c.has_zero |= di == 0;
        continue;
      }
      window(blk.pix.data(), pw, C, K, p / c.w, p % c.w, win.data());
      sum += (Eigen::Map<const Eigen::VectorXf>(win.data(), D) * di).cast<double>();
    }
    const double norm = sum.norm();
    auto cen = centroids.row(ci);
    if (!(norm > 1e-6)) {  // no nonzero patch, or unit patches that cancel out: no useful centroid
      cen.setZero();
      c.unbounded = c.unbounded || c.h * c.w > 0;
      c.rho_lo = -1;
      return;
    }
    cen = (sum / norm).cast<float>();
    double rho = 1;
    for (int64_t p = 0; p < c.h * c.w; ++p) {
      const float di = blk.dinv[p];
      if (!(di > 0)) continue;
      window(blk.pix.data(), pw, C, K, p / c.w, p % c.w, win.data());
      rho = std::min(rho, static_cast<double>(Eigen::Map<const Eigen::VectorXf>(win.data(), D).dot(cen)) * di);
    }
    c.rho_lo = static_cast<float>(rho - slack);
  };

  // A sample of cells spread over the database first: when their median radius is wide (cosine to the
  // centroid below kCellRhoMin), no bound can rule a cell out, and preparing every cell and the pilot
  // would only add to plain exact search (on a few query rows, more than the search itself).
  {
    CellBlock blk;
    Eigen::VectorXd sum(D);
    std::vector<float> win(D);
    const int64_t n = std::min<int64_t>(kSampleCells, NC);
    std::vector<float> rho(n);
    for (int64_t i = 0; i < n; ++i) {
      prepare_cell((2 * i + 1) * NC / (2 * n), blk, sum, win);
      rho[i] = cells[(2 * i + 1) * NC / (2 * n)].rho_lo;
    }
    std::nth_element(rho.begin(), rho.begin() + n / 2, rho.end());
    st.cell_rho_median = rho[n / 2];
    if (rho[n / 2] < kCellRhoMin) {
      st.pairs_scored = st.pairs;
      return patch_topk(query, database, rows, K, k, threads, cancel, names);
    }
  }
  const int nw = workers_for(threads, R);
  parallel_units(R, nw, cancel, [&](int64_t ri, int) {
    CellBlock blk;
    Eigen::VectorXd sum(D);
    std::vector<float> win(D);
    for (int64_t j = 0; j < per_row; ++j) prepare_cell(ri * per_row + j, blk, sum, win);
  });

  // Per-cell bound terms as float arrays: rho = rho_lo, srho >= sqrt(1 - rho^2), floor = the least
  // bound (0 + slack with a zero patch, +inf without a usable bound, else -inf).
  std::vector<float> cell_rho(NC), cell_srho(NC), cell_floor(NC);
  for (int64_t c = 0; c < NC; ++c) {
    const double r = std::max(-1.0, static_cast<double>(cells[c].rho_lo));
    cell_rho[c] = static_cast<float>(r);
    cell_srho[c] = static_cast<float>(std::sqrt(std::max(0.0, 1 - r * r)) + 1e-6);
    cell_floor[c] = cells[c].unbounded ? std::numeric_limits<float>::infinity()
                                       : cells[c].has_zero ? slack : kNegInf;
  }

  TopK top(H * W, k);
  std::vector<int64_t> sorted_rows = rows;
  std::sort(sorted_rows.begin(), sorted_rows.end());
  const int64_t by = (H + kQueryBlock - 1) / kQueryBlock, bx = (W + kQueryBlock - 1) / kQueryBlock;
  const int64_t blocks = by * bx;
  std::vector<int64_t> scored(blocks, 0), active_pairs(blocks, 0);

  // One query block: bounds for every cell, then cells in bound order until none can help.
  // A pilot block stops as soon as it has scored more than kBoundsGiveUp of its pairs: the answer (plain
  // exact search) is known by then, and its partial result is never used.
  std::vector<char> gave_up(blocks, 0);
  auto search_block = [&](int64_t b, bool pilot) {
    const int64_t y0 = (b / bx) * kQueryBlock, x0 = (b % bx) * kQueryBlock;
    const int64_t bh = std::min(kQueryBlock, H - y0), bw = std::min(kQueryBlock, W - x0), nq = bh * bw;
    std::vector<int64_t> qs;  // query positions that need a search (not all-zero)
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t q = (y0 + i / bw) * W + x0 + i % bw;
      if (qinv[q] == 0) {  // all-zero query patch: every similarity is 0, the lowest indices win
        for (int64_t j = 0; j < k; ++j) top.insert(q, 0.f, sorted_rows[j / plane] * plane + j % plane);
        continue;
      }
      qs.push_back(q);
    }
    const int64_t na = static_cast<int64_t>(qs.size());
    if (na == 0) return;
    active_pairs[b] = na * positions;
    RowMat U(na, D);
    for (int64_t i = 0; i < na; ++i) {
      const int64_t y = qs[i] / W, x = qs[i] % W;
      window(qpad.data(), Wp, C, K, y, x, U.row(i).data());
      U.row(i) *= std::isnan(qinv[qs[i]]) ? 0.f : qinv[qs[i]];
    }
    RowMat alpha(na, NC);
    gemm_nt(U.data(), na, D, centroids.data(), NC, D, D, alpha.data(), NC);
    // ub = cone_bound(alpha + slack, rho_lo) + slack (above), in float over whole rows (vectorised): the float
    // rounding here (a few ulps of values <= 1) is far inside the slack added to the result.
    std::vector<float> best(NC, kNegInf);
    Eigen::Map<const Eigen::ArrayXf> rho(cell_rho.data(), NC), srho(cell_srho.data(), NC),
        floor(cell_floor.data(), NC);
    for (int64_t i = 0; i < na; ++i) {
      Eigen::Map<Eigen::ArrayXf> ub(alpha.row(i).data(), NC);
      if (std::isnan(qinv[qs[i]])) {
        ub.setConstant(std::numeric_limits<float>::infinity());
      } else {
        const Eigen::ArrayXf a = (ub + slack).min(1.f);
        ub = (a >= rho).select(Eigen::ArrayXf::Ones(NC), a * rho + (1.f - a.square()).max(0.f).sqrt() * srho) + slack;
        ub = ub.max(floor);  // cells with a zero patch: similarity 0; cells without a bound: +inf
      }
      for (int64_t c = 0; c < NC; ++c) best[c] = std::max(best[c], ub[c]);
    }
    std::vector<int64_t> order(NC);
    for (int64_t c = 0; c < NC; ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b2) { return best[a] > best[b2]; });

    // The padded query block, multiplied against the pixels of a batch of cells.
    const int64_t qph = bh + K - 1, qpw = bw + K - 1;
    RowMat qb(qph * qpw, C);
    for (int64_t i = 0; i < qph; ++i)
      std::copy_n(qpad.data() + ((y0 + i) * Wp + x0) * C, qpw * C, qb.data() + i * qpw * C);
    std::vector<float> thr(na);
    std::vector<float> scratch(2 * C);
    std::vector<int64_t> batch;
    std::vector<CellBlock> blks;
    RowMat dbm, prod;
    int64_t batch_cap = 1, pos = 0;
    while (pos < NC) {
      float thr_min = std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < na; ++i) thr_min = std::min(thr_min, thr[i] = top.threshold(qs[i]));
      batch.clear();
      for (; pos < NC && static_cast<int64_t>(batch.size()) < batch_cap; ++pos) {
        const int64_t c = order[pos];
        if (best[c] < thr_min) {
          pos = NC;  // every remaining cell is bounded below every query's k-th best
          break;
        }
        bool need = false;
        for (int64_t i = 0; i < na && !need; ++i) need = !(alpha(i, c) < thr[i]);
        if (need) batch.push_back(c);
      }
      if (batch.empty()) break;
      if (pilot && scored[b] > kBoundsGiveUp * active_pairs[b]) {
        gave_up[b] = 1;
        return;
      }
      batch_cap = std::min(kMaxBatchCells, batch_cap * 2);
      blks.resize(batch.size());
      int64_t total = 0;
      std::vector<int64_t> start(batch.size());
      for (size_t j = 0; j < batch.size(); ++j) {
        load_cell(database, plane, d, K, cells[batch[j]], blks[j]);
        start[j] = total;
        total += blks[j].pix.rows();
      }
      dbm.resize(total, C);
      for (size_t j = 0; j < batch.size(); ++j) dbm.middleRows(start[j], blks[j].pix.rows()) = blks[j].pix;
      prod.resize(qph * qpw, total);
      gemm_nt(qb.data(), qph * qpw, C, dbm.data(), total, C, C, prod.data(), total);
      for (size_t j = 0; j < batch.size(); ++j) {
        const Cell& cl = cells[batch[j]];
        const int64_t cpw = cl.w + K - 1, n = cl.h * cl.w;
        scored[b] += na * n;
        for (int64_t i = 0; i < na; ++i) {
          if (alpha(i, batch[j]) < top.threshold(qs[i])) continue;  // this query cannot gain here
          const int64_t q = qs[i], qy = q / W - y0, qx = q % W - x0;
          const float qi = qinv[q];
          if (K == 1 && !std::isnan(qi) && !cl.unbounded) {  // a whole cell below the threshold: next
            const float* pr = prod.data() + (qy * qpw + qx) * total + start[j];
            float mx = kNegInf;
            for (int64_t p = 0; p < n; ++p) mx = std::max(mx, pr[p] * blks[j].dinv[p]);
            if (mx * qi + slack < top.threshold(q)) continue;
          }
          for (int64_t p = 0; p < n; ++p) {
            const int64_t py = p / cl.w, px = p % cl.w;
            float acc = 0.f;
            for (int64_t dy = 0; dy < K; ++dy) {
              const float* pr = prod.data() + ((qy + dy) * qpw + qx) * total + start[j] + (py + dy) * cpw + px;
              float h = 0.f;
              for (int64_t dx = 0; dx < K; ++dx) h += pr[dx * total + dx];
              acc += h;
            }
            const float v = acc * qi * blks[j].dinv[p];
            if (!passes_filter(v, top.threshold(q), slack)) continue;
            const int64_t y = cl.y0 + py, x = cl.x0 + px;
            const float cv = canonical_patch_cosine(query, 0, H, W, q / W, q % W, database, cl.row * plane * C, d.h,
                                                    d.w, y, x, C, K, scratch.data());
            top.insert(q, cv, cl.row * plane + y * d.w + x);
          }
        }
      }
    }
  };

  // Pilot blocks spread over the query decide whether the bounds pay; the answer is the same either way.
  const int64_t npilot = std::min(kPilotBlocks, blocks);
  std::vector<int64_t> pilots(npilot);
  for (int64_t i = 0; i < npilot; ++i) pilots[i] = (2 * i + 1) * blocks / (2 * npilot);
  parallel_units(npilot, workers_for(threads, npilot), cancel,
                 [&](int64_t u, int) { search_block(pilots[u], true); });
  int64_t ps = 0, pa = 0;
  bool any_gave_up = false;
  for (int64_t b : pilots) ps += scored[b], pa += active_pairs[b], any_gave_up |= gave_up[b] != 0;
  st.pilot_fraction = pa ? static_cast<double>(ps) / pa : 0.0;
  if (any_gave_up || st.pilot_fraction > kBoundsGiveUp) {
    st.pairs_scored = st.pairs;
    return patch_topk(query, database, rows, K, k, threads, cancel, names);
  }
  st.used_bounds = true;
  std::vector<char> is_pilot(blocks, 0);
  for (int64_t b : pilots) is_pilot[b] = 1;
  parallel_units(blocks, workers_for(threads, blocks), cancel, [&](int64_t b, int) {
    if (!is_pilot[b]) search_block(b, false);
  });
  for (int64_t b = 0; b < blocks; ++b) st.pairs_scored += scored[b];
  return to_matches(top, H, W, d.h, d.w);
}

}  // namespace detail

PatchMatches bounded_patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                                int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel, BoundStats* stats) {
  return detail::bounded_patch_topk(query, database, rows, kernel, k, threads, cancel, {"query", "database", "k"},
                                    stats);
}

}  // namespace cnn_core
