// The C++ walker held to PEFT: tests/data/peft_semantics.json records what the real `peft` package does
// (written by tests/data/make_peft_semantics.py, re-checked against the installed peft by
// tests/python/test_semantics.py). Each case builds the same module tree with fourierft::Linear
// leaves, runs the same operations on fourierft::FourierFTModel, and compares the state after each one:
// adapted modules per adapter, active adapters, trainable parameters, checkpoint keys, errors, warnings,
// and what unload / merge_and_unload return.
#include "test_helpers.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>

using fourierft::FourierFTConfig;
using fourierft::FourierFTModel;
using json = nlohmann::json;

namespace {

json load_table() {
  std::ifstream file(FOURIERFT_TEST_DATA_DIR "/peft_semantics.json");
  std::stringstream text;
  text << file.rdbuf();
  return json::parse(text.str());
}

// The tree of a case: intermediate modules are plain torch::nn::Module, leaves fourierft::Linear
// (PEFT's nn.Linear) or torch::nn::LayerNorm.
std::shared_ptr<torch::nn::Module> build(const json& tree) {
  auto root = std::make_shared<torch::nn::Module>();
  for (const auto& leaf : tree) {
    const std::string path = leaf[0];
    std::shared_ptr<torch::nn::Module> parent = root;
    std::stringstream parts(path);
    std::vector<std::string> names;
    for (std::string part; std::getline(parts, part, '.');) names.push_back(part);
    for (size_t i = 0; i + 1 < names.size(); ++i) {
      auto children = parent->named_children();
      if (auto* child = children.find(names[i])) {
        parent = *child;
      } else {
        parent = parent->register_module(names[i], std::make_shared<torch::nn::Module>());
      }
    }
    if (leaf[1] == "linear") {
      parent->register_module(names.back(),
                              fourierft::Linear(torch::nn::LinearOptions(leaf[2], leaf[3]).bias(leaf[4].get<bool>())));
    } else {
      parent->register_module(names.back(), torch::nn::LayerNorm(torch::nn::LayerNormOptions({leaf[2].get<int64_t>()})));
    }
  }
  return root;
}

FourierFTConfig config_of(const json& fields) {
  json full = fields;
  full["peft_type"] = "FOURIERFT";
  return FourierFTConfig::from_json_string(full.dump(), "peft_semantics.json");
}

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

json state(const FourierFTModel& peft) {
  json out;
  json adapted = json::object();
  for (const auto& [name, config] : peft.peft_config()) {
    auto modules = sorted(peft.adapted_modules(name));
    if (!modules.empty()) adapted[name] = modules;
  }
  out["adapted"] = adapted;
  out["active"] = peft.active_adapters();
  std::set<std::string> trainable;
  for (const auto& p : peft.model()->named_parameters()) {
    if (p.value().requires_grad()) trainable.insert(p.key());
  }
  out["trainable"] = std::vector<std::string>(trainable.begin(), trainable.end());
  json saved = json::object();
  for (const auto& [name, config] : peft.peft_config()) {
    std::vector<std::string> keys;
    for (const auto& [key, tensor] : peft.get_adapter_state_dict(name)) keys.push_back(key);
    saved[name] = sorted(keys);
  }
  out["saved_keys"] = saved;
  return out;
}

// Collects TORCH_WARN messages (first sentence, as the table records them).
struct WarningCollector : c10::WarningHandler {
  std::set<std::string> messages;
  void process(const c10::Warning& warning) override {
    const std::string text = warning.msg();
    if (text.find("fan_in_fan_out") != std::string::npos) return;
    messages.insert(text.substr(0, text.find('.')));
  }
};

void shift(const std::shared_ptr<torch::nn::Module>& model, const json& names, double by) {
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  for (const std::string name : names) {
    auto* p = params.find(name);
    ASSERT_NE(p, nullptr) << name;
    p->add_(by);
  }
}

// 'trained' if the module holds original + 1 (what train_heads set), 'original' if the base values.
std::string head_values(const std::shared_ptr<torch::nn::Module>& model,
                        const std::map<std::string, torch::Tensor>& original, const std::string& head) {
  const auto now = model->named_parameters().find(head + ".weight");
  if (now == nullptr) return "missing";
  const auto& before = original.at(head + ".weight");
  if (torch::allclose(*now, before + 1.0)) return "trained";
  if (torch::equal(*now, before)) return "original";
  return "other";
}

// The C++ error for PEFT's: C++ has no KeyError, and refuses a bad config value with c10::ValueError where PEFT
// raises NotImplementedError (bias): both are the library's ValueError.
json expected_error(const json& peft_error) {
  return peft_error == "KeyError" || peft_error == "NotImplementedError" ? json("ValueError") : peft_error;
}

class PeftSemantics : public ::testing::TestWithParam<int> {};

TEST_P(PeftSemantics, SameOutcomeAsPeft) {
  static const json table = load_table();
  const json& c = table["cases"][GetParam()];
  SCOPED_TRACE(c["name"].get<std::string>());
  torch::manual_seed(0);
  auto model = build(c["tree"]);
  std::map<std::string, torch::Tensor> original;
  for (const auto& p : model->named_parameters()) original[p.key()] = p.value().detach().clone();
  std::optional<FourierFTModel> peft;
  int index = 0;
  for (const auto& step : c["steps"]) {
    const std::string op = step["op"];
    const json& expect = step["expect"];
    SCOPED_TRACE("step " + std::to_string(index++) + ": " + op + " " + step.value("adapter", ""));
    json got = json::object();
    WarningCollector collector;
    std::string error;
    {
      c10::WarningUtils::WarningHandlerGuard guard(&collector);
      try {
        if (op == "get_peft_model") {
          peft.emplace(fourierft::get_peft_model(model, config_of(step["config"])));
        } else if (op == "add_adapter") {
          peft->add_adapter(step["adapter"], config_of(step["config"]));
        } else if (op == "set_adapter") {
          peft->set_adapter(step["adapter"].get<std::string>());
        } else if (op == "delete_adapter") {
          peft->delete_adapter(step["adapter"]);
        } else if (op == "merge_adapter") {
          peft->merge_adapter();
        } else if (op == "unmerge_adapter") {
          peft->unmerge_adapter();
        } else if (op == "disable_adapter_layers") {
          peft->disable_adapter_layers();
        } else if (op == "enable_adapter_layers") {
          peft->enable_adapter_layers();
        } else if (op == "train_heads") {
          shift(model, expect["shifted"], 1.0);
        } else if (op == "unload" || op == "merge_and_unload") {
          auto plain = op == "unload" ? peft->unload() : peft->merge_and_unload();
          std::vector<std::string> names;
          for (const auto& p : plain->named_parameters()) names.push_back(p.key());
          got["model_params"] = sorted(names);
          json heads = json::object();
          for (const auto& item : expect["heads"].items()) heads[item.key()] = head_values(plain, original, item.key());
          got["heads"] = heads;
          std::vector<std::string> changed;
          for (const auto& p : plain->named_parameters()) {
            const auto& name = p.key();
            if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
                !torch::equal(p.value(), original.at(name))) {
              changed.push_back(name);
            }
          }
          got["weights_changed"] = sorted(changed);
        } else {
          FAIL() << "unknown op " << op;
        }
      } catch (const c10::ValueError&) {
        error = "ValueError";
      } catch (const c10::TypeError&) {
        error = "TypeError";
      } catch (const c10::Error& e) {
        error = std::string("c10::Error: ") + e.what_without_backtrace();
      }
    }
    if (!error.empty()) {
      got["error"] = error;
    } else {
      got["warnings"] = std::vector<std::string>(collector.messages.begin(), collector.messages.end());
    }
    if (op == "get_peft_model" && !error.empty()) {
      EXPECT_EQ(got["error"], expected_error(expect.value("error", json("")))) << "PEFT: " << expect.dump();
      // a failed get_peft_model leaves the model as it was
      for (const auto& p : model->named_parameters()) {
        EXPECT_TRUE(original.count(p.key())) << p.key();
        EXPECT_TRUE(torch::equal(p.value(), original.at(p.key()))) << p.key();
      }
      break;
    }
    if (peft && !got.contains("model_params")) got.update(state(*peft));
    for (const auto& [key, value] : expect.items()) {
      if (key == "shifted") continue;
      const json wanted = key == "error" ? expected_error(value) : value;
      EXPECT_EQ(got.value(key, json()), wanted) << "field '" << key << "' differs from PEFT";
    }
    if (got.contains("model_params")) peft.reset();
  }
}

INSTANTIATE_TEST_SUITE_P(Table, PeftSemantics, ::testing::Range(0, static_cast<int>(load_table()["cases"].size())),
                         [](const ::testing::TestParamInfo<int>& info) { return "case" + std::to_string(info.param); });

}  // namespace
