#include <fourierft/peft_names.h>

#include <c10/util/Exception.h>

#include <sstream>
#include <vector>

namespace fourierft::peft_names {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> split(const std::string& name) {
  std::vector<std::string> parts;
  std::stringstream stream(name);
  for (std::string part; std::getline(stream, part, '.');) parts.push_back(part);
  return parts;
}

}  // namespace

std::string spectrum_key(const std::string& module_path) {
  return kPrefix + module_path + "." + kSpectrum;
}

std::string base_layer_key(const std::string& module_path, const std::string& param) {
  return kPrefix + (module_path.empty() ? "" : module_path + ".") + "base_layer." + param;
}

std::string parameter_key(const std::string& name) { return kPrefix + name; }

std::string original_module_key(const std::string& module_path, const std::string& param) {
  return kPrefix + module_path + ".original_module." + param;
}

std::string modules_to_save_key(const std::string& module_path, const std::string& param) {
  return kPrefix + module_path + ".modules_to_save." + param;
}

Key parse_key(const std::string& key, const std::string& file) {
  const std::string prefix = kPrefix;
  TORCH_CHECK_VALUE(key.rfind(prefix, 0) == 0, file, ": tensor '", key, "' does not start with '", prefix,
                    "' (not a PEFT adapter file)");
  std::string name = key.substr(prefix.size());
  const std::string spectrum = std::string(".") + kSpectrum;
  if (ends_with(name, spectrum)) return {Key::Kind::Spectrum, name.substr(0, name.size() - spectrum.size())};
  for (const char* wrapper : {".original_module.", ".modules_to_save."}) {
    const auto at = name.find(wrapper);
    if (at != std::string::npos) {
      return {Key::Kind::WrapperCopy, name.substr(0, at) + "." + name.substr(at + std::string(wrapper).size())};
    }
  }
  const std::string base_layer = ".base_layer.";
  const auto at = name.find(base_layer);
  if (at != std::string::npos) name.erase(at, base_layer.size() - 1);
  else if (name.rfind("base_layer.", 0) == 0) name.erase(0, base_layer.size() - 1);
  return {Key::Kind::Parameter, name};
}

std::string peft_module_name(const std::string& name) {
  const auto parts = split(name);
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (parts[i] == "base_layer" || parts[i] == "original_module") continue;
    if (parts[i] == "modules_to_save" && i + 1 < parts.size()) {
      ++i;  // and the adapter name after it
      continue;
    }
    out += (out.empty() ? "" : ".") + parts[i];
  }
  return out;
}

}  // namespace fourierft::peft_names
