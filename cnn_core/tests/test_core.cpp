// C++ unit tests of cnn_core against naive double-precision references (run by ctest, and by
// tests/test_core_cpp.py under pytest). Prints "N passed, N failed" and exits non-zero on failure.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/internal.hpp"  // the thread-start test hook
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

// Whether fn throws std::invalid_argument whose message starts with `name`.
bool throws_naming(const std::string& name, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    const bool ok = std::string(e.what()).rfind(name, 0) == 0;
    if (!ok) std::fprintf(stderr, "  message \"%s\" does not start with \"%s\"\n", e.what(), name.c_str());
    return ok;
  }
  std::fprintf(stderr, "  no exception (expected one naming %s)\n", name.c_str());
  return false;
}

bool same(const cnn_core::PatchMatches& a, const cnn_core::PatchMatches& b) {
  return a.image == b.image && a.y == b.y && a.x == b.x && a.similarity == b.similarity;
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
  const auto res = cnn_core::exact_topk(qt, dt, {}, k, 1);
  const std::vector<int64_t>& idx = res.index;
  const std::vector<float>& sim = res.similarity;
  CHECK(res.rows == Q && res.k == k && idx.size() == size_t(Q * k));
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
    const auto r2 = cnn_core::exact_topk(qt, dt, {}, k, threads);
    CHECK(r2.index == idx && r2.similarity == sim);
  }
  // Restricting to rows reports store rows.
  std::vector<int64_t> rows{9, 3, 1000};
  const auto r3 = cnn_core::exact_topk(qt, dt, rows, 1, 2);
  for (int64_t i = 0; i < Q; ++i) CHECK(r3.index[i] == 9 || r3.index[i] == 3 || r3.index[i] == 1000);
  CHECK(throws_naming("database", [&] { cnn_core::exact_topk(qt, Tensor{d.data(), DType::F32, {M / 2, D + 1}}, {}, 1, 1); }));
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
  CHECK(throws_naming("database:", [&] { cnn_core::patch_topk(qt, Tensor{d.data(), DType::F32, {N, H, W, C}}, {}, 4, 1, 2); }));
}

// Smooth maps (a running sum of noise along x and y), so neighbouring positions are alike.
std::vector<float> smooth_maps(int64_t n, int64_t h, int64_t w, int64_t c, std::mt19937& rng) {
  std::normal_distribution<float> g;
  std::vector<float> v(n * h * w * c);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < h; ++y)
      for (int64_t x = 0; x < w; ++x)
        for (int64_t j = 0; j < c; ++j) {
          float& o = v[((i * h + y) * w + x) * c + j];
          o = 0.2f * g(rng) + (x ? v[((i * h + y) * w + x - 1) * c + j] : 0.f) * 0.5f +
              (y ? v[((i * h + y - 1) * w + x) * c + j] : 0.f) * 0.5f;
        }
  return v;
}

