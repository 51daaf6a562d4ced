#include <fourierft/config.h>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <regex>
#include <set>
#include <sstream>

namespace fourierft {
namespace {

using nlohmann::json;

// The PEFT versions whose FourierFTConfig this one reproduces (python/fourierft/config.py's SUPPORTED_PEFT).
constexpr const char* kSupportedPeft = ">=0.21,<0.22";

std::regex compile_regex(const std::string& pattern, const char* field) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& error) {
    TORCH_CHECK_VALUE(false, "FourierFTConfig.", field, ": invalid regular expression '", pattern,
                      "': ", error.what(),
                      " (std::regex ECMAScript grammar; Python-only syntax such as (?P<name>...) is "
                      "not supported)");
  }
  return {};
}

bool ends_with_component(const std::string& key, const std::string& name) {
  return key.size() > name.size() && key.compare(key.size() - name.size(), name.size(), name) == 0 &&
         key[key.size() - name.size() - 1] == '.';
}

// PEFT: `key in names or any(key.endswith("." + name) for name in names)`.
bool matches_names(const std::vector<std::string>& names, const std::string& key) {
  for (const auto& name : names) {
    if (key == name || ends_with_component(key, name)) return true;
  }
  return false;
}

json selector_to_json(const ModuleSelector& selector) {
  if (!selector.set) return nullptr;
  if (selector.regex) return *selector.regex;
  return selector.names;
}

ModuleSelector selector_from_json(const json& value, const char* key, const std::string& source) {
  if (value.is_null()) return {};
  if (value.is_string()) return ModuleSelector(value.get<std::string>());
  TORCH_CHECK_VALUE(value.is_array(), source, ": '", key,
                    "' must be null, a string (regex) or a list of strings, got ", value.dump());
  std::vector<std::string> names;
  for (const auto& item : value) {
    TORCH_CHECK_VALUE(item.is_string(), source, ": '", key, "' must hold strings, got ", item.dump());
    names.push_back(item.get<std::string>());
  }
  return ModuleSelector(std::move(names));
}

// PEFT's n_frequency_pattern: null or an object of integers.
std::vector<std::pair<std::string, int64_t>> n_frequency_pattern_from_json(const json& value,
                                                                           const std::string& source) {
  std::vector<std::pair<std::string, int64_t>> pattern;
  if (value.is_null()) return pattern;
  TORCH_CHECK_VALUE(value.is_object(), source, ": 'n_frequency_pattern' must be an object, got ", value.dump());
  for (const auto& [name, n] : value.items()) {
    TORCH_CHECK_VALUE(n.is_number_integer(), source, ": 'n_frequency_pattern[\"", name,
                      "\"]' must be an integer, got ", n.dump());
    pattern.emplace_back(name, n.get<int64_t>());
  }
  return pattern;
}

template <typename T>
T get_typed(const json& value, const char* key, const char* type_name, const std::string& source) {
  try {
    return value.get<T>();
  } catch (const json::exception&) {
    TORCH_CHECK_VALUE(false, source, ": '", key, "' must be ", type_name, ", got ", value.dump());
  }
  return T{};
}

std::optional<std::string> optional_string(const json& value, const char* key,
                                           const std::string& source) {
  if (value.is_null()) return std::nullopt;
  TORCH_CHECK_VALUE(value.is_string(), source, ": '", key, "' must be null or a string, got ",
                    value.dump());
  return value.get<std::string>();
}

}  // namespace

