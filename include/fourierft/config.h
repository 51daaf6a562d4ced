// FourierFTConfig: every field of PEFT's `peft.FourierFTConfig`, with the same defaults, PEFT's
// adapter_config.json round trip, and PEFT's target-module matching (one implementation, used by
// the C++ model walker and, through the bindings, by Python).
//
//   auto config = fourierft::FourierFTConfig()
//                     .n_frequency(1000)
//                     .scaling(150.0)
//                     .target_modules({"q", "v"});          // names; or a regex string
//   config.validate();
//
// Regular expressions (a string `target_modules` / `exclude_modules`, `n_frequency_pattern` keys,
// `layers_pattern`) use std::regex's ECMAScript grammar. It agrees with Python's `re` on the
// patterns PEFT configs use (alternation, groups, classes, `.*`, anchors); Python-only syntax such
// as `(?P<name>...)` or look-behind is rejected by validate() with the pattern in the message.
#pragma once

#include <torch/arg.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace fourierft {

/// A module selector written either as a list of names (exact match or a ".name" suffix) or as one
/// regular expression that must match the whole module name. Unset means "not given" (null in JSON).
struct ModuleSelector {
  ModuleSelector() = default;
  ModuleSelector(std::vector<std::string> names) : names(std::move(names)), set(true) {}
  ModuleSelector(std::initializer_list<std::string> names) : names(names), set(true) {}
  ModuleSelector(std::string regex) : regex(std::move(regex)), set(true) {}
  ModuleSelector(const char* regex) : regex(std::string(regex)), set(true) {}

  bool is_regex() const { return regex.has_value(); }
  bool empty() const { return !set || (!regex && names.empty()); }

  std::optional<std::string> regex;
  std::vector<std::string> names;
  bool set = false;
};

/// `layers_to_transform`: one index or a list (PEFT keeps the distinction in its JSON).
struct LayerIndices {
  LayerIndices() = default;
  LayerIndices(int64_t index) : indices{index}, single(true), set(true) {}
  LayerIndices(std::vector<int64_t> indices) : indices(std::move(indices)), set(true) {}
  LayerIndices(std::initializer_list<int64_t> indices) : indices(indices), set(true) {}

  std::vector<int64_t> indices;
  bool single = false;
  bool set = false;
};

/// `layers_pattern`: one pattern or a list.
struct LayerPatterns {
  LayerPatterns() = default;
  LayerPatterns(std::string pattern) : patterns{std::move(pattern)}, single(true), set(true) {}
  LayerPatterns(const char* pattern) : patterns{std::string(pattern)}, single(true), set(true) {}
  LayerPatterns(std::vector<std::string> patterns) : patterns(std::move(patterns)), set(true) {}

  std::vector<std::string> patterns;
  bool single = false;
  bool set = false;
};

/// Ordered (module-name regex -> n_frequency) pairs; the first match wins, as in PEFT's dict.
using FrequencyPattern = std::vector<std::pair<std::string, int64_t>>;

struct FourierFTConfig {
  /// Number of learnable spectral coefficients per adapted layer.
  TORCH_ARG(int64_t, n_frequency) = 1000;
  /// alpha in delta_W = Re(ifft2(F)) * alpha (like lora_alpha).
  TORCH_ARG(double, scaling) = 150.0;
  /// Seed of the entry matrix E (shared by every layer of the same shape).
  TORCH_ARG(int64_t, random_loc_seed) = 777;
  /// The targeted layers store weights as (fan_in, fan_out), like GPT-2's Conv1D.
  TORCH_ARG(bool, fan_in_fan_out) = false;
  /// Modules to adapt: names (exact or ".name" suffix), one regex (full match), or "all-linear".
  TORCH_ARG(ModuleSelector, target_modules);
  /// Modules never adapted (checked first): names or one regex.
  TORCH_ARG(ModuleSelector, exclude_modules);
  /// "none" | "all" | "fourier_only": which biases become trainable.
  TORCH_ARG(std::string, bias) = "none";
  /// Modules (e.g. a classifier head) made trainable and saved with the adapter; never adapted.
  TORCH_ARG(std::optional<std::vector<std::string>>, modules_to_save) = std::nullopt;
  /// Only adapt layers with these indices (needs list `target_modules`).
  TORCH_ARG(LayerIndices, layers_to_transform);
  /// Name of the layer container whose index `layers_to_transform` refers to ("layers", "h", ...).
  TORCH_ARG(LayerPatterns, layers_pattern);
  /// Per-module n_frequency: the first key (in insertion order) with a full match of
  /// `.*\.<key>$` against the module name wins, else n_frequency.
  TORCH_ARG(FrequencyPattern, n_frequency_pattern) = {};
  /// false: spectrum ~ randn (PEFT's default); true: zeros.
  TORCH_ARG(bool, init_weights) = false;
  TORCH_ARG(bool, inference_mode) = false;
  TORCH_ARG(std::optional<std::string>, base_model_name_or_path) = std::nullopt;
  TORCH_ARG(std::optional<std::string>, revision) = std::nullopt;
  TORCH_ARG(std::optional<std::string>, task_type) = std::nullopt;

 public:  // TORCH_ARG leaves the section private

  /// Throws c10::ValueError naming the field and the value for anything PEFT would reject or that
  /// cannot work: n_frequency <= 0, unknown bias, invalid regex, layers_pattern without
  /// layers_to_transform, layers_* with a regex target_modules, negative layer index, empty target
  /// list, non-finite scaling.
  void validate() const;

  /// The adapter_config.json PEFT writes for the same config (sorted keys, indent 2,
  /// `peft_type: "FOURIERFT"`).
  std::string to_json_string() const;
  /// Reads an adapter_config.json written by PEFT 0.21 or by us. A key that is not a field of
  /// PEFT's FourierFTConfig is refused, naming the key, its value and the PEFT version that saved the adapter
  /// (a newer PEFT's fields may change the math; only `alpha: null` and `ifft2_norm: "backward"`, which leave it
  /// unchanged, are accepted), as Python's loaders do; so are a `peft_type` other than FOURIERFT and a field of
  /// the wrong type. The result is validated.
  static FourierFTConfig from_json_string(const std::string& text, const std::string& source = "<string>");
};

/// What PEFT's `check_target_module_exists` plus FourierFT's n_frequency_pattern decide for one module.
struct TargetMatch {
  bool matched = false;   // the module gets an adapter
  bool excluded = false;  // matched exclude_modules or lies inside modules_to_save
  int64_t n_frequency = 0;  // the n_frequency it gets (when matched)
};

/// PEFT's target matching for the module named `key` (dotted path as in named_modules()).
/// `is_linear`/`is_output_head` are only consulted for target_modules == "all-linear".
TargetMatch match_target_module(const FourierFTConfig& config, const std::string& key,
                                bool is_linear = true, bool is_output_head = false);

}  // namespace fourierft
