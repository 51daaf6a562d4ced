#include <fourierft/io.h>
#include <fourierft/model.h>
#include <fourierft/peft_names.h>

#include "progress.h"

#include <torch/nn/modules/linear.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <iomanip>
#include <sstream>

namespace fourierft {
namespace {

bool is_internal(const std::string& name, const std::vector<std::string>& carriers) {
  for (const auto& carrier : carriers) {
    if (name.size() > carrier.size() + 1 && name.compare(0, carrier.size() + 1, carrier + ".") == 0) {
      return true;
    }
  }
  return false;
}

// How PEFT finds modules_to_save (peft.utils.other._set_trainable): the module name ends with the entry,
// as plain text: "norm" names "embed_norm" too (tests/data/peft_semantics.json).
bool names_module(const std::string& key, const std::string& entry) {
  return key.size() >= entry.size() && key.compare(key.size() - entry.size(), entry.size(), entry) == 0;
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::ostringstream out;
  for (size_t i = 0; i < items.size(); ++i) out << (i ? separator : "") << items[i];
  return out.str();
}

std::string with_thousands(int64_t value) {
  std::string digits = std::to_string(value);
  for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) digits.insert(i, ",");
  return digits;
}

}  // namespace

FourierFTModel::FourierFTModel(std::shared_ptr<torch::nn::Module> model, const FourierFTConfig& config,
                               const std::string& adapter_name)
    : model_(std::move(model)) {
  TORCH_CHECK_VALUE(model_, "fourierft::get_peft_model: the model is an empty holder (nullptr)");
  inject(adapter_name, config);
  active_adapters_ = {adapter_name};
  set_adapter(active_adapters_);
  mark_trainable();
}

std::vector<std::pair<std::string, FourierFTLayer*>> FourierFTModel::all_layers() const {
  std::vector<std::pair<std::string, FourierFTLayer*>> layers;
  for (const auto& item : model_->named_modules()) {
    if (auto* layer = dynamic_cast<FourierFTLayer*>(item.value().get())) layers.emplace_back(item.key(), layer);
  }
  return layers;
}

std::vector<FourierFTModel::Planned> FourierFTModel::plan_injection(const FourierFTConfig& config,
                                                                   const std::string& adapter_name) const {
  config.validate();
  std::vector<Planned> plan;
  std::vector<std::string> carriers, names;
  for (const auto& item : model_->named_modules()) {
    const std::string& name = item.key();
    torch::nn::Module* module = item.value().get();
    if (name.empty() || is_internal(name, carriers)) continue;
    names.push_back(name);
    auto* layer = dynamic_cast<FourierFTLayer*>(module);
    if (layer) carriers.push_back(name);
    const bool plain_linear = dynamic_cast<torch::nn::LinearImpl*>(module) != nullptr;
    const auto match = match_target_module(config, name, layer != nullptr || plain_linear, false);
    if (!match.matched) continue;
    if (!layer) {
      TORCH_CHECK_VALUE(!plain_linear, "fourierft: target module '", name, "' (adapter '", adapter_name,
                        "') is a torch::nn::Linear, which cannot carry adapters: its parent calls it "
                        "through a member holder, so it cannot be replaced after construction. Declare it "
                        "as fourierft::Linear (same options, parameter names and initialisation, so "
                        "pretrained weights load unchanged), or declare the member as fourierft::FourierFTLinear "
                        "wrapping it; replace_module() alone changes only the registry, not what forward calls.");
      TORCH_CHECK_VALUE(false, "fourierft: target module '", name, "' (adapter '", adapter_name,
                        "') of type ", module->name(),
                        " is not supported. Currently, only fourierft::Linear and "
                        "fourierft::FourierFTLinear are supported.");
    }
    if (auto* wrapper = dynamic_cast<FourierFTLinearImpl*>(module)) {
      // README.md, "Which modules can be adapted": parent->replace_module("fc", FourierFTLinear(fc)) changes only the registry;
      // the parent's member holder still points at the base layer, so its forward would never reach the
      // adapter. Such a base has one more owner than a wrapper's own: its member holder, its registry
      // entry and the named_modules() listing being walked here.
      const auto owners = wrapper->base_layer.ptr().use_count();
      TORCH_CHECK_VALUE(owners <= 3, "fourierft: target module '", name, "' (adapter '", adapter_name,
                        "') is a fourierft::FourierFTLinear whose base torch::nn::Linear is also held elsewhere (",
                        owners - 3, " more reference(s)), e.g. by the parent's member holder after replace_module(): "
                        "the parent's forward would call the base directly and the adapter would never run "
                        "(replace_module() changes only the registry). Declare the member as "
                        "fourierft::FourierFTLinear (or the layer as fourierft::Linear) so that forward calls it.");
    }
    const int64_t size = layer->in_features() * layer->out_features();
    TORCH_CHECK_VALUE(match.n_frequency > 0 && match.n_frequency <= size, "fourierft: module '", name,
                      "', adapter '", adapter_name,
                      "': `n_frequency` should be less than or equal to the product of the input and "
                      "output dimensions but the value passed is ", match.n_frequency,
                      " and the product is ", size);
    TORCH_CHECK_VALUE(!layer->has_adapter(adapter_name), "fourierft: module '", name,
                      "' already has an adapter named '", adapter_name, "'");
    plan.push_back({name, layer, match.n_frequency});
  }
  if (plan.empty()) {
    std::vector<std::string> some(names.begin(), names.begin() + std::min<size_t>(names.size(), 12));
    std::string targets = config.target_modules().is_regex() ? *config.target_modules().regex
                                                             : join(config.target_modules().names);
    TORCH_CHECK_VALUE(false, "Target modules {", targets, "} not found in the base model (adapter '",
                      adapter_name, "'). Please check the target modules and try again. The model has "
                      "modules: ", some.empty() ? std::string("(none)") : join(some),
                      names.size() > some.size() ? ", ..." : "");
  }
  return plan;
}