void FourierFTConfig::validate() const {
  TORCH_CHECK_VALUE(n_frequency_ > 0, "FourierFTConfig.n_frequency must be a positive integer, got ",
                    n_frequency_);
  TORCH_CHECK_VALUE(std::isfinite(scaling_), "FourierFTConfig.scaling must be finite, got ", scaling_);
  // PEFT's rule (BaseTuner._mark_only_adapters_as_trainable): "none", "all" or "<method>_only".
  const bool method_only = bias_.size() >= 5 && bias_.compare(bias_.size() - 5, 5, "_only") == 0;
  TORCH_CHECK_VALUE(bias_ == "none" || bias_ == "all" || method_only,
                    "FourierFTConfig.bias must be 'none', 'all' or '<method>_only' (e.g. 'fourier_only'), got '",
                    bias_, "'");
  TORCH_CHECK_VALUE(target_modules_.set, "FourierFTConfig.target_modules must be given: a list of "
                    "module names, a regex string or \"all-linear\"");
  TORCH_CHECK_VALUE(!target_modules_.empty(),
                    "FourierFTConfig.target_modules is empty: no module would be adapted");
  if (target_modules_.is_regex()) {
    compile_regex(*target_modules_.regex, "target_modules");
    TORCH_CHECK_VALUE(!layers_to_transform_.set,
                      "`layers_to_transform` cannot be used when `target_modules` is a str.");
    TORCH_CHECK_VALUE(!layers_pattern_.set,
                      "`layers_pattern` cannot be used when `target_modules` is a str.");
  }
  if (exclude_modules_.is_regex()) compile_regex(*exclude_modules_.regex, "exclude_modules");
  if (layers_pattern_.set && !layers_pattern_.patterns.empty()) {
    TORCH_CHECK_VALUE(layers_to_transform_.set,
                      "When `layers_pattern` is specified, `layers_to_transform` must also be "
                      "specified. (layers_pattern=", layers_pattern_.patterns.front(), ")");
    for (const auto& pattern : layers_pattern_.patterns) compile_regex(pattern, "layers_pattern");
  }
  for (const int64_t index : layers_to_transform_.indices) {
    TORCH_CHECK_VALUE(index >= 0, "FourierFTConfig.layers_to_transform must hold non-negative layer "
                      "indices, got ", index);
  }
  for (const auto& [key, n] : n_frequency_pattern_) {
    compile_regex(key, "n_frequency_pattern");
    TORCH_CHECK_VALUE(n > 0, "FourierFTConfig.n_frequency_pattern['", key,
                      "'] must be a positive integer, got ", n);
  }
}

std::string FourierFTConfig::to_json_string() const {
  json out;  // std::map-backed: keys sorted, as PEFT's json.dumps(sort_keys=True)
  out["auto_mapping"] = nullptr;
  out["base_model_name_or_path"] = base_model_name_or_path_ ? json(*base_model_name_or_path_) : json(nullptr);
  out["bias"] = bias_;
  out["exclude_modules"] = selector_to_json(exclude_modules_);
  out["fan_in_fan_out"] = fan_in_fan_out_;
  out["inference_mode"] = inference_mode_;
  out["init_weights"] = init_weights_;
  if (!layers_pattern_.set) {
    out["layers_pattern"] = nullptr;
  } else if (layers_pattern_.single) {
    out["layers_pattern"] = layers_pattern_.patterns.front();
  } else {
    out["layers_pattern"] = layers_pattern_.patterns;
  }
  if (!layers_to_transform_.set) {
    out["layers_to_transform"] = nullptr;
  } else if (layers_to_transform_.single) {
    out["layers_to_transform"] = layers_to_transform_.indices.front();
  } else {
    out["layers_to_transform"] = layers_to_transform_.indices;
  }
  out["modules_to_save"] = modules_to_save_ ? json(*modules_to_save_) : json(nullptr);
  out["n_frequency"] = n_frequency_;
  json pattern = json::object();
  for (const auto& [key, n] : n_frequency_pattern_) pattern[key] = n;
  out["n_frequency_pattern"] = pattern;
  out["peft_type"] = "FOURIERFT";
  out["random_loc_seed"] = random_loc_seed_;
  out["revision"] = revision_ ? json(*revision_) : json(nullptr);
  out["scaling"] = scaling_;
  out["target_modules"] = selector_to_json(target_modules_);
  out["task_type"] = task_type_ ? json(*task_type_) : json(nullptr);
  return out.dump(2, ' ', /*ensure_ascii=*/true);
}

