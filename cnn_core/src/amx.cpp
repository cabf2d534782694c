// Exact 1×1 patch (pixel) search with a bfloat16 filter on Intel AMX tiles (amx_pixel_topk).
//
// Every query and database pixel is scaled to unit length and rounded to bfloat16; one AMX tile product
// then gives an approximate cosine for 16×16 pairs (searches 8-24 times faster than float32's, measured). The
// approximation is certified: with e_q = |q̂ - q/|q|| and e_x = |x̂ - x/|x|| measured per vector when it
// is rounded (bfloat16 keeps 8 significant bits, so e <= 2^-8), and the float32 accumulation of D
// exact bfloat16 products bounded by gamma_D = D·2^-24 / (1 - D·2^-24),
//   |s - cos| <= e_q + e_x + e_q·e_x + gamma_D (1 + e_q)(1 + e_x),
// so a pair is dropped only when s plus that slack (and a float32 rounding margin for the canonical value)
// stays below the k-th best certified lower bound (s minus the slack) of the query's pairs. The pairs
// kept wait until the query has seen the whole database and are then rescored canonically (internal.hpp),
// so the result equals patch_topk's bit for bit, ties included, whatever the thread count.
// Pixels are packed in groups of 4×8 of one map, each with a unit centroid and a certified radius: where
// the groups are tight (trained features), a whole 32×32 block whose cone bound lies below all its
// queries' limits is not multiplied at all (group_bound).
// Compiled for any x86-64: the AMX code carries its own target attributes and runs only after
// amx_bf16_ready() has seen the CPU's AMX-BF16 feature and the kernel's permission.
#include <Eigen/Core>

#include "internal.hpp"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define COMPNN_HAVE_AMX 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <cstdlib>

