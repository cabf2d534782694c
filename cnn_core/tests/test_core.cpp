// C++ unit tests of cnn_core against naive double-precision references (run by ctest, and by
// tests/test_core_cpp.py under pytest). Prints "N passed, N failed" and exits non-zero on failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cnn_core/matcher.hpp"

using cnn_core::DType;
using cnn_core::Tensor;

namespace {

int g_failed = 0, g_checks = 0;
#define CHECK(cond)                                                     \
  do {                                                                  \
    ++g_checks;                                                         \
    if (!(cond)) {                                                      \
      ++g_failed;                                                       \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                   \
  } while (0)

std::vector<float> random_relu(int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(n);
  for (auto& x : v) x = std::max(0.f, g(rng));
  return v;
}

// Naive cosine top-1 with the lowest index winning ties: (best index, best similarity).
std::pair<int64_t, double> naive_top1(const std::vector<std::vector<double>>& db, const std::vector<double>& q) {
  double qn = 0;
  for (double v : q) qn += v * v;
  int64_t best = -1;
  double bs = -1e300;
  for (size_t m = 0; m < db.size(); ++m) {
    double dot = 0, dn = 0;
    for (size_t j = 0; j < q.size(); ++j) dot += q[j] * db[m][j], dn += db[m][j] * db[m][j];
    const double s = (qn > 0 && dn > 0) ? dot / std::sqrt(qn * dn) : 0.0;
    if (s > bs) bs = s, best = static_cast<int64_t>(m);
  }
  return {best, bs};
}

// Zero-padded K×K descriptor of (y, x) in map n of an (N, h, w, c) float array; offsets -(K-1)/2..K/2.
std::vector<double> patch(const std::vector<float>& maps, int64_t n, int64_t h, int64_t w, int64_t c, int K,
                          int64_t y, int64_t x) {
  std::vector<double> d;
  for (int dy = -(K - 1) / 2; dy <= K / 2; ++dy)
    for (int dx = -(K - 1) / 2; dx <= K / 2; ++dx)
      for (int64_t j = 0; j < c; ++j) {
        const int64_t yy = y + dy, xx = x + dx;
        d.push_back(yy < 0 || yy >= h || xx < 0 || xx >= w ? 0.0 : maps[((n * h + yy) * w + xx) * c + j]);
      }
  return d;
}

void test_half() {
  const float vals[] = {0.f, -0.f, 1.f, -2.5f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f};
  for (float v : vals) CHECK(cnn_core::half_to_float(cnn_core::float_to_half(v)) == v);
  CHECK(cnn_core::float_to_half(1.f) == 0x3c00);
  CHECK(std::isinf(cnn_core::half_to_float(0x7c00)));
  std::vector<uint16_t> h(37);
  for (size_t i = 0; i < h.size(); ++i) h[i] = cnn_core::float_to_half(0.1f * i - 1.f);
  std::vector<float> f(h.size());
  cnn_core::half_to_float(h.data(), f.data(), static_cast<int64_t>(h.size()));
  for (size_t i = 0; i < h.size(); ++i) CHECK(f[i] == cnn_core::half_to_float(h[i]));
}

void test_exact() {
  std::mt19937 rng(1);
  const int64_t Q = 300, M = 2100, D = 19;  // crosses the query and database block edges
  auto q = random_relu(Q * D, rng), d = random_relu(M * D, rng);
  for (int j = 0; j < D; ++j) d[5 * D + j] = d[3 * D + j];  // exact duplicate: index 3 must win
  for (int j = 0; j < D; ++j) q[7 * D + j] = d[5 * D + j];
  for (int j = 0; j < D; ++j) q[8 * D + j] = 0.f;  // zero query: similarity 0, lowest index
  Tensor qt{q.data(), DType::F32, {Q, D}}, dt{d.data(), DType::F32, {M, D}};
  const int k = 3;
  std::vector<int64_t> idx(Q * k), idx2(Q * k);
  std::vector<float> sim(Q * k), sim2(Q * k);
  cnn_core::exact_topk(qt, dt, {}, k, 1, idx.data(), sim.data());
  std::vector<std::vector<double>> db(M, std::vector<double>(D));
  for (int64_t m = 0; m < M; ++m)
    for (int j = 0; j < D; ++j) db[m][j] = d[m * D + j];
  for (int64_t i = 0; i < Q; ++i) {
    std::vector<double> qq(q.begin() + i * D, q.begin() + (i + 1) * D);
    const auto ref = naive_top1(db, qq);
    CHECK(std::abs(sim[i * k] - ref.second) < 1e-5);
    CHECK(sim[i * k] >= sim[i * k + 1] && sim[i * k + 1] >= sim[i * k + 2]);
  }
  CHECK(idx[7 * k] == 3 && idx[7 * k + 1] == 5);
  CHECK(idx[8 * k] == 0 && idx[8 * k + 1] == 1 && sim[8 * k] == 0.f);
  for (int threads : {2, 4}) {
    cnn_core::exact_topk(qt, dt, {}, k, threads, idx2.data(), sim2.data());
    CHECK(idx2 == idx && sim2 == sim);
  }
  // Restricting to rows reports store rows.
  std::vector<int64_t> rows{9, 3, 1000};
  cnn_core::exact_topk(qt, dt, rows, 1, 2, idx2.data(), sim2.data());
  for (int64_t i = 0; i < Q; ++i) CHECK(idx2[i] == 9 || idx2[i] == 3 || idx2[i] == 1000);
  bool threw = false;
  try {
    cnn_core::exact_topk(qt, Tensor{d.data(), DType::F32, {M / 2, D + 1}}, {}, 1, 1, idx.data(), sim.data());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);
}

void test_patches() {
  std::mt19937 rng(2);
  for (int K = 1; K <= 7; ++K) {
    const int64_t H = 5 + K % 3, W = 7, C = 3, N = 3, h = 9, w = 70;  // w > tile width: crosses tiles
    auto q = random_relu(H * W * C, rng), d = random_relu(N * h * w * C, rng);
    Tensor qt{q.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {N, h, w, C}};
    const auto a = cnn_core::patch_topk(qt, dt, {}, K, 2, 1);
    const auto f = cnn_core::patch_topk_flat(qt, dt, {}, K, 2, 1);
    std::vector<std::vector<double>> db;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) db.push_back(patch(d, n, h, w, C, K, y, x));
    for (int64_t y = 0; y < H; ++y)
      for (int64_t x = 0; x < W; ++x) {
        const auto ref = naive_top1(db, patch(q, 0, H, W, C, K, y, x));
        const int64_t i = (y * W + x) * 2;
        CHECK(std::abs(a.similarity[i] - ref.second) < 1e-5);
        CHECK(std::abs(f.similarity[i] - ref.second) < 1e-5);
        // The index must match unless another position is within float rounding of the best.
        const int64_t got = (a.image[i] * h + a.y[i]) * w + a.x[i];
        if (got != ref.first) {
          const auto alt = naive_top1({db[got]}, patch(q, 0, H, W, C, K, y, x));
          CHECK(std::abs(alt.second - ref.second) < 1e-6);
        }
      }
    for (int threads : {2, 4}) {
      const auto b = cnn_core::patch_topk(qt, dt, {}, K, 2, threads);
      CHECK(b.image == a.image && b.y == a.y && b.x == a.x && b.similarity == a.similarity);
    }
    // Pruning with every coarse position as a candidate reproduces exact search.
    std::vector<float> qc(H * W * C), dc(N * h * w * C);  // coarse = fine grid itself
    Tensor qct{q.data(), DType::F32, {H, W, C}}, dct{d.data(), DType::F32, {N, h, w, C}};
    std::vector<float> g(N * 2, 1.f), qg(2, 1.f);
    Tensor gt{g.data(), DType::F32, {N, 2}}, qgt{qg.data(), DType::F32, {2}};
    cnn_core::HierarchicalParams p;
    p.kernel_fine = K;
    p.kernel_coarse = K;
    p.shortlist = N;
    p.coarse_k = N * h * w;
    p.margin = 0;
    p.k = 2;
    p.threads = 2;
    const auto hm = cnn_core::hierarchical(qt, dt, qct, dct, qgt, gt, {}, p);
    for (int64_t i = 0; i < H * W * 2; ++i) CHECK(std::abs(hm.similarity[i] - a.similarity[i]) < 1e-5);
  }
  // float16 input gives the float32 result on the float16-rounded values.
  const int64_t H = 6, W = 5, C = 4, N = 2;
  auto q = random_relu(H * W * C, rng), d = random_relu(N * H * W * C, rng);
  std::vector<uint16_t> dh(d.size());
  for (size_t i = 0; i < d.size(); ++i) dh[i] = cnn_core::float_to_half(d[i]), d[i] = cnn_core::half_to_float(dh[i]);
  Tensor qt{q.data(), DType::F32, {H, W, C}};
  const auto r32 = cnn_core::patch_topk(qt, Tensor{d.data(), DType::F32, {N, H, W, C}}, {}, 4, 1, 1);
  const auto r16 = cnn_core::patch_topk(qt, Tensor{dh.data(), DType::F16, {N, H, W, C}}, {}, 4, 1, 1);
  CHECK(r32.image == r16.image && r32.y == r16.y && r32.x == r16.x && r32.similarity == r16.similarity);
  // NaN in the searched database is reported.
  d[3] = NAN;
  bool threw = false;
  try {
    cnn_core::patch_topk(qt, Tensor{d.data(), DType::F32, {N, H, W, C}}, {}, 4, 1, 2);
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()).find("database") != std::string::npos;
  }
  CHECK(threw);
}

}  // namespace

int main() {
  // COMPNN_BLAS=/path/libscipy_openblas.so runs the same checks through the BLAS backend.
  if (const char* blas = std::getenv("COMPNN_BLAS")) {
    if (!cnn_core::set_blas_library(blas)) {
      std::fprintf(stderr, "cannot load BLAS %s\n", blas);
      return 2;
    }
  }
  std::printf("%s\n", cnn_core::build_info().c_str());
  const std::pair<const char*, std::function<void()>> tests[] = {
      {"half", test_half}, {"exact", test_exact}, {"patches", test_patches}};
  int passed = 0, failed = 0;
  for (const auto& [name, fn] : tests) {
    const int before = g_failed;
    fn();
    (g_failed == before ? passed : failed)++;
    std::printf("%s: %s\n", name, g_failed == before ? "ok" : "FAILED");
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
