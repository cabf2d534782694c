// cnn_core public API: exact cosine top-k search over descriptors, over K×K patches of feature maps
// (shift-sum), and the hierarchical prune (global shortlist -> coarse patches -> fine patches).
//
// Conventions shared by every search:
//  * similarity is cosine computed in float32; a zero-norm vector has similarity 0 to everything;
//  * results are sorted best first under the total order (similarity desc, database index asc), so
//    ties go to the lowest database index and results are identical for any thread count;
//  * inputs are float32 or float16 (IEEE half, raw bits), row-major / NHWC, never copied whole;
//  * non-finite values met in the searched data raise std::invalid_argument naming the argument.
#pragma once

#include <cstdint>
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

// Flat top-k: queries (Q, D) against database (M, D), optionally restricted to the database rows in
// `rows` (store rows, unique, any order). Writes out_index (Q*k, store row) and out_sim (Q*k).
void exact_topk(const Tensor& queries, const Tensor& database, const std::vector<int64_t>& rows,
                int k, int threads, int64_t* out_index, float* out_sim);

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
                        int kernel, int k, int threads);

// Same result as patch_topk, by flattening every patch into a D = K*K*C vector and calling the flat
// search. Costs K^2 times more multiply-adds: a reference and a benchmark baseline.
PatchMatches patch_topk_flat(const Tensor& query, const Tensor& database,
                             const std::vector<int64_t>& rows, int kernel, int k, int threads);

struct HierarchicalParams {
  int kernel_fine = 4, kernel_coarse = 4;
  int64_t shortlist = 10;  // S images kept by the global descriptor
  int64_t coarse_k = 8;    // coarse candidates per coarse query position (<= 0: all)
  int margin = 1;          // fine positions added around each coarse candidate's fine region
  int k = 1;
  int threads = 1;
};

// Fine search restricted to the fine regions under coarse candidates. `coarse` holds the coarse
// matches of every coarse query position (store rows); fine position (y, x) belongs to coarse cell
// (y*Hc/H, x*Wc/W), and coarse database cell (cy, cx) covers the fine rows y' with y'*Hc'/H' == cy
// (same for x), widened by `margin`. Positions with fewer than k candidates are padded with
// image = y = x = -1 and similarity = -inf.
PatchMatches pruned_fine_topk(const Tensor& query_fine, const Tensor& db_fine, const PatchMatches& coarse,
                              int64_t db_coarse_h, int64_t db_coarse_w, int kernel, int margin, int k,
                              int threads);

// The whole hierarchy. `rows` restricts every stage to those store rows (empty = all).
PatchMatches hierarchical(const Tensor& query_fine, const Tensor& db_fine, const Tensor& query_coarse,
                          const Tensor& db_coarse, const Tensor& query_global, const Tensor& db_global,
                          const std::vector<int64_t>& rows, const HierarchicalParams& params);

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

}  // namespace cnn_core
