// pybind11 module compnn_py._core: thin numpy views over cnn_core. Arrays are borrowed, never
// copied (they must be C-contiguous float32/float16; compnn_py.match checks and explains), and the
// GIL is released while C++ works.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cnn_core/matcher.hpp"

namespace py = pybind11;
using cnn_core::DType;
using cnn_core::Tensor;

namespace {

Tensor view(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  Tensor t;
  if (dt.kind() == 'f' && dt.itemsize() == 4)
    t.dtype = DType::F32;
  else if (dt.kind() == 'f' && dt.itemsize() == 2)
    t.dtype = DType::F16;
  else
    throw py::type_error(std::string(name) + ": expected float32 or float16, got " + std::string(py::str(dt)));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
  t.data = a.data();
  for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(a.shape(i));
  return t;
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> out(shape);
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::tuple matches_tuple(const cnn_core::PatchMatches& m) {
  std::vector<py::ssize_t> s{m.h, m.w, m.k};
  return py::make_tuple(to_array(m.image, s), to_array(m.y, s), to_array(m.x, s), to_array(m.similarity, s));
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "C++ core of compnn: exact, shift-sum patch and hierarchical cosine nearest-neighbour search";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::invalid_argument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  m.def(
      "exact",
      [](const py::array& q, const py::array& d, std::vector<int64_t> rows, int k, int threads) {
        const Tensor qt = view(q, "queries"), dt = view(d, "database");
        const int64_t Q = qt.shape.empty() ? 0 : qt.shape[0];
        std::vector<int64_t> idx(Q * k);
        std::vector<float> sim(Q * k);
        {
          py::gil_scoped_release release;
          cnn_core::exact_topk(qt, dt, rows, k, threads, idx.data(), sim.data());
        }
        return py::make_tuple(to_array(idx, {Q, k}), to_array(sim, {Q, k}));
      },
      py::arg("queries"), py::arg("database"), py::arg("rows"), py::arg("k"), py::arg("threads"));

  m.def(
      "patches",
      [](const py::array& q, const py::array& d, std::vector<int64_t> rows, int kernel, int k, int threads,
         bool flat) {
        const Tensor qt = view(q, "query"), dt = view(d, "database");
        cnn_core::PatchMatches r;
        {
          py::gil_scoped_release release;
          r = flat ? cnn_core::patch_topk_flat(qt, dt, rows, kernel, k, threads)
                   : cnn_core::patch_topk(qt, dt, rows, kernel, k, threads);
        }
        return matches_tuple(r);
      },
      py::arg("query"), py::arg("database"), py::arg("rows"), py::arg("kernel"), py::arg("k"), py::arg("threads"),
      py::arg("flat") = false);

  m.def(
      "hierarchical",
      [](const py::array& qf, const py::array& dbf, const py::array& qc, const py::array& dbc, const py::array& qg,
         const py::array& dbg, std::vector<int64_t> rows, int kernel_fine, int kernel_coarse, int64_t shortlist,
         int64_t coarse_k, int margin, int k, int threads) {
        const Tensor a = view(qf, "query_fine"), b = view(dbf, "db_fine"), c = view(qc, "query_coarse"),
                     d = view(dbc, "db_coarse"), e = view(qg, "query_global"), f = view(dbg, "db_global");
        cnn_core::HierarchicalParams p;
        p.kernel_fine = kernel_fine;
        p.kernel_coarse = kernel_coarse;
        p.shortlist = shortlist;
        p.coarse_k = coarse_k;
        p.margin = margin;
        p.k = k;
        p.threads = threads;
        cnn_core::PatchMatches r;
        {
          py::gil_scoped_release release;
          r = cnn_core::hierarchical(a, b, c, d, e, f, rows, p);
        }
        return matches_tuple(r);
      },
      py::arg("query_fine"), py::arg("db_fine"), py::arg("query_coarse"), py::arg("db_coarse"),
      py::arg("query_global"), py::arg("db_global"), py::arg("rows"), py::arg("kernel_fine"),
      py::arg("kernel_coarse"), py::arg("shortlist"), py::arg("coarse_k"), py::arg("margin"), py::arg("k"),
      py::arg("threads"));

  m.def("set_blas_library", &cnn_core::set_blas_library, py::arg("path"),
        "Route GEMMs through the OpenBLAS at path ('' = Eigen); False if it cannot be loaded");
  m.def("blas_backend", &cnn_core::blas_backend);
  m.def("build_info", &cnn_core::build_info, "Eigen version and SIMD paths compiled in");
}
