// FourierFTLinear: a torch::nn::Linear carrying any number of named FourierFT adapters with the
// layer semantics of PEFT's `peft.tuners.fourierft.FourierFTLinear`.
//
//   auto base = torch::nn::Linear(768, 768);
//   fourierft::FourierFTLinear layer(base);
//   layer->update_layer("default", fourierft::AdapterOptions().n_frequency(1000).scaling(150.));
//   auto y = layer(x);              // base(x) + x @ delta_W^T
//   layer->merge();                 // W0 += delta_W; forward is now the plain base layer
//
// State dict names match PEFT: `base_layer.weight`, `base_layer.bias`,
// `fourierft_spectrum.<adapter>`.
#pragma once

#include <fourierft/ops.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace fourierft {

std::ostream& operator<<(std::ostream& os, LinearPath path);

/// Throws c10::ValueError unless `name` can name an adapter: non-empty and without '.' (a parameter
/// name segment, as in PEFT's ParameterDict). `where` says who asks, for the message.
void check_adapter_name(const std::string& name, const std::string& where);

/// Hyper-parameters of one adapter, as in PEFT's `FourierFTLayer.update_layer`.
struct AdapterOptions {
  /// Number of learnable spectral coefficients; 0 < n_frequency <= out_features * in_features.
  TORCH_ARG(int64_t, n_frequency) = 1000;
  /// alpha in delta_W = Re(ifft2(F)) * alpha.
  TORCH_ARG(double, scaling) = 150.0;
  /// Seed of the CPU generator that draws the entry matrix (PEFT's default 777).
  TORCH_ARG(int64_t, random_loc_seed) = 777;
  /// false (PEFT's default): spectrum ~ randn(n); true: zeros, so the adapter starts as identity.
  TORCH_ARG(bool, init_weights) = false;
  /// Freeze the new adapter's spectrum even when it is active.
  TORCH_ARG(bool, inference_mode) = false;
};

/// Options of the layer itself. (PEFT's `fan_in_fan_out` has no place here: both C++ layer kinds store
/// their weight as (out, in), like torch::nn::Linear; a config asking for it gets PEFT's warning.)
struct FourierFTLinearOptions {
  /// How the unmerged forward computes x delta_W^T: Auto (the cost model per call; a layer with one active adapter
  /// then runs as one fourierft::linear), or always Spectral or Dense per adapter (Folded, a route of
  /// fourierft::linear only, runs as Dense).
  TORCH_ARG(LinearPath, forward_path) = LinearPath::Auto;
};

/// A parameter dict that survives `clone()` (LibTorch's ParameterDict does not: its reset() is
/// empty, so cloning a non-empty one fails). Holds one spectrum per adapter name.
class SpectrumDictImpl : public torch::nn::Cloneable<SpectrumDictImpl> {
 public:
  SpectrumDictImpl() = default;
  SpectrumDictImpl(const SpectrumDictImpl& other);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor& insert(const std::string& name, torch::Tensor value, bool requires_grad);
  void erase(const std::string& name);
  bool contains(const std::string& name) const;
  torch::Tensor& at(const std::string& name);
  const torch::Tensor& at(const std::string& name) const;
  std::vector<std::string> keys() const;

 private:
  struct Slot {
    std::string name;
    std::vector<int64_t> shape;
    torch::TensorOptions options;
    bool requires_grad;
  };
  std::vector<Slot> layout_;  // filled by the copy constructor, consumed by reset()
};
TORCH_MODULE(SpectrumDict);

/// A mixed-adapter batch for the forwards run on this thread (set by FourierFTModel::mixed_batch): row i of
/// every adapted layer's input (its first dimension) goes through adapter `adapters[row_adapter[i]]`, or
/// through none where row_adapter[i] is -1. Inference only.
struct MixedBatch {
  std::vector<std::string> adapters;
  torch::Tensor row_adapter;  // int64 [rows] on the CPU
};
/// The mixed batch in effect on this thread, or nullptr.
const MixedBatch* current_mixed_batch();
/// Sets (or, with nullptr, clears) this thread's mixed batch; returns the previous one.
const MixedBatch* set_current_mixed_batch(const MixedBatch* batch);

/// One adapter's fixed (non-trainable) state.
struct AdapterState {
  int64_t n_frequency = 0;
  double scaling = 0.0;
  int64_t random_loc_seed = 0;
  torch::Tensor indices;  // int64 [2, n_frequency], on the spectrum's device
};

/// delta_W (and, for CPU inference, W + delta_W) of frozen spectra, shared by every thread that runs the layer. The
/// same key as the Python layer's: an entry is used only while the spectrum is the same tensor, with the same storage,
/// offset and version counter (optimizer steps, loads and in-place writes bump it; no device synchronisation), and on
/// the CPU also the same n values (a copy compared in O(n), which also sees writes through `.data()`, which the
/// version counter misses). A W + delta_W entry also needs W's fingerprint. A tensor made under InferenceMode is not
/// reused outside it (autograd cannot save it).
class DeltaCache {
 public:
  DeltaCache() = default;
  DeltaCache(const DeltaCache& other);  // copies the entries, not the mutex
  DeltaCache& operator=(const DeltaCache& other);

