// compnn_bench: times flat exact, shift-sum exact and hierarchical search on generated (i.i.d.) or
// loaded (.npy) feature maps, and reports agreement with the exact top-1.
//
//   compnn_bench [--h=128 --w=128 --c=128 --kernel=4 --n=4 --threads=2 --flat_rows=8 --flat_db=1
//                 --shortlist=4 --coarse_factor=4 --coarse_kernel=1 --coarse_k=8 --margin=1 --seed=0]
//                [--blas=/path/to/libscipy_openblas.so]
//                [--query=q.npy --database=db.npy [--labels=db_labels.npy]]
// Coarse maps are average-pooled fine maps (factor --coarse_factor) and global descriptors are the
// fine maps' channel means, unless the data come from .npy files with those layers given
// (--query_coarse, --db_coarse, --query_global, --db_global).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cnn_core/matcher.hpp"
#include "npy.hpp"

using cnn_core::DType;
using cnn_core::Tensor;

namespace {

struct Data {
  std::vector<uint16_t> f16;  // owned float16 storage when generated
  npy::Array loaded;
  Tensor t;
};

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Data from_npy(const std::string& path) {
  Data d;
  d.loaded = npy::load(path);
  if (d.loaded.descr == "|u1") throw std::runtime_error(path + ": expected float32 or float16 features");
  d.t = Tensor{d.loaded.bytes.data(), d.loaded.descr == "<f2" ? DType::F16 : DType::F32, d.loaded.shape};
  return d;
}

Data generated(std::vector<int64_t> shape, std::mt19937_64& rng) {
  Data d;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  d.f16.resize(n);
  std::uniform_real_distribution<float> u(-0.5f, 1.0f);
  for (auto& v : d.f16) v = cnn_core::float_to_half(std::max(0.f, u(rng)));  // ReLU-like sparsity
  d.t = Tensor{d.f16.data(), DType::F16, shape};
  return d;
}

// Average pool by `f` (n, h, w, c) -> (n, h/f, w/f, c), float16; keep_dims=false: channel mean (n, c).
Data pooled(const Tensor& src, int64_t f, bool global) {
  const bool has_n = src.shape.size() == 4;
  const int64_t n = has_n ? src.shape[0] : 1, h = src.shape[has_n], w = src.shape[has_n + 1],
                c = src.shape[has_n + 2];
  const int64_t ph = global ? 1 : h / f, pw = global ? 1 : w / f, fy = global ? h : f, fx = global ? w : f;
  Data d;
  d.f16.resize(n * ph * pw * c);
  std::vector<float> px(c), acc(c);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t y = 0; y < ph; ++y)
      for (int64_t x = 0; x < pw; ++x) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t yy = y * fy; yy < (y + 1) * fy; ++yy)
          for (int64_t xx = x * fx; xx < (x + 1) * fx; ++xx) {
            const int64_t off = ((i * h + yy) * w + xx) * c;
            if (src.dtype == DType::F16)
              cnn_core::half_to_float(static_cast<const uint16_t*>(src.data) + off, px.data(), c);
            else
              std::copy_n(static_cast<const float*>(src.data) + off, c, px.data());
            for (int64_t j = 0; j < c; ++j) acc[j] += px[j];
          }
        for (int64_t j = 0; j < c; ++j)
          d.f16[((i * ph + y) * pw + x) * c + j] = cnn_core::float_to_half(acc[j] / (fy * fx));
      }
  if (global)
    d.t = Tensor{d.f16.data(), DType::F16, has_n ? std::vector<int64_t>{n, c} : std::vector<int64_t>{c}};
  else
    d.t = Tensor{d.f16.data(), DType::F16,
                 has_n ? std::vector<int64_t>{n, ph, pw, c} : std::vector<int64_t>{ph, pw, c}};
  return d;
}

