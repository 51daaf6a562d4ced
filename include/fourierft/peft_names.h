// PEFT's names in an adapter file (adapter_model.safetensors as PeftModel.save_pretrained writes it), in one place
// for the C++ model, fourierft-merge, fourierft-inspect and the Python package (bound as fourierft._C).
//
//   base_model.model.<module path>.fourierft_spectrum   the spectrum of the adapted module (adapter name dropped)
//   base_model.model.<module path>.base_layer.bias      an adapted layer's bias (bias="all" / "fourier_only")
//   base_model.model.<module path>.<param>              any other parameter: a modules_to_save module's, a bias
//   base_model.model.<module path>.original_module.<param> / .modules_to_save.<param>
//                                                       a modules_to_save wrapper's copies of <path>.<param>
//                                                       (bias="all" saves them beside it)
//
// In a module tree PEFT built (Python), names carry the wrappers' segments: "<path>.base_layer.<param>",
// "<path>.original_module.<param>", "<path>.modules_to_save.<adapter>.<param>"; peft_module_name drops them.
#pragma once

#include <string>

namespace fourierft::peft_names {

inline constexpr const char* kPrefix = "base_model.model.";
inline constexpr const char* kSpectrum = "fourierft_spectrum";

// "base_model.model.<module_path>.fourierft_spectrum"
std::string spectrum_key(const std::string& module_path);
// "base_model.model.<module_path>.base_layer.<param>": a parameter of an adapted layer's base (its bias)
std::string base_layer_key(const std::string& module_path, const std::string& param);
// "base_model.model.<name>": any other parameter under its own name
std::string parameter_key(const std::string& name);
// "base_model.model.<module_path>.original_module.<param>" / ".modules_to_save.<param>"
std::string original_module_key(const std::string& module_path, const std::string& param);
std::string modules_to_save_key(const std::string& module_path, const std::string& param);

// What a key of an adapter file names.
struct Key {
  enum class Kind {
    Spectrum,     // path: the adapted module
    Parameter,    // path: the base model's parameter it replaces (".base_layer" dropped)
    WrapperCopy,  // path: the parameter "<module>.<param>" whose modules_to_save wrapper copy this is
  };
  Kind kind;
  std::string path;
};
// Throws c10::ValueError naming `file` and the key when it does not start with "base_model.model.".
Key parse_key(const std::string& key, const std::string& file);

// A module-tree name as PEFT writes it in a file: the wrappers' segments dropped ("base_layer", "original_module",
// "modules_to_save.<adapter>").
std::string peft_module_name(const std::string& name);

}  // namespace fourierft::peft_names
