#include <fourierft/layer.h>
#include <fourierft/linear.h>
#include <fourierft/ops.h>

#include <torch/nn/functional/linear.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "tensor_version.h"

namespace fourierft {

std::ostream& operator<<(std::ostream& os, LinearPath path) {
  switch (path) {
    case LinearPath::Auto: return os << "auto";
    case LinearPath::Spectral: return os << "spectral";
    case LinearPath::Dense: return os << "dense";
    case LinearPath::Folded: return os << "folded";
  }
  return os << "unknown";
}

// ---------------------------------------------------------------------------------------------
// SpectrumDict

SpectrumDictImpl::SpectrumDictImpl(const SpectrumDictImpl& other) : Cloneable(other) {
  for (const auto& item : other.named_parameters(/*recurse=*/false)) {
    const auto& t = item.value();
    layout_.push_back({item.key(), t.sizes().vec(), t.options(), t.requires_grad()});
  }
}

void SpectrumDictImpl::reset() {
  for (const auto& slot : layout_) {
    register_parameter(slot.name, torch::empty(slot.shape, slot.options), slot.requires_grad);
  }
}

void SpectrumDictImpl::pretty_print(std::ostream& stream) const {
  stream << "fourierft::SpectrumDict(";
  bool first = true;
  for (const auto& item : named_parameters(false)) {
    stream << (first ? "" : ", ") << item.key() << ": [" << item.value().size(0) << "] "
           << item.value().scalar_type();
    first = false;
  }
  stream << ")";
}

void check_adapter_name(const std::string& name, const std::string& where) {
  TORCH_CHECK_VALUE(!name.empty() && name.find('.') == std::string::npos, where,
                    ": an adapter name must be non-empty and contain no '.' (it becomes a parameter name), got '",
                    name, "'");
}

torch::Tensor& SpectrumDictImpl::insert(const std::string& name, torch::Tensor value,
                                        bool requires_grad) {
  check_adapter_name(name, "fourierft::SpectrumDict");
  if (parameters_.contains(name)) parameters_.erase(name);
  return register_parameter(name, std::move(value), requires_grad);
}

void SpectrumDictImpl::erase(const std::string& name) { parameters_.erase(name); }
bool SpectrumDictImpl::contains(const std::string& name) const { return parameters_.contains(name); }
torch::Tensor& SpectrumDictImpl::at(const std::string& name) { return parameters_[name]; }
const torch::Tensor& SpectrumDictImpl::at(const std::string& name) const {
  return parameters_[name];
}
std::vector<std::string> SpectrumDictImpl::keys() const { return parameters_.keys(); }

// ---------------------------------------------------------------------------------------------
// FourierFTLinear

FourierFTLinearImpl::FourierFTLinearImpl(torch::nn::Linear base, FourierFTLinearOptions options) {
  options_ = options;
  init_base(std::move(base));
}

FourierFTLinearImpl::FourierFTLinearImpl(const torch::nn::LinearOptions& base_options,
                                         FourierFTLinearOptions options) {
  options_ = options;
  init_base(torch::nn::Linear(base_options));
}

void FourierFTLinearImpl::init_base(torch::nn::Linear base) {
  TORCH_CHECK(base, "fourierft::FourierFTLinear: the base layer is an empty holder (nullptr)");
  base_layer = register_module("base_layer", std::move(base));
  out_features_ = base_layer->weight.size(0);
  in_features_ = base_layer->weight.size(1);
  fourierft_spectrum = register_module("fourierft_spectrum", SpectrumDict());
}

void FourierFTLinearImpl::reset() {
  // Reached only through clone(): Cloneable copies the values into these fresh submodules.
  base_layer = register_module("base_layer", torch::nn::Linear(base_layer->options));
  fourierft_spectrum = register_module("fourierft_spectrum", SpectrumDict());
}

void FourierFTLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "fourierft::FourierFTLinear(in_features=" << in_features_
         << ", out_features=" << out_features_ << ", ";
  print_adapters(stream);
  stream << ")";
}

std::vector<std::string> FourierFTLayer::adapter_names() const { return adapters_.keys(); }

bool FourierFTLayer::has_adapter(const std::string& name) const {
  return adapters_.contains(name);
}

const AdapterState& FourierFTLayer::checked_state(const std::string& name,
                                                       const char* what) const {
  const AdapterState* state = adapters_.find(name);
  if (state == nullptr) {
    std::ostringstream known;
    for (const auto& key : adapters_.keys()) known << " '" << key << "'";
    TORCH_CHECK(false, describe(), ".", what,
                ": unknown adapter '", name, "'; this layer has:",
                adapters_.is_empty() ? std::string(" no adapters") : known.str());
  }
  return *state;
}

