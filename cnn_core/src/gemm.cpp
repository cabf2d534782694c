// The one GEMM shape cnn_core needs, C = A·Bᵀ (row-major float32), through Eigen or, once
// set_blas_library() has loaded one, through an OpenBLAS cblas_sgemm (e.g. the scipy-openblas32
// wheel), which is about 1.5x faster than Eigen 3.4 here. BLAS runs single-threaded: cnn_core's own
// workers supply the parallelism, in fixed-shape blocks, so results do not depend on the thread count.
#include <dlfcn.h>

#include <Eigen/Core>
#include <atomic>
#include <mutex>

#include "internal.hpp"

namespace cnn_core {

namespace {
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);
std::atomic<Sgemm> g_sgemm{nullptr};
std::string g_backend = "Eigen";
std::mutex g_mutex;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values
}  // namespace

bool set_blas_library(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (path.empty()) {
    g_sgemm.store(nullptr);
    g_backend = "Eigen";
    return true;
  }
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  for (const char* prefix : {"scipy_", ""}) {
    auto gemm = reinterpret_cast<Sgemm>(dlsym(h, (std::string(prefix) + "cblas_sgemm").c_str()));
    auto set_threads =
        reinterpret_cast<void (*)(int)>(dlsym(h, (std::string(prefix) + "openblas_set_num_threads").c_str()));
    if (gemm && set_threads) {
      set_threads(1);
      g_sgemm.store(gemm);
      g_backend = "OpenBLAS (" + path + ")";
      return true;
    }
  }
  return false;
}

std::string blas_backend() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_backend;
}

namespace detail {

void gemm_nt(const float* a, int64_t m, int64_t lda, const float* b, int64_t n, int64_t ldb, int64_t k, float* c,
             int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (Sgemm f = g_sgemm.load()) {
    f(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.f, a,
      static_cast<int>(lda), b, static_cast<int>(ldb), 0.f, c, static_cast<int>(ldc));
    return;
  }
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Mat, 0, Stride> A(a, m, k, Stride(lda)), B(b, n, k, Stride(ldb));
  Eigen::Map<Mat, 0, Stride> C(c, m, n, Stride(ldc));
  C.noalias() = A * B.transpose();
}

}  // namespace detail
}  // namespace cnn_core
