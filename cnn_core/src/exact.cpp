// Flat exact search: blocked float32 GEMM through Eigen with a streaming top-k, so memory stays
// O(block) whatever Q and M are.
#include <Eigen/Core>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "internal.hpp"

namespace cnn_core {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

int64_t Tensor::size() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal half: renormalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while (!(mant & 0x400u));
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u);
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds past the largest half
  if (ax < 0x38800000u) {                         // subnormal or zero half
    if (ax < 0x33000000u) return sign;
    const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(e);
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = ((ax >> 13) - (112u << 10));
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return sign | static_cast<uint16_t>(r);
}

void half_to_float(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}

std::string build_info() {
  std::string s = "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                  "." + std::to_string(EIGEN_MINOR_VERSION) + ", SIMD: " + Eigen::SimdInstructionSetsInUse();
#if defined(__F16C__) || defined(__AVX512F__)
  s += ", GEMM: " + blas_backend();
  s += ", float16 via F16C";
  s += amx_bf16_ready() ? ", 1x1 bound search: AMX-BF16 filter" : ", 1x1 bound search: float32 filter";
#else
  s += ", GEMM: " + blas_backend();
  s += ", float16 via scalar conversion";
#endif
  return s;
}

int max_threads() {
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<int>(std::min<int64_t>(4 * hw, 256));
}

namespace {
// Block shapes are constants, never derived from the thread count: every similarity is then computed
// by the same GEMM call whatever the number of threads, so results are bit-identical.
constexpr int64_t kQueryBlock = 256;
constexpr int64_t kDbBlock = 2048;
constexpr int64_t kDbChunk = 8 * kDbBlock;
}  // namespace

ProgressScope::ProgressScope(Progress progress) : progress_(std::move(progress)), previous_(detail::progress_sink()) {
  detail::progress_sink() = &progress_;
}
ProgressScope::~ProgressScope() { detail::progress_sink() = previous_; }