const AdapterState& FourierFTLayer::adapter_state(const std::string& name) const {
  return checked_state(name, "adapter_state");
}

void FourierFTLayer::update_layer(const std::string& name, const AdapterOptions& options) {
  // Every check comes before the first change: a refused call leaves the layer as it was.
  check_adapter_name(name, describe());
  const int64_t n = options.n_frequency();
  const int64_t size = in_features_ * out_features_;
  TORCH_CHECK(n > 0, describe(), ", adapter '", name,
              "': `n_frequency` should be a positive integer value but the value passed is ", n);
  TORCH_CHECK(n <= size, describe(), ", adapter '", name,
              "': `n_frequency` should be less than or equal to the product of the input and "
              "output dimensions but the value passed is ",
              n, " and the product is ", size);
  TORCH_CHECK(std::isfinite(options.scaling()), describe(), ": adapter '", name,
              "': scaling must be finite, got ", options.scaling());
  TORCH_CHECK(std::find(merged_adapters_.begin(), merged_adapters_.end(), name) ==
                  merged_adapters_.end(),
              describe(), ": adapter '", name,
              "' is merged into the base weights; unmerge() before re-initialising it");
  const auto& weight = base_weight();
  AdapterState state;
  state.n_frequency = n;
  state.scaling = options.scaling();
  state.random_loc_seed = options.random_loc_seed();
  state.indices = entry_indices(out_features_, in_features_, n, options.random_loc_seed())
                      .to(weight.device());
  // PEFT draws randn(n) in float32, then moves the spectrum to the base weight's device and dtype.
  torch::Tensor spectrum;
  {
    torch::NoGradGuard no_grad;
    spectrum = options.init_weights() ? torch::zeros({n}) : torch::randn({n});
    if (weight.is_floating_point()) {
      spectrum = spectrum.to(weight.device(), weight.scalar_type());
    } else {
      spectrum = spectrum.to(weight.device());
    }
  }
  if (adapters_.is_empty() && active_adapters_.empty()) active_adapters_ = {name};
  spectra().insert(name, spectrum, true);
  if (adapters_.contains(name)) adapters_.erase(name);
  adapters_.insert(name, std::move(state));
  delta_cache_.erase(name);
  // Re-apply the active set so that a new inactive adapter starts frozen (PEFT's set_adapter).
  const auto active = active_adapters_;
  set_adapter(active);
  if (options.inference_mode()) spectra().at(name).requires_grad_(false);
}

void FourierFTLayer::set_adapter(const std::vector<std::string>& names) {
  for (const auto& key : adapters_.keys()) {
    const bool active = std::find(names.begin(), names.end(), key) != names.end();
    spectra().at(key).requires_grad_(active && !disabled_);
  }
  active_adapters_ = names;
}

void FourierFTLayer::delete_adapter(const std::string& name) {
  checked_state(name, "delete_adapter");
  TORCH_CHECK(std::find(merged_adapters_.begin(), merged_adapters_.end(), name) ==
                  merged_adapters_.end(),
              describe(), ".delete_adapter: "
              "adapter '", name, "' is merged into the base weights; unmerge() it first, or the "
              "base weights would keep its delta_W");
  adapters_.erase(name);
  spectra().erase(name);
  delta_cache_.erase(name);
  if (adapters_.is_empty()) release_spectra();
  auto it = std::find(active_adapters_.begin(), active_adapters_.end(), name);
  if (it == active_adapters_.end()) return;
  auto remaining_active = active_adapters_;
  remaining_active.erase(remaining_active.begin() + (it - active_adapters_.begin()));
  if (!remaining_active.empty()) {
    set_adapter(remaining_active);
  } else if (adapters_.is_empty()) {
    set_adapter(std::vector<std::string>{});
  } else {
    const std::string next = adapters_.keys().front();
    TORCH_WARN("Adapter ", name, " was active which is now deleted. Setting active adapter to ",
               next, ".");
    set_adapter(next);
  }
}

void FourierFTLayer::clear_adapters() {
  for (const auto& key : adapters_.keys()) spectra().erase(key);
  adapters_.clear();
  release_spectra();
  delta_cache_.clear();
  active_adapters_.clear();
  merged_adapters_.clear();
}

