// cnn_core public API: exact cosine top-k search over descriptors, over K×K patches of feature maps
// (shift-sum), and the hierarchical prune (global shortlist -> coarse patches -> fine patches).
//
// Conventions shared by every search:
//  * similarity is cosine computed in float32; a zero vector has similarity 0 to everything. Cosine is
//    scale invariant and so are the results: rows (exact search) and maps (patch search) whose largest
//    |value| lies outside [2^-40, 2^40] are first scaled by a power of two, so values from the smallest
//    float32 subnormal to FLT_MAX neither overflow nor underflow (inside that range nothing is scaled);
//  * results are sorted best first under the total order (similarity desc, database index asc), so
//    ties go to the lowest database index and results are identical for any thread count;
//  * inputs are float32 or float16 (IEEE half, raw bits), row-major / NHWC, never copied whole;
//  * every argument is checked here, the one place for it (the Python binding adds only the checks on
//    Python types): a bad one raises std::invalid_argument whose message starts with the argument's
//    name, e.g. "k: 33 outside [1, 32]"; non-finite values met in the searched data raise the same way
//    ("database: contains NaN or Inf values");
//  * threads: 1 .. 2^31-1; counts above max_threads() run as max_threads(), and when the OS refuses to
//    start a thread the search goes on with the threads that did start (same results);
//  * cancel: when set, the calling thread calls it between work units, at most every ~100 ms; when it
//    returns true the search stops and throws Cancelled (progress: see ProgressScope);
//  * similarities are canonical (double sums of the original values, see internal.hpp): float32 GEMMs
//    only filter candidates, so every search reports the same value for the same pair.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace cnn_core {

enum class DType { F32, F16 };

// A read-only, C-contiguous tensor of float32 or float16 values.
struct Tensor {
  const void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  int64_t size() const;
};

using Cancel = std::function<bool()>;

// Progress of a search: (work units done, work units) of the parallel loop running now, called on the
// thread that started the search, at most every ~100 ms and once at the end of each loop.
using Progress = std::function<void(int64_t done, int64_t total)>;

// While alive, searches started on this thread report to `progress` (nested scopes: the innermost).
class ProgressScope {
 public:
  explicit ProgressScope(Progress progress);
  ~ProgressScope();
  ProgressScope(const ProgressScope&) = delete;
  ProgressScope& operator=(const ProgressScope&) = delete;

 private:
  Progress progress_;
  const Progress* previous_;
};

// Thrown by a search whose Cancel returned true.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("search cancelled") {}
};

// The most worker threads a search uses: min(4 × std::thread::hardware_concurrency(), 256).
int max_threads();

// Largest patch kernel accepted. The shift-sum keeps K ring rows of W × (32+K-1) × 64 floats per worker
// (K = 64, W = 256: 400 MB), so much larger kernels would exhaust memory rather than fail cleanly; the
// networks here use K <= 7.
constexpr int64_t kMaxKernel = 64;

// Flat results: (rows, k) store rows and similarities, best first.
struct Neighbours {
  int64_t rows = 0, k = 0;
  std::vector<int64_t> index;
  std::vector<float> similarity;
};

// Flat top-k: queries (Q, D) against database (M, D), optionally restricted to the database rows in
// `rows` (store rows, unique, any order; empty = all).
Neighbours exact_topk(const Tensor& queries, const Tensor& database, const std::vector<int64_t>& rows, int64_t k,
                      int64_t threads, const Cancel& cancel = {});

// The S database rows closest to one query: query of any shape (flattened), database (N, ...) whose rows
// have the query's size. Result has rows = 1.
Neighbours global_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows, int64_t S,
                       int64_t threads, const Cancel& cancel = {});

// Output of a patch search on the query grid: (H, W, k) arrays, best first.
struct PatchMatches {
  int64_t h = 0, w = 0, k = 0;
  std::vector<int32_t> image, y, x;
  std::vector<float> similarity;
};

// Patch top-k via shift-sums: query (H, W, C) against database (N, H', W', C) maps restricted to
// `rows` (empty = all). Descriptor of position p = the K×K×C window over offsets
// -(K-1)/2 .. K/2 (integer division) around p, zero padded like a TensorFlow 'SAME' convolution
// (for K = 4: offsets -1, 0, 1, 2 in y and in x).
PatchMatches patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                        int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel = {});