  /// The cached tensor of `name` if it was computed from `spectrum` as it is now with `scaling` (and, when given,
  /// from a base weight of fingerprint `weight_stamp`).
  torch::Tensor find(const std::string& name, const torch::Tensor& spectrum, double scaling,
                     std::optional<uint64_t> weight_stamp = std::nullopt) const;
  void store(const std::string& name, const torch::Tensor& spectrum, double scaling, torch::Tensor delta,
             std::optional<uint64_t> weight_stamp = std::nullopt);
  /// find, or else `build()` (under no_grad) and store.
  torch::Tensor find_or_build(const std::string& name, const torch::Tensor& spectrum, double scaling,
                              const std::function<torch::Tensor()>& build,
                              std::optional<uint64_t> weight_stamp = std::nullopt);
  void erase(const std::string& name);
  void clear();
  /// Entries held (each one weight-sized tensor).
  std::size_t size() const;

 private:
  struct Entry {
    torch::Tensor source;  // the spectrum tensor itself
    const void* storage = nullptr;
    int64_t storage_offset = 0;
    uint32_t version = 0;
    torch::Tensor values;  // CPU: a copy of the n values
    double scaling = 0.0;
    std::optional<uint64_t> weight_stamp;
    torch::Tensor delta;
  };
  mutable std::mutex mutex_;
  std::map<std::string, Entry> entries_;
};

/// PEFT's FourierFT layer semantics over one base weight: the adapters (spectra, entry matrices,
/// scalings), which are active, merge/unmerge, enable/disable, delete. Shared by the wrapper
/// `FourierFTLinear` (PEFT's layout: `base_layer.weight`) and the drop-in `fourierft::Linear`
/// (torch::nn::Linear's layout: `weight`); the module classes only say where the base weight and
/// the spectra live and how the base forward runs.
class FourierFTLayer {
 public:
  virtual ~FourierFTLayer() = default;

  /// Adds (or re-initialises) adapter `name`. Errors if n_frequency is out of range. The first
  /// adapter of a layer becomes active; later ones stay inactive (and frozen) until set_adapter.
  void update_layer(const std::string& name, const AdapterOptions& options = {});
  /// Makes `names` the active adapters: their spectra require grad, all others are frozen.
  void set_adapter(const std::vector<std::string>& names);
  void set_adapter(const std::string& name) { set_adapter(std::vector<std::string>{name}); }
  const std::vector<std::string>& active_adapters() const { return active_adapters_; }
  /// Every adapter this layer holds, in insertion order.
  std::vector<std::string> adapter_names() const;
  bool has_adapter(const std::string& name) const;
  /// Removes adapter `name` (its spectrum and state). Deleting an active adapter activates the
  /// remaining active ones, or else the first remaining adapter (with a warning), as PEFT does.
  /// Errors if `name` is unknown or currently merged.
  void delete_adapter(const std::string& name);

  /// W0 += delta_W for `adapter_names` (default: the active adapters not merged yet). With
  /// `safe_merge`, the sum is computed on a copy and checked for NaN/Inf first; on failure the
  /// weights are untouched and an error names the adapter.
  void merge(bool safe_merge = false, const std::optional<std::vector<std::string>>& adapter_names = std::nullopt);
  /// Throws, naming the adapters, if merge(safe_merge=true, adapter_names) would put NaN/Inf into
  /// the weights; changes nothing. The model uses it to check every layer before merging any.
  void check_merge(const std::optional<std::vector<std::string>>& adapter_names = std::nullopt) const;
  /// Subtracts every merged adapter again (last merged first).
  void unmerge();
  bool merged() const { return !merged_adapters_.empty(); }
  const std::vector<std::string>& merged_adapters() const { return merged_adapters_; }

  /// Drops every adapter, leaving the base weights exactly as they are (merged deltas stay in
  /// them). Used by merge_and_unload / unload.
  void clear_adapters();

  /// Drops the inference caches (delta_W, W + delta_W: one weight-sized tensor each); they are rebuilt on demand.
  /// train(true) on the module does it too.
  void clear_caches() { delta_cache_.clear(); }
  /// How many weight-sized tensors the caches hold now.
  std::size_t cached_tensors() const { return delta_cache_.size(); }

  /// enable_adapters(false): forward returns the base output (a merged layer is unmerged at the
  /// next forward, as in PEFT) and every spectrum is frozen; enable_adapters(true) undoes it.
  void enable_adapters(bool enabled);
  bool disable_adapters() const { return disabled_; }

  /// delta_W of `name`, [out_features, in_features] like the base weight.
  torch::Tensor get_delta_weight(const std::string& name) const;
  /// x @ delta_W^T for one adapter through the configured forward path.
  torch::Tensor adapter_forward(const std::string& name, const torch::Tensor& x);
  /// Sum over the rows of x (first dimension) of x_i @ delta_W(batch adapter of row i)^T; rows of adapters
  /// this layer does not hold, and rows marked -1, get zeros. Each adapter runs once on its rows.
  torch::Tensor mixed_adapter_forward(const MixedBatch& batch, const torch::Tensor& x);
  /// The path `adapter_forward` takes for an input with `tokens` rows (Auto resolved).
  LinearPath resolve_path(const std::string& name, int64_t tokens) const;

