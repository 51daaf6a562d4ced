// fourierft-merge: merges a PEFT FourierFT adapter into a transformers checkpoint, without Python.
//
//   fourierft-merge --base BASE_DIR --adapter ADAPTER_DIR --out OUT_DIR [--adapter-name NAME]
//                   [--dtype auto|float32|float16|bfloat16] [--quiet]
//
// BASE_DIR is what transformers' save_pretrained writes (model.safetensors, or shards listed by
// model.safetensors.index.json); ADAPTER_DIR is a PEFT FourierFT adapter (written by peft or by
// fourierft). OUT_DIR gets the same layout (same shards, index, config and tokenizer files) with every
// adapted weight replaced by W0 + delta_W in the weight's dtype, and the adapter's modules_to_save and
// biases in place of the base's: what PEFT's merge_and_unload() + save_pretrained() write.
//
// One tensor in memory at a time (plus the adapter, a few hundred KB): memory is bounded by the largest
// tensor, not the model. Everything is checked before the first byte is written; the output goes to a
// temporary directory renamed at the end, so a failure leaves no OUT_DIR. Exit codes: 0 done, 1 bad input
// or failure (message on stderr naming the file, the tensor and the numbers), 2 usage.
#include <fourierft/config.h>
#include <fourierft/io.h>
#include <fourierft/ops.h>
#include <fourierft/peft_names.h>

#include "progress.h"  // src/progress.h

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
namespace st = fourierft::safetensors;
using nlohmann::json;

namespace {

const char* kUsage =
    "usage: fourierft-merge --base BASE_DIR --adapter ADAPTER_DIR --out OUT_DIR [--adapter-name NAME]\n"
    "                       [--dtype auto|float32|float16|bfloat16] [--quiet]\n"
    "  writes BASE_DIR's checkpoint with the FourierFT adapter merged into its weights to OUT_DIR\n"
    "  (same shards, index, config and tokenizer files), as PEFT's merge_and_unload + save_pretrained\n";

struct Options {
  fs::path base, adapter, out;
  std::string adapter_name = "default";
  std::string dtype = "auto";
  bool quiet = false;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  TORCH_CHECK_VALUE(in.good(), "cannot read ", path.string());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// What the adapter does to one base tensor.
struct Change {
  at::Tensor spectrum;    // defined: W0 + delta_W from this spectrum
  at::Tensor replacement; // defined: the adapter's value replaces the base's (modules_to_save, biases)
};

struct Plan {
  std::vector<std::string> shards;                  // file names in BASE_DIR, in order
  std::map<std::string, std::string> shard_of;      // tensor -> shard
  std::map<std::string, Change> changes;            // base tensor name -> change
  bool indexed = false;
};

at::ScalarType output_dtype(const std::string& wanted, at::ScalarType original) {
  if (wanted == "auto" || !at::isFloatingType(original)) return original;
  if (wanted == "float32") return at::kFloat;
  if (wanted == "float16") return at::kHalf;
  return at::kBFloat16;
}

// The tensors a bitsandbytes-quantized layer saves beside its weight (transformers' save_pretrained of a 4-bit or
// 8-bit model): "<weight>.absmax", "<weight>.quant_map", "<weight>.nested_*", "<weight>.quant_state.bitsandbytes__*"
// (4-bit), "<layer>.SCB" and "<layer>.weight_format" (8-bit). Empty for a float weight.
std::vector<std::string> bitsandbytes_tensors(const std::map<std::string, st::TensorInfo>& base,
                                              const std::string& weight) {
  const std::string layer = weight.substr(0, weight.size() - std::string("weight").size());
  std::vector<std::string> found;
  for (auto it = base.lower_bound(weight + "."); it != base.end() && it->first.rfind(weight + ".", 0) == 0; ++it) {
    found.push_back("'" + it->first + "'");
  }
  for (const char* name : {"SCB", "weight_format"}) {
    if (base.count(layer + name)) found.push_back("'" + layer + name + "'");
  }
  return found;
}

// The base checkpoint's shards (model.safetensors, or the index's), every header read and validated, and the index
// in agreement with them; returns every tensor's header entry.
std::map<std::string, st::TensorInfo> read_base(const fs::path& base_dir, Plan& plan) {
  const auto index_path = base_dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    plan.indexed = true;
    json index;
    try {
      index = json::parse(read_text(index_path));
    } catch (const json::exception& error) {
      TORCH_CHECK_VALUE(false, index_path.string(), ": not valid JSON: ", error.what());
    }
    TORCH_CHECK_VALUE(index.contains("weight_map") && index["weight_map"].is_object(), index_path.string(),
                      ": no \"weight_map\" object");
    std::set<std::string> seen;
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      TORCH_CHECK_VALUE(shard.is_string(), index_path.string(), ": weight_map['", tensor, "'] is not a file name");
      plan.shard_of[tensor] = shard.get<std::string>();
      if (seen.insert(shard.get<std::string>()).second) plan.shards.push_back(shard.get<std::string>());
    }
  } else {
    TORCH_CHECK_VALUE(fs::exists(base_dir / "model.safetensors"), "no model.safetensors or "
                      "model.safetensors.index.json in ", base_dir.string(),
                      " (a transformers save_pretrained directory in safetensors format is expected)");
    plan.shards.push_back("model.safetensors");
  }
  std::map<std::string, st::TensorInfo> base;
  for (const auto& shard : plan.shards) {
    const st::Reader reader((base_dir / shard).string());
    for (const auto& info : reader.tensors()) {
      if (plan.indexed) {
        const auto it = plan.shard_of.find(info.name);
        TORCH_CHECK_VALUE(it != plan.shard_of.end() && it->second == shard, reader.path(), ": tensor '", info.name,
                          "' is not listed for this shard in model.safetensors.index.json");
      }
      plan.shard_of[info.name] = shard;
      base[info.name] = info;
    }
  }
  for (const auto& [tensor, shard] : plan.shard_of) {
    TORCH_CHECK_VALUE(base.count(tensor), "model.safetensors.index.json lists '", tensor, "' in ", shard,
                      ", which does not hold it");
  }
  return base;
}

