// FourierFTConfig: validation, PEFT's adapter_config.json, and the target-matching table shared
// with the Python tests (tests/data/target_matching.json, checked there against peft itself).
#include "test_helpers.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

using fourierft::FourierFTConfig;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

FourierFTConfig config_from_fields(const nlohmann::json& fields) {
  nlohmann::json full = fields;
  full["peft_type"] = "FOURIERFT";
  return FourierFTConfig::from_json_string(full.dump(), "target_matching.json");
}

// Every field set to a non-default value.
FourierFTConfig full_config(fourierft::ModuleSelector targets) {
  return FourierFTConfig()
      .target_modules(std::move(targets))
      .n_frequency(3000)
      .scaling(29.5)
      .random_loc_seed(-4)
      .exclude_modules(".*\\.7\\..*")
      .bias("fourier_only")
      .modules_to_save(std::vector<std::string>{"classifier"})
      .layers_to_transform(std::vector<int64_t>{0, 3})
      .layers_pattern("layer")
      .n_frequency_pattern({{"value", 100}, {"query", 7}})
      .init_weights(true)
      .inference_mode(true)
      .base_model_name_or_path("sentence-transformers/all-MiniLM-L6-v2")
      .task_type("SEQ_CLS");
}

TEST(TargetMatching, SharedTableAgrees) {
  const auto table = nlohmann::json::parse(read_file(FOURIERFT_TEST_DATA_DIR "/target_matching.json"));
  int checked = 0;
  for (const auto& group : table["groups"]) {
    const auto config = config_from_fields(group["config"]);
    for (const auto& c : group["cases"]) {
      const std::string key = c["key"];
      const auto result = fourierft::match_target_module(config, key);
      EXPECT_EQ(result.matched, c["matched"].get<bool>()) << group["name"] << ": " << key;
      if (c["matched"].get<bool>()) {
        EXPECT_EQ(result.n_frequency, c["n_frequency"].get<int64_t>()) << group["name"] << ": " << key;
      }
      ++checked;
    }
  }
  EXPECT_GE(checked, 40);
}

TEST(TargetMatching, AllLinearSkipsOutputHeadAndNonLinear) {
  const auto config = FourierFTConfig().target_modules("all-linear");
  EXPECT_TRUE(fourierft::match_target_module(config, "encoder.fc1", true, false).matched);
  EXPECT_FALSE(fourierft::match_target_module(config, "lm_head", true, true).matched);
  EXPECT_FALSE(fourierft::match_target_module(config, "encoder.norm", false, false).matched);
}

TEST(FourierFTConfig, DefaultsAreThoseOfPeft) {
  const FourierFTConfig config;
  EXPECT_EQ(config.n_frequency(), 1000);
  EXPECT_EQ(config.scaling(), 150.0);
  EXPECT_EQ(config.random_loc_seed(), 777);
  EXPECT_FALSE(config.fan_in_fan_out());
  EXPECT_EQ(config.bias(), "none");
  EXPECT_FALSE(config.init_weights());
  EXPECT_FALSE(config.target_modules().set);
}

TEST(FourierFTConfig, ValidateNamesFieldAndValue) {
  auto ok = FourierFTConfig().target_modules({"q"});
  EXPECT_NO_THROW(ok.validate());
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).n_frequency(0).validate(), "n_frequency", "got 0");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).bias("sometimes").validate(), "bias", "'sometimes'");
  // PEFT accepts any "<method>_only" (its own suite trains FourierFT with bias="fourierft_only").
  EXPECT_NO_THROW(FourierFTConfig(ok).bias("fourierft_only").validate());
  EXPECT_NO_THROW(FourierFTConfig(ok).bias("_only").validate());  // as PEFT: bias.endswith("_only")
  EXPECT_ERROR_CONTAINS(FourierFTConfig().target_modules("q(").validate(), "target_modules",
                        "invalid regular expression 'q('");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).layers_pattern("layers").validate(),
                        "`layers_to_transform` must also be specified", "layers_pattern=layers");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).layers_to_transform(std::vector<int64_t>{0, -2}).validate(),
                        "layers_to_transform", "got -2");
  EXPECT_ERROR_CONTAINS(FourierFTConfig().target_modules(std::vector<std::string>{}).validate(),
                        "target_modules is empty");
  EXPECT_ERROR_CONTAINS(FourierFTConfig().validate(), "target_modules must be given");
  EXPECT_ERROR_CONTAINS(FourierFTConfig().target_modules(".*q").layers_to_transform(1).validate(),
                        "`layers_to_transform` cannot be used when `target_modules` is a str.");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).n_frequency_pattern({{"k", -1}}).validate(),
                        "n_frequency_pattern['k']", "got -1");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).exclude_modules("[").validate(), "exclude_modules", "'['");
  EXPECT_ERROR_CONTAINS(FourierFTConfig(ok).scaling(std::numeric_limits<double>::infinity()).validate(),
                        "scaling must be finite");
}