  const AdapterState& adapter_state(const std::string& name) const;
  /// The spectrum parameter of adapter `name`.
  const torch::Tensor& spectrum(const std::string& name) const;
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const FourierFTLinearOptions& layer_options() const { return options_; }
  FourierFTLinearOptions& layer_options() { return options_; }
  /// "fourierft::FourierFTLinear(out x in)" or similar, for error messages.
  std::string describe() const;

 protected:
  /// The frozen base weight the adapters merge into, [out_features, in_features].
  virtual torch::Tensor& base_weight() = 0;
  const torch::Tensor& base_weight() const { return const_cast<FourierFTLayer*>(this)->base_weight(); }
  virtual SpectrumDictImpl& spectra() = 0;
  /// Called when the last adapter is gone (delete_adapter, clear_adapters).
  virtual void release_spectra() {}
  const SpectrumDictImpl& spectra() const { return const_cast<FourierFTLayer*>(this)->spectra(); }
  virtual const char* kind() const = 0;
  /// PEFT's forward: base output, plus every active adapter unless disabled or merged. `base_bias`:
  /// the base is the plain linear `x @ base_weight()^T + base_bias` (undefined: no bias), so that with
  /// one active adapter the whole layer runs as one fourierft::linear (nullptr: base is opaque).
  torch::Tensor adapted_forward(const torch::Tensor& x, const std::function<torch::Tensor(const torch::Tensor&)>& base,
                                const torch::Tensor* base_bias = nullptr);
  void print_adapters(std::ostream& stream) const;

  FourierFTLinearOptions options_;
  int64_t in_features_ = 0;
  int64_t out_features_ = 0;

 private:
  const AdapterState& checked_state(const std::string& name, const char* what) const;
  /// The requested adapters that this layer holds and has not merged yet, in order.
  std::vector<std::string> adapters_to_merge(const std::vector<std::string>& names) const;
  /// W0 + sum of their delta_W (a new tensor); with `check`, throws if it is not finite.
  torch::Tensor merged_weight(const std::vector<std::string>& present, bool check) const;
  torch::Tensor dense_delta(const std::string& name, const AdapterState& state);
  /// The single present active adapter, or nullptr (several or none): the structural fact plan_layer_call needs.
  const std::string* single_active_adapter() const;
  /// Inference (LayerPlan::Kind::FusedDelta): delta_W of `name` in `dtype`, cached while the spectrum is unchanged.
  torch::Tensor cached_model_delta(const std::string& name, const AdapterState& state, at::ScalarType dtype);
  /// Inference (LayerPlan::Kind::FusedMergedWeight, CPU): W + delta_W of `name`, cached while the spectrum is
  /// unchanged and W keeps its fingerprint.
  torch::Tensor cached_merged_weight(const std::string& name, const AdapterState& state);

  torch::OrderedDict<std::string, AdapterState> adapters_{"FourierFT adapter"};
  DeltaCache delta_cache_;
  std::vector<std::string> active_adapters_;
  std::vector<std::string> merged_adapters_;
  bool disabled_ = false;
};

/// Wraps a torch::nn::Linear (PEFT's `FourierFTLinear`): state dict `base_layer.weight`,
/// `base_layer.bias`, `fourierft_spectrum.<adapter>`.
class FourierFTLinearImpl : public torch::nn::Cloneable<FourierFTLinearImpl>, public FourierFTLayer {
 public:
  /// Wraps `base` (weights shared, not copied). Adapters are added with update_layer().
  explicit FourierFTLinearImpl(torch::nn::Linear base, FourierFTLinearOptions options = {});
  /// Creates a fresh torch::nn::Linear base layer from `base_options`.
  explicit FourierFTLinearImpl(const torch::nn::LinearOptions& base_options,
                               FourierFTLinearOptions options = {});

  /// torch::nn::Module::train; going back to training drops the inference caches (a step uses none).
  void train(bool on = true) override {
    if (on) clear_caches();
    torch::nn::Cloneable<FourierFTLinearImpl>::train(on);
  }
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// base(x) + sum over active adapters of x @ delta_W^T (PEFT's FourierFTLinear.forward).
  torch::Tensor forward(const torch::Tensor& x);

  const FourierFTLinearOptions& options() const { return options_; }
  FourierFTLinearOptions& options() { return options_; }

  torch::nn::Linear base_layer{nullptr};
  SpectrumDict fourierft_spectrum{nullptr};

 protected:
  torch::Tensor& base_weight() override { return base_layer->weight; }
  SpectrumDictImpl& spectra() override { return *fourierft_spectrum; }
  const char* kind() const override { return "fourierft::FourierFTLinear"; }

 private:
  void init_base(torch::nn::Linear base);
};
TORCH_MODULE(FourierFTLinear);

}  // namespace fourierft