void FourierFTLayer::enable_adapters(bool enabled) {
  if (enabled) {
    disabled_ = false;
    const auto active = active_adapters_;
    set_adapter(active);
  } else {
    for (const auto& key : adapters_.keys()) {
      spectra().at(key).requires_grad_(false);
    }
    disabled_ = true;
  }
}

torch::Tensor FourierFTLayer::get_delta_weight(const std::string& name) const {
  const auto& state = checked_state(name, "get_delta_weight");
  const auto& spectrum = spectra().at(name);
  auto delta = delta_weight(spectrum, state.indices.to(spectrum.device()), out_features_,
                            in_features_, state.scaling);
  return delta;
}

void FourierFTLayer::merge(bool safe_merge,
                                const std::optional<std::vector<std::string>>& adapter_names) {
  std::vector<std::string> names = adapter_names.value_or(active_adapters_);
  if (merged()) {
    std::vector<std::string> fresh;
    for (const auto& n : names) {
      if (std::find(merged_adapters_.begin(), merged_adapters_.end(), n) == merged_adapters_.end()) {
        fresh.push_back(n);
      }
    }
    std::ostringstream already;
    for (size_t i = 0; i < merged_adapters_.size(); ++i) already << (i ? "," : "") << merged_adapters_[i];
    if (fresh.empty()) {
      TORCH_WARN("All adapters are already merged, nothing to do.");
    } else {
      std::ostringstream more;
      for (size_t i = 0; i < fresh.size(); ++i) more << (i ? "," : "") << fresh[i];
      TORCH_WARN("Already following adapters were merged ", already.str(),
                 ". You are now additionally merging ", more.str(), ".");
    }
    names = fresh;
  }
  // All deltas are computed before the weights change, so an error (or a non-finite result
  // under safe_merge) leaves the weights exactly as they were.
  const auto present = adapters_to_merge(names);
  if (present.empty()) return;
  torch::NoGradGuard no_grad;
  base_weight().copy_(merged_weight(present, safe_merge));
  merged_adapters_.insert(merged_adapters_.end(), present.begin(), present.end());
}

std::vector<std::string> FourierFTLayer::adapters_to_merge(const std::vector<std::string>& names) const {
  // Adapters absent from this layer are skipped, as PEFT does (a model's adapter need not target
  // every layer).
  std::vector<std::string> present;
  for (const auto& n : names) {
    const bool already = std::find(merged_adapters_.begin(), merged_adapters_.end(), n) != merged_adapters_.end();
    if (adapters_.contains(n) && !already) present.push_back(n);
  }
  return present;
}

torch::Tensor FourierFTLayer::merged_weight(const std::vector<std::string>& present, bool check) const {
  torch::NoGradGuard no_grad;
  const auto& weight = base_weight();
  auto result = weight.clone();
  for (const auto& n : present) result.add_(get_delta_weight(n).to(weight.scalar_type()));
  if (check && !torch::isfinite(result).all().item<bool>()) {
    std::ostringstream list;
    for (size_t i = 0; i < present.size(); ++i) list << (i ? "," : "") << present[i];
    TORCH_CHECK_VALUE(false, "NaNs detected in the merged weights. The adapter ", list.str(),
                      " seems to be broken (", describe(), "; the base weights were left unchanged)");
  }
  return result;
}

void FourierFTLayer::check_merge(const std::optional<std::vector<std::string>>& adapter_names) const {
  const auto present = adapters_to_merge(adapter_names.value_or(active_adapters_));
  if (!present.empty()) merged_weight(present, /*check=*/true);
}

void FourierFTLayer::unmerge() {
  if (!merged()) {
    TORCH_WARN("Already unmerged. Nothing to do.");
    return;
  }
  torch::NoGradGuard no_grad;
  auto& weight = base_weight();
  while (!merged_adapters_.empty()) {
    const std::string name = merged_adapters_.back();
    if (adapters_.contains(name)) weight.sub_(get_delta_weight(name).to(weight.scalar_type()));
    merged_adapters_.pop_back();
  }
}

LinearPath FourierFTLayer::resolve_path(const std::string& name, int64_t tokens) const {
  // The adapter's own product has no folded route (that is fourierft::linear's): Folded runs it densely.
  if (options_.forward_path() == LinearPath::Folded) return LinearPath::Dense;
  if (options_.forward_path() != LinearPath::Auto) return options_.forward_path();
  const auto& state = checked_state(name, "resolve_path");
  const auto& spectrum = spectra().at(name);
  const bool frozen = !(torch::GradMode::is_enabled() && spectrum.requires_grad());
  const bool cached = frozen && delta_cache_.find(name, spectrum, state.scaling).defined();
  // The adapter runs in the spectrum's dtype on its device (PEFT's composition): the plan of a per-adapter call.
  const LayerCall call{spectrum.device().type(), spectrum.scalar_type(), tokens, out_features_, in_features_,
                       state.n_frequency, !frozen, spectrum.scalar_type()};
  LayerFacts facts;
  facts.delta_cached = cached;
  return plan_layer_call(call, facts).adapter_route;
}

