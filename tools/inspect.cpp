// fourierft-inspect <adapter dir>: what an adapter holds, without a model. Prints the config, each
// adapted module with its n_frequency and dtype, other saved tensors (modules_to_save), the total
// parameter count and the file sizes. Exit code 1 with the error message on a broken adapter.
#include <fourierft/config.h>
#include <fourierft/io.h>
#include <fourierft/peft_names.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  static const char* const usage =
      "usage: fourierft-inspect <adapter dir>\n"
      "  prints the adapter's config, each adapted module with its n_frequency and dtype, the other saved\n"
      "  tensors (modules_to_save) with their shapes, the parameter totals and the file sizes\n";
  if (argc == 2 && (std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h")) {
    std::fputs(usage, stdout);  // asked for: stdout, success
    return 0;
  }
  if (argc != 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  const fs::path dir = argv[1];
  try {
    const auto config_path = (dir / "adapter_config.json").string();
    const auto weights_path = (dir / "adapter_model.safetensors").string();
    std::ifstream in(config_path);
    TORCH_CHECK_VALUE(in.good(), "no adapter_config.json in ", dir.string());
    std::stringstream text;
    text << in.rdbuf();
    const auto config = fourierft::FourierFTConfig::from_json_string(text.str(), config_path);
    const auto file = fourierft::safetensors::load(weights_path);
    std::cout << "adapter: " << fs::absolute(dir).string() << "\n"
              << "peft_type: FOURIERFT  n_frequency: " << config.n_frequency() << "  scaling: " << config.scaling()
              << "  random_loc_seed: " << config.random_loc_seed() << "  bias: " << config.bias() << "\n";
    if (config.base_model_name_or_path()) std::cout << "base model: " << *config.base_model_name_or_path() << "\n";
    if (config.task_type()) std::cout << "task type: " << *config.task_type() << "\n";
    int64_t spectra = 0, others = 0, layers = 0;
    std::cout << "layers:\n";
    namespace names = fourierft::peft_names;
    std::vector<std::string> rest;  // the keys that are not spectra
    for (const auto& [key, tensor] : file.tensors) {
      const auto parsed = names::parse_key(key, weights_path);
      if (parsed.kind != names::Key::Kind::Spectrum) {
        rest.push_back(key);
        continue;
      }
      std::cout << "  " << parsed.path << "  n_frequency=" << tensor.numel() << "  " << tensor.scalar_type() << "\n";
      spectra += tensor.numel();
      ++layers;
    }
    for (const auto& key : rest) {
      const auto& tensor = file.tensors.at(key);
      if (others == 0) std::cout << "other saved tensors (modules_to_save):\n";
      std::cout << "  " << key << "  " << tensor.sizes() << "  " << tensor.scalar_type() << "\n";
      others += tensor.numel();
    }
    std::cout << "total: " << layers << " adapted layers, " << spectra << " spectral parameters";
    if (others) std::cout << " + " << others << " modules_to_save parameters";
    std::cout << "\nfiles: adapter_model.safetensors " << fs::file_size(weights_path) << " bytes, adapter_config.json "
              << fs::file_size(config_path) << " bytes\n";
    for (const auto& entry : fs::directory_iterator(dir)) {
      if (entry.is_directory() && fs::exists(entry.path() / "adapter_config.json")) {
        std::cout << "more adapters: " << entry.path().filename().string() << "/ (run fourierft-inspect on it)\n";
      }
    }
  } catch (const c10::Error& error) {
    std::cerr << "fourierft-inspect: " << error.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "fourierft-inspect: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
