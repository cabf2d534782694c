// pybind11 module compnn_py._core: thin numpy views over cnn_core. Arrays are borrowed, never copied
// (they must be C-contiguous native float32/float16; np.memmap included), and the GIL is released while
// C++ works. This file checks only what is about Python objects (array or not, dtype, contiguity,
// integer or not, fits in 64 bits); every other check lives in cnn_core, which names the argument.
// Ctrl-C: searches called from the main thread poll PyErr_CheckSignals between work units (briefly
// taking the GIL back), stop, and re-raise what the signal handler raised (KeyboardInterrupt).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <utility>

#include "cnn_core/matcher.hpp"

namespace py = pybind11;
using cnn_core::DType;
using cnn_core::Tensor;

namespace {

Tensor view(const py::object& o, const char* name) {
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + ": expected a numpy array, got " +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  const auto a = py::reinterpret_borrow<py::array>(o);
  const py::dtype dt = a.dtype();
  Tensor t;
  const bool native = dt.attr("isnative").cast<bool>();
  if (native && dt.kind() == 'f' && dt.itemsize() == 4)
    t.dtype = DType::F32;
  else if (native && dt.kind() == 'f' && dt.itemsize() == 2)
    t.dtype = DType::F16;
  else
    throw py::type_error(std::string(name) + ": expected float32 or float16, got " + std::string(py::str(dt)));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array (np.ascontiguousarray makes one)");
  t.data = a.data();
  for (py::ssize_t i = 0; i < a.ndim(); ++i) t.shape.push_back(a.shape(i));
  return t;
}

// A Python int (or numpy integer, not bool) as int64; ranges are cnn_core's to check.
int64_t int_arg(const py::handle& o, const char* name) {
  const bool is_bool = PyBool_Check(o.ptr()) || py::isinstance(o, py::module_::import("numpy").attr("bool_"));
  if (is_bool || !PyIndex_Check(o.ptr()))
    throw py::type_error(std::string(name) + ": expected an integer, got " +
                         py::str(py::type::of(o).attr("__name__")).cast<std::string>());
  const auto i = py::reinterpret_steal<py::object>(PyNumber_Index(o.ptr()));
  if (!i) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
  if (overflow)
    throw py::value_error(std::string(name) + ": " + py::str(i).cast<std::string>() + " does not fit in 64 bits");
  return v;
}

// rows: None (every row) or a non-empty 1-D integer array-like of store rows.
std::vector<int64_t> rows_arg(const py::object& o) {
  if (o.is_none()) return {};
  const py::array a = py::array::ensure(o);
  if (!a) throw py::error_already_set();
  const char kind = a.dtype().kind();
  if (a.ndim() != 1 || (a.size() && kind != 'i' && kind != 'u'))
    throw py::type_error("rows: expected a 1-D integer array, got dtype " + std::string(py::str(a.dtype())) +
                         " shape " + py::str(py::tuple(a.attr("shape"))).cast<std::string>());
  if (a.size() == 0) throw py::value_error("rows: is empty");
  if (kind == 'u' && a.dtype().itemsize() == 8 &&
      a.attr("max")().cast<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    throw py::value_error("rows: " + py::str(a.attr("max")()).cast<std::string>() + " does not fit in 64 bits");
  const auto r = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!r) throw py::error_already_set();
  return std::vector<int64_t>(r.data(), r.data() + r.size());
}

bool on_main_thread() {
  const py::module_ threading = py::module_::import("threading");
  return threading.attr("current_thread")().is(threading.attr("main_thread")());
}

// Runs fn(cancel) without the GIL. On the main thread, cancel re-takes the GIL to run pending signal
// handlers; when one raised, the search stops and its exception (KeyboardInterrupt) propagates.
template <class F>
auto without_gil(F&& fn) {
  cnn_core::Cancel cancel;
  if (on_main_thread())
    cancel = [] {
      py::gil_scoped_acquire gil;
      return PyErr_CheckSignals() != 0;  // the handler's exception stays set on this thread
    };
  try {
    py::gil_scoped_release release;
    return fn(cancel);
  } catch (const cnn_core::Cancelled&) {
    if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    throw py::error_already_set();
  }
}

// A C++ progress callback calling the Python callable `fn(done, total)` (None: no callback). It runs on
// the thread that started the search, GIL re-taken; an exception it raises stops the search and
// propagates (through Cancelled, which without_gil turns back into the pending Python error).
cnn_core::Progress progress_arg(const py::object& fn) {
  if (fn.is_none()) return {};
  if (!PyCallable_Check(fn.ptr()))
    throw py::type_error("progress: expected a callable or None, got " +
                         py::str(py::type::of(fn).attr("__name__")).cast<std::string>());
  return [fn](int64_t done, int64_t total) {
    py::gil_scoped_acquire gil;
    try {
      fn(done, total);
    } catch (py::error_already_set& e) {
      e.restore();
      throw cnn_core::Cancelled();
    }
  };
}

// A numpy array that takes over the vector's buffer (no copy of the results).
template <class T>
py::array_t<T> take(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  if (v.empty()) return py::array_t<T>(shape);
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule base(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, owner->data(), base);
}

py::tuple matches_tuple(cnn_core::PatchMatches&& m) {
  std::vector<py::ssize_t> s{m.h, m.w, m.k};
  return py::make_tuple(take(std::move(m.image), s), take(std::move(m.y), s), take(std::move(m.x), s),
                        take(std::move(m.similarity), s));
}

py::tuple neighbours_tuple(cnn_core::Neighbours&& n) {
  std::vector<py::ssize_t> s{n.rows, n.k};
  return py::make_tuple(take(std::move(n.index), s), take(std::move(n.similarity), s));
}

// ---- PatchIndex (the provenance explorer's prepared database) --------------------------------------

// positions: a (P, 2) integer array-like of (y, x) query positions -> flat {y0, x0, y1, x1, ...}.
std::vector<int64_t> positions_arg(const py::object& o) {
  const py::array a = py::array::ensure(o);
  if (!a) throw py::error_already_set();
  const char kind = a.dtype().kind();
  if (a.ndim() != 2 || a.shape(1) != 2 || (a.size() && kind != 'i' && kind != 'u'))
    throw py::type_error("positions: expected a (P, 2) integer array of (y, x), got dtype " +
                         std::string(py::str(a.dtype())) + " shape " + py::str(py::tuple(a.attr("shape"))).cast<std::string>());
  const auto r = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!r) throw py::error_already_set();
  return std::vector<int64_t>(r.data(), r.data() + r.size());
}