torch::Tensor FourierFTLayer::dense_delta(const std::string& name, const AdapterState& state) {
  const auto& spectrum = spectra().at(name);
  const bool frozen = !(torch::GradMode::is_enabled() && spectrum.requires_grad());
  if (!frozen) return get_delta_weight(name);
  return delta_cache_.find_or_build(name, spectrum, state.scaling, [&] { return get_delta_weight(name); });
}

torch::Tensor FourierFTLayer::adapter_forward(const std::string& name, const torch::Tensor& x) {
  const AdapterState& state = checked_state(name, "adapter_forward");
  const auto& spectrum = spectra().at(name);
  // Read-only here: forward may run on several threads at once.
  const auto indices = state.indices.device() == spectrum.device() ? state.indices : state.indices.to(spectrum.device());
  const int64_t tokens = x.numel() / std::max<int64_t>(x.size(-1), 1);
  if (resolve_path(name, tokens) == LinearPath::Spectral) {
    return spectral_linear(x, spectrum, indices, out_features_, in_features_, state.scaling);
  }
  const auto delta = dense_delta(name, state);
  return torch::nn::functional::linear(x.to(delta.scalar_type()), delta).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// DeltaCache

DeltaCache::DeltaCache(const DeltaCache& other) {
  std::lock_guard<std::mutex> lock(other.mutex_);
  entries_ = other.entries_;
}

DeltaCache& DeltaCache::operator=(const DeltaCache& other) {
  if (this == &other) return *this;
  std::map<std::string, Entry> copy;
  {
    std::lock_guard<std::mutex> lock(other.mutex_);
    copy = other.entries_;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  entries_ = std::move(copy);
  return *this;
}

torch::Tensor DeltaCache::find(const std::string& name, const torch::Tensor& spectrum, double scaling,
                               std::optional<uint64_t> weight_stamp) const {
  Entry entry;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return {};
    entry = it->second;
  }
  if (entry.source.unsafeGetTensorImpl() != spectrum.unsafeGetTensorImpl() ||
      entry.storage != spectrum.storage().unsafeGetStorageImpl() ||
      entry.storage_offset != spectrum.storage_offset() || entry.version != detail::version_of(spectrum) ||
      entry.scaling != scaling || entry.weight_stamp != weight_stamp) {
    return {};
  }
  if (entry.delta.is_inference() && !c10::InferenceMode::is_enabled()) return {};
  if (entry.values.defined()) {  // CPU: also the values (free of synchronisation there)
    torch::NoGradGuard no_grad;
    if (entry.values.sizes() != spectrum.sizes() || !torch::equal(entry.values, spectrum)) return {};
  }
  return entry.delta;
}

void DeltaCache::store(const std::string& name, const torch::Tensor& spectrum, double scaling, torch::Tensor delta,
                       std::optional<uint64_t> weight_stamp) {
  Entry entry;
  entry.source = spectrum;
  entry.storage = spectrum.storage().unsafeGetStorageImpl();
  entry.storage_offset = spectrum.storage_offset();
  entry.version = detail::version_of(spectrum);
  if (spectrum.device().is_cpu()) {
    torch::NoGradGuard no_grad;
    entry.values = spectrum.detach().clone();
  }
  entry.scaling = scaling;
  entry.weight_stamp = weight_stamp;
  entry.delta = std::move(delta);
  std::lock_guard<std::mutex> lock(mutex_);
  entries_[name] = std::move(entry);
}

torch::Tensor DeltaCache::find_or_build(const std::string& name, const torch::Tensor& spectrum, double scaling,
                                        const std::function<torch::Tensor()>& build,
                                        std::optional<uint64_t> weight_stamp) {
  auto cached = find(name, spectrum, scaling, weight_stamp);
  if (cached.defined()) return cached;
  {
    torch::NoGradGuard no_grad;
    cached = build();
  }
  store(name, spectrum, scaling, cached, weight_stamp);
  return cached;
}

std::size_t DeltaCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

void DeltaCache::erase(const std::string& name) {
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.erase(name);
}

void DeltaCache::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  entries_.clear();
}