namespace detail {

const Progress*& progress_sink() {
  thread_local const Progress* sink = nullptr;
  return sink;
}

// Kept out of line (and free of -ffast-math), so every caller gets the same sums in the same order. The
// multiply-adds are written as fused ones (std::fma: what the compiler emitted here anyway), so that
// canonical_dots repeats them exactly whatever the compiler's contraction settings.
__attribute__((noinline)) CanonicalParts canonical_rows(const float* a, const float* b, int64_t n, int64_t group) {
  CanonicalParts p;
  if (group <= 0) group = n;
  for (int64_t g0 = 0; g0 < n; g0 += group) {
    double dot = 0, sa = 0, sb = 0;
    for (int64_t i = g0; i < std::min(n, g0 + group); ++i) {
      const double x = a[i], y = b[i];
      dot = std::fma(x, y, dot);
      sa = std::fma(x, x, sa);
      sb = std::fma(y, y, sb);
    }
    p.dot += dot;
    p.sq_a += sa;
    p.sq_b += sb;
  }
  return p;
}

namespace {
// Up to kDotBatch canonical dot products a[t]·b[t] of c values, as independent chains (a multiply-add's
// latency is hidden behind the others); each is bit for bit the `dot` of canonical_rows(a[t], b[t], c, c).
constexpr int kDotBatch = 8;
void dot_batch(const float* const* a, const float* const* b, int m, int64_t c, double* out) {
  double dot[kDotBatch] = {};
  for (int64_t i = 0; i < c; ++i)
    for (int t = 0; t < m; ++t) dot[t] = std::fma(static_cast<double>(a[t][i]), static_cast<double>(b[t][i]), dot[t]);
  for (int t = 0; t < m; ++t) out[t] = 0.0 + dot[t];  // as canonical_rows adds its one group to 0
}
}  // namespace

__attribute__((noinline)) void canonical_dots(const float* a, const float* const* b, int n, int64_t c,
                                              double* out) {
  const float* as[kDotBatch];
  std::fill(as, as + kDotBatch, a);
  for (int t0 = 0; t0 < n; t0 += kDotBatch) dot_batch(as, b + t0, std::min(kDotBatch, n - t0), c, out + t0);
}

__attribute__((noinline)) void canonical_sq_norms(const float* const* v, int n, int64_t c, double* out) {
  for (int t0 = 0; t0 < n; t0 += kDotBatch) dot_batch(v + t0, v + t0, std::min(kDotBatch, n - t0), c, out + t0);
}

__attribute__((noinline)) float canonical_cosine(const CanonicalParts& p) {
  if (p.sq_a == 0 || p.sq_b == 0) return 0.f;
  return static_cast<float>(p.dot / (std::sqrt(p.sq_a) * std::sqrt(p.sq_b)));
}

float canonical_patch_cosine(const Tensor& query, int64_t qoff, int64_t qh, int64_t qw, int64_t qy, int64_t qx,
                             const Tensor& database, int64_t doff, int64_t dh, int64_t dw, int64_t dy, int64_t dx,
                             int64_t c, int64_t kernel, float* scratch) {
  const int64_t a = pad_before(kernel);
  CanonicalParts total;
  for (int64_t oy = 0; oy < kernel; ++oy)
    for (int64_t ox = 0; ox < kernel; ++ox) {
      const int64_t y1 = qy + oy - a, x1 = qx + ox - a, y2 = dy + oy - a, x2 = dx + ox - a;
      const bool in1 = y1 >= 0 && y1 < qh && x1 >= 0 && x1 < qw, in2 = y2 >= 0 && y2 < dh && x2 >= 0 && x2 < dw;
      if (!in1 && !in2) continue;
      float* p1 = scratch;
      float* p2 = scratch + c;
      if (in1) load_f32(query, qoff + (y1 * qw + x1) * c, c, p1); else std::fill(p1, p1 + c, 0.f);
      if (in2) load_f32(database, doff + (y2 * dw + x2) * c, c, p2); else std::fill(p2, p2 + c, 0.f);
      const CanonicalParts px = canonical_rows(p1, p2, c, c);
      total.dot += px.dot;
      total.sq_a += px.sq_a;
      total.sq_b += px.sq_b;
    }
  return canonical_cosine(total);
}

Neighbours exact_topk(const Tensor& queries, const Tensor& database, const std::vector<int64_t>& rows_in,
                      int64_t k_in, int64_t threads, const Cancel& cancel, const Names& names, int64_t group) {
  check_tensor(queries, names.query, 2);
  check_tensor(database, names.database, 2);
  const int64_t Q = queries.shape[0], D = queries.shape[1];
  if (database.shape[1] != D)
    fail(std::string(names.database) + ": " + std::to_string(database.shape[1]) + " dims do not match " +
         possessive(names.query) + " " + std::to_string(D));
  const std::vector<int64_t> rows = resolve_rows(rows_in, database.shape[0], names.database);
  if (D == 0) fail(std::string(names.query) + ": have 0 dims");
  const int64_t M = static_cast<int64_t>(rows.size());
  const int64_t k = check_range(names.k, k_in, 1, M);
  check_threads(threads);
  Neighbours out;
  out.rows = Q;
  out.k = k;
  if (Q == 0) return out;

  const int64_t qblocks = (Q + kQueryBlock - 1) / kQueryBlock;
  const int64_t dchunks = (M + kDbChunk - 1) / kDbChunk;
  const int nw = workers_for(threads, qblocks * dchunks);

  // One pass over the searched rows: finiteness, scale exponent and inverse norm of each row (of the
  // scaled row), done once rather than once per query block.
  std::vector<float> dinv_all(M);
  std::vector<int16_t> dexp(M);
  parallel_units(dchunks, nw, cancel, [&](int64_t dc, int) {
    std::vector<float> row(D);
    for (int64_t j = dc * kDbChunk; j < std::min(M, (dc + 1) * kDbChunk); ++j) {
      load_f32(database, rows[j] * D, D, row.data());
      require_finite(row.data(), D, names.database);
      dexp[j] = static_cast<int16_t>(normalise(row.data(), D));
      dinv_all[j] = filter_inv_norm(Eigen::Map<const Eigen::VectorXf>(row.data(), D).cast<double>().squaredNorm());
    }
  });
  // float32 rows searched in store order, none of them rescaled, are multiplied in place, without a copy.
  bool contiguous = database.dtype == DType::F32;
  for (int64_t j = 0; contiguous && j < M; ++j) contiguous = rows[j] == rows[0] + j;
  const float* db32 = static_cast<const float*>(database.data);

  const float slack = filter_slack(D, 1);
  std::vector<TopK> best(nw, TopK(Q, k));
  parallel_units(qblocks * dchunks, nw, cancel, [&](int64_t unit, int w) {
    const int64_t qb = unit / dchunks, dc = unit % dchunks;
    const int64_t q0 = qb * kQueryBlock, nq = std::min(kQueryBlock, Q - q0);
    RowMat qm(nq, D), dm, sims(nq, kDbBlock);
    load_f32(queries, q0 * D, nq * D, qm.data());
    require_finite(qm.data(), nq * D, names.query);
    const RowMat qraw = qm;  // the original values, for canonical rescoring
    std::vector<float> drow(D);
    std::vector<float> qinv(nq);
    for (int64_t i = 0; i < nq; ++i) {
      normalise(qm.row(i).data(), D);
      qinv[i] = filter_inv_norm(qm.row(i).cast<double>().squaredNorm());
    }
    TopK& top = best[w];
    const int64_t m_end = std::min(M, (dc + 1) * kDbChunk);
    for (int64_t m0 = dc * kDbChunk; m0 < m_end; m0 += kDbBlock) {
      const int64_t nm = std::min(kDbBlock, m_end - m0);
      bool in_place = contiguous;
      for (int64_t j = 0; in_place && j < nm; ++j) in_place = dexp[m0 + j] == 0;
      const float* dptr = db32 + (contiguous ? (rows[0] + m0) * D : 0);
      if (!in_place) {
        // Only the rows used: whole maps as global descriptors have D in the millions (360x480x64:
        // 11M values), and kDbBlock of them would be 90 GB.
        if (dm.rows() < nm) dm.resize(nm, D);
        for (int64_t j = 0; j < nm; ++j) {
          float* dst = dm.data() + j * D;
          load_f32(database, rows[m0 + j] * D, D, dst);
          scale_pow2(dst, D, dexp[m0 + j]);
        }
        dptr = dm.data();
      }
      const float* dinv = dinv_all.data() + m0;
      gemm_nt(qm.data(), nq, D, dptr, nm, D, D, sims.data(), sims.cols());
      for (int64_t i = 0; i < nq; ++i) {
        const float* row = sims.data() + i * sims.cols();
        const float qi = qinv[i];
        const int64_t q = q0 + i;
        float thr = top.threshold(q);
        for (int64_t j = 0; j < nm; ++j) {
          const float v = row[j] * qi * dinv[j];
          if (passes_filter(v, thr, slack)) {
            load_f32(database, rows[m0 + j] * D, D, drow.data());
            const float cv = canonical_cosine(canonical_rows(qraw.row(i).data(), drow.data(), D, group));
            top.insert(q, cv, rows[m0 + j]);
            thr = top.threshold(q);
          }
        }
      }
    }
  });
  for (int w = 1; w < nw; ++w) best[0].merge(best[w]);
  best[0].finish();
  out.index = std::move(best[0].idx);
  out.similarity = std::move(best[0].sim);
  return out;
}

Neighbours global_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t S,
                       int64_t threads, const Cancel& cancel, const Names& names) {
  check_tensor(query, names.query, kAnyNdim);
  check_tensor(database, names.database, kAnyNdim, 1);
  const int64_t N = database.shape[0];
  std::vector<int64_t> row_shape(database.shape.begin() + 1, database.shape.end());
  Tensor rs{nullptr, DType::F32, row_shape};
  if (rs.size() != query.size() || (N > 0 && query.size() == 0))
    fail(std::string(names.database) + ": rows of shape " + shape_str(row_shape) + " do not match " + names.query +
         " of shape " + shape_str(query.shape));
  Tensor q = query, d = database;
  q.shape = {1, query.size()};
  d.shape = {N, rs.size()};
  return exact_topk(q, d, rows, S, threads, cancel, names);
}

}  // namespace detail

Neighbours exact_topk(const Tensor& queries, const Tensor& database, const std::vector<int64_t>& rows, int64_t k,
                      int64_t threads, const Cancel& cancel) {
  return detail::exact_topk(queries, database, rows, k, threads, cancel, {"queries", "database", "k"});
}

Neighbours global_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t S,
                       int64_t threads, const Cancel& cancel) {
  return detail::global_topk(query, database, rows, S, threads, cancel, {"query", "database", "S"});
}

}  // namespace cnn_core