// Canonical similarities: the shift-sum search, the flattened reference and the bound-pruned search
// give bit-identical results (ties, zero patches, k > 1, any thread count), and progress is reported.
void test_bounded() {
  std::mt19937 rng(7);
  for (int K : {1, 2, 4}) {
    const int64_t H = 20, W = 24, C = 5, N = 4;
    auto d = smooth_maps(N, H, W, C, rng);
    std::copy(d.begin(), d.begin() + H * W * C, d.begin() + 2 * H * W * C);  // image 2 = image 0: ties
    for (int64_t i = 0; i < 6 * W * C; ++i) d[3 * H * W * C + i] = 0.f;       // zero rows in image 3
    std::vector<float> q(d.begin(), d.begin() + H * W * C);
    for (int64_t i = 0; i < 3 * C; ++i) q[i] = 0.f;                          // zero query patches
    Tensor qt{q.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {N, H, W, C}};
    for (int64_t k : {1, 3}) {
      const auto a = cnn_core::patch_topk(qt, dt, {}, K, k, 2);
      const auto f = cnn_core::patch_topk_flat(qt, dt, {}, K, k, 2);
      CHECK(f.image == a.image && f.y == a.y && f.x == a.x && f.similarity == a.similarity);
      for (int threads : {1, 3}) {
        cnn_core::BoundStats st;
        const auto b = cnn_core::bounded_patch_topk(qt, dt, {}, K, k, threads, {}, &st);
        CHECK(b.image == a.image && b.y == a.y && b.x == a.x && b.similarity == a.similarity);
        CHECK(st.pairs == H * W * N * H * W && st.pairs_scored <= st.pairs);
      }
      // the query is image 0: its exact copy in image 0 wins over the tie in image 2
      for (int64_t i = 3 * k; i < H * W * k; i += k) CHECK(a.image[i] == 0 || a.similarity[i] == 0.f);
    }
  }
  // Progress: (done, total) pairs, the last one complete.
  const int64_t H = 16, W = 16, C = 3;
  auto d = smooth_maps(3, H, W, C, rng);
  Tensor qt{d.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {3, H, W, C}};
  std::vector<std::pair<int64_t, int64_t>> seen;
  {
    cnn_core::ProgressScope scope([&](int64_t done, int64_t total) { seen.emplace_back(done, total); });
    cnn_core::patch_topk(qt, dt, {}, 3, 1, 2);
  }
  CHECK(!seen.empty() && seen.back().first == seen.back().second && seen.back().second > 0);
  const size_t n = seen.size();
  cnn_core::patch_topk(qt, dt, {}, 3, 1, 2);  // the scope has ended: nothing more reported
  CHECK(seen.size() == n);
}

// k above the sorted-list limit uses the heap: same results as the naive top-k, as small k's prefix,
// and for any thread count.
void test_large_k() {
  std::mt19937 rng(3);
  const int64_t Q = 3, M = 20000, D = 8, k = 4096;
  auto q = random_relu(Q * D, rng), d = random_relu(M * D, rng);
  for (int j = 0; j < D; ++j) d[777 * D + j] = d[5 * D + j];  // exact tie: 5 before 777
  for (int j = 0; j < D; ++j) q[j] = d[5 * D + j];
  Tensor qt{q.data(), DType::F32, {Q, D}}, dt{d.data(), DType::F32, {M, D}};
  const auto big = cnn_core::exact_topk(qt, dt, {}, k, 1);
  const auto small = cnn_core::exact_topk(qt, dt, {}, 16, 1);
  for (int64_t i = 0; i < Q; ++i)
    for (int j = 0; j < 16; ++j) {
      CHECK(big.index[i * k + j] == small.index[i * 16 + j]);
      CHECK(big.similarity[i * k + j] == small.similarity[i * 16 + j]);
    }
  CHECK(big.index[0] == 5 && big.index[1] == 777);
  for (int64_t i = 0; i < Q; ++i) {
    // naive: every similarity in double, sorted by (similarity desc, index asc)
    std::vector<std::pair<double, int64_t>> all(M);
    double qn = 0;
    for (int j = 0; j < D; ++j) qn += double(q[i * D + j]) * q[i * D + j];
    for (int64_t m = 0; m < M; ++m) {
      double dot = 0, dn = 0;
      for (int j = 0; j < D; ++j) dot += double(q[i * D + j]) * d[m * D + j], dn += double(d[m * D + j]) * d[m * D + j];
      all[m] = {-(dn > 0 ? dot / std::sqrt(qn * dn) : 0.0), m};
    }
    std::sort(all.begin(), all.end());
    for (int64_t j = 0; j < k; ++j) {
      CHECK(std::abs(big.similarity[i * k + j] + all[j].first) < 1e-5);
      if (j) CHECK(big.similarity[i * k + j] <= big.similarity[i * k + j - 1]);
    }
  }
  const auto threaded = cnn_core::exact_topk(qt, dt, {}, k, 3);
  CHECK(threaded.index == big.index && threaded.similarity == big.similarity);
  // Patch search with a heap-sized k: identical for any thread count and agrees with the flat path.
  const int64_t H = 5, W = 6, C = 3, N = 2, h = 40, w = 70;
  auto pq = random_relu(H * W * C, rng), pd = random_relu(N * h * w * C, rng);
  Tensor pqt{pq.data(), DType::F32, {H, W, C}}, pdt{pd.data(), DType::F32, {N, h, w, C}};
  const auto a = cnn_core::patch_topk(pqt, pdt, {}, 3, 300, 1);
  CHECK(same(a, cnn_core::patch_topk(pqt, pdt, {}, 3, 300, 4)));
  const auto f = cnn_core::patch_topk_flat(pqt, pdt, {}, 3, 300, 2);
  for (size_t i = 0; i < a.similarity.size(); ++i) CHECK(std::abs(a.similarity[i] - f.similarity[i]) < 1e-5);
}