// Same result as patch_topk, by flattening every patch into a D = K*K*C vector and calling the flat
// search. Costs K^2 times more multiply-adds: a reference and a benchmark baseline.
PatchMatches patch_topk_flat(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                             int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel = {});

// coarse_k value that skips the coarse stage: the fine search covers every position of the shortlist.
constexpr int64_t kNoCoarseStage = -1;

// How hierarchical() searches the shortlist at the fine layer:
//  * Bounds: exact, pruned by certified cosine bounds (bounded_patch_topk); the result equals
//    patch_topk over the shortlist, so the coarse maps and coarse_k/margin are not used;
//  * Coarse: the paper's prune (coarse candidates, then fine search under them): faster where the
//    bounds cannot prune, but it may miss the best match.
enum class Prune { Bounds, Coarse };

// What bounded_patch_topk did: database positions scored exactly per query position, out of all,
// and whether the bounds were used at all (a pilot block that scores more than kBoundsGiveUp of its pairs
// stops there, and the search is plain exact search; pilot_fraction: the pilots' scored fraction so far).
// `filter`: how pairs were scored before the canonical rescoring, "float32" (GEMM) or "amx_bf16"
// (bfloat16 on AMX tiles, with its certified slack; then pairs_scored counts the pairs of the 32×32 blocks
// multiplied, used_bounds says whether a group bound skipped any block, and pairs_rescored counts the
// pairs the slack let through to the canonical rescoring).
struct BoundStats {
  int64_t pairs = 0, pairs_scored = 0, pairs_rescored = -1;
  double pilot_fraction = 0;
  double cell_rho_median = 1;  // of a sample of cells: their patches' least cosine to the centroid
  bool used_bounds = false;
  std::string filter = "float32";
};

// Whether bounded_patch_topk may score 1×1 patches with bfloat16 on AMX tiles: the CPU has AMX-BF16, the
// OS lets this process use the tiles (both checked once per process), and the environment variable
// COMPNN_NO_AMX is unset or "0" (read on every call).
bool amx_bf16_ready();

// Above this fraction of pairs scored in the pilot blocks, bounded_patch_topk runs patch_topk instead.
constexpr double kBoundsGiveUp = 0.2;

// Exactly patch_topk's result (canonical similarities, ties to the lowest index), searching less: the
// database positions of each row are grouped into G×G cells with a unit centroid and an angular
// radius; for each block of query positions, cells are visited in decreasing order of a certified upper
// bound on the similarity of any of their patches (the cosine of the query-centroid angle less the
// radius, widened by the float32 error), and a cell is skipped once its bound is below the k-th best
// found for every query in the block. A few pilot blocks, spread over the query, measure how much the
// bounds prune; when they leave more than kBoundsGiveUp of the pairs, the search is patch_topk itself.
// Before them, a sample of 64 cells: when their median radius exceeds 30° the search is patch_topk at once
// (no bound rules out such cells; BoundStats::cell_rho_median). A query of fewer than 512 positions is
// searched by patch_topk directly (preparing the database would cost more than it saves).
// With kernel 1 on a CPU with AMX-BF16 (amx_bf16_ready), every pair is instead scored in bfloat16 on
// AMX tiles, at many times float32's rate, and rescored canonically unless a certified bound on the
// bfloat16 error puts it below the k-th best; blocks of 4×8 query and 4×8 database pixels whose cone
// bound rules them out are skipped (cnn_core/src/amx.cpp): the same result again. Then pairs_scored
// counts the pairs of the blocks multiplied and used_bounds says whether a block was skipped.
PatchMatches bounded_patch_topk(const Tensor& query, const Tensor& database, const std::vector<int64_t>& rows,
                                int64_t kernel, int64_t k, int64_t threads, const Cancel& cancel = {},
                                BoundStats* stats = nullptr);

struct HierarchicalParams {
  int64_t kernel_fine = 4, kernel_coarse = 4;
  int64_t shortlist = 10;  // S images kept by the global descriptor
  int64_t coarse_k = 8;    // coarse candidates per coarse query position (kNoCoarseStage: none)
  int64_t margin = 1;      // fine positions added around each coarse candidate's fine region
  int64_t k = 1;
  int64_t threads = 1;
  Prune prune = Prune::Coarse;
};