namespace {
// Sets the config field named `key` from its JSON value (type-checked); false if FourierFTConfig has no such field.
bool set_field(FourierFTConfig& config, const std::string& key, const json& value, const std::string& source) {
  if (key == "n_frequency") {
    TORCH_CHECK_VALUE(value.is_number_integer(), source, ": 'n_frequency' must be an integer, got ", value.dump());
    config.n_frequency(value.get<int64_t>());
  } else if (key == "scaling") {
    TORCH_CHECK_VALUE(value.is_number(), source, ": 'scaling' must be a number, got ", value.dump());
    config.scaling(value.get<double>());
  } else if (key == "random_loc_seed") {
    TORCH_CHECK_VALUE(value.is_number_integer(), source, ": 'random_loc_seed' must be an integer, got ", value.dump());
    config.random_loc_seed(value.get<int64_t>());
  } else if (key == "fan_in_fan_out") {
    config.fan_in_fan_out(get_typed<bool>(value, "fan_in_fan_out", "a boolean", source));
  } else if (key == "init_weights") {
    config.init_weights(get_typed<bool>(value, "init_weights", "a boolean", source));
  } else if (key == "inference_mode") {
    config.inference_mode(get_typed<bool>(value, "inference_mode", "a boolean", source));
  } else if (key == "bias") {
    TORCH_CHECK_VALUE(value.is_string(), source, ": 'bias' must be a string, got ", value.dump());
    config.bias(value.get<std::string>());
  } else if (key == "target_modules") {
    config.target_modules(selector_from_json(value, "target_modules", source));
  } else if (key == "exclude_modules") {
    config.exclude_modules(selector_from_json(value, "exclude_modules", source));
  } else if (key == "modules_to_save") {
    if (!value.is_null()) {
      config.modules_to_save(get_typed<std::vector<std::string>>(value, "modules_to_save", "a list of strings", source));
    }
  } else if (key == "layers_to_transform") {
    if (value.is_number_integer()) {
      config.layers_to_transform(LayerIndices(value.get<int64_t>()));
    } else if (!value.is_null()) {
      config.layers_to_transform(LayerIndices(get_typed<std::vector<int64_t>>(
          value, "layers_to_transform", "null, an integer or a list of integers", source)));
    }
  } else if (key == "layers_pattern") {
    if (value.is_string()) {
      config.layers_pattern(LayerPatterns(value.get<std::string>()));
    } else if (!value.is_null()) {
      config.layers_pattern(LayerPatterns(get_typed<std::vector<std::string>>(
          value, "layers_pattern", "null, a string or a list of strings", source)));
    }
  } else if (key == "n_frequency_pattern") {
    config.n_frequency_pattern(n_frequency_pattern_from_json(value, source));
  } else if (key == "base_model_name_or_path") {
    config.base_model_name_or_path(optional_string(value, "base_model_name_or_path", source));
  } else if (key == "revision") {
    config.revision(optional_string(value, "revision", source));
  } else if (key == "task_type") {
    config.task_type(optional_string(value, "task_type", source));
  } else {
    return false;
  }
  return true;
}
}  // namespace

FourierFTConfig FourierFTConfig::from_json_string(const std::string& text, const std::string& source) {
  json in;
  try {
    in = json::parse(text);
  } catch (const json::parse_error& error) {
    TORCH_CHECK_VALUE(false, source, ": not valid JSON: ", error.what());
  }
  TORCH_CHECK_VALUE(in.is_object(), source, ": the adapter config must be a JSON object, got ",
                    in.type_name());
  const auto peft_type = in.find("peft_type");
  TORCH_CHECK_VALUE(peft_type != in.end() && peft_type->is_string(), source,
                    ": missing 'peft_type' (expected \"FOURIERFT\")");
  TORCH_CHECK_VALUE(peft_type->get<std::string>() == "FOURIERFT", source,
                    ": this adapter is of peft_type \"", peft_type->get<std::string>(),
                    "\", not \"FOURIERFT\"; fourierft only loads FourierFT adapters");

  FourierFTConfig config;
  // PeftConfig's bookkeeping, which changes nothing computed.
  static const std::set<std::string> kBookkeeping = {"peft_type", "auto_mapping", "peft_version"};
  // Fields a newer PEFT adds to FourierFTConfig that change the math, with the value that leaves it as here.
  static const std::map<std::string, json> kMathFields = {{"alpha", nullptr}, {"ifft2_norm", "backward"}};
  std::vector<std::string> refused;
  for (const auto& [key, value] : in.items()) {
    if (kBookkeeping.count(key) || set_field(config, key, value, source)) continue;
    const auto neutral = kMathFields.find(key);
    if (neutral == kMathFields.end() || value != neutral->second) refused.push_back(key + "=" + value.dump());
  }
  if (!refused.empty()) {
    const auto version = in.find("peft_version");
    std::ostringstream fields;
    for (size_t i = 0; i < refused.size(); ++i) fields << (i ? ", " : "") << refused[i];
    TORCH_CHECK_VALUE(false, source, ": ", fields.str(), ": not a field of PEFT's FourierFTConfig as fourierft "
                      "reproduces it (PEFT ", kSupportedPeft, "; this adapter was saved by PEFT ",
                      version != in.end() && version->is_string() ? version->get<std::string>() : "of unknown version",
                      "), and it may change the FourierFT math (alpha=null and ifft2_norm=\"backward\" are what "
                      "fourierft computes). Remove it or use a fourierft release that supports it.");
  }
  config.validate();
  return config;
}