void FourierFTModel::inject(const std::string& adapter_name, const FourierFTConfig& requested) {
  check_adapter_name(adapter_name, "fourierft::FourierFTModel");
  TORCH_CHECK_VALUE(!configs_.count(adapter_name), "fourierft: an adapter named '", adapter_name,
                    "' already exists");
  FourierFTConfig config = requested;
  if (config.fan_in_fan_out()) {  // PEFT's words; every C++ layer stores its weight as (out, in)
    TORCH_WARN("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. "
               "Setting fan_in_fan_out to False.");
    config.fan_in_fan_out(false);
  }
  // Everything is checked before the first layer changes: a failure leaves the model as it was.
  const auto plan = plan_injection(config, adapter_name);
  for (const auto& target : plan) {
    target.layer->update_layer(adapter_name, AdapterOptions()
                                                 .n_frequency(target.n_frequency)
                                                 .scaling(config.scaling())
                                                 .random_loc_seed(config.random_loc_seed())
                                                 .init_weights(config.init_weights())
                                                 .inference_mode(config.inference_mode()));
  }
  configs_[adapter_name] = config;
  adapter_order_.push_back(adapter_name);
  track_modules_to_save(adapter_name, config);
}

void FourierFTModel::track_modules_to_save(const std::string& adapter_name, const FourierFTConfig& config) {
  if (!config.modules_to_save()) return;
  torch::NoGradGuard no_grad;
  for (const auto& item : model_->named_modules()) {
    const std::string& key = item.key();
    for (const auto& m : *config.modules_to_save()) {
      if (!names_module(key, m)) continue;
      auto& saved = saved_modules_[key];
      if (saved.live.empty()) {
        for (const auto& p : item.value()->named_parameters()) {
          saved.names.push_back(p.key());
          saved.live.push_back(p.value());
          saved.original.push_back(p.value().detach().clone());
        }
      }
      // A new adapter's copy starts from the original module, as PEFT's wrapper copies it.
      std::vector<torch::Tensor> copy;
      for (const auto& p : saved.original) copy.push_back(p.clone());
      saved.per_adapter[adapter_name] = std::move(copy);
    }
  }
}