// Fine search restricted to the fine regions under coarse candidates. `coarse` holds the coarse
// matches of every coarse query position (store rows); fine position (y, x) belongs to coarse cell
// (y*Hc/H, x*Wc/W), and coarse database cell (cy, cx) covers the fine rows y' with y'*Hc'/H' == cy
// (same for x), widened by `margin`. Positions with fewer than k candidates are padded with
// image = y = x = -1 and similarity = -inf.
PatchMatches pruned_fine_topk(const Tensor& query_fine, const Tensor& db_fine, const PatchMatches& coarse,
                              int64_t db_coarse_h, int64_t db_coarse_w, int64_t kernel, int64_t margin, int64_t k,
                              int64_t threads, const Cancel& cancel = {});

// The whole hierarchy. query_global: any shape; db_global (N, ...) with rows of its size. `rows`
// restricts every stage to those store rows (empty = all).
// `stats` (optional) receives the fine stage's BoundStats when params.prune is Prune::Bounds.
PatchMatches hierarchical(const Tensor& query_fine, const Tensor& db_fine, const Tensor& query_coarse,
                          const Tensor& db_coarse, const Tensor& query_global, const Tensor& db_global,
                          const std::vector<int64_t>& rows, const HierarchicalParams& params,
                          const Cancel& cancel = {}, BoundStats* stats = nullptr);

// Convert n float16 values (raw IEEE bits) to float32.
void half_to_float(const uint16_t* src, float* dst, int64_t n);
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);  // round to nearest even; for tests and benchmarks

// Route GEMMs through the cblas_sgemm of the OpenBLAS shared library at `path` (symbols with or
// without the scipy_ prefix); "" goes back to Eigen. Returns false (and keeps the current backend)
// when the library cannot be loaded. Not to be called while a search runs.
bool set_blas_library(const std::string& path);
std::string blas_backend();

// Whether the build uses AVX-512 / F16C paths (for reports).
std::string build_info();

// ---- prepared patch index (appended for the provenance explorer) ---------------------------------

// A database of feature maps (N, H, W, C), float32 or float16, prepared once for many small patch
// searches (a few query positions each): per map its finiteness is checked and its power-of-two scale
// exponent and the inverse norm of every K×K patch ('SAME' zero padding, offsets -(K-1)/2 .. K/2) are
// kept in memory (4 bytes per position). The maps themselves are borrowed, never copied: the caller keeps
// them alive and unchanged while the index is used. A search streams the searched maps once (float16
// converted to float32 on the fly) and returns, for every query position, the exact top-k over every
// position of every searched map: exactly patch_topk's result for those positions (canonical
// similarities, ties to the lowest (row, y, x)), identical for any thread count. search() is const and may
// be called from several threads at once.
class PatchIndex {
 public:
  PatchIndex(const Tensor& database, int64_t kernel, int64_t threads, const Cancel& cancel = {});

  // Top-k for the query positions (y, x) of query (H, W, C) (any H, W; channels C; only the K×K patches
  // of those positions are read, checked for NaN/Inf and, each on its own, rescaled), given flat as
  // positions = {y0, x0, y1, x1, ...}; rows: store rows to search (empty = all). Result h = number of
  // positions, w = 1. With per_row non-null it also receives, per query position and searched row (in
  // `rows` order), that row's best position: h = positions, w = rows searched, k = 1.
  PatchMatches search(const Tensor& query, const std::vector<int64_t>& positions, const std::vector<int64_t>& rows,
                      int64_t k, int64_t threads, const Cancel& cancel = {}, PatchMatches* per_row = nullptr) const;

  int64_t n() const { return n_; }
  int64_t h() const { return h_; }
  int64_t w() const { return w_; }
  int64_t c() const { return c_; }
  int64_t kernel() const { return kernel_; }
  // Bytes the index keeps besides the borrowed maps.
  int64_t prepared_bytes() const;

 private:
  Tensor db_;
  int64_t n_ = 0, h_ = 0, w_ = 0, c_ = 0, kernel_ = 1;
  std::vector<float> inv_norm_;  // (N, H, W) inverse patch norms of the scaled maps (0: zero patch)
  std::vector<int16_t> exponent_;  // per map: values are multiplied by 2^-exponent before use
};

}  // namespace cnn_core
