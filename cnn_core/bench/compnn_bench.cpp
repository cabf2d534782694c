// compnn_bench: times flat exact, shift-sum exact and hierarchical search on generated (i.i.d.) or
// loaded (.npy) feature maps, and reports agreement with the exact top-1. `compnn_bench --help` lists
// the flags (the table kFlags below); every flag is --name=value.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cerrno>
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

struct Flag {
  const char* name;
  const char* fallback;  // default value; nullptr: no default (optional)
  const char* help;
};

const Flag kFlags[] = {
    {"h", "128", "query map height (generated data)"},
    {"w", "128", "query map width (generated data)"},
    {"c", "128", "channels (generated data)"},
    {"n", "4", "database images (generated data)"},
    {"kernel", "4", "patch kernel K of the fine search"},
    {"threads", "2", "worker threads (capped at min(4 x hardware threads, 256))"},
    {"flat_rows", "8", "query rows timed for the flat search (extrapolated to the whole query)"},
    {"flat_db", "1", "database images searched by the flat search"},
    {"shortlist", "4", "hierarchical: images kept by the global descriptor"},
    {"coarse_factor", "4", "hierarchical: average-pooling factor making the coarse maps"},
    {"coarse_kernel", "1", "hierarchical: patch kernel of the coarse search"},
    {"coarse_k", "8", "hierarchical: coarse candidates per coarse position (-1: no coarse stage)"},
    {"margin", "1", "hierarchical: fine positions added around each coarse candidate's region"},
    {"seed", "0", "seed of the generated data"},
    {"blas", nullptr, "path of an OpenBLAS shared library for the GEMMs (default: Eigen)"},
    {"query", nullptr, "query map (H, W, C) .npy, float32/float16, instead of generated data"},
    {"database", nullptr, "database maps (N, H, W, C) .npy (with --query)"},
    {"labels", nullptr, "database labels (N, H, W) uint8 .npy: also report same-label agreement"},
    {"query_coarse", nullptr, "coarse query map .npy (default: pooled --query)"},
    {"db_coarse", nullptr, "coarse database maps .npy (default: pooled --database)"},
    {"query_global", nullptr, "global query descriptor .npy (default: channel means)"},
    {"db_global", nullptr, "global database descriptors .npy (default: channel means)"},
};

void usage(FILE* out, const char* prog) {
  std::fprintf(out, "usage: %s [--flag=value ...]\n"
               "Times flat exact, shift-sum exact and hierarchical patch search; prints agreement with exact.\n\n",
               prog);
  for (const Flag& f : kFlags) {
    const std::string name = std::string("--") + f.name + "=" + (f.fallback ? f.fallback : "PATH");
    std::fprintf(out, "  %-22s %s\n", name.c_str(), f.help);
  }
}

// Parses --name=value arguments into opt (defaults first). Returns false after printing the problem.
bool parse_args(int argc, char** argv, std::map<std::string, std::string>& opt) {
  for (const Flag& f : kFlags)
    if (f.fallback) opt[f.name] = f.fallback;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string name = a.rfind("--", 0) == 0 ? a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2) : "";
    bool known = false;
    for (const Flag& f : kFlags) known |= name == f.name;
    if (!known || eq == std::string::npos) {
      std::fprintf(stderr, "compnn_bench: %s: %s (--help lists the flags)\n", a.c_str(),
                   known ? "expected --flag=value" : "unknown flag");
      return false;
    }
    opt[name] = a.substr(eq + 1);
  }
  return true;
}

// Integer value of flag `name`; throws naming the flag when it is not a whole base-10 integer.
int64_t int_flag(const std::map<std::string, std::string>& opt, const char* name) {
  const std::string& v = opt.at(name);
  errno = 0;
  char* end = nullptr;
  const long long x = v.empty() ? 0 : std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno == ERANGE)
    throw std::invalid_argument(std::string("--") + name + "=" + v + ": expected an integer");
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") {
      usage(stdout, argv[0]);
      return 0;
    }
  std::map<std::string, std::string> opt;
  if (!parse_args(argc, argv, opt)) return 2;
  auto I = [&](const char* k) { return int_flag(opt, k); };
  // Malformed numbers are usage errors (exit 2), named by their flag, before any work starts.
  try {
    for (const Flag& f : kFlags)
      if (f.fallback) I(f.name);
    for (const char* f : {"h", "w", "c", "n", "coarse_factor", "flat_rows", "flat_db"})
      if (I(f) < 1) throw std::invalid_argument(std::string("--") + f + "=" + opt[f] + ": must be >= 1");
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "compnn_bench: %s\n", e.what());
    return 2;
  }
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

    if (q.t.shape.size() != 3 || db.t.shape.size() != 4)
      throw std::invalid_argument("--query must be (H, W, C) and --database (N, H, W, C)");
    if (have_labels && (labels.descr != "|u1" || labels.shape.size() != 3 || labels.shape[0] != db.t.shape[0] ||
                        labels.shape[1] != db.t.shape[1] || labels.shape[2] != db.t.shape[2]))
      throw std::invalid_argument("--labels=" + opt["labels"] + ": expected uint8 (N, H, W) like --database");
    const int64_t H = q.t.shape[0], W = q.t.shape[1], C = q.t.shape[2], N = db.t.shape[0];
    const int64_t K = I("kernel"), threads = I("threads");
    const int64_t D = K * K * C, M = db.t.shape[1] * db.t.shape[2];
    std::printf("%s\nquery %lldx%lld, C=%lld, K=%lld (D=%lld), database N=%lld of %lldx%lld, threads=%lld\n",
                cnn_core::build_info().c_str(), (long long)H, (long long)W, (long long)C, (long long)K,
                (long long)D, (long long)N, (long long)db.t.shape[1], (long long)db.t.shape[2],
                (long long)threads);

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
    p.kernel_coarse = I("coarse_kernel");
    p.shortlist = std::min(I("shortlist"), N);
    p.coarse_k = I("coarse_k");
    p.margin = I("margin");
    p.threads = threads;
    t0 = now();
    const auto hier = cnn_core::hierarchical(q.t, db.t, qc.t, dbc.t, qg.t, dbg.t, {}, p);
    const double t_hier = now() - t0;
    agreement(exact, hier, H, have_labels ? &labels : nullptr, &same, &same_lab);
    std::printf("hierarchical    : %.3f s per query image (S=%lld, coarse_k=%lld, margin=%lld), %.1fx faster than exact;"
                " top-1 same match %.4f",
                t_hier, (long long)p.shortlist, (long long)p.coarse_k, (long long)p.margin, t_exact / t_hier, same);
    if (have_labels) std::printf(", same label %.4f", same_lab);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compnn_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