void FourierFTModel::sync_modules_to_save() {
  torch::NoGradGuard no_grad;
  for (auto& [name, saved] : saved_modules_) {
    std::string wanted;
    if (!disabled_) {
      for (const auto& adapter : active_adapters_) {
        if (saved.per_adapter.count(adapter)) {
          wanted = adapter;
          break;
        }
      }
    }
    if (wanted == saved.owner) continue;
    if (!saved.owner.empty()) {  // keep what the outgoing adapter trained
      auto& store = saved.per_adapter.at(saved.owner);
      for (size_t i = 0; i < saved.live.size(); ++i) store[i].copy_(saved.live[i]);
    }
    const auto& source = wanted.empty() ? saved.original : saved.per_adapter.at(wanted);
    for (size_t i = 0; i < saved.live.size(); ++i) saved.live[i].copy_(source[i]);
    saved.owner = wanted;
  }
}

void FourierFTModel::drop_modules_to_save() {
  // The live parameters hold the active adapter's values (or the original while none saves them).
  saved_modules_.clear();
}

void FourierFTModel::add_adapter(const std::string& adapter_name, const FourierFTConfig& config) {
  inject(adapter_name, config);
  set_adapter(active_adapters_);
  mark_trainable();
}

void FourierFTModel::set_adapter(const std::vector<std::string>& names) {
  for (const auto& name : names) {
    TORCH_CHECK_VALUE(configs_.count(name), "fourierft: unknown adapter '", name, "'; known adapters: ",
                      join(adapter_order_));
  }
  for (auto& [module_name, layer] : all_layers()) {
    layer->set_adapter(names);
    if (disabled_) layer->enable_adapters(false);
  }
  active_adapters_ = names;
  sync_modules_to_save();
}

void FourierFTModel::delete_adapter(const std::string& adapter_name) {
  TORCH_CHECK_VALUE(configs_.count(adapter_name), "fourierft: adapter '", adapter_name,
                    "' does not exist; known adapters: ", join(adapter_order_));
  const auto layers = all_layers();
  for (const auto& [name, layer] : layers) {
    const auto& merged = layer->merged_adapters();
    TORCH_CHECK_VALUE(std::find(merged.begin(), merged.end(), adapter_name) == merged.end(),
                      "fourierft: adapter '", adapter_name, "' is merged into module '", name,
                      "'; unmerge_adapter() before deleting it");
  }
  for (const auto& [name, layer] : layers) {
    if (layer->has_adapter(adapter_name)) layer->delete_adapter(adapter_name);
  }
  for (auto& [name, saved] : saved_modules_) {
    if (saved.owner == adapter_name) {  // its values leave with it: the original comes back
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < saved.live.size(); ++i) saved.live[i].copy_(saved.original[i]);
      saved.owner.clear();
    }
    saved.per_adapter.erase(adapter_name);
  }
  configs_.erase(adapter_name);
  adapter_order_.erase(std::find(adapter_order_.begin(), adapter_order_.end(), adapter_name));
  auto active = active_adapters_;
  auto it = std::find(active.begin(), active.end(), adapter_name);
  if (it != active.end()) {
    active.erase(it);
    if (active.empty() && !adapter_order_.empty()) {
      TORCH_WARN("Adapter ", adapter_name, " was active which is now deleted. Setting active adapter to ",
                 adapter_order_.front(), ".");
      active = {adapter_order_.front()};
    }
  }
  set_adapter(active);
}

void FourierFTModel::enable_adapter_layers() {
  disabled_ = false;
  for (auto& [name, layer] : all_layers()) layer->enable_adapters(true);
  sync_modules_to_save();
  for (auto& [name, saved] : saved_modules_) {  // PEFT's wrapper: the active adapter's copy trains again
    if (saved.owner.empty()) continue;
    const bool frozen = configs_.at(saved.owner).inference_mode();
    for (auto& p : saved.live) p.requires_grad_(!frozen);
  }
}

void FourierFTModel::disable_adapter_layers() {
  disabled_ = true;
  for (auto& [name, layer] : all_layers()) layer->enable_adapters(false);
  sync_modules_to_save();
  for (auto& [name, saved] : saved_modules_) {  // PEFT's wrapper freezes its copies while disabled
    for (auto& p : saved.live) p.requires_grad_(false);
  }
}