TargetMatch match_target_module(const FourierFTConfig& config, const std::string& key, bool is_linear,
                                bool is_output_head) {
  TargetMatch result;
  const auto& exclude = config.exclude_modules();
  if (exclude.set) {
    const bool hit = exclude.is_regex()
                         ? std::regex_match(key, compile_regex(*exclude.regex, "exclude_modules"))
                         : matches_names(exclude.names, key);
    if (hit) {
      result.excluded = true;
      return result;
    }
  }
  // Adapters never go inside modules_to_save (PEFT: re.match(rf"(^|.*\.){m}($|\..*)", key)).
  if (config.modules_to_save()) {
    for (const auto& m : *config.modules_to_save()) {
      if (std::regex_match(key, compile_regex("(^|.*\\.)" + m + "($|\\..*)", "modules_to_save"))) {
        result.excluded = true;
        return result;
      }
    }
  }
  const auto& targets = config.target_modules();
  bool found = false;
  if (targets.is_regex() && *targets.regex == "all-linear") {
    found = is_linear && !is_output_head;
  } else if (targets.is_regex()) {
    found = std::regex_match(key, compile_regex(*targets.regex, "target_modules"));
  } else if (std::find(targets.names.begin(), targets.names.end(), key) != targets.names.end()) {
    found = true;  // named directly: layers_to_transform does not apply (as in PEFT)
  } else {
    found = matches_names(targets.names, key);
    const auto& layers = config.layers_to_transform();
    if (found && layers.set && !layers.indices.empty()) {
      std::optional<int64_t> index;
      std::smatch match;
      const auto& patterns = config.layers_pattern();
      if (!patterns.set || patterns.patterns.empty()) {
        // PEFT: re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key) -- the first numbered segment.
        static const std::regex any_layer("^.*?\\.[^.]*\\.(\\d+)\\.");
        if (std::regex_search(key, match, any_layer, std::regex_constants::match_continuous)) {
          index = std::stoll(match[1].str());
        }
      } else {
        for (const auto& pattern : patterns.patterns) {
          const std::regex layer("^(?:.*?\\.)?" + pattern + "\\.(\\d+)\\.");
          if (std::regex_search(key, match, layer, std::regex_constants::match_continuous)) {
            index = std::stoll(match[1].str());
            break;
          }
        }
      }
      found = index && std::find(layers.indices.begin(), layers.indices.end(), *index) !=
                           layers.indices.end();
    }
  }
  if (!found) return result;
  result.matched = true;
  result.n_frequency = config.n_frequency();
  bool pattern_found = false;
  for (const auto& [pattern_key, n] : config.n_frequency_pattern()) {
    // PEFT: re.match(rf".*\.{key}$", current_key) -- `$` also matches before a final newline,
    // which module names never contain.
    if (std::regex_match(key, compile_regex(".*\\." + pattern_key, "n_frequency_pattern"))) {
      result.n_frequency = n;
      pattern_found = true;
      break;
    }
  }
  if (!pattern_found) {  // PEFT then looks the full module name up as a key
    for (const auto& [pattern_key, n] : config.n_frequency_pattern()) {
      if (pattern_key == key) result.n_frequency = n;
    }
  }
  return result;
}

}  // namespace fourierft
