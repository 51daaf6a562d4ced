// FourierFTModel: inject FourierFT adapters into a LibTorch module tree by name or regex, with
// PEFT's model-level operations (peft.FourierFTModel / PeftModel).
//
//   Net net;                                       // layers declared as fourierft::Linear
//   auto peft = fourierft::get_peft_model(net.ptr(), fourierft::FourierFTConfig()
//                                                     .target_modules(".*\\.(q|v)")
//                                                     .n_frequency(1000));
//   peft.print_trainable_parameters();
//   ... train net (its forward now uses the adapters) ...
//   peft.merge_and_unload();                       // plain weights, no adapters left
//
// Which layers can be adapted (README.md, "Which modules can be adapted"): LibTorch parents call children through
// member holders, so a layer cannot be swapped for a wrapper after construction. Adapters are
// therefore attached *in place* to layers that can carry them: fourierft::Linear (the drop-in for
// torch::nn::Linear) and fourierft::FourierFTLinear. A matched plain torch::nn::Linear is refused
// with an error that names it and says to declare it as fourierft::Linear; nothing is ever a
// silent no-op.
//
// modules_to_save (e.g. a classifier head) get one copy per adapter, as PEFT's wrapper keeps them:
// the live module holds the active adapter's values, the original values come back while adapters
// are disabled; unload() and merge_and_unload() keep the active adapter's values (as PEFT).
#pragma once

#include <fourierft/config.h>
#include <fourierft/layer.h>

#include <torch/nn/module.h>

#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace fourierft {

class FourierFTModel {
 public:
  /// Adapts every module of `model` that `config` targets (validated first). Throws, leaving
  /// `model` untouched, when nothing matches (listing module names that exist), when a matched
  /// module cannot carry adapters, or when n_frequency is out of range for a matched layer.
  FourierFTModel(std::shared_ptr<torch::nn::Module> model, const FourierFTConfig& config,
                 const std::string& adapter_name = "default");

  /// The adapted model (the same object the caller passed in).
  const std::shared_ptr<torch::nn::Module>& model() const { return model_; }

  /// Injects another adapter; it stays inactive (frozen) until set_adapter.
  void add_adapter(const std::string& adapter_name, const FourierFTConfig& config);
  /// Activates `names` in every adapted layer (active spectra trainable, others frozen).
  void set_adapter(const std::vector<std::string>& names);
  void set_adapter(const std::string& name) { set_adapter(std::vector<std::string>{name}); }
  const std::vector<std::string>& active_adapters() const { return active_adapters_; }
  /// Removes an adapter everywhere. Unknown name: error listing the known ones. Deleting the
  /// active adapter activates the first remaining one, as PEFT does.
  void delete_adapter(const std::string& adapter_name);

  void enable_adapter_layers();
  void disable_adapter_layers();
  /// RAII form of disable_adapter_layers(): adapters are off until the guard is destroyed.
  class DisableAdapterGuard {
   public:
    explicit DisableAdapterGuard(FourierFTModel& model) : model_(&model) { model_->disable_adapter_layers(); }
    DisableAdapterGuard(DisableAdapterGuard&& other) noexcept : model_(other.model_) { other.model_ = nullptr; }
    DisableAdapterGuard(const DisableAdapterGuard&) = delete;
    DisableAdapterGuard& operator=(const DisableAdapterGuard&) = delete;
    ~DisableAdapterGuard() {
      if (model_) model_->enable_adapter_layers();
    }

   private:
    FourierFTModel* model_;
  };
  [[nodiscard]] DisableAdapterGuard disable_adapter() { return DisableAdapterGuard(*this); }

  /// Mixed-adapter batch, as PEFT's `model(..., adapter_names=[...])`: while the guard lives, every forward on
  /// this thread sends row i (the first dimension of each adapted layer's input) through adapter
  /// `adapter_names_per_row[i]`, or through none for "__base__". Inference only: the model must be in eval
  /// mode; unknown names are an error before anything runs.
  class MixedBatchGuard {
   public:
    explicit MixedBatchGuard(MixedBatch batch);
    MixedBatchGuard(MixedBatchGuard&&) = delete;
    MixedBatchGuard(const MixedBatchGuard&) = delete;
    MixedBatchGuard& operator=(const MixedBatchGuard&) = delete;
    ~MixedBatchGuard();

   private:
    MixedBatch batch_;
    const MixedBatch* previous_;
  };
  [[nodiscard]] std::unique_ptr<MixedBatchGuard> mixed_batch(const std::vector<std::string>& adapter_names_per_row) const;
  /// The same with a per-row index tensor (int64 [rows]) into `adapters`, -1 for no adapter.
  [[nodiscard]] std::unique_ptr<MixedBatchGuard> mixed_batch(const torch::Tensor& row_adapter,
                                                             const std::vector<std::string>& adapters) const;

  /// Merges `adapter_names` (default: the active adapters) into the weights of every layer. With
  /// safe_merge every layer is checked for NaN/Inf before any weight changes.
  void merge_adapter(const std::optional<std::vector<std::string>>& adapter_names = std::nullopt,
                     bool safe_merge = false);
  void unmerge_adapter();
  /// Merges, then removes every adapter: the returned model is the plain model with merged weights.
  std::shared_ptr<torch::nn::Module> merge_and_unload(
      bool progressbar = false, bool safe_merge = false,
      const std::optional<std::vector<std::string>>& adapter_names = std::nullopt);
  /// Removes every adapter without merging: the weights as they are (deltas merged before stay merged, as in PEFT
  /// 0.21's unload()), with the active adapter's trained modules_to_save kept.
  std::shared_ptr<torch::nn::Module> unload();