void FourierFTModel::merge_adapter(const std::optional<std::vector<std::string>>& adapter_names,
                                   bool safe_merge) {
  const auto names = adapter_names.value_or(active_adapters_);
  for (const auto& name : names) {
    TORCH_CHECK_VALUE(configs_.count(name), "fourierft: cannot merge unknown adapter '", name,
                      "'; known adapters: ", join(adapter_order_));
  }
  const auto layers = all_layers();
  if (safe_merge) {  // check every layer before any weight changes
    for (const auto& [module_name, layer] : layers) {
      try {
        layer->check_merge(names);
      } catch (const c10::Error& error) {
        TORCH_CHECK_VALUE(false, "module '", module_name, "': ", error.what_without_backtrace(),
                          "; no weight of the model was changed");
      }
    }
  }
  for (const auto& [module_name, layer] : layers) layer->merge(safe_merge, names);
}

void FourierFTModel::unmerge_adapter() {
  bool any = false;
  for (auto& [name, layer] : all_layers()) {
    if (!layer->merged()) continue;
    layer->unmerge();
    any = true;
  }
  if (!any) TORCH_WARN("Already unmerged. Nothing to do.");  // PEFT warns (once per layer)
}

std::shared_ptr<torch::nn::Module> FourierFTModel::merge_and_unload(
    bool progressbar, bool safe_merge, const std::optional<std::vector<std::string>>& adapter_names) {
  merge_adapter(adapter_names, safe_merge);
  const auto layers = all_layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].second->clear_adapters();
    if (progressbar) detail::progress_bar("Unloading and merging model", i + 1, layers.size());
  }
  drop_modules_to_save();  // the active adapter's trained values stay
  configs_.clear();
  adapter_order_.clear();
  active_adapters_.clear();
  return model_;
}

std::shared_ptr<torch::nn::Module> FourierFTModel::unload() {
  // PEFT 0.21's unload() drops the adapters as they are: deltas merged before stay in the weights (the generated
  // table's "unload after merge_adapter keeps the merged weights").
  for (auto& [name, layer] : all_layers()) layer->clear_adapters();
  drop_modules_to_save();  // as PEFT: the active adapter's trained modules_to_save stay
  configs_.clear();
  adapter_order_.clear();
  active_adapters_.clear();
  return model_;
}

FourierFTModel::MixedBatchGuard::MixedBatchGuard(MixedBatch batch)
    : batch_(std::move(batch)), previous_(set_current_mixed_batch(&batch_)) {}

FourierFTModel::MixedBatchGuard::~MixedBatchGuard() { set_current_mixed_batch(previous_); }

std::unique_ptr<FourierFTModel::MixedBatchGuard> FourierFTModel::mixed_batch(
    const std::vector<std::string>& adapter_names_per_row) const {
  std::vector<std::string> adapters;
  std::vector<int64_t> index;
  for (const auto& name : adapter_names_per_row) {
    if (name == "__base__") {
      index.push_back(-1);
      continue;
    }
    auto it = std::find(adapters.begin(), adapters.end(), name);
    if (it == adapters.end()) it = adapters.insert(adapters.end(), name);
    index.push_back(it - adapters.begin());
  }
  return mixed_batch(torch::tensor(index, torch::kLong), adapters);
}

std::unique_ptr<FourierFTModel::MixedBatchGuard> FourierFTModel::mixed_batch(
    const torch::Tensor& row_adapter, const std::vector<std::string>& adapters) const {
  TORCH_CHECK_VALUE(!model_->is_training(), "fourierft: a mixed-adapter batch is for inference; call "
                    "model->eval() first (PEFT: \"Cannot pass `adapter_names` when the model is in training mode\")");
  std::vector<std::string> unknown;
  for (const auto& name : adapters) {
    if (!configs_.count(name)) unknown.push_back(name);
  }
  TORCH_CHECK_VALUE(unknown.empty(), "Trying to infer with non-existing adapter(s): ", join(unknown),
                    "; known adapters: ", join(adapter_order_));
  TORCH_CHECK_VALUE(row_adapter.dim() == 1 && row_adapter.scalar_type() == torch::kLong,
                    "fourierft: the per-row adapter index must be a 1-D int64 tensor, got ", row_adapter.sizes(), " ",
                    row_adapter.scalar_type());
  const auto cpu = row_adapter.to(torch::kCPU);
  if (cpu.numel() > 0) {
    const auto low = cpu.min().item<int64_t>(), high = cpu.max().item<int64_t>();
    TORCH_CHECK_VALUE(low >= -1 && high < static_cast<int64_t>(adapters.size()), "fourierft: per-row adapter "
                      "indices must lie in [-1, ", adapters.size(), "), got values in [", low, ", ", high, "]");
  }
  return std::make_unique<MixedBatchGuard>(MixedBatch{adapters, cpu});
}