const torch::Tensor& FourierFTLayer::spectrum(const std::string& name) const {
  checked_state(name, "spectrum");
  return spectra().at(name);
}

std::string FourierFTLayer::describe() const {
  std::ostringstream os;
  os << kind() << "(" << out_features_ << "x" << in_features_ << ")";
  return os.str();
}

void FourierFTLayer::print_adapters(std::ostream& stream) const {
  stream << "adapters=[";
  bool first = true;
  for (const auto& item : adapters_) {
    stream << (first ? "" : ", ") << item.key() << "(n_frequency=" << item.value().n_frequency
           << ", scaling=" << item.value().scaling << ")";
    first = false;
  }
  stream << "], active=[";
  for (size_t i = 0; i < active_adapters_.size(); ++i) {
    stream << (i ? ", " : "") << active_adapters_[i];
  }
  stream << "], forward_path=" << options_.forward_path();
}

namespace {
thread_local const MixedBatch* mixed_batch_on_this_thread = nullptr;
}  // namespace

const MixedBatch* current_mixed_batch() { return mixed_batch_on_this_thread; }

const MixedBatch* set_current_mixed_batch(const MixedBatch* batch) {
  const MixedBatch* previous = mixed_batch_on_this_thread;
  mixed_batch_on_this_thread = batch;
  return previous;
}

torch::Tensor FourierFTLayer::mixed_adapter_forward(const MixedBatch& batch, const torch::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 2 && x.size(0) == batch.row_adapter.size(0), describe(),
                    ": a mixed-adapter batch names an adapter for ", batch.row_adapter.size(0),
                    " rows, but the input has shape ", x.sizes(), " (rows are its first dimension)");
  auto sizes = x.sizes().vec();
  sizes.back() = out_features_;
  auto out = torch::zeros(sizes, x.options());
  const auto row_adapter = batch.row_adapter.to(x.device());
  for (size_t k = 0; k < batch.adapters.size(); ++k) {
    if (!adapters_.contains(batch.adapters[k])) continue;
    const auto rows = torch::nonzero(row_adapter == static_cast<int64_t>(k)).flatten();
    if (rows.numel() == 0) continue;
    out.index_copy_(0, rows, adapter_forward(batch.adapters[k], x.index_select(0, rows)).to(out.scalar_type()));
  }
  return out;
}

const std::string* FourierFTLayer::single_active_adapter() const {
  const std::string* found = nullptr;
  for (const auto& name : active_adapters_) {
    if (!adapters_.contains(name)) continue;
    if (found != nullptr) return nullptr;  // several adapters: one fused op each would repeat the GEMM
    found = &name;
  }
  return found;
}

torch::Tensor FourierFTLayer::cached_merged_weight(const std::string& name, const AdapterState& state) {
  const auto& weight = base_weight();
  // W changes behind its version counter (merge, .data() writes): its fingerprint (values, dtype, shape) is keyed too.
  return delta_cache_.find_or_build(name + "\x1fweight", spectra().at(name), state.scaling,
                                    [&] { return get_delta_weight(name).to(weight.scalar_type()).add_(weight); },
                                    fingerprint(weight));
}

torch::Tensor FourierFTLayer::cached_model_delta(const std::string& name, const AdapterState& state,
                                                 at::ScalarType dtype) {
  // Keyed apart from the spectrum-dtype delta_W of the dense adapter path (same values, another dtype).
  return delta_cache_.find_or_build(name + "\x1f" + c10::toString(dtype), spectra().at(name), state.scaling,
                                    [&] { return get_delta_weight(name).to(dtype); });
}