// Thread counts: capped, never an abort, and a refused thread start changes nothing.
void test_threads() {
  std::mt19937 rng(4);
  const int64_t H = 9, W = 8, C = 4, N = 6, h = 40, w = 70;
  auto q = random_relu(H * W * C, rng), d = random_relu(N * h * w * C, rng);
  Tensor qt{q.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {N, h, w, C}};
  const auto base = cnn_core::patch_topk(qt, dt, {}, 4, 2, 1);
  CHECK(cnn_core::max_threads() >= 4 && cnn_core::max_threads() <= 256);
  CHECK(same(base, cnn_core::patch_topk(qt, dt, {}, 4, 2, std::numeric_limits<int32_t>::max())));
  for (int limit : {0, 1, 2}) {  // the OS "refuses" every thread past the limit
    cnn_core::detail::g_test_thread_start_limit = limit;
    CHECK(same(base, cnn_core::patch_topk(qt, dt, {}, 4, 2, 8)));
    const auto e1 = cnn_core::exact_topk(Tensor{q.data(), DType::F32, {H * W, C}}, Tensor{d.data(), DType::F32, {N * h * w, C}}, {}, 3, 1);
    const auto e8 = cnn_core::exact_topk(Tensor{q.data(), DType::F32, {H * W, C}}, Tensor{d.data(), DType::F32, {N * h * w, C}}, {}, 3, 8);
    CHECK(e1.index == e8.index && e1.similarity == e8.similarity);
  }
  cnn_core::detail::g_test_thread_start_limit = -1;
  CHECK(throws_naming("threads", [&] { cnn_core::patch_topk(qt, dt, {}, 4, 2, int64_t(1) << 31); }));
  CHECK(throws_naming("threads", [&] { cnn_core::patch_topk(qt, dt, {}, 4, 2, 0); }));
}

// A search stops at the first poll whose cancel says so, throwing Cancelled, long before it would end.
void test_cancel() {
  std::mt19937 rng(5);
  const int64_t H = 64, W = 64, C = 16, N = 40, h = 64, w = 64;
  auto q = random_relu(H * W * C, rng), d = random_relu(N * h * w * C, rng);
  Tensor qt{q.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {N, h, w, C}};
  int calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  bool cancelled = false;
  try {
    cnn_core::patch_topk(qt, dt, {}, 4, 1, 2, [&] { return ++calls >= 2; });
  } catch (const cnn_core::Cancelled&) {
    cancelled = true;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(cancelled && calls == 2);
  const auto t1 = std::chrono::steady_clock::now();
  cnn_core::patch_topk(qt, dt, {0, 1}, 4, 1, 2);  // 2 of 40 images
  const double two = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::printf("cancel: stopped after %.3f s (whole search ~%.1f s)\n", secs, two * N / 2);
  CHECK(secs < two * N / 4);
  // The flat reference search is many short exact searches (one per database image): the poll clock
  // runs across them, so it is polled about every 100 ms all the same.
  const int64_t fh = 12, fn = 4000;
  auto fq = random_relu(fh * fh * 8, rng), fd = random_relu(fn * fh * fh * 8, rng);
  int polls = 0;
  const auto t2 = std::chrono::steady_clock::now();
  cnn_core::patch_topk_flat(Tensor{fq.data(), DType::F32, {fh, fh, 8}}, Tensor{fd.data(), DType::F32, {fn, fh, fh, 8}},
                            {}, 3, 1, 1, [&] { return ++polls < 0; });
  const double flat_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t2).count();
  std::printf("cancel: flat search of %.3f s polled %d times\n", flat_secs, polls);
  CHECK(polls >= 1 && polls <= flat_secs / 0.1 + 1);
  if (flat_secs > 0.3) CHECK(polls >= flat_secs / 0.1 / 2);
}

