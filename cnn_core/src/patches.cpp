// K×K patch search over feature maps by shift-sums: the dot product of two K×K×C patches is the sum
// of K^2 C-dimensional pixel dot products at aligned offsets, so one pixel-to-pixel GEMM plus K^2
// shifted adds gives every patch similarity (K^2 fewer multiply-adds than flattening), and patch norms
// come from a box filter over squared pixel norms. Also the flattened reference search.
#include <Eigen/Core>

#include "internal.hpp"

namespace cnn_core {

namespace detail {
// Zero-padded float32 copy of map `offset` (h, w, c): padded size (h+K-1, w+K-1), origin at
// (-(K-1)/2, -(K-1)/2), covering rows [y0 - a, y0 + rows + K-1 - a) and cols [x0 - a, ...).
void gather_padded(const Tensor& t, int64_t offset, int64_t h, int64_t w, int64_t c, int64_t kernel, int64_t y0,
                   int64_t rows, int64_t x0, int64_t cols, float* dst, const char* what) {
  const int64_t a = pad_before(kernel);
  const int64_t pr = rows + kernel - 1, pc = cols + kernel - 1;
  std::fill(dst, dst + pr * pc * c, 0.f);
  for (int64_t i = 0; i < pr; ++i) {
    const int64_t y = y0 + i - a;
    if (y < 0 || y >= h) continue;
    const int64_t xa = std::max<int64_t>(0, x0 - a), xb = std::min<int64_t>(w, x0 - a + pc);
    if (xa >= xb) continue;
    float* d = dst + (i * pc + (xa - (x0 - a))) * c;
    load_f32(t, offset + (y * w + xa) * c, (xb - xa) * c, d);
    require_finite(d, (xb - xa) * c, what);
  }
}

// Inverse patch norms of a padded (rows+K-1, cols+K-1, c) block: box filter of squared pixel norms.
void patch_inv_norms(const float* padded, int64_t rows, int64_t cols, int64_t c, int64_t kernel, float* out) {
  const int64_t pc = cols + kernel - 1, pr = rows + kernel - 1;
  std::vector<double> sq(pr * pc);
  for (int64_t i = 0; i < pr * pc; ++i) {
    double s = 0;
    for (int64_t j = 0; j < c; ++j) s += static_cast<double>(padded[i * c + j]) * padded[i * c + j];
    sq[i] = s;
  }
  for (int64_t y = 0; y < rows; ++y)
    for (int64_t x = 0; x < cols; ++x) {
      double s = 0;
      for (int64_t dy = 0; dy < kernel; ++dy)
        for (int64_t dx = 0; dx < kernel; ++dx) s += sq[(y + dy) * pc + x + dx];
      out[y * cols + x] = filter_inv_norm(s);
    }
}

MapDims check_maps(const Tensor& query, const Tensor& database, const Names& names) {
  check_tensor(query, names.query, 3);
  check_tensor(database, names.database, 4);
  if (database.shape[3] != query.shape[2])
    fail(std::string(names.database) + ": " + std::to_string(database.shape[3]) + " channels do not match " +
         possessive(names.query) + " " + std::to_string(query.shape[2]));
  if (query.shape[2] == 0) fail(std::string(names.query) + ": has no channels");
  return {database.shape[0], database.shape[1], database.shape[2], database.shape[3]};
}

}  // namespace detail

using detail::gather_padded;
using detail::patch_inv_norms;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

// Database tiles and query bands are fixed sizes (never derived from the thread count), so each
// similarity is produced by the same arithmetic whatever the number of threads.
constexpr int64_t kTileY = 32, kTileX = 64, kQueryBand = 64;
// Padded query rows multiplied per GEMM call: amortises packing the tile over several rows.
constexpr int64_t kRowsPerGemm = 4;

}  // namespace

namespace detail {

// Sorts `top` and turns its store indices (row * dh * dw + y * dw + x) into (image, y, x).
PatchMatches to_matches(TopK& top, int64_t h, int64_t w, int64_t dh, int64_t dw) {
  top.finish();
  PatchMatches m;
  m.h = h;
  m.w = w;
  m.k = top.k;
  const int64_t n = h * w * top.k;
  m.image.resize(n);
  m.y.resize(n);
  m.x.resize(n);
  m.similarity = top.sim;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t idx = top.idx[i];
    if (idx == kNoIndex) {
      m.image[i] = m.y[i] = m.x[i] = -1;
      continue;
    }
    m.image[i] = static_cast<int32_t>(idx / (dh * dw));
    m.y[i] = static_cast<int32_t>((idx / dw) % dh);
    m.x[i] = static_cast<int32_t>(idx % dw);
  }
  return m;
}

// Patch searches check the same arguments: maps, kernel, rows, k (<= searched positions), threads.
struct PatchArgs {
  MapDims db;
  std::vector<int64_t> rows;
  int64_t kernel, k;
};