torch::Tensor FourierFTLayer::adapted_forward(
    const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& base,
    const torch::Tensor* base_bias) {
  if (disabled_) {
    if (merged()) unmerge();
    return base(x);
  }
  if (const MixedBatch* batch = current_mixed_batch()) {
    TORCH_CHECK_VALUE(!merged(), describe(), ": a mixed-adapter batch needs unmerged adapters (merged: ",
                      merged_adapters_.size(), ")");
    auto result = base(x);
    return result + mixed_adapter_forward(*batch, x).to(result.scalar_type());
  }
  if (merged()) return base(x);
  // A plain linear base (the module passes its bias) with one active adapter may run as one fourierft::linear: the
  // plan of the call says whether it does, and how (plan_layer_call, which the Python layer asks too).
  const std::string* name = base_bias != nullptr ? single_active_adapter() : nullptr;
  if (name != nullptr) {
    const AdapterState& state = checked_state(*name, "forward");
    const auto& spectrum = spectra().at(*name);
    const auto& weight = base_weight();
    const bool training = torch::GradMode::is_enabled() && (spectrum.requires_grad() || weight.requires_grad());
    const LayerCall call{x.device().type(), x.scalar_type(), x.numel() / std::max<int64_t>(x.size(-1), 1),
                         out_features_,     in_features_,    state.n_frequency,
                         training,          spectrum.scalar_type()};
    LayerFacts facts;
    facts.single_adapter = true;
    facts.plain_base = options_.forward_path() == LinearPath::Auto;  // a forced path runs per adapter
    facts.weight_dtype = weight.scalar_type();
    facts.same_device = x.device() == spectrum.device() && x.device() == weight.device();
    const auto bias = base_bias->defined() ? std::optional<torch::Tensor>(*base_bias) : std::nullopt;
    switch (plan_layer_call(call, facts).kind) {
      case LayerPlan::Kind::FusedMergedWeight:  // one GEMM with the cached W + delta_W (CPU, float32/float64)
        return torch::nn::functional::linear(x, cached_merged_weight(*name, state), *base_bias);
      case LayerPlan::Kind::FusedDelta:  // the base GEMM and one with delta_W cached in the model's dtype
        return torch::nn::functional::linear(x, weight, *base_bias)
            .add_(torch::nn::functional::linear(x, cached_model_delta(*name, state, x.scalar_type())));
      case LayerPlan::Kind::Fused: {
        const auto indices =
            state.indices.device() == spectrum.device() ? state.indices : state.indices.to(spectrum.device());
        return linear(x, weight, bias, spectrum, indices, out_features_, in_features_, state.scaling);
      }
      case LayerPlan::Kind::PerAdapter: break;
    }
  }
  auto result = base(x);
  for (const auto& name : active_adapters_) {
    if (!adapters_.contains(name)) continue;
    result = result + adapter_forward(name, x).to(result.scalar_type());
  }
  return result;
}

torch::Tensor FourierFTLinearImpl::forward(const torch::Tensor& x) {
  // A torch::nn::Linear base is x @ W^T + b: the fused op may replace it (no forward hooks in LibTorch).
  const torch::Tensor& bias = base_layer->bias;
  return adapted_forward(x, [this](const torch::Tensor& input) { return base_layer(input); }, &bias);
}

// ---------------------------------------------------------------------------------------------
// fourierft::Linear

LinearImpl::LinearImpl(const torch::nn::LinearOptions& linear_options,
                       FourierFTLinearOptions layer_options)
    : options(linear_options) {
  FourierFTLayer::options_ = layer_options;
  reset();
}

void LinearImpl::reset() {
  weight = register_parameter("weight",
                              torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty(options.out_features()));
  } else {
    bias = register_parameter("bias", {}, /*requires_grad=*/false);
  }
  // The spectrum dict is registered with the first adapter (spectra()) and dropped with the last
  // (release_spectra()): a layer without adapters has exactly torch::nn::Linear's state dict, so
  // torch::save / torch::load checkpoints move between the two module types. Through clone() the
  // holder is already set and the copy gets its dict.
  if (fourierft_spectrum) fourierft_spectrum = register_module("fourierft_spectrum", SpectrumDict());
  out_features_ = options.out_features();
  in_features_ = options.in_features();
  reset_parameters();
}

void LinearImpl::reset_parameters() {
  // torch::nn::LinearImpl::reset_parameters, draw for draw.
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5));
  if (bias.defined()) {
    auto [fan_in, fan_out] = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const auto bound = 1 / std::sqrt(fan_in);
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << "fourierft::Linear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << std::boolalpha
         << options.bias() << ", ";
  print_adapters(stream);
  stream << ")";
}

SpectrumDictImpl& LinearImpl::spectra() {
  if (!fourierft_spectrum) fourierft_spectrum = register_module("fourierft_spectrum", SpectrumDict());
  return *fourierft_spectrum;
}

void LinearImpl::release_spectra() {
  if (!fourierft_spectrum) return;
  unregister_module("fourierft_spectrum");
  fourierft_spectrum = nullptr;
}

torch::Tensor LinearImpl::forward(const torch::Tensor& input) {
  return adapted_forward(
      input, [this](const torch::Tensor& x) { return torch::nn::functional::linear(x, weight, bias); }, &bias);
}

}  // namespace fourierft