TEST(FourierFTConfig, JsonRoundTripKeepsEveryField) {
  const auto config = full_config({"query", "value"});
  const auto text = config.to_json_string();
  const auto back = FourierFTConfig::from_json_string(text);
  EXPECT_EQ(back.to_json_string(), text);
  EXPECT_EQ(back.n_frequency(), 3000);
  EXPECT_EQ(back.random_loc_seed(), -4);
  EXPECT_EQ(back.exclude_modules().regex.value(), ".*\\.7\\..*");
  EXPECT_EQ(back.layers_to_transform().indices, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(back.layers_pattern().single);
  const auto json = nlohmann::json::parse(text);
  EXPECT_EQ(json["peft_type"], "FOURIERFT");
  EXPECT_EQ(json["scaling"], 29.5);
  EXPECT_EQ(json["n_frequency_pattern"]["value"], 100);
  EXPECT_TRUE(json["auto_mapping"].is_null());
  EXPECT_TRUE(json["revision"].is_null());
  // Sorted keys and two-space indent, as PEFT's json.dumps(indent=2, sort_keys=True).
  EXPECT_EQ(text.rfind("{\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\"", 0), 0u) << text;
}

// tests/data/peft_written_adapter_config.json was written by peft 0.21.2's save_pretrained for
// this same config; we write the same text, except for PEFT's own version stamp.
TEST(FourierFTConfig, WritesTheAdapterConfigPeftWrites) {
  const auto config = full_config({"query"});
  std::string peft_text = read_file(FOURIERFT_TEST_DATA_DIR "/peft_written_adapter_config.json");
  const std::string stamp = "  \"peft_version\": \"0.21.2\",\n";
  ASSERT_NE(peft_text.find(stamp), std::string::npos);
  peft_text.erase(peft_text.find(stamp), stamp.size());
  EXPECT_EQ(config.to_json_string(), peft_text);
  EXPECT_EQ(FourierFTConfig::from_json_string(read_file(FOURIERFT_TEST_DATA_DIR "/peft_written_adapter_config.json"))
                .to_json_string(),
            peft_text);
}

TEST(FourierFTConfig, ReadsPeftMetaMathQAConfigs) {
  const auto n1000 = FourierFTConfig::from_json_string(
      read_file(FOURIERFT_TEST_DATA_DIR "/metamathqa_fourierft_n1000.json"), "n1000");
  EXPECT_EQ(n1000.n_frequency(), 1000);
  EXPECT_EQ(n1000.scaling(), 300.0);
  EXPECT_EQ(n1000.target_modules().names, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(n1000.task_type().value(), "CAUSAL_LM");
  // The n5000 file carries a key of no PEFT release (some_future_field): refused, as Python's loaders refuse it.
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string(
                            read_file(FOURIERFT_TEST_DATA_DIR "/metamathqa_fourierft_n5000.json"), "n5000"),
                        "n5000: some_future_field=3: not a field of PEFT's FourierFTConfig", "PEFT >=0.21,<0.22",
                        "saved by PEFT of unknown version");
}

TEST(FourierFTConfig, FieldsThatChangeTheMathAreRefusedUnlessNeutral) {
  const std::string base = R"({"peft_type": "FOURIERFT", "target_modules": ["q"], "peft_version": "0.23.0", )";
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string(base + R"("ifft2_norm": "ortho"})", "cfg.json"),
                        "cfg.json: ifft2_norm=\"ortho\": not a field", "saved by PEFT 0.23.0");
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string(base + R"("alpha": 2.0})", "cfg.json"),
                        "cfg.json: alpha=2.0: not a field");
  // At the values that leave the math as fourierft computes it, a newer PEFT's adapter loads.
  const auto neutral = FourierFTConfig::from_json_string(base + R"("alpha": null, "ifft2_norm": "backward"})");
  EXPECT_EQ(neutral.target_modules().names, std::vector<std::string>{"q"});
}

TEST(FourierFTConfig, BadJsonGivesClearErrors) {
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string("{", "cfg.json"), "cfg.json", "not valid JSON");
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string("[1]", "cfg.json"), "must be a JSON object");
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string(R"({"peft_type": "LORA", "r": 8})", "cfg.json"),
                        "peft_type \"LORA\"", "FOURIERFT");
  EXPECT_ERROR_CONTAINS(FourierFTConfig::from_json_string(R"({"target_modules": ["q"]})", "cfg.json"),
                        "missing 'peft_type'");
  EXPECT_ERROR_CONTAINS(
      FourierFTConfig::from_json_string(R"({"peft_type": "FOURIERFT", "target_modules": ["q"], "n_frequency": "1000"})", "cfg.json"),
      "'n_frequency' must be an integer", "\"1000\"");
  EXPECT_ERROR_CONTAINS(
      FourierFTConfig::from_json_string(R"({"peft_type": "FOURIERFT", "target_modules": [1]})", "cfg.json"),
      "'target_modules' must hold strings");
  EXPECT_ERROR_CONTAINS(
      FourierFTConfig::from_json_string(R"({"peft_type": "FOURIERFT", "target_modules": ["q"], "fan_in_fan_out": 1})", "cfg.json"),
      "'fan_in_fan_out' must be a boolean");
  EXPECT_ERROR_CONTAINS(
      FourierFTConfig::from_json_string(R"({"peft_type": "FOURIERFT", "target_modules": ["q"], "n_frequency": -5})", "cfg.json"),
      "n_frequency must be a positive integer", "got -5");
}

}  // namespace