// The base weight a spectrum adapts: a float 2-D weight of the base (not a bitsandbytes-quantized one) with at
// least as many entries as the spectrum has values.
void check_spectrum_target(const std::map<std::string, st::TensorInfo>& base, const fs::path& base_dir,
                           const std::string& key, const at::Tensor& value, const std::string& weight,
                           const fs::path& adapter_file) {
  const auto it = base.find(weight);
  TORCH_CHECK_VALUE(it != base.end(), adapter_file.string(), ": spectrum '", key, "' adapts '", weight,
                    "', which the base checkpoint ", base_dir.string(), " does not have: is the adapter for another "
                    "model?");
  const auto quantization = bitsandbytes_tensors(base, weight);
  TORCH_CHECK_VALUE(quantization.empty(), base_dir.string(), ": '", weight,
                    "' is quantized by bitsandbytes (", c10::Join(", ", quantization), " beside it, dtype ",
                    it->second.dtype, "); fourierft-merge merges into float weights only. Merge in Python: "
                    "merge_and_unload() re-quantizes the layer, or fourierft.quantized.dequantize(model, dtype) "
                    "before it keeps float weights (docs/large-models.md)");
  const auto& shape = it->second.shape;
  TORCH_CHECK_VALUE(shape.size() == 2 && at::isFloatingType(it->second.dtype), base_dir.string(), ": '",
                    weight, "' has shape ", c10::IntArrayRef(shape), " and dtype ", it->second.dtype,
                    "; a 2-D floating point weight is needed to merge '", key, "'");
  TORCH_CHECK_VALUE(value.dim() == 1 && value.is_floating_point() && value.size(0) >= 1 &&
                        value.size(0) <= shape[0] * shape[1],
                    adapter_file.string(), ": spectrum '", key, "' has shape ", value.sizes(), " and dtype ",
                    value.scalar_type(), "; expected 1-D floating point with 1..", shape[0] * shape[1],
                    " values for '", weight, "' ", c10::IntArrayRef(shape));
}