// What bounded_patch_topk did, as the dict match.hierarchical(stats=...) and match.patches(stats=...) fill.
py::dict stats_dict(const cnn_core::BoundStats& st) {
  py::dict stats;
  stats["pairs"] = st.pairs;
  stats["pairs_scored"] = st.pairs_scored;
  stats["pilot_fraction"] = st.pilot_fraction;
  stats["cell_rho_median"] = st.cell_rho_median;
  stats["used_bounds"] = st.used_bounds;
  stats["filter"] = st.filter;
  if (st.pairs_rescored >= 0) stats["pairs_rescored"] = st.pairs_rescored;
  return stats;
}

// The index borrows the database's memory: the Python object keeps the array alive.
struct PyPatchIndex {
  py::object database;
  std::unique_ptr<cnn_core::PatchIndex> index;
};

void bind_patch_index(py::module_& m) {
  py::class_<PyPatchIndex>(m, "PatchIndex")
      .def(py::init([](const py::object& d, const py::object& kernel, const py::object& threads) {
             const Tensor dt = view(d, "database");
             const int64_t K = int_arg(kernel, "kernel"), t = int_arg(threads, "threads");
             auto index = without_gil([&](const cnn_core::Cancel& c) {
               return std::make_unique<cnn_core::PatchIndex>(dt, K, t, c);
             });
             return PyPatchIndex{d, std::move(index)};
           }),
           py::arg("database"), py::arg("kernel"), py::arg("threads"))
      .def(
          "search",
          [](const PyPatchIndex& self, const py::object& q, const py::object& positions, const py::object& rows,
             const py::object& k, const py::object& threads, bool per_image) {
            const Tensor qt = view(q, "query_map");
            const auto pos = positions_arg(positions);
            const auto r = rows_arg(rows);
            const int64_t kk = int_arg(k, "k"), t = int_arg(threads, "threads");
            cnn_core::PatchMatches images;
            auto top = without_gil([&](const cnn_core::Cancel& c) {
              return self.index->search(qt, pos, r, kk, t, c, per_image ? &images : nullptr);
            });
            const py::ssize_t P = top.h;
            std::vector<py::ssize_t> s{P, top.k}, si{P, images.w};
            auto tup = [](cnn_core::PatchMatches&& m, const std::vector<py::ssize_t>& shape) {
              return py::make_tuple(take(std::move(m.image), shape), take(std::move(m.y), shape),
                                    take(std::move(m.x), shape), take(std::move(m.similarity), shape));
            };
            py::object tail = py::none();
            if (per_image) tail = tup(std::move(images), si);
            return py::make_tuple(tup(std::move(top), s), tail);
          },
          py::arg("query_map"), py::arg("positions"), py::arg("rows"), py::arg("k"), py::arg("threads"),
          py::arg("per_image") = false,
          "((image, y, x, similarity) arrays (P, k), per-image best (P, R) arrays or None)")
      .def_property_readonly("shape", [](const PyPatchIndex& self) {
        return py::make_tuple(self.index->n(), self.index->h(), self.index->w(), self.index->c());
      })
      .def_property_readonly("kernel", [](const PyPatchIndex& self) { return self.index->kernel(); })
      .def_property_readonly("prepared_bytes", [](const PyPatchIndex& self) { return self.index->prepared_bytes(); });
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
      [](const py::object& q, const py::object& d, const py::object& rows, const py::object& k,
         const py::object& threads) {
        const Tensor qt = view(q, "queries"), dt = view(d, "database");
        const auto r = rows_arg(rows);
        const int64_t kk = int_arg(k, "k"), t = int_arg(threads, "threads");
        return neighbours_tuple(
            without_gil([&](const cnn_core::Cancel& c) { return cnn_core::exact_topk(qt, dt, r, kk, t, c); }));
      },
      py::arg("queries"), py::arg("database"), py::arg("rows"), py::arg("k"), py::arg("threads"),
      "(index int64 (Q, k), similarity float32 (Q, k)) of queries (Q, D) against database (M, D)");

  m.def(
      "global_shortlist",
      [](const py::object& q, const py::object& d, const py::object& rows, const py::object& S,
         const py::object& threads) {
        const Tensor qt = view(q, "query"), dt = view(d, "database");
        const auto r = rows_arg(rows);
        const int64_t s = int_arg(S, "S"), t = int_arg(threads, "threads");
        return neighbours_tuple(
            without_gil([&](const cnn_core::Cancel& c) { return cnn_core::global_topk(qt, dt, r, s, t, c); }));
      },
      py::arg("query"), py::arg("database"), py::arg("rows"), py::arg("S"), py::arg("threads"),
      "(index int64 (1, S), similarity float32 (1, S)) of one query of any shape against database (N, ...)");

  m.def(
      "patches",
      [](const py::object& q, const py::object& d, const py::object& rows, const py::object& kernel,
         const py::object& k, const py::object& threads, bool flat, const py::object& progress) {
        const Tensor qt = view(q, "query"), dt = view(d, "database");
        const auto r = rows_arg(rows);
        const int64_t K = int_arg(kernel, "kernel"), kk = int_arg(k, "k"), t = int_arg(threads, "threads");
        const cnn_core::Progress pr = progress_arg(progress);
        return matches_tuple(without_gil([&](const cnn_core::Cancel& c) {
          cnn_core::ProgressScope scope(pr);
          return flat ? cnn_core::patch_topk_flat(qt, dt, r, K, kk, t, c) : cnn_core::patch_topk(qt, dt, r, K, kk, t, c);
        }));
      },
      py::arg("query"), py::arg("database"), py::arg("rows"), py::arg("kernel"), py::arg("k"), py::arg("threads"),
      py::arg("flat") = false, py::arg("progress") = py::none(),
      "(image, y, x, similarity) arrays (H, W, k) of a patch search; progress(done, total) between work units");

  m.def(
      "bounded_patches",
      [](const py::object& q, const py::object& d, const py::object& rows, const py::object& kernel,
         const py::object& k, const py::object& threads, const py::object& progress) {
        const Tensor qt = view(q, "query"), dt = view(d, "database");
        const auto r = rows_arg(rows);
        const int64_t K = int_arg(kernel, "kernel"), kk = int_arg(k, "k"), t = int_arg(threads, "threads");
        const cnn_core::Progress pr = progress_arg(progress);
        cnn_core::BoundStats st;
        py::tuple m = matches_tuple(without_gil([&](const cnn_core::Cancel& c) {
          cnn_core::ProgressScope scope(pr);
          return cnn_core::bounded_patch_topk(qt, dt, r, K, kk, t, c, &st);
        }));
        return py::make_tuple(m[0], m[1], m[2], m[3], stats_dict(st));
      },
      py::arg("query"), py::arg("database"), py::arg("rows"), py::arg("kernel"), py::arg("k"), py::arg("threads"),
      py::arg("progress") = py::none(),
      "(image, y, x, similarity, stats): patches' result, bit for bit, through the certified fast search "
      "(bounded_patch_topk: the AMX bfloat16 filter for K = 1 where the CPU has it, else bounded cells, else "
      "patches itself)");

  m.def(
      "hierarchical",
      [](const py::object& qf, const py::object& dbf, const py::object& qc, const py::object& dbc,
         const py::object& qg, const py::object& dbg, const py::object& rows, const py::object& kernel_fine,
         const py::object& kernel_coarse, const py::object& shortlist, const py::object& coarse_k,
         const py::object& margin, const py::object& k, const py::object& threads, const std::string& prune,
         const py::object& progress) {
        const Tensor a = view(qf, "query_fine"), b = view(dbf, "db_fine"), c = view(qc, "query_coarse"),
                     d = view(dbc, "db_coarse"), e = view(qg, "query_global"), f = view(dbg, "db_global");
        const auto r = rows_arg(rows);
        cnn_core::HierarchicalParams p;
        p.kernel_fine = int_arg(kernel_fine, "kernel_fine");
        p.kernel_coarse = int_arg(kernel_coarse, "kernel_coarse");
        p.shortlist = int_arg(shortlist, "shortlist");
        p.coarse_k = coarse_k.is_none() ? cnn_core::kNoCoarseStage : int_arg(coarse_k, "coarse_k");
        p.margin = int_arg(margin, "margin");
        p.k = int_arg(k, "k");
        p.threads = int_arg(threads, "threads");
        if (prune != "bounds" && prune != "coarse")
          throw py::value_error("prune: expected 'bounds' or 'coarse', got '" + prune + "'");
        p.prune = prune == "bounds" ? cnn_core::Prune::Bounds : cnn_core::Prune::Coarse;
        const cnn_core::Progress pr = progress_arg(progress);
        cnn_core::BoundStats st;
        py::tuple m = matches_tuple(without_gil([&](const cnn_core::Cancel& cancel) {
          cnn_core::ProgressScope scope(pr);
          return cnn_core::hierarchical(a, b, c, d, e, f, r, p, cancel, &st);
        }));
        return py::make_tuple(m[0], m[1], m[2], m[3], p.prune == cnn_core::Prune::Bounds ? stats_dict(st) : py::dict());
      },
      py::arg("query_fine"), py::arg("db_fine"), py::arg("query_coarse"), py::arg("db_coarse"),
      py::arg("query_global"), py::arg("db_global"), py::arg("rows"), py::arg("kernel_fine"),
      py::arg("kernel_coarse"), py::arg("shortlist"), py::arg("coarse_k"), py::arg("margin"), py::arg("k"),
      py::arg("threads"), py::arg("prune") = "coarse", py::arg("progress") = py::none(),
      "(image, y, x, similarity, stats) of the pruned search (arrays (H, W, k)); prune 'bounds': exact within the "
      "shortlist, pruned by certified bounds (stats: pairs, pairs_scored, pilot_fraction, used_bounds); 'coarse': "
      "the paper's prune (coarse_k None: no coarse stage)");

  m.def("max_threads", &cnn_core::max_threads, "Most worker threads a search uses: min(4 x hardware threads, 256)");
  m.def("set_blas_library", &cnn_core::set_blas_library, py::arg("path"),
        "Route GEMMs through the OpenBLAS at path ('' = Eigen); False if it cannot be loaded");
  m.def("blas_backend", &cnn_core::blas_backend);
  m.def("build_info", &cnn_core::build_info, "Eigen version and SIMD paths compiled in");
  m.def("amx_bf16_ready", &cnn_core::amx_bf16_ready,
        "whether 1x1 bound-pruned searches score pairs in bfloat16 on AMX tiles (CPU, OS, COMPNN_NO_AMX)");
  bind_patch_index(m);
}