// Cosine ignores scale: results of x * 1e30 or x * 1e-30 (float32 would overflow / underflow the
// dot products) equal those of x.
void test_scale_invariance() {
  std::mt19937 rng(6);
  const int64_t H = 6, W = 7, C = 5, N = 3, h = 9, w = 10;
  auto q = random_relu(H * W * C, rng), d = random_relu(N * h * w * C, rng);
  auto scaled = [](std::vector<float> v, float f) {
    for (auto& x : v) x *= f;
    return v;
  };
  Tensor qt{q.data(), DType::F32, {H, W, C}}, dt{d.data(), DType::F32, {N, h, w, C}};
  const auto base = cnn_core::patch_topk(qt, dt, {}, 3, 2, 1);
  const auto ebase = cnn_core::exact_topk(Tensor{q.data(), DType::F32, {H * W, C}}, Tensor{d.data(), DType::F32, {N * h * w, C}}, {}, 2, 1);
  std::vector<float> g(N * 2, 1.f), qg(2, 1.f);
  cnn_core::HierarchicalParams p;
  p.kernel_fine = 3;
  p.kernel_coarse = 1;
  p.shortlist = N;
  p.coarse_k = N * h * w;
  p.margin = 0;
  p.k = 2;
  const auto hbase = cnn_core::hierarchical(qt, dt, qt, dt, Tensor{qg.data(), DType::F32, {2}}, Tensor{g.data(), DType::F32, {N, 2}}, {}, p);
  for (float fq : {1e-35f, 1e-30f, 1.f, 1e30f})
    for (float fd : {1e-35f, 1e-30f, 1.f, 1e25f}) {
      const auto q2 = scaled(q, fq), d2 = scaled(d, fd);
      Tensor q2t{q2.data(), DType::F32, {H, W, C}}, d2t{d2.data(), DType::F32, {N, h, w, C}};
      const auto r = cnn_core::patch_topk(q2t, d2t, {}, 3, 2, 1);
      const auto e = cnn_core::exact_topk(Tensor{q2.data(), DType::F32, {H * W, C}}, Tensor{d2.data(), DType::F32, {N * h * w, C}}, {}, 2, 1);
      const auto hr = cnn_core::hierarchical(q2t, d2t, q2t, d2t, Tensor{qg.data(), DType::F32, {2}}, Tensor{g.data(), DType::F32, {N, 2}}, {}, p);
      for (size_t i = 0; i < base.similarity.size(); ++i) {
        CHECK(std::abs(r.similarity[i] - base.similarity[i]) < 1e-5);
        CHECK(std::abs(e.similarity[i] - ebase.similarity[i]) < 1e-5);
        CHECK(std::abs(hr.similarity[i] - hbase.similarity[i]) < 1e-5);
      }
      int64_t same_top1 = 0;
      for (int64_t i = 0; i < H * W; ++i) same_top1 += r.image[2 * i] == base.image[2 * i] && r.y[2 * i] == base.y[2 * i] && r.x[2 * i] == base.x[2 * i];
      CHECK(same_top1 >= H * W - 1);  // (float rounding may swap a near-tie)
    }
  // Inside [2^-40, 2^40] nothing is rescaled: a power-of-two factor gives bit-identical similarities.
  const auto q4 = scaled(q, 1024.f);
  const auto r4 = cnn_core::patch_topk(Tensor{q4.data(), DType::F32, {H, W, C}}, dt, {}, 3, 2, 1);
  CHECK(same(r4, base));
}