Plan make_plan(const Options& options, const st::File& adapter, const fs::path& adapter_file) {
  Plan plan;
  const auto base = read_base(options.base, plan);
  for (const auto& [key, value] : adapter.tensors) {
    const auto parsed = fourierft::peft_names::parse_key(key, adapter_file.string());
    if (parsed.kind == fourierft::peft_names::Key::Kind::Spectrum) {
      const std::string weight = parsed.path + ".weight";
      check_spectrum_target(base, options.base, key, value, weight, adapter_file);
      plan.changes[weight].spectrum = value;
      continue;
    }
    // What merge_and_unload leaves in the model: an adapted layer's bias ("<path>.base_layer.bias") and any other
    // saved parameter under the base's name; a modules_to_save wrapper's copies duplicate the "<path>.<param>" entry
    // that holds the adapter's values.
    if (parsed.kind == fourierft::peft_names::Key::Kind::WrapperCopy) continue;
    const std::string& name = parsed.path;
    const auto it = base.find(name);
    TORCH_CHECK_VALUE(it != base.end(), adapter_file.string(), ": tensor '", key, "' replaces '", name,
                      "', which the base checkpoint ", options.base.string(), " does not have");
    TORCH_CHECK_VALUE(it->second.shape == value.sizes().vec(), adapter_file.string(), ": tensor '", key,
                      "' has shape ", value.sizes(), " but the base's '", name, "' has ",
                      c10::IntArrayRef(it->second.shape));
    plan.changes[name].replacement = value;
  }
  TORCH_CHECK_VALUE(!plan.changes.empty(), adapter_file.string(), ": the adapter holds nothing to merge");
  return plan;
}

at::Tensor merged(const std::string& name, const at::Tensor& weight, const Change& change,
                  const fourierft::FourierFTConfig& config) {
  if (change.replacement.defined()) return change.replacement;
  // PEFT: W += transpose(delta_W, fan_in_fan_out), delta_W in float32 (the spectrum's dtype), added in the
  // promoted dtype and stored in the weight's.
  const bool transposed = config.fan_in_fan_out();
  const int64_t out = transposed ? weight.size(1) : weight.size(0);
  const int64_t in = transposed ? weight.size(0) : weight.size(1);
  const auto n = change.spectrum.size(0);
  const auto indices = fourierft::entry_indices(out, in, n, config.random_loc_seed());
  auto delta = fourierft::delta_weight(change.spectrum, indices, out, in, config.scaling());
  if (transposed) delta = delta.t();
  const auto promoted = at::promote_types(weight.scalar_type(), delta.scalar_type());
  return (weight.to(promoted) + delta.to(promoted)).to(weight.scalar_type());
}

// The adapter directory's config and tensors (PEFT's <dir>/<name>/ layout for a named adapter), checked.
struct AdapterInput {
  fourierft::FourierFTConfig config;
  st::File tensors;
  fs::path file;
};

AdapterInput read_adapter(const Options& options) {
  fs::path adapter_dir = options.adapter;
  if (options.adapter_name != "default" && fs::exists(options.adapter / options.adapter_name / "adapter_config.json")) {
    adapter_dir /= options.adapter_name;  // PEFT's layout for more than one adapter: <dir>/<name>/
  }
  const auto config_file = adapter_dir / "adapter_config.json";
  const auto adapter_file = adapter_dir / "adapter_model.safetensors";
  TORCH_CHECK_VALUE(fs::exists(config_file), "no adapter_config.json in ", adapter_dir.string(),
                    options.adapter_name != "default" ? " (nor in its subdirectory " + options.adapter_name + ")" : "");
  auto config = fourierft::FourierFTConfig::from_json_string(read_text(config_file), config_file.string());
  TORCH_CHECK_VALUE(fs::exists(adapter_file), "no adapter_model.safetensors in ", adapter_dir.string(),
                    " (only the safetensors format is supported)");
  return {std::move(config), st::load(adapter_file.string()), adapter_file};
}

// Every shard with the adapter merged into it (and cast to --dtype), plus the index with the new total size.
void write_shards(const Options& options, const Plan& plan, const fourierft::FourierFTConfig& config,
                  const fs::path& tmp) {
  size_t total = 0, done = 0;
  for (const auto& [tensor, shard] : plan.shard_of) total += 1;
  const bool bar = !options.quiet && ::isatty(STDERR_FILENO);
  uint64_t total_bytes = 0;
  for (const auto& shard : plan.shards) {
    const st::Reader reader((options.base / shard).string());
    std::vector<st::TensorInfo> layout = reader.tensors();
    for (auto& info : layout) info.dtype = output_dtype(options.dtype, info.dtype);
    st::Writer writer((tmp / shard).string(), layout, reader.metadata());
    for (const auto& info : layout) {
      at::Tensor tensor = reader.tensor(info.name);
      const auto change = plan.changes.find(info.name);
      if (change != plan.changes.end()) tensor = merged(info.name, tensor, change->second, config);
      tensor = tensor.to(info.dtype);
      writer.write(info.name, tensor);
      total_bytes += static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
      if (bar) fourierft::detail::progress_bar("merging", ++done, total, info.name);
    }
    writer.commit();
  }
  if (plan.indexed) {
    auto index = json::parse(read_text(options.base / "model.safetensors.index.json"));
    if (!index.contains("metadata") || !index["metadata"].is_object()) index["metadata"] = json::object();
    index["metadata"]["total_size"] = total_bytes;
    std::ofstream((tmp / "model.safetensors.index.json").string()) << index.dump(2) << "\n";
  }
}