void FourierFTModel::mark_trainable() {
  // PEFT's _mark_only_adapters_as_trainable: everything but the spectra is frozen, then the bias
  // mode and modules_to_save of the active adapters open what they name.
  const auto layers = all_layers();
  for (auto& item : model_->named_parameters()) {
    const std::string& name = item.key();
    const bool spectrum = name.rfind("fourierft_spectrum.", 0) == 0 ||
                          name.find(".fourierft_spectrum.") != std::string::npos;
    if (!spectrum) item.value().requires_grad_(false);
  }
  for (const auto& adapter : active_adapters_) {
    const auto& config = configs_.at(adapter);
    for (auto& item : model_->named_parameters()) {
      const std::string& name = item.key();
      const bool is_bias = name == "bias" || (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
      if (config.bias() == "all" && is_bias) item.value().requires_grad_(true);
    }
    // validate() admits "none", "all" and PEFT's "<method>_only": the rest opens the adapted layers' biases.
    if (config.bias() != "none" && config.bias() != "all") {
      for (const auto& [module_name, layer] : layers) {
        if (!layer->has_adapter(adapter)) continue;
        auto params = model_->named_parameters();
        for (const auto& candidate : {module_name + ".bias", module_name + ".base_layer.bias"}) {
          if (auto* p = params.find(candidate); p && p->defined()) p->requires_grad_(true);
        }
      }
    }
    if (config.modules_to_save()) {
      for (const auto& item : model_->named_modules()) {
        for (const auto& m : *config.modules_to_save()) {
          if (names_module(item.key(), m)) {
            for (auto& p : item.value()->parameters()) p.requires_grad_(true);
          }
        }
      }
    }
  }
}

std::vector<torch::Tensor> FourierFTModel::trainable_parameters() const {
  std::vector<torch::Tensor> result;
  for (const auto& p : model_->parameters()) {
    if (p.requires_grad()) result.push_back(p);
  }
  return result;
}

std::pair<int64_t, int64_t> FourierFTModel::get_nb_trainable_parameters() const {
  int64_t trainable = 0, total = 0;
  for (const auto& p : model_->parameters()) {
    total += p.numel();
    if (p.requires_grad()) trainable += p.numel();
  }
  return {trainable, total};
}

void FourierFTModel::clear_caches() {
  for (auto& [name, layer] : all_layers()) layer->clear_caches();
}

void FourierFTModel::print_trainable_parameters(std::ostream& out) const {
  const auto [trainable, total] = get_nb_trainable_parameters();
  std::ostringstream percent;
  percent << std::fixed << std::setprecision(4) << (total ? 100.0 * trainable / total : 0.0);
  out << "trainable params: " << with_thousands(trainable) << " || all params: " << with_thousands(total)
      << " || trainable%: " << percent.str() << "\n";
}

std::vector<std::string> FourierFTModel::adapted_modules(const std::string& adapter_name) const {
  std::vector<std::string> names;
  for (const auto& [name, layer] : all_layers()) {
    if (layer->has_adapter(adapter_name)) names.push_back(name);
  }
  return names;
}

FourierFTLayer& FourierFTModel::layer(const std::string& module_name) const {
  FourierFTLayer* found = nullptr;
  for (const auto& [name, layer] : all_layers()) {
    if (name == module_name) found = layer;
  }
  TORCH_CHECK_VALUE(found != nullptr, "fourierft: no adapter-carrying layer at '", module_name, "'");
  return *found;
}

FourierFTModel::FourierFTModel(std::shared_ptr<torch::nn::Module> model) : model_(std::move(model)) {
  TORCH_CHECK_VALUE(model_, "fourierft: the model is an empty holder (nullptr)");
}

namespace {
namespace names = peft_names;

// The checkpoint key PEFT gives each bias that bias="all" / "fourier_only" saves, as its wrapped model names
// it: "<path>.base_layer.bias" for an adapted layer (one in `carriers`), "<path>.bias" for any other module
// (bias "all" only).
struct BiasKey {
  std::string key, path;
  torch::Tensor param;
  bool carrier;
};

std::vector<BiasKey> bias_keys(const torch::nn::Module& model, const std::set<std::string>& carriers,
                               const std::string& bias) {
  std::vector<BiasKey> keys;
  if (bias == "none") return keys;
  for (const auto& item : model.named_parameters()) {
    const std::string& name = item.key();
    if (!(name == "bias" || (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0))) continue;
    const std::string path = name.size() > 5 ? name.substr(0, name.size() - 5) : "";
    const bool carrier = carriers.count(path) > 0;
    if (carrier || bias == "all") {
      keys.push_back({carrier ? names::base_layer_key(path, "bias") : names::parameter_key(name), path, item.value(),
                      carrier});
    }
  }
  return keys;
}

std::string adapter_dir(const std::string& dir, const std::string& adapter_name) {
  return adapter_name == "default" ? dir : (std::filesystem::path(dir) / adapter_name).string();
}
}  // namespace

std::map<std::string, torch::Tensor> FourierFTModel::get_adapter_state_dict(const std::string& adapter_name) const {
  TORCH_CHECK_VALUE(configs_.count(adapter_name), "fourierft: unknown adapter '", adapter_name,
                    "'; known adapters: ", join(adapter_order_));
  std::map<std::string, torch::Tensor> out;
  std::set<std::string> carriers;  // PEFT wraps these: their own parameters live under "<path>.base_layer."
  for (const auto& [module_name, layer] : all_layers()) {
    if (!layer->adapter_names().empty()) carriers.insert(module_name);
    if (layer->has_adapter(adapter_name)) {
      out[names::spectrum_key(module_name)] = layer->spectrum(adapter_name).detach();
    }
  }
  for (const auto& [module_name, saved] : saved_modules_) {
    const auto copy = saved.per_adapter.find(adapter_name);
    if (copy == saved.per_adapter.end()) continue;
    for (size_t i = 0; i < saved.names.size(); ++i) {
      out[names::parameter_key(module_name + "." + saved.names[i])] =
          (saved.owner == adapter_name ? saved.live[i] : copy->second[i]).detach();
    }
  }
  // Biases, under the names they have in PEFT's wrapped model (its state dict is what PEFT filters):
  // an adapted layer's bias is "<path>.base_layer.bias"; a modules_to_save module's is
  // "<path>.original_module.bias" (original values) and "<path>.modules_to_save.bias" (this adapter's copy).
  for (const auto& b : bias_keys(*model_, carriers, configs_.at(adapter_name).bias())) {
    const auto saved = saved_modules_.find(b.path);
    if (b.carrier || saved == saved_modules_.end()) {
      out[b.key] = b.param.detach();
      continue;
    }
    const auto& s = saved->second;  // PEFT's wrapper also holds the original and this adapter's copy
    const size_t i = std::find(s.names.begin(), s.names.end(), "bias") - s.names.begin();
    out[names::original_module_key(b.path, "bias")] = s.original[i].detach();
    const auto copy = s.per_adapter.find(adapter_name);
    if (copy != s.per_adapter.end()) {
      out[names::modules_to_save_key(b.path, "bias")] =
          (s.owner == adapter_name ? s.live[i] : copy->second[i]).detach();
    }
  }
  return out;
}

void FourierFTModel::save_pretrained(const std::string& dir,
                                     const std::optional<std::vector<std::string>>& adapter_names,
                                     bool safe_serialization) const {
  TORCH_CHECK_VALUE(safe_serialization, "fourierft: save_pretrained writes safetensors only; "
                    "safe_serialization=false (PEFT's pickled adapter_model.bin) is not supported in C++");
  const auto names = adapter_names.value_or(adapter_order_);
  for (const auto& name : names) {
    TORCH_CHECK_VALUE(configs_.count(name), "fourierft: cannot save unknown adapter '", name,
                      "'; known adapters: ", join(adapter_order_));
  }
  for (const auto& name : names) {
    const auto state = get_adapter_state_dict(name);
    safetensors::TensorMap tensors(state.begin(), state.end());
    const auto out = adapter_dir(dir, name);
    std::error_code error;
    std::filesystem::create_directories(out, error);
    TORCH_CHECK_VALUE(!error && std::filesystem::is_directory(out), "fourierft: save_pretrained cannot create the "
                      "directory '", out, "' for adapter '", name, "': ",
                      error ? error.message() : std::string("a file of that name exists"));
    auto config = configs_.at(name);
    config.inference_mode(true);  // as PEFT writes it
    safetensors::save((std::filesystem::path(out) / "adapter_model.safetensors").string(), tensors,
                      {{"format", "pt"}});
    safetensors::write_file_atomically((std::filesystem::path(out) / "adapter_config.json").string(),
                                       config.to_json_string());
  }
}

// The keys a checkpoint holds (or may hold) for one adapter, and the model's tensors they load into.
struct FourierFTModel::CheckpointKeys {
  std::set<std::string> expected;
  std::map<std::string, torch::Tensor> modules_to_save;  // parameter key -> the model's parameter
  std::map<std::string, torch::Tensor> biases;           // checkpoint key -> the model's bias parameter
};

namespace {
void check_shape(const std::map<std::string, torch::Tensor>& tensors, const std::string& key,
                 torch::IntArrayRef sizes, const std::string& path, const char* what) {
  const auto it = tensors.find(key);
  if (it == tensors.end()) return;
  TORCH_CHECK_VALUE(it->second.sizes() == sizes, path, ": '", key, "' has shape ", it->second.sizes(), " but the ",
                    what, " has ", sizes);
}
}  // namespace

FourierFTModel::CheckpointKeys FourierFTModel::checkpoint_keys(const std::vector<Planned>& plan,
                                                               const FourierFTConfig& config,
                                                               const std::map<std::string, torch::Tensor>& tensors,
                                                               const std::string& path,
                                                               const std::string& adapter_name) const {
  CheckpointKeys keys;
  for (const auto& target : plan) {
    const std::string key = names::spectrum_key(target.name);
    keys.expected.insert(key);
    const auto it = tensors.find(key);
    if (it == tensors.end()) continue;
    TORCH_CHECK_VALUE(it->second.dim() == 1 && it->second.size(0) == target.n_frequency, path,
                      ": '", key, "' has shape ", it->second.sizes(), " but module '", target.name,
                      "' expects n_frequency = ", target.n_frequency, " (from the adapter config)");
    TORCH_CHECK_VALUE(it->second.is_floating_point(), path, ": '", key, "' has dtype ",
                      it->second.scalar_type(), ", not a floating point type");
  }
  if (config.modules_to_save()) {
    for (const auto& item : model_->named_modules()) {
      for (const auto& m : *config.modules_to_save()) {
        if (!names_module(item.key(), m)) continue;
        for (const auto& p : item.value()->named_parameters()) {
          const std::string key = names::parameter_key(item.key() + "." + p.key());
          keys.expected.insert(key);
          keys.modules_to_save[key] = p.value();
          check_shape(tensors, key, p.value().sizes(), path, "model's parameter");
        }
      }
    }
  }
  // Biases (bias "all" / "fourier_only"), under the names get_adapter_state_dict (= PEFT) writes them:
  // "<path>.base_layer.bias" of an adapted layer, "<path>.bias" elsewhere; a modules_to_save module's
  // "original_module.bias" / "modules_to_save.bias" duplicate values its "<path>.bias" key already carries.
  if (config.bias() != "none") {
    std::set<std::string> carriers;
    for (const auto& target : plan) carriers.insert(target.name);
    for (const auto& [name, layer] : all_layers()) {
      if (!layer->adapter_names().empty()) carriers.insert(name);
    }
    for (const auto& b : bias_keys(*model_, carriers, config.bias())) {
      keys.biases[b.key] = b.param;
      if (!b.carrier) {
        keys.expected.insert(names::original_module_key(b.path, "bias"));
        keys.expected.insert(names::modules_to_save_key(b.path, "bias"));
      }
    }
    for (const auto& [key, param] : keys.biases) {
      if (!tensors.count(key)) continue;
      check_shape(tensors, key, param.sizes(), path, "model's bias");
      keys.expected.insert(key);
    }
  }
  std::vector<std::string> missing, unexpected;
  for (const auto& key : keys.expected) {
    const bool optional = names::parse_key(key, path).kind == names::Key::Kind::WrapperCopy;
    if (!tensors.count(key) && !optional && !keys.biases.count(key)) missing.push_back(key);
  }
  for (const auto& [key, tensor] : tensors) {
    if (!keys.expected.count(key)) unexpected.push_back(key);
  }
  TORCH_CHECK_VALUE(missing.empty(), path, ": missing keys for adapter '", adapter_name, "': ", join(missing));
  TORCH_CHECK_VALUE(unexpected.empty(), path, ": unexpected keys for adapter '", adapter_name,
                    "' (no such target module in this model?): ", join(unexpected));
  return keys;
}

void FourierFTModel::copy_checkpoint(const std::vector<Planned>& plan, const CheckpointKeys& keys,
                                     const std::map<std::string, torch::Tensor>& tensors, const std::string& path,
                                     const std::string& adapter_name) {
  torch::NoGradGuard no_grad;
  for (const auto& target : plan) {
    auto spectrum = target.layer->spectrum(adapter_name);  // shares storage with the parameter
    spectrum.copy_(tensors.at(names::spectrum_key(target.name)));
  }
  for (auto& [module_name, saved] : saved_modules_) {
    auto copy = saved.per_adapter.find(adapter_name);
    if (copy == saved.per_adapter.end()) continue;
    for (size_t i = 0; i < saved.names.size(); ++i) {
      copy->second[i].copy_(tensors.at(names::parameter_key(module_name + "." + saved.names[i])));
    }
  }
  for (const auto& [key, param] : keys.biases) {
    const auto it = tensors.find(key);
    const std::string bias = names::parse_key(key, path).path;  // "<module>.bias"
    if (it != tensors.end() && !saved_modules_.count(bias.substr(0, bias.size() - 5))) {
      param.copy_(it->second);
    }
  }
}

void FourierFTModel::load_adapter(const std::string& dir, const std::string& adapter_name, bool is_trainable) {
  const auto config_path = (std::filesystem::path(dir) / "adapter_config.json").string();
  const auto weights_path = (std::filesystem::path(dir) / "adapter_model.safetensors").string();
  std::ifstream config_file(config_path);
  TORCH_CHECK_VALUE(config_file.good(), "fourierft: no adapter_config.json in '", dir, "'");
  std::stringstream text;
  text << config_file.rdbuf();
  auto config = FourierFTConfig::from_json_string(text.str(), config_path);
  config.inference_mode(!is_trainable);
  TORCH_CHECK_VALUE(std::filesystem::exists(weights_path), "fourierft: no adapter_model.safetensors in '", dir,
                    "' (only the safetensors format is supported)");
  const auto file = safetensors::load(weights_path);
  TORCH_CHECK_VALUE(!configs_.count(adapter_name), "fourierft: an adapter named '", adapter_name,
                    "' already exists");

  // Check everything before the model changes.
  const auto plan = plan_injection(config, adapter_name);
  const auto keys = checkpoint_keys(plan, config, file.tensors, weights_path, adapter_name);

  inject(adapter_name, config);
  copy_checkpoint(plan, keys, file.tensors, weights_path, adapter_name);
  if (active_adapters_.empty()) active_adapters_ = {adapter_name};
  set_adapter(active_adapters_);
  mark_trainable();
  if (!is_trainable) {  // PEFT's inference mode: nothing of this adapter trains
    for (const auto& target : plan) target.layer->spectrum(adapter_name).requires_grad_(false);
    for (const auto& [key, param] : keys.modules_to_save) param.requires_grad_(false);
  }
}

FourierFTModel FourierFTModel::from_pretrained(std::shared_ptr<torch::nn::Module> model, const std::string& dir,
                                               const std::string& adapter_name, bool is_trainable) {
  FourierFTModel peft(std::move(model));
  peft.load_adapter(dir, adapter_name, is_trainable);
  return peft;
}

FourierFTModel get_peft_model(std::shared_ptr<torch::nn::Module> model, const FourierFTConfig& config,
                              const std::string& adapter_name) {
  return FourierFTModel(std::move(model), config, adapter_name);
}

}  // namespace fourierft
