// fourierft._C: what the Python package needs from the C++ core:
//   - the strict safetensors reader of adapter checkpoints (load_safetensors: checkpoint.py checks a file with it
//     before PEFT reads it) and PEFT's checkpoint names (fourierft/peft_names.h),
//   - the cost model (routes per device, the plan of a layer call, inference caches) and the kernels' switches,
//   - the version the package was built as.
// Config validation is not bound: the Python package checks PEFT's own FourierFTConfig (python/fourierft/config.py)
// and the C++ API has fourierft::FourierFTConfig; both are held to PEFT by the tables in tests/data. The kernels are
// not bound here either: loading this module loads libfourierft.so, whose static initialisers register them as
// torch.ops.fourierft.*.
#include <torch/csrc/utils/pybind.h>  // torch's pybind11 with the at::Tensor type casters

#include <fourierft/io.h>
#include <fourierft/ops.h>
#include <fourierft/peft_names.h>
#include <fourierft/version.h>

#include <c10/util/Exception.h>

namespace py = pybind11;

namespace {

// C++ errors become the Python exceptions PEFT raises for the same mistakes; the message keeps the
// module, adapter and values the C++ side put in, without the C++ backtrace.
void translate_errors(std::exception_ptr error) {
  try {
    if (error) std::rethrow_exception(error);
  } catch (const c10::ValueError& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
  } catch (const c10::IndexError& e) {
    PyErr_SetString(PyExc_KeyError, e.what_without_backtrace());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
  }
}

std::string path_name(fourierft::LinearPath path) {
  switch (path) {
    case fourierft::LinearPath::Spectral: return "spectral";
    case fourierft::LinearPath::Dense: return "dense";
    case fourierft::LinearPath::Folded: return "folded";
    case fourierft::LinearPath::Auto: break;
  }
  return "auto";
}

py::tuple file_to_python(fourierft::safetensors::File file) {
  py::dict tensors;
  for (auto& [name, tensor] : file.tensors) tensors[py::str(name)] = std::move(tensor);
  py::dict metadata;
  for (auto& [key, value] : file.metadata) metadata[py::str(key)] = value;
  return py::make_tuple(tensors, metadata);
}

// Checkpoints: the strict safetensors reader and PEFT's checkpoint names (one home: src/peft_names.cpp).
void bind_checkpoints(py::module_& m) {
  m.def(
      "load_safetensors",
      [](const std::string& path) {
        fourierft::safetensors::File file;
        {
          py::gil_scoped_release release;
          file = fourierft::safetensors::load(path);
        }
        return file_to_python(std::move(file));
      },
      py::arg("path"), "Reads a safetensors file with strict validation: (tensors, metadata).");
  m.attr("PEFT_PREFIX") = fourierft::peft_names::kPrefix;
  m.attr("PEFT_SPECTRUM") = fourierft::peft_names::kSpectrum;
  m.def("peft_spectrum_key", &fourierft::peft_names::spectrum_key, py::arg("module_path"),
        "PEFT's checkpoint name of a module's spectrum: 'base_model.model.<module_path>.fourierft_spectrum'.");
  m.def(
      "parse_peft_key",
      [](const std::string& key, const std::string& file) {
        const auto parsed = fourierft::peft_names::parse_key(key, file);
        using Kind = fourierft::peft_names::Key::Kind;
        const char* kind = parsed.kind == Kind::Spectrum ? "spectrum"
                           : parsed.kind == Kind::WrapperCopy ? "wrapper_copy" : "parameter";
        return py::make_tuple(kind, parsed.path);
      },
      py::arg("key"), py::arg("file") = "<adapter file>",
      "What a key of a PEFT adapter file names: ('spectrum', module path), ('parameter', the base model's "
      "parameter name) or ('wrapper_copy', the parameter a modules_to_save wrapper copies); ValueError without "
      "PEFT's prefix.");
  m.def("peft_module_name", &fourierft::peft_names::peft_module_name, py::arg("name"),
        "A module-tree name as PEFT writes it in a file (base_layer / original_module / modules_to_save.<adapter> "
        "segments dropped).");
}

// The kernels' process-wide switches (routes, caches, keep_delta) and the fingerprint the caches key on.
void bind_switches(py::module_& m) {
  m.def("set_generic_kernels", &fourierft::set_generic_kernels, py::arg("enabled"),
        "CPU tensors run the device-generic implementation (the one registered for CUDA) instead of the fused "
        "CPU kernels.");
  m.def("generic_kernels", &fourierft::generic_kernels, "Whether set_generic_kernels(True) is in effect.");
  m.def(
      "set_linear_path",
      [](const std::string& path) {
        if (path == "auto") fourierft::set_linear_path(fourierft::LinearPath::Auto);
        else if (path == "spectral") fourierft::set_linear_path(fourierft::LinearPath::Spectral);
        else if (path == "dense") fourierft::set_linear_path(fourierft::LinearPath::Dense);
        else if (path == "folded") fourierft::set_linear_path(fourierft::LinearPath::Folded);
        else throw py::value_error("fourierft: linear path must be 'auto', 'spectral', 'dense' or 'folded', got '" +
                                   path + "'");
      },
      py::arg("path"),
      "Which route fourierft.linear takes: 'auto' (the cost model), 'spectral', 'dense' or 'folded'.");
  m.def("linear_path", []() { return path_name(fourierft::linear_path()); });
  m.def("fingerprint", &fourierft::fingerprint, py::arg("tensor"),
        "64-bit fingerprint of a CPU tensor's values (bytes, dtype, shape).");
  m.def("set_inference_cache", &fourierft::set_inference_cache, py::arg("enabled"),
        "Turns the layers' inference caches (W + delta_W or delta_W, one weight-sized tensor per layer) off or on.");
  m.def("inference_cache", &fourierft::inference_cache, "Whether the layers' inference caches are on (the default).");
  m.def("set_keep_delta", &fourierft::set_keep_delta, py::arg("enabled"),
        "Training on a GPU: keep the dense forward's delta_W (or W + delta_W) for the backward (process-wide).");
  m.def("keep_delta", &fourierft::keep_delta, "Whether set_keep_delta(True) is in effect (off by default).");
}

// The cost model's decisions for a layer call: what it caches and how it runs (the Python layer's plan).
void bind_layer_plan(py::module_& m) {
  m.def(
      "inference_cache_for",
      [](const at::Device& device, at::ScalarType dtype, int64_t tokens, int64_t out_features, int64_t in_features,
         int64_t n_frequency) {
        const fourierft::LayerCall call{device.type(), dtype, tokens, out_features, in_features, n_frequency, false};
        switch (fourierft::inference_cache_for(call)) {
          case fourierft::InferenceCache::MergedWeight: return std::string("weight");
          case fourierft::InferenceCache::Delta: return std::string("delta");
          default: return std::string("none");
        }
      },
      py::arg("device"), py::arg("dtype"), py::arg("tokens"), py::arg("out_features"), py::arg("in_features"),
      py::arg("n_frequency"),
      "Inference with a frozen spectrum: what the layer caches ('weight': W + delta_W, 'delta': delta_W in the "
      "model's dtype, 'none').");
  m.def(
      "plan_layer_call",
      [](const at::Device& device, at::ScalarType dtype, at::ScalarType spectrum_dtype, int64_t tokens,
         int64_t out_features, int64_t in_features, int64_t n_frequency, bool training, bool single_adapter,
         bool plain_base, at::ScalarType weight_dtype, bool same_device, bool delta_cached, bool may_cache) {
        const fourierft::LayerCall call{device.type(), dtype, tokens, out_features, in_features, n_frequency, training,
                                        spectrum_dtype};
        const fourierft::LayerFacts facts{single_adapter, plain_base,   weight_dtype,
                                          same_device,    delta_cached, may_cache};
        const auto plan = fourierft::plan_layer_call(call, facts);
        switch (plan.kind) {
          case fourierft::LayerPlan::Kind::Fused: return std::string("fused");
          case fourierft::LayerPlan::Kind::FusedMergedWeight: return std::string("fused+weight");
          case fourierft::LayerPlan::Kind::FusedDelta: return std::string("fused+delta");
          default: return path_name(plan.adapter_route);
        }
      },
      py::arg("device"), py::arg("dtype"), py::arg("spectrum_dtype"), py::arg("tokens"), py::arg("out_features"),
      py::arg("in_features"), py::arg("n_frequency"), py::arg("training"), py::arg("single_adapter"),
      py::arg("plain_base"), py::arg("weight_dtype"), py::arg("same_device"), py::arg("delta_cached"),
      py::arg("may_cache"),
      "fourierft::plan_layer_call: 'fused' (one fourierft.linear), 'fused+weight' / 'fused+delta' (inference with "
      "the cached W + delta_W / delta_W), or the per-adapter route 'spectral' / 'dense'.");
}

// The cost model's routes per pass and their estimates (the docs' tables, scripts/routes.py).
void bind_routes(py::module_& m) {
  m.def(
      "adapter_path",
      [](const at::Device& device, at::ScalarType dtype, int64_t tokens, int64_t out_features, int64_t in_features,
         int64_t n_frequency, bool training, bool delta_cached) {
        const fourierft::LayerCall call{device.type(), dtype, tokens, out_features, in_features, n_frequency, training};
        return path_name(fourierft::adapter_path(call, delta_cached));
      },
      py::arg("device"), py::arg("dtype"), py::arg("tokens"), py::arg("out_features"), py::arg("in_features"),
      py::arg("n_frequency"), py::arg("training"), py::arg("delta_cached"),
      "A layer that cannot run as one fourierft.linear: 'spectral' (spectral_linear) or 'dense' (a GEMM with "
      "delta_W).");
  m.def(
      "linear_routes",
      [](const at::Device& device, at::ScalarType dtype, int64_t tokens, int64_t out_features, int64_t in_features,
         int64_t n_frequency, bool training) {
        const fourierft::LayerCall call{device.type(), dtype, tokens, out_features, in_features, n_frequency, training};
        const auto routes = fourierft::linear_routes(call);
        py::dict out;
        out["forward"] = path_name(routes.forward);
        if (training) {
          out["grad_x"] = path_name(routes.grad_x);
          out["grad_spectrum"] = path_name(routes.grad_spectrum);
        }
        return out;
      },
      py::arg("device"), py::arg("dtype"), py::arg("tokens"), py::arg("out_features"), py::arg("in_features"),
      py::arg("n_frequency"), py::arg("training"),
      "The routes fourierft.linear takes for such a call on that device (forward; with training, grad_x and "
      "grad_spectrum too).");
  m.def(
      "linear_route_estimates",
      [](const at::Device& device, at::ScalarType dtype, int64_t tokens, int64_t out_features, int64_t in_features,
         int64_t n_frequency, bool training) {
        const fourierft::LayerCall call{device.type(), dtype, tokens, out_features, in_features, n_frequency, training};
        py::dict out;
        for (const auto& estimate : fourierft::linear_route_estimates(call)) {
          const py::str pass(estimate.pass);
          if (!out.contains(pass)) out[pass] = py::dict();
          py::dict per_route = out[pass];
          per_route[py::str(path_name(estimate.route))] = py::float_(estimate.ns);
        }
        return out;
      },
      py::arg("device"), py::arg("dtype"), py::arg("tokens"), py::arg("out_features"), py::arg("in_features"),
      py::arg("n_frequency"), py::arg("training"),
      "The cost model's estimates (ns per call) behind linear_routes: {pass: {route: ns}}.");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fourierft C++ core: the strict safetensors reader, the cost model and the kernels' switches";
  m.attr("__version__") = FOURIERFT_VERSION;
  py::register_local_exception_translator(&translate_errors);

  bind_checkpoints(m);
  bind_switches(m);
  bind_layer_plan(m);
  bind_routes(m);
}