// Fraction of positions (first `rows` query rows) where b's top-1 equals a's, and where labels agree.
void agreement(const cnn_core::PatchMatches& a, const cnn_core::PatchMatches& b, int64_t rows,
               const npy::Array* labels, double* same_match, double* same_label) {
  int64_t same = 0, lab = 0, n = rows * a.w;
  for (int64_t q = 0; q < n; ++q) {
    const int64_t i = q * a.k, j = q * b.k;
    same += a.image[i] == b.image[j] && a.y[i] == b.y[j] && a.x[i] == b.x[j];
    if (labels && b.image[j] >= 0) {
      const int64_t lh = labels->shape[1], lw = labels->shape[2];
      lab += labels->bytes[(a.image[i] * lh + a.y[i]) * lw + a.x[i]] ==
             labels->bytes[(b.image[j] * lh + b.y[j]) * lw + b.x[j]];
    }
  }
  *same_match = double(same) / n;
  *same_label = labels ? double(lab) / n : -1;
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt{{"h", "128"},        {"w", "128"},       {"c", "128"},
                                         {"kernel", "4"},     {"n", "4"},         {"threads", "2"},
                                         {"flat_rows", "8"},  {"flat_db", "1"},   {"shortlist", "4"},
                                         {"coarse_factor", "4"}, {"coarse_kernel", "1"}, {"coarse_k", "8"},
                                         {"margin", "1"},     {"seed", "0"}};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    const auto eq = a.find('=');
    if (a.rfind("--", 0) != 0 || eq == std::string::npos) {
      std::fprintf(stderr, "usage: %s --flag=value ... (see the source header)\n", argv[0]);
      return 2;
    }
    opt[a.substr(2, eq - 2)] = a.substr(eq + 1);
  }
  auto I = [&](const char* k) { return static_cast<int64_t>(std::stoll(opt.at(k))); };
  try {
    if (opt.count("blas") && !cnn_core::set_blas_library(opt["blas"]))
      throw std::runtime_error("--blas=" + opt["blas"] + ": no OpenBLAS cblas_sgemm found there");
    std::mt19937_64 rng(I("seed"));
    Data q, db, qc, dbc, qg, dbg;
    npy::Array labels;
    const bool have_labels = opt.count("labels") > 0;
    if (opt.count("query")) {
      q = from_npy(opt["query"]);
      db = from_npy(opt["database"]);
      if (have_labels) labels = npy::load(opt["labels"]);
    } else {
      q = generated({I("h"), I("w"), I("c")}, rng);
      db = generated({I("n"), I("h"), I("w"), I("c")}, rng);
    }
    qc = opt.count("query_coarse") ? from_npy(opt["query_coarse"]) : pooled(q.t, I("coarse_factor"), false);
    dbc = opt.count("db_coarse") ? from_npy(opt["db_coarse"]) : pooled(db.t, I("coarse_factor"), false);
    qg = opt.count("query_global") ? from_npy(opt["query_global"]) : pooled(q.t, 1, true);
    dbg = opt.count("db_global") ? from_npy(opt["db_global"]) : pooled(db.t, 1, true);

    const int64_t H = q.t.shape[0], W = q.t.shape[1], C = q.t.shape[2], N = db.t.shape[0];
    const int K = static_cast<int>(I("kernel")), threads = static_cast<int>(I("threads"));
    const int64_t D = int64_t(K) * K * C, M = db.t.shape[1] * db.t.shape[2];
    std::printf("%s\nquery %lldx%lld, C=%lld, K=%d (D=%lld), database N=%lld of %lldx%lld, threads=%d\n",
                cnn_core::build_info().c_str(), (long long)H, (long long)W, (long long)C, K, (long long)D,
                (long long)N, (long long)db.t.shape[1], (long long)db.t.shape[2], threads);

    // Flat exact on the first flat_rows query rows against the first flat_db images, extrapolated.
    const int64_t fr = std::min(I("flat_rows"), H), fdb = std::min(I("flat_db"), N);
    Data qsub;
    qsub.t = q.t;
    qsub.t.shape = {fr, W, C};
    std::vector<int64_t> sub_rows;
    for (int64_t i = 0; i < fdb; ++i) sub_rows.push_back(i);
    double t0 = now();
    const auto flat = cnn_core::patch_topk_flat(qsub.t, db.t, sub_rows, K, 1, threads);
    const double t_flat = now() - t0;
    const double flat_flops = 2.0 * fr * W * fdb * M * D;
    t0 = now();
    const auto shift_sub = cnn_core::patch_topk(qsub.t, db.t, sub_rows, K, 1, threads);
    const double t_shift_sub = now() - t0;
    double same, same_lab;
    agreement(flat, shift_sub, fr, have_labels ? &labels : nullptr, &same, &same_lab);
    int64_t close = 0;
    for (int64_t i = 0; i < fr * W; ++i) close += std::abs(flat.similarity[i] - shift_sub.similarity[i]) <= 1e-5f;
    const double scale = double(H) / fr * double(N) / fdb;
    std::printf("flat exact      : %.3f s per query image (extrapolated from %lld rows x %lld images), %.1f GFLOP/s\n",
                t_flat * scale, (long long)fr, (long long)fdb, flat_flops / t_flat * 1e-9);
    std::printf("shift-sum exact : %.3f s per query image (same subset), %.1f flat-equivalent GFLOP/s, %.1fx faster than flat;"
                " top-1 same match %.4f, similarity within 1e-5 %.4f\n",
                t_shift_sub * scale, flat_flops / t_shift_sub * 1e-9, t_flat / t_shift_sub, same,
                double(close) / (fr * W));

    t0 = now();
    const auto exact = cnn_core::patch_topk(q.t, db.t, {}, K, 1, threads);
    const double t_exact = now() - t0;
    std::printf("shift-sum exact : %.3f s per query image (full run, all %lld images)\n", t_exact, (long long)N);

    cnn_core::HierarchicalParams p;
    p.kernel_fine = K;
    p.kernel_coarse = static_cast<int>(I("coarse_kernel"));
    p.shortlist = std::min(I("shortlist"), N);
    p.coarse_k = I("coarse_k");
    p.margin = static_cast<int>(I("margin"));
    p.threads = threads;
    t0 = now();
    const auto hier = cnn_core::hierarchical(q.t, db.t, qc.t, dbc.t, qg.t, dbg.t, {}, p);
    const double t_hier = now() - t0;
    agreement(exact, hier, H, have_labels ? &labels : nullptr, &same, &same_lab);
    std::printf("hierarchical    : %.3f s per query image (S=%lld, coarse_k=%lld, margin=%d), %.1fx faster than exact;"
                " top-1 same match %.4f",
                t_hier, (long long)p.shortlist, (long long)p.coarse_k, p.margin, t_exact / t_hier, same);
    if (have_labels) std::printf(", same label %.4f", same_lab);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compnn_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