PatchArgs check_patch_args(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows_in,
                           int64_t kernel, int64_t k, int64_t threads, const Names& names) {
  PatchArgs a;
  a.db = check_maps(query, database, names);
  a.kernel = check_range(names.kernel, kernel, 1, kMaxKernel);
  a.rows = resolve_rows(rows_in, a.db.n, names.database);
  const int64_t positions = static_cast<int64_t>(a.rows.size()) * a.db.h * a.db.w;
  if (positions == 0) fail(std::string(names.database) + ": has no positions to search");
  a.k = check_range(names.k, k, 1, positions);
  check_threads(threads);
  return a;
}

PatchMatches patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows_in,
                        int64_t kernel, int64_t k_in, int64_t threads, const Cancel& cancel, const Names& names) {
  const PatchArgs args = check_patch_args(query, database, rows_in, kernel, k_in, threads, names);
  const MapDims& db = args.db;
  const std::vector<int64_t>& rows = args.rows;
  const int64_t k = args.k, K = args.kernel;
  const int64_t H = query.shape[0], W = query.shape[1], C = db.c;
  const int64_t R = static_cast<int64_t>(rows.size());
  if (H * W == 0) {
    TopK none(0, k);
    return to_matches(none, H, W, db.h, db.w);
  }

  const int64_t Hp = H + K - 1, Wp = W + K - 1;
  std::vector<float> qpad(Hp * Wp * C), qinv(H * W);
  gather_padded(query, 0, H, W, C, K, 0, H, 0, W, qpad.data(), names.query);
  normalise(qpad.data(), Hp * Wp * C);  // one factor for the whole map: patch cosines are unchanged
  patch_inv_norms(qpad.data(), H, W, C, K, qinv.data());

  const int64_t tiles_y = (db.h + kTileY - 1) / kTileY, tiles_x = (db.w + kTileX - 1) / kTileX;
  const int64_t bands = (H + kQueryBand - 1) / kQueryBand;
  const int64_t per_row = tiles_y * tiles_x * bands, units = R * per_row;
  const int nw = workers_for(threads, units);
  std::vector<TopK> best(nw, TopK(H * W, k));
  const int64_t plane = db.h * db.w;
  const float slack = filter_slack(K * K * C, K);

  // Each worker's buffers, reused from unit to unit: fresh allocations of this size are fresh pages, and
  // clearing them cost a quarter of a search.
  struct Buffers {
    RowMat tile, prod;
    std::vector<float> dinv, acc, scratch;
    std::vector<std::vector<float>> ring;
  };
  std::vector<Buffers> buffers(nw);
  parallel_units(units, nw, cancel, [&](int64_t unit, int wk) {
    Buffers& buf = buffers[wk];
    const int64_t r = rows[unit / per_row];
    int64_t rest = unit % per_row;
    const int64_t band = rest % bands;
    rest /= bands;
    const int64_t ty0 = (rest / tiles_x) * kTileY, tx0 = (rest % tiles_x) * kTileX;
    const int64_t TYv = std::min(kTileY, db.h - ty0), TXv = std::min(kTileX, db.w - tx0);
    const int64_t TYp = TYv + K - 1, TXp = TXv + K - 1, Mtp = TYp * TXp;

    RowMat& tile = buf.tile;
    tile.resize(Mtp, C);
    gather_padded(database, r * plane * C, db.h, db.w, C, K, ty0, TYv, tx0, TXv, tile.data(), names.database);
    normalise(tile.data(), Mtp * C);  // one factor per tile: every patch in it scales alike
    std::vector<float>& dinv = buf.dinv;
    dinv.resize(TYv * TXv);
    patch_inv_norms(tile.data(), TYv, TXv, C, K, dinv.data());
    const bool tile_nan = std::any_of(dinv.begin(), dinv.end(), [](float v) { return std::isnan(v); });
    std::vector<float>& scratch = buf.scratch;
    scratch.resize(2 * C);

    // The K×K shift-sum is separable. For each padded query row, `prod` holds its pixel products with
    // every tile pixel; a ring slot keeps their horizontal K-sums (per query column x, padded tile row,
    // tile column), and each query row then adds K slots vertically: 2K adds per similarity, not K^2.
    RowMat& prod = buf.prod;
    prod.resize(kRowsPerGemm * Wp, Mtp);
    const int64_t hsz = TYp * TXv;
    std::vector<std::vector<float>>& ring = buf.ring;
    ring.resize(K);
    for (auto& slot : ring) slot.resize(W * hsz);
    std::vector<float>& acc = buf.acc;
    acc.resize(TYv * TXv);
    TopK& top = best[wk];
    const int64_t y0 = band * kQueryBand, y1 = std::min(H, y0 + kQueryBand);
    const int64_t pr_end = y1 + K - 1;
    for (int64_t pr = y0; pr < pr_end; ++pr) {
      const int64_t g = (pr - y0) % kRowsPerGemm;
      if (g == 0)
        gemm_nt(qpad.data() + pr * Wp * C, std::min(kRowsPerGemm, pr_end - pr) * Wp, C, tile.data(), Mtp, C, C,
                prod.data(), Mtp);
      float* slot = ring[pr % K].data();
      for (int64_t x = 0; x < W; ++x) {
        float* hx = slot + x * hsz;
        std::fill(hx, hx + hsz, 0.f);
        for (int64_t dx = 0; dx < K; ++dx) {
          const float* p = prod.data() + (g * Wp + x + dx) * Mtp + dx;
          for (int64_t ty = 0; ty < TYp; ++ty) {
            float* __restrict dst = hx + ty * TXv;
            const float* __restrict src = p + ty * TXp;
            for (int64_t tx = 0; tx < TXv; ++tx) dst[tx] += src[tx];
          }
        }
      }
      const int64_t y = pr - (K - 1);
      if (y < y0) continue;
      for (int64_t x = 0; x < W; ++x) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t dy = 0; dy < K; ++dy) {
          const float* __restrict src = ring[(y + dy) % K].data() + x * hsz + dy * TXv;
          float* __restrict dst = acc.data();
          for (int64_t j = 0; j < TYv * TXv; ++j) dst[j] += src[j];
        }
        const float qi = qinv[y * W + x];
        const int64_t q = y * W + x;
        Eigen::Map<Eigen::ArrayXf> av(acc.data(), TYv * TXv);
        Eigen::Map<const Eigen::ArrayXf> dv(dinv.data(), TYv * TXv);
        av = av * qi * dv;
        float thr = top.threshold(q);
        if (!tile_nan && !std::isnan(qi) && av.maxCoeff() + slack < thr) continue;
        for (int64_t ty = 0; ty < TYv; ++ty)
          for (int64_t tx = 0; tx < TXv; ++tx) {
            const float v = acc[ty * TXv + tx];
            if (passes_filter(v, thr, slack)) {
              const float cv = canonical_patch_cosine(query, 0, H, W, y, x, database, r * plane * C, db.h, db.w,
                                                      ty0 + ty, tx0 + tx, C, K, scratch.data());
              top.insert(q, cv, r * plane + (ty0 + ty) * db.w + tx0 + tx);
              thr = top.threshold(q);
            }
          }
      }
    }
  });
  for (int w = 1; w < nw; ++w) best[0].merge(best[w]);
  return to_matches(best[0], H, W, db.h, db.w);
}