// The checkpoint's config, tokenizer and every other file, as they are (config.json's dtype follows --dtype).
void copy_other_files(const Options& options, const fs::path& tmp) {
  for (const auto& entry : fs::directory_iterator(options.base)) {
    const auto name = entry.path().filename().string();
    if (!entry.is_regular_file() || ends_with(name, ".safetensors") || name == "model.safetensors.index.json") continue;
    if (name == "config.json" && options.dtype != "auto") {  // say which dtype the weights now have
      auto model_config = json::parse(read_text(entry.path()));
      for (const char* key : {"torch_dtype", "dtype"}) {
        if (model_config.contains(key)) model_config[key] = options.dtype;
      }
      std::ofstream((tmp / name).string()) << model_config.dump(2) << "\n";
      continue;
    }
    fs::copy_file(entry.path(), tmp / name);
  }
}

int run(const Options& options) {
  const auto start = std::chrono::steady_clock::now();
  // ---- inputs, all checked before anything is written ---------------------------------------
  const auto adapter = read_adapter(options);
  TORCH_CHECK_VALUE(fs::is_directory(options.base), "--base ", options.base.string(), " is not a directory");
  if (fs::exists(options.out)) {
    TORCH_CHECK_VALUE(fs::is_directory(options.out) && fs::is_empty(options.out), "--out ", options.out.string(),
                      " exists and is not an empty directory; refusing to overwrite it");
  }
  const auto plan = make_plan(options, adapter.tensors, adapter.file);

  // ---- output: a temporary sibling directory, renamed at the end ------------------------------
  const fs::path out = fs::absolute(options.out);
  const fs::path tmp = out.parent_path() / (out.filename().string() + ".fourierft-merge." + std::to_string(::getpid()));
  fs::create_directories(out.parent_path());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write_shards(options, plan, adapter.config, tmp);
    copy_other_files(options, tmp);
    if (fs::exists(out)) fs::remove(out);  // an empty directory, checked above
    fs::rename(tmp, out);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  size_t merged_weights = 0;
  for (const auto& [name, change] : plan.changes) merged_weights += change.spectrum.defined();
  if (!options.quiet) {
    std::fprintf(stderr, "fourierft-merge: %zu weights merged, %zu tensors replaced, %zu shard(s) written to %s in %.1f s\n",
                 merged_weights, plan.changes.size() - merged_weights, plan.shards.size(), out.string().c_str(), seconds);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fourierft-merge: %s needs a value\n%s", flag, kUsage);
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (arg == "--base") {
      options.base = value("--base");
    } else if (arg == "--adapter") {
      options.adapter = value("--adapter");
    } else if (arg == "--out") {
      options.out = value("--out");
    } else if (arg == "--adapter-name") {
      options.adapter_name = value("--adapter-name");
    } else if (arg == "--dtype") {
      options.dtype = value("--dtype");
    } else if (arg == "--quiet") {
      options.quiet = true;
    } else {
      std::fprintf(stderr, "fourierft-merge: unknown argument '%s'\n%s", arg.c_str(), kUsage);
      return 2;
    }
  }
  if (options.base.empty() || options.adapter.empty() || options.out.empty()) {
    std::fprintf(stderr, "fourierft-merge: --base, --adapter and --out are required\n%s", kUsage);
    return 2;
  }
  if (options.dtype != "auto" && options.dtype != "float32" && options.dtype != "float16" && options.dtype != "bfloat16") {
    std::fprintf(stderr, "fourierft-merge: --dtype must be auto, float32, float16 or bfloat16, got '%s'\n", options.dtype.c_str());
    return 2;
  }
  try {
    return run(options);
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "fourierft-merge: %s\n", error.what_without_backtrace());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "fourierft-merge: %s\n", error.what());
  }
  return 1;
}