  /// Drops every adapted layer's inference caches (each a weight-sized tensor); they are rebuilt on demand.
  void clear_caches();

  /// Parameters that require grad (what an optimizer should get).
  std::vector<torch::Tensor> trainable_parameters() const;
  /// (trainable, all) parameter counts, as PEFT's get_nb_trainable_parameters.
  std::pair<int64_t, int64_t> get_nb_trainable_parameters() const;
  /// "trainable params: N || all params: M || trainable%: P" (PEFT's line).
  void print_trainable_parameters(std::ostream& out = std::cout) const;

  /// What save_pretrained writes for `adapter_name` (PEFT's get_peft_model_state_dict): keys
  /// `base_model.model.<module path>.fourierft_spectrum`, the modules_to_save parameters
  /// `base_model.model.<module path>.<parameter>`, and with bias "all" / "fourier_only" the biases under
  /// the names they have in PEFT's wrapped model (`<path>.base_layer.bias` for an adapted layer).
  std::map<std::string, torch::Tensor> get_adapter_state_dict(const std::string& adapter_name = "default") const;
  /// PEFT's checkpoint layout: for each adapter (default: all), `adapter_config.json` and
  /// `adapter_model.safetensors` in `dir` for "default" and in `dir/<adapter>` otherwise; keys
  /// `base_model.model.<module path>.fourierft_spectrum` and, for modules_to_save,
  /// `base_model.model.<module path>.<parameter>`; dtypes kept. Files are written atomically.
  /// Only safetensors is supported (safe_serialization=false is an error).
  void save_pretrained(const std::string& dir,
                       const std::optional<std::vector<std::string>>& adapter_names = std::nullopt,
                       bool safe_serialization = true) const;
  /// Loads an adapter saved by PEFT or by save_pretrained into this model. Everything is read and
  /// checked first (config, peft_type, target modules, missing/unexpected keys, spectrum lengths):
  /// on any error the model is left exactly as it was. is_trainable=false freezes the spectra.
  void load_adapter(const std::string& dir, const std::string& adapter_name, bool is_trainable = false);
  /// PeftModel.from_pretrained: adapts `model` with the adapter saved in `dir`.
  static FourierFTModel from_pretrained(std::shared_ptr<torch::nn::Module> model, const std::string& dir,
                                        const std::string& adapter_name = "default", bool is_trainable = false);

  const std::map<std::string, FourierFTConfig>& peft_config() const { return configs_; }
  /// Module paths that carry `adapter_name`, in named_modules() order.
  std::vector<std::string> adapted_modules(const std::string& adapter_name = "default") const;
  /// The adapter-carrying layer at `module_name` (error if it has none).
  FourierFTLayer& layer(const std::string& module_name) const;

 private:
  struct Planned {
    std::string name;
    FourierFTLayer* layer;
    int64_t n_frequency;
  };
  explicit FourierFTModel(std::shared_ptr<torch::nn::Module> model);  // no adapter yet
  std::vector<Planned> plan_injection(const FourierFTConfig& config, const std::string& adapter_name) const;
  void inject(const std::string& adapter_name, const FourierFTConfig& requested);
  void mark_trainable();
  void track_modules_to_save(const std::string& adapter_name, const FourierFTConfig& config);
  void sync_modules_to_save();
  void drop_modules_to_save();
  std::vector<std::pair<std::string, FourierFTLayer*>> all_layers() const;
  // load_adapter's two halves: every check against the model (changes nothing), then the copy.
  struct CheckpointKeys;
  CheckpointKeys checkpoint_keys(const std::vector<Planned>& plan, const FourierFTConfig& config,
                                 const std::map<std::string, torch::Tensor>& tensors, const std::string& path,
                                 const std::string& adapter_name) const;
  void copy_checkpoint(const std::vector<Planned>& plan, const CheckpointKeys& keys,
                       const std::map<std::string, torch::Tensor>& tensors, const std::string& path,
                       const std::string& adapter_name);

  std::shared_ptr<torch::nn::Module> model_;
  std::map<std::string, FourierFTConfig> configs_;
  std::vector<std::string> adapter_order_;
  std::vector<std::string> active_adapters_;
  bool disabled_ = false;

  // modules_to_save: PEFT keeps the original module plus one trainable copy per adapter. LibTorch
  // parents call their children through member holders, so the module cannot be swapped; instead
  // the values are: the live parameters hold the active adapter's copy (or the original while
  // adapters are disabled or no active adapter saves this module), the other copies are kept here.
  struct SavedModule {
    std::vector<std::string> names;                         // parameter names within the module
    std::vector<torch::Tensor> live;                        // the module's parameters
    std::vector<torch::Tensor> original;                    // values before any adapter
    std::map<std::string, std::vector<torch::Tensor>> per_adapter;
    std::string owner;                                      // "" = original values are live
  };
  std::map<std::string, SavedModule> saved_modules_;
};

/// PEFT's entry point: adapts `model` in place and returns the controller.
FourierFTModel get_peft_model(std::shared_ptr<torch::nn::Module> model, const FourierFTConfig& config,
                              const std::string& adapter_name = "default");

}  // namespace fourierft