namespace cnn_core {

namespace {
using namespace detail;

constexpr int64_t kTile = 16;          // AMX tile: 16 rows × 64 bytes (32 bfloat16 values)
constexpr int64_t kPair = 32;          // queries and database pixels per block of 2×2 tiles
// Queries per unit of work: a band's operands stay in L2 while the whole database streams past it once,
// so bigger bands stream it fewer times (360x480: 2048 took 0.84 of 512's time), but a small query needs
// enough bands to keep every worker busy (90x120, 10800 queries: 512 took 0.92 of 2048's). Fixed by the
// query's size alone, never by the thread count, so results never depend on it.
constexpr int64_t kQueryBand = 512, kQueryBandLarge = 2048;
constexpr int64_t kDbBlock = 256;      // database pixels per pass over a band (32 KB at 64 channels: L1)
constexpr int64_t kPackChunk = 4096;   // pixels per worker when preparing the operands (fewer: fewer workers)
constexpr int64_t kGroupRows = 4, kGroupCols = 8;  // a group of 32 pixels: 4 rows × 8 columns of one map
constexpr float kGroupRhoMin = 0.5f;   // cos 60°: a median database group wider than this, no group bounds

// Upper bound on the cosine of any query of a group (unit centroid cq, every member within angle
// acos(rq) of it) with any database pixel of a group (cd, rd): the angle between two members is at least
// the centroids' angle less both radii, so the cosine is at most cos(max(0, acos a - acos p)), with a >=
// cos(cq, cd) (its float error, (C + 4)·2^-22, added) and p <= cos(acos rq + acos rd). All-zero members
// and padding have similarity 0: the bound is then at least 0. (acos rq + acos rd <= 180° exactly when
// rq + rd >= 0; beyond it the cosine of the sum no longer bounds anything.)
float group_bound(const float* cq, float rq, const float* cd, float rd, bool has_zero, int64_t C) {
  if (static_cast<double>(rq) + rd < 0) return 1.f;  // the radii add up to more than 180°: no bound
  const float dot = Eigen::Map<const Eigen::VectorXf>(cq, C).dot(Eigen::Map<const Eigen::VectorXf>(cd, C));
  const double a = std::min(1.0, static_cast<double>(dot) + (C + 4) * 0x1p-22);
  const double p = static_cast<double>(rq) * rd - std::sqrt(std::max(0.0, 1.0 - static_cast<double>(rq) * rq)) *
                                                      std::sqrt(std::max(0.0, 1.0 - static_cast<double>(rd) * rd));
  double b = a >= p ? 1.0 : a * p + std::sqrt(std::max(0.0, 1 - a * a)) * std::sqrt(std::max(0.0, 1 - p * p));
  b = std::min(1.0, b + 1e-6);
  if (has_zero) b = std::max(b, 0.0);
  return static_cast<float>(b);
}

// Round-to-nearest-even bfloat16 bits of a float32 whose magnitude is at most 1; values below float32's
// normal range become zero, as AMX treats bfloat16 denormals (the measured error then includes them).
inline uint16_t to_bf16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if ((b & 0x7f800000u) == 0) return static_cast<uint16_t>((b >> 16) & 0x8000u);
  b += 0x7fffu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}

inline double from_bf16(uint16_t h) {
  const uint32_t b = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// Unit-length bfloat16 copy of one pixel of `c` values with squared norm `sq` (zero-padded to `cp`) and
// its rounding error |x̂ - x/|x||, rounded up; an all-zero pixel stays zero with error 0 (its similarity is
// 0 exactly). In double, so raw values of any float32 scale are fine.
[[maybe_unused]] float round_unit(const float* x, double sq, int64_t c, int64_t cp, uint16_t* out) {
  std::fill(out, out + cp, uint16_t{0});
  if (sq == 0) return 0.f;
  const double inv = 1.0 / std::sqrt(sq);
  double err[4] = {0, 0, 0, 0};  // four partial sums: a measured bound, any order will do
  for (int64_t i = 0; i < c; ++i) {
    const double u = x[i] * inv;
    out[i] = to_bf16(static_cast<float>(u));
    const double d = from_bf16(out[i]) - u;
    err[i % 4] += d * d;
  }
  // Up by a relative 2^-20 and an absolute 2^-40 for the double arithmetic above.
  return static_cast<float>(std::sqrt(err[0] + err[1] + err[2] + err[3]) * (1 + 0x1p-20) + 0x1p-40);
}

// Zeroed bfloat16 buffer on a 64-byte boundary: every tile row is then one cache line (a row split over
// two lines doubles a tile load's traffic; measured 2x slower searches).
class AlignedBf16 {
 public:
  explicit AlignedBf16(int64_t n) : buf_(n + 32, 0) {
    const auto addr = reinterpret_cast<uintptr_t>(buf_.data());
    ptr_ = buf_.data() + ((64 - addr % 64) % 64) / 2;
  }
  uint16_t* data() { return ptr_; }
  const uint16_t* data() const { return ptr_; }

 private:
  std::vector<uint16_t> buf_;
  uint16_t* ptr_;
};

#if COMPNN_HAVE_AMX

constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;

bool detect_amx() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool bf16 = d & (1u << 22), tile = d & (1u << 24), avx512f = b & (1u << 16);  // the scan uses AVX-512
  if (!bf16 || !tile || !avx512f) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  // The OS must save the tile state (XCR0 bits 17 and 18) and grant this process its use.
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles 0-3 accumulate a 32×32 block of similarities, 4-5 hold 2×16 queries, 6-7 2×16 database pixels.
// Written as asm with the whole 64-byte configuration as its operand: GCC 12's _tile_loadconfig names only
// its first 8 bytes, so the compiler may drop the stores of the rest (seen here: a crash in a new thread).
__attribute__((noinline)) void load_tile_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = kTile, cfg.colsb[t] = 64;
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

__attribute__((target("amx-tile"), noinline)) void release_tiles() { _tile_release(); }

// out (32×32 float32, row stride ldo) = A (32 queries × cp bfloat16, row stride cp) · B, B packed as pairs
// of values for 16 database pixels per 64-byte row (VNNI layout: `b0`, `b1` the two 16-pixel groups, each
// cp/2 rows of 64 bytes).
// The intrinsics' asm names no memory, so "memory" barriers before the loads and after the stores keep
// the compiler from moving the packing's stores or the caller's reads of `out` across them.
__attribute__((target("amx-tile,amx-bf16"), noinline)) void block_32x32(const uint16_t* a, int64_t cp,
                                                                          const uint16_t* b0, const uint16_t* b1,
                                                                          float* out, int64_t ldo = kPair) {
  __asm__ volatile("" : : : "memory");
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t astride = cp * 2;
  for (int64_t s = 0; s < cp; s += 32) {
    _tile_loadd(4, a + s, astride);
    _tile_loadd(5, a + kTile * cp + s, astride);
    _tile_loadd(6, b0 + s * kTile, 64);
    _tile_loadd(7, b1 + s * kTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, ldo * 4);
  _tile_stored(1, out + kTile, ldo * 4);
  _tile_stored(2, out + kTile * ldo, ldo * 4);
  _tile_stored(3, out + kTile * ldo + kTile, ldo * 4);
  __asm__ volatile("" : : : "memory");
}

// Bit r set when some value of row r of a 32×32 block reaches lim[r] (NaN limits never pass).
__attribute__((target("avx512f"))) uint32_t rows_reaching(const float* blk, const float* lim) {
  uint32_t rows = 0;
  for (int64_t r = 0; r < kPair; ++r) {
    const __m512 l = _mm512_set1_ps(lim[r]);
    const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_loadu_ps(blk + r * kPair), l, _CMP_GE_OQ) |
                          _mm512_cmp_ps_mask(_mm512_loadu_ps(blk + r * kPair + 16), l, _CMP_GE_OQ);
    rows |= static_cast<uint32_t>(hit != 0) << r;
  }
  return rows;
}

// Bit c set when row[c] + err[c]·b reaches lim: the pairs of one query row that go to rescoring.
__attribute__((target("avx512f"))) uint32_t pairs_passing(const float* row, const float* err, float b, float lim) {
  const __m512 vb = _mm512_set1_ps(b), vl = _mm512_set1_ps(lim);
  const __mmask16 lo =
      _mm512_cmp_ps_mask(_mm512_fmadd_ps(_mm512_loadu_ps(err), vb, _mm512_loadu_ps(row)), vl, _CMP_GE_OQ);
  const __mmask16 hi =
      _mm512_cmp_ps_mask(_mm512_fmadd_ps(_mm512_loadu_ps(err + 16), vb, _mm512_loadu_ps(row + 16)), vl, _CMP_GE_OQ);
  return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
}

#endif  // COMPNN_HAVE_AMX

}  // namespace

bool amx_bf16_ready() {
#if COMPNN_HAVE_AMX
  const char* off = std::getenv("COMPNN_NO_AMX");  // read on every call: tests and users switch it
  if (off && *off && std::string(off) != "0") return false;
  static const bool ready = detect_amx();
  return ready;
#else
  return false;
#endif
}

namespace detail {

PatchMatches amx_pixel_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t k,
                            int64_t threads, const Cancel& cancel, const Names& names, BoundStats& st) {
#if !COMPNN_HAVE_AMX
  (void)query, (void)database, (void)rows, (void)k, (void)threads, (void)cancel, (void)names, (void)st;
  fail("amx_pixel_topk: this build has no AMX code");
#else
  if (!amx_bf16_ready()) fail("amx_pixel_topk: this CPU or OS does not run AMX-BF16");
  const MapDims d = check_maps(query, database, names);
  const int64_t H = query.shape[0], W = query.shape[1], C = d.c, plane = d.h * d.w;
  const int64_t R = static_cast<int64_t>(rows.size()), M = R * plane, Q = H * W;
  const int64_t cp = (C + 31) / 32 * 32;              // channels padded to whole tile rows
  TopK none(0, k);
  if (Q == 0) return to_matches(none, H, W, d.h, d.w);

  // Packing: pixels in groups of 32 = 4 rows × 8 columns of one map (a block of the tile kernel on either
  // side), so that a group's unit vectors lie close together on smooth feature maps and one cone bound can
  // rule out a whole 32×32 block. Slots past a map's edge are padding (index -1, zero vectors).
  const int64_t gqh = (H + kGroupRows - 1) / kGroupRows, gqw = (W + kGroupCols - 1) / kGroupCols;
  const int64_t gdh = (d.h + kGroupRows - 1) / kGroupRows, gdw = (d.w + kGroupCols - 1) / kGroupCols;
  const int64_t Qp = gqh * gqw * kPair, Mp = R * gdh * gdw * kPair;
  // Packed slot of pixel (y, x) of a map with gw groups per group row.
  auto slot = [](int64_t y, int64_t x, int64_t gw) {
    return ((y / kGroupRows) * gw + x / kGroupCols) * kPair + (y % kGroupRows) * kGroupCols + x % kGroupCols;
  };
  std::vector<int64_t> qpos(Qp, -1), dstore(Mp, -1);  // packed slot -> query position / store index
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) qpos[slot(y, x, gqw)] = y * W + x;
  for (int64_t ri = 0; ri < R; ++ri)
    for (int64_t y = 0; y < d.h; ++y)
      for (int64_t x = 0; x < d.w; ++x)
        dstore[ri * gdh * gdw * kPair + slot(y, x, gdw)] = rows[ri] * plane + y * d.w + x;
  // Operands, prepared once: queries row-major, database pixels in VNNI pairs of 16-pixel groups.
  AlignedBf16 qa(Qp * cp), db(Mp * cp);
  std::vector<float> qerr(Qp, 0.f), derr(Mp, 0.f);
  std::vector<double> qsq(Qp, 0), dsq(Mp, 0);  // canonical squared norms of the original values
  std::vector<char> qzero(Qp, 1);
  // Per group of 32: unit centroid (float, as the bound reads it) and a certified lower bound on the
  // cosine of each nonzero member to it; has_zero: an all-zero member or padding (similarity 0).
  const int64_t nqg = Qp / kPair, ndg = Mp / kPair;
  std::vector<float> qcen(nqg * C, 0.f), dcen(ndg * C, 0.f), qrho(nqg, -1.f), drho(ndg, -1.f);
  std::vector<char> dzero(ndg, 0);
  // A packing worker's buffers, reused from group to group (one group is only 32 pixels).
  struct PackScratch {
    std::vector<float> px;
    std::vector<uint16_t> unit;
    std::vector<double> sum;
  };
  // Packs one group of 32 slots: bfloat16 units into `out_at(slot, unit)`, squared norms, errors, centroid.
  auto pack_group = [&](PackScratch& scr, const Tensor& t, const char* what, int64_t g, const int64_t* src,
                        double* sq, float* err, char* zero, float* cen, float& rho, char* has_zero, auto&& out_at) {
    std::vector<float>& px = scr.px;
    std::vector<uint16_t>& unit = scr.unit;
    std::vector<double>& sum = scr.sum;
    px.resize(kPair * C);
    unit.resize(cp);
    sum.assign(C, 0.0);
    const float* ptr[kPair];
    double sqs[kPair];
    int64_t live[kPair];  // slots holding a pixel
    int n = 0;
    bool any_zero = false;
    for (int64_t s = 0; s < kPair; ++s) {
      const int64_t j = g * kPair + s;
      if (src[j] < 0) {  // padding
        any_zero = true;
        continue;
      }
      float* v = px.data() + s * C;
      load_f32(t, src[j] * C, C, v);
      require_finite(v, C, what);
      ptr[n] = v;
      live[n++] = s;
    }
    canonical_sq_norms(ptr, n, C, sqs);  // eight independent chains: a pixel at a time waited on each fma
    for (int i = 0; i < n; ++i) {
      const int64_t s = live[i], j = g * kPair + s;
      const float* v = px.data() + s * C;
      sq[j] = sqs[i];
      err[j] = round_unit(v, sq[j], C, cp, unit.data());
      out_at(j, unit.data());
      if (zero) zero[j] = sq[j] == 0;
      any_zero |= sq[j] == 0;
      if (sq[j] == 0) continue;
      const double inv = 1.0 / std::sqrt(sq[j]);
      for (int64_t c = 0; c < C; ++c) sum[c] += v[c] * inv;
    }
    if (has_zero) *has_zero = any_zero;
    double norm = 0;
    for (double v : sum) norm += v * v;
    rho = -1.f;
    if (!(norm > 1e-12)) return;  // no nonzero member, or members that cancel: no bound (rho -1)
    norm = std::sqrt(norm);
    for (int64_t c = 0; c < C; ++c) cen[c] = static_cast<float>(sum[c] / norm);
    // In double, in any order (the 1e-6 below dwarfs its rounding): eight partial sums, not one chain.
    auto dot8 = [C](const float* a, const float* b) {
      double acc[8] = {};
      for (int64_t c = 0; c < C; ++c) acc[c % 8] += static_cast<double>(a[c]) * b[c];
      return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    };
    const double cn = std::sqrt(dot8(cen, cen));
    double lo = 1;
    for (int i = 0; i < n; ++i) {
      const int64_t j = g * kPair + live[i];
      if (sq[j] == 0) continue;
      lo = std::min(lo, dot8(px.data() + live[i] * C, cen) / (std::sqrt(sq[j]) * cn));
    }
    rho = static_cast<float>(std::max(-1.0, lo - 1e-6));  // down by far more than double's rounding here
  };
  const int64_t pack_units = std::max(nqg, ndg);
  const int nw_pack = workers_for(threads, (pack_units + kPackChunk / kPair - 1) / (kPackChunk / kPair));
  std::vector<PackScratch> scratch(nw_pack);
  parallel_units(nqg, nw_pack, cancel, [&](int64_t g, int wk) {
    pack_group(scratch[wk], query, names.query, g, qpos.data(), qsq.data(), qerr.data(), qzero.data(), qcen.data() + g * C,
               qrho[g], nullptr, [&](int64_t j, const uint16_t* u) { std::copy_n(u, cp, qa.data() + j * cp); });
  });
  parallel_units(ndg, nw_pack, cancel, [&](int64_t g, int wk) {
    pack_group(scratch[wk], database, names.database, g, dstore.data(), dsq.data(), derr.data(), nullptr,
               dcen.data() + g * C, drho[g], &dzero[g], [&](int64_t j, const uint16_t* u) {
                 // Group j / 16 holds cp/2 rows of 16 (pixel, value pair) entries.
                 uint16_t* grp = db.data() + (j / kTile) * kTile * cp;
                 for (int64_t p = 0; p < cp / 2; ++p) {
                   grp[(p * kTile + j % kTile) * 2] = u[2 * p];
                   grp[(p * kTile + j % kTile) * 2 + 1] = u[2 * p + 1];
                 }
               });
  });
  // The group bounds pay only where groups are tight: a median database group wider than kGroupRhoMin
  // (random-weight features: about 90°) leaves the scan as it was.
  bool use_groups = false;
  {
    std::vector<float> r(drho);
    std::nth_element(r.begin(), r.begin() + ndg / 2, r.end());
    use_groups = ndg > 0 && r[ndg / 2] >= kGroupRhoMin;
  }
  // slack(e_q, e_x) = a_q + e_x·b_q with a_q = e_q + gamma (1 + e_q), b_q = 1 + a_q (the bound above,
  // regrouped), so a block's test is one fused multiply-add per pair. Both rounded up.
  const double gamma = static_cast<double>(cp) * 0x1p-24 / (1 - static_cast<double>(cp) * 0x1p-24);
  std::vector<float> qa_slack(Qp), qb_slack(Qp);
  for (int64_t q = 0; q < Qp; ++q) {
    const double a = qerr[q] + gamma * (1 + qerr[q]);
    qa_slack[q] = static_cast<float>(a * (1 + 0x1p-20));
    qb_slack[q] = static_cast<float>((1 + a) * (1 + 0x1p-20));
  }
  // The canonical value's own float32 rounding (2^-24) and the float32 arithmetic of the test.
  constexpr float kMargin = 0x1p-20f;
  // An all-zero query has similarity 0 with everything: its k best are the k lowest store indices (their
  // packed slots here, in store order).
  std::vector<int64_t> lowest;
  bool any_zero_query = false;
  for (int64_t j = 0; j < Qp; ++j) any_zero_query |= qpos[j] >= 0 && qzero[j];
  if (any_zero_query) {
    std::vector<int64_t> order(R);
    for (int64_t i = 0; i < R; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows[a] < rows[b]; });
    for (int64_t i = 0; i < R && static_cast<int64_t>(lowest.size()) < k; ++i)
      for (int64_t p = 0; p < plane && static_cast<int64_t>(lowest.size()) < k; ++p)
        lowest.push_back(order[i] * gdh * gdw * kPair + slot(p / d.w, p % d.w, gdw));
  }
  const int64_t band_size = Q >= 16 * kQueryBandLarge ? kQueryBandLarge : kQueryBand;
  const int64_t bands = (Qp + band_size - 1) / band_size;
  const int nw = workers_for(threads, bands);
  std::vector<TopK> best(nw, TopK(Q, k));
  std::vector<int64_t> rescored(nw, 0), blocks_run(nw, 0), blocks_all(nw, 0);
  // A pair the bound keeps waits in its query's list with its upper bound; the canonical rescoring runs
  // once the band has seen every database pixel, against the k-th best LOWER bound by then. Rescoring as
  // pairs came (against the k-th best canonical value so far) sent 16 times more pairs than there are
  // near-ties to rescoring: the first blocks, seen while a query's threshold was still low, all passed.
  struct Waiting {
    int64_t j;
    float key;  // s + e_x·b_q: passes a threshold t when key >= t - a_q - kMargin
  };
  struct BandBuffers {
    TopK lower;                               // per query slot of the band: the k best lower bounds, j as index
    std::vector<std::vector<Waiting>> wait;   // per query slot of the band
  };
  std::vector<BandBuffers> bufs(nw);
  parallel_units(bands, nw, cancel, [&](int64_t band, int wk) {
    TopK& top = best[wk];
    const int64_t q0 = band * band_size, q1 = std::min(Qp, q0 + band_size);
    BandBuffers& bb = bufs[wk];
    bb.lower = TopK(q1 - q0, k);
    bb.wait.resize(q1 - q0);
    for (auto& w : bb.wait) w.clear();
    // Up to kPair candidates of one query slot, rescored together (canonical_dots: the same values as
    // canonical_patch_cosine with kernel 1, several independent sums at once).
    std::vector<float> qraw(C), xraw(kPair * C);
    std::vector<const float*> xptr(kPair);
    int64_t cand[kPair];
    double dots[kPair];
    auto rescore_block = [&](int64_t i, const int64_t* js, int n) {
      load_f32(query, qpos[i] * C, C, qraw.data());
      for (int t = 0; t < n; ++t) {
        load_f32(database, dstore[js[t]] * C, C, xraw.data() + t * C);
        xptr[t] = xraw.data() + t * C;
      }
      canonical_dots(qraw.data(), xptr.data(), n, C, dots);
      for (int t = 0; t < n; ++t) {
        CanonicalParts parts;
        parts.dot = dots[t];
        parts.sq_a = qsq[i];
        parts.sq_b = dsq[js[t]];
        top.insert(qpos[i], canonical_cosine(parts), dstore[js[t]]);
      }
      rescored[wk] += n;
    };
    auto searched = [&](int64_t i) { return qpos[i] >= 0 && !qzero[i]; };
    for (int64_t i = q0; i < q1; ++i) {
      if (qpos[i] < 0 || !qzero[i]) continue;
      for (size_t t0 = 0; t0 < lowest.size(); t0 += kPair)
        rescore_block(i, lowest.data() + t0, static_cast<int>(std::min<size_t>(kPair, lowest.size() - t0)));
    }
    // What a pair's key must reach for the pair to possibly be among query i's k best (the lower bounds'
    // threshold is at most the k-th best canonical similarity: each of those k pairs is at least its bound).
    auto limit = [&](int64_t i) { return bb.lower.threshold(i - q0) - qa_slack[i] - kMargin; };
    // What some value s of a block must reach for its row to be looked at: the limit less the block's
    // largest database error term (set per database block).
    float eblock = 0.f;
    auto row_limit = [&](int64_t i) { return limit(i) - eblock * qb_slack[i]; };
    // Drops the waiting pairs of i that the current threshold rules out (when the list has grown).
    auto compact = [&](int64_t i) {
      std::vector<Waiting>& w = bb.wait[i - q0];
      const float lim = limit(i);
      w.erase(std::remove_if(w.begin(), w.end(), [&](const Waiting& c) { return !(c.key >= lim); }), w.end());
    };
    const size_t compact_at = static_cast<size_t>(std::max<int64_t>(64, 4 * k));
    load_tile_config();
    alignas(64) float blk[kPair * kPair];
    float lim_row[kPair];
    int64_t n_run = 0, n_all = 0;  // counted here, stored once: per-worker counters in one vector share a line
    for (int64_t m0 = 0; m0 < Mp; m0 += kDbBlock) {
      const int64_t m1 = std::min(Mp, m0 + kDbBlock);
      eblock = *std::max_element(derr.begin() + m0, derr.begin() + m1);
      for (int64_t i0 = q0; i0 < q1; i0 += kPair) {
        // Per query, what some pair of a block must reach to be looked at (with the block's largest
        // database error; never, for zero queries and padding slots).
        float glim = std::numeric_limits<float>::infinity();
        for (int64_t r = 0; r < kPair; ++r) {
          const int64_t i = i0 + r;
          if (!searched(i)) {
            lim_row[r] = std::numeric_limits<float>::infinity();
            continue;
          }
          lim_row[r] = row_limit(i);
          // A pair of cosine t has s + e_x b_q <= t + a_q + 2 e_x b_q: below lim_row when t is below this.
          glim = std::min(glim, lim_row[r] - qa_slack[i] - eblock * qb_slack[i]);
        }
        if (glim == std::numeric_limits<float>::infinity()) continue;  // nothing to search in this group
        glim -= kMargin;
        const int64_t qg = i0 / kPair;
        const bool bounds = use_groups && glim > -1.f && qrho[qg] > -1.f;
        for (int64_t j0 = m0; j0 < m1; j0 += kPair) {
          ++n_all;
          if (bounds && group_bound(qcen.data() + qg * C, qrho[qg], dcen.data() + (j0 / kPair) * C, drho[j0 / kPair],
                                    dzero[j0 / kPair] != 0, C) < glim)
            continue;  // no cosine of this block can reach any of its queries' limits
          ++n_run;
          block_32x32(qa.data() + i0 * cp, cp, db.data() + j0 * cp, db.data() + (j0 + kTile) * cp, blk);
          for (uint32_t hits = rows_reaching(blk, lim_row); hits; hits &= hits - 1) {
            const int64_t r = __builtin_ctz(hits), i = i0 + r;
            const float* row = blk + r * kPair;
            std::vector<Waiting>& w = bb.wait[i - q0];
            for (uint32_t cols = pairs_passing(row, derr.data() + j0, qb_slack[i], limit(i)); cols;
                 cols &= cols - 1) {
              const int64_t c = __builtin_ctz(cols), j = j0 + c;
              if (dstore[j] < 0) continue;  // padding
              const float e = derr[j] * qb_slack[i];
              w.push_back({j, row[c] + e});
              // Lower bound of the canonical value: s - slack, less the margin (as the limit's).
              bb.lower.insert(i - q0, row[c] - e - qa_slack[i] - kMargin, j);
            }
            if (w.size() >= compact_at) compact(i);
            lim_row[r] = row_limit(i);
          }
        }
      }
    }
    release_tiles();
    blocks_run[wk] += n_run;
    blocks_all[wk] += n_all;
    // Canonical rescoring of the pairs the final lower bounds leave, a query's pairs in batches.
    for (int64_t i = q0; i < q1; ++i) {
      if (!searched(i)) continue;
      compact(i);
      const std::vector<Waiting>& w = bb.wait[i - q0];
      for (size_t t0 = 0; t0 < w.size(); t0 += kPair) {
        const int n = static_cast<int>(std::min<size_t>(kPair, w.size() - t0));
        for (int t = 0; t < n; ++t) cand[t] = w[t0 + t].j;
        rescore_block(i, cand, n);
      }
    }
  });
  for (int w = 1; w < nw; ++w) best[0].merge(best[w]);
  int64_t run = 0, all = 0;
  for (int w = 0; w < nw; ++w) run += blocks_run[w], all += blocks_all[w];
  st.pairs = Q * M;
  // Blocks a group bound ruled out were not scored (blocks of queries with nothing to search count as run).
  st.pairs_scored = all ? static_cast<int64_t>(static_cast<double>(Q * M) * run / all) : Q * M;
  st.used_bounds = run < all;
  st.pairs_rescored = 0;
  for (int64_t n : rescored) st.pairs_rescored += n;
  st.filter = "amx_bf16";
  return to_matches(best[0], H, W, d.h, d.w);
#endif
}

}  // namespace detail
}  // namespace cnn_core