// Every argument is checked in the core and the message starts with its name.
void test_checks() {
  std::vector<float> q(4 * 4 * 3, 1.f), d(2 * 4 * 4 * 3, 1.f);
  Tensor qt{q.data(), DType::F32, {4, 4, 3}}, dt{d.data(), DType::F32, {2, 4, 4, 3}};
  using cnn_core::patch_topk;
  CHECK(throws_naming("kernel", [&] { patch_topk(qt, dt, {}, 0, 1, 1); }));
  CHECK(throws_naming("kernel", [&] { patch_topk(qt, dt, {}, int64_t(1) << 31, 1, 1); }));
  CHECK(throws_naming("k", [&] { patch_topk(qt, dt, {}, 2, 33, 1); }));
  CHECK(throws_naming("rows", [&] { patch_topk(qt, dt, {0, 0}, 2, 1, 1); }));
  CHECK(throws_naming("rows", [&] { patch_topk(qt, dt, {2}, 2, 1, 1); }));
  CHECK(throws_naming("query", [&] { patch_topk(Tensor{q.data(), DType::F32, {4, 12}}, dt, {}, 2, 1, 1); }));
  CHECK(throws_naming("database", [&] { patch_topk(qt, Tensor{d.data(), DType::F32, {0, 4, 4, 3}}, {}, 2, 1, 1); }));
  CHECK(throws_naming("database", [&] { patch_topk(qt, Tensor{d.data(), DType::F32, {2, 4, 6, 2}}, {}, 2, 1, 1); }));
  CHECK(throws_naming("S", [&] { cnn_core::global_topk(qt, dt, {}, 3, 1); }));
  CHECK(throws_naming("database", [&] { cnn_core::global_topk(Tensor{q.data(), DType::F32, {5}}, dt, {}, 1, 1); }));
  std::vector<float> g(4, 1.f);
  Tensor gq{g.data(), DType::F32, {2}}, gd{g.data(), DType::F32, {2, 2}};
  cnn_core::HierarchicalParams p;
  p.shortlist = 2;
  p.margin = -1;
  CHECK(throws_naming("margin", [&] { cnn_core::hierarchical(qt, dt, qt, dt, gq, gd, {}, p); }));
  p.margin = 0;
  p.coarse_k = 0;
  CHECK(throws_naming("coarse_k", [&] { cnn_core::hierarchical(qt, dt, qt, dt, gq, gd, {}, p); }));
  p.coarse_k = 2;
  p.shortlist = 3;
  CHECK(throws_naming("shortlist", [&] { cnn_core::hierarchical(qt, dt, qt, dt, gq, gd, {}, p); }));
  p.shortlist = 2;
  CHECK(throws_naming("db_global", [&] { cnn_core::hierarchical(qt, dt, qt, dt, gq, Tensor{g.data(), DType::F32, {1, 2}}, {}, p); }));
  d[7] = INFINITY;
  CHECK(throws_naming("db_coarse: contains NaN", [&] { cnn_core::hierarchical(qt, dt, qt, dt, gq, gd, {}, p); }));
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
      {"half", test_half},         {"exact", test_exact},   {"patches", test_patches},
      {"large_k", test_large_k},   {"threads", test_threads}, {"cancel", test_cancel},
      {"scale", test_scale_invariance}, {"checks", test_checks}, {"bounded", test_bounded}};
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