PatchMatches patch_topk_flat(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows_in,
                             int64_t kernel, int64_t k_in, int64_t threads, const Cancel& cancel,
                             const Names& names) {
  const PatchArgs args = check_patch_args(query, database, rows_in, kernel, k_in, threads, names);
  const MapDims& db = args.db;
  const int64_t k = args.k, K = args.kernel;
  const int64_t H = query.shape[0], W = query.shape[1], C = db.c, plane = db.h * db.w;
  const int64_t D = K * K * C;

  // Flattened descriptors in (dy, dx, c) order from a padded copy of a whole map.
  auto flatten = [&](const Tensor& t, int64_t offset, int64_t h, int64_t w, const char* what) {
    std::vector<float> pad((h + K - 1) * (w + K - 1) * C), out(h * w * D);
    gather_padded(t, offset, h, w, C, K, 0, h, 0, w, pad.data(), what);
    const int64_t pw = w + K - 1;
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t dy = 0; dy < K; ++dy)
          for (int64_t dx = 0; dx < K; ++dx)
            std::copy_n(pad.data() + ((y + dy) * pw + x + dx) * C, C,
                        out.data() + (y * w + x) * D + (dy * K + dx) * C);
    return out;
  };
  const std::vector<float> qd = flatten(query, 0, H, W, names.query);
  TopK top(H * W, k);
  if (H * W == 0) return to_matches(top, H, W, db.h, db.w);
  const int64_t kk = std::min(k, plane);
  const Names inner{names.query, names.database, names.k};
  for (int64_t r : args.rows) {
    const std::vector<float> dd = flatten(database, r * plane * C, db.h, db.w, names.database);
    Tensor qt{qd.data(), DType::F32, {H * W, D}}, dt{dd.data(), DType::F32, {plane, D}};
    const Neighbours nb = exact_topk(qt, dt, {}, kk, threads, cancel, inner, C);
    for (int64_t q = 0; q < H * W; ++q)
      for (int64_t j = 0; j < kk; ++j) top.insert(q, nb.similarity[q * kk + j], r * plane + nb.index[q * kk + j]);
  }
  return to_matches(top, H, W, db.h, db.w);
}

}  // namespace detail

PatchMatches patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                        int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel) {
  return detail::patch_topk(query, database, rows, kernel, k, threads, cancel, {"query", "database", "k"});
}

PatchMatches patch_topk_flat(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                             int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel) {
  return detail::patch_topk_flat(query, database, rows, kernel, k, threads, cancel, {"query", "database", "k"});
}

}  // namespace cnn_core
