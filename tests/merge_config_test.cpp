// Reading MergeKit-style YAML recipes: fields, defaults, gradients and filters, and the errors for bad files.
#include "merge/merge_config.h"

#include <gtest/gtest.h>

#include "core/error.h"

using namespace bamba;

namespace {

std::string error_of(const std::string& yaml) {
  try {
    parse_merge_config(yaml, "recipe.yml");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

double eval(const ParamSetting& s, std::string_view tensor, double t) {
  auto v = s.evaluate(tensor, t);
  EXPECT_TRUE(v.has_value());
  return v.value_or(-1);
}

}  // namespace

TEST(MergeConfig, ReadsALinearRecipe) {
  MergeConfig c = parse_merge_config(R"(
models:
  - model: /models/a
    parameters:
      weight: 0.7
  - model: /models/b
    parameters:
      weight: 0.3
merge_method: linear
parameters:
  normalize: false
dtype: bfloat16
out_dtype: torch.float16
)",
                                     "r.yml");
  EXPECT_EQ(c.method, MergeMethod::Linear);
  ASSERT_EQ(c.models.size(), 2u);
  EXPECT_EQ(c.models[0].path, "/models/a");
  EXPECT_EQ(eval(c.models[1].params.at("weight"), "x", 0), 0.3);
  EXPECT_EQ(eval(c.params.at("normalize"), "x", 0), 0.0);
  EXPECT_EQ(c.dtype, DType::BF16);
  EXPECT_EQ(c.out_dtype, DType::F16);
  EXPECT_TRUE(c.base_model.empty());
  EXPECT_TRUE(c.warnings.empty());
  EXPECT_NE(c.source_text.find("merge_method: linear"), std::string::npos);
}

TEST(MergeConfig, MethodDefaultsFollowMergeKit) {
  auto def = [](MergeMethod m, std::string_view name) {
    for (const auto& d : method_info(m).global)
      if (d.name == name) return d.default_value;
    return std::optional<double>(-1);
  };
  EXPECT_EQ(def(MergeMethod::Linear, "normalize"), 1.0);
  EXPECT_EQ(def(MergeMethod::TaskArithmetic, "normalize"), 0.0);
  EXPECT_EQ(def(MergeMethod::Ties, "normalize"), 1.0);
  EXPECT_EQ(def(MergeMethod::Ties, "rescale"), 0.0);
  EXPECT_EQ(def(MergeMethod::DareTies, "normalize"), 0.0);
  EXPECT_EQ(def(MergeMethod::DareTies, "rescale"), 1.0);
  EXPECT_EQ(def(MergeMethod::DareTies, "lambda"), 1.0);
  EXPECT_EQ(def(MergeMethod::Slerp, "t"), std::nullopt);  // required
}

TEST(MergeConfig, GradientsInterpolateOverTheLayers) {
  MergeConfig c = parse_merge_config(R"(
merge_method: slerp
base_model: /a
models: [{model: /a}, {model: /b}]
parameters:
  t: [0, 1, 0.5]
)",
                                     "r.yml");
  const ParamSetting& t = c.params.at("t");
  EXPECT_DOUBLE_EQ(eval(t, "x", 0.0), 0.0);
  EXPECT_DOUBLE_EQ(eval(t, "x", 0.25), 0.5);  // halfway between the first two values
  EXPECT_DOUBLE_EQ(eval(t, "x", 0.5), 1.0);
  EXPECT_DOUBLE_EQ(eval(t, "x", 0.75), 0.75);  // halfway between 1 and 0.5
  EXPECT_DOUBLE_EQ(eval(t, "x", 1.0), 0.5);
}

TEST(MergeConfig, FilterConditionsFirstMatchWins) {
  MergeConfig c = parse_merge_config(R"(
merge_method: slerp
base_model: /a
models: [{model: /a}, {model: /b}]
parameters:
  t:
    - filter: self_attn
      value: [0, 1]
    - filter: mamba
      value: 0.25
    - value: 0.5
)",
                                     "r.yml");
  const ParamSetting& t = c.params.at("t");
  EXPECT_DOUBLE_EQ(eval(t, "model.layers.1.self_attn.q_proj.weight", 0.5), 0.5);
  EXPECT_DOUBLE_EQ(eval(t, "model.layers.3.self_attn.q_proj.weight", 1.0), 1.0);
  EXPECT_DOUBLE_EQ(eval(t, "model.layers.0.mamba.in_proj.weight", 0.0), 0.25);
  EXPECT_DOUBLE_EQ(eval(t, "model.embed_tokens.weight", 0.0), 0.5);
  // Without a catch-all there is no value for other tensors (MergeKit then falls back to a default).
  c = parse_merge_config(
      "merge_method: slerp\nbase_model: /a\nmodels: [{model: /a}]\n"
      "parameters: {t: [{filter: mlp, value: 1}]}\n",
      "r.yml");
  EXPECT_FALSE(c.params.at("t").evaluate("model.norm.weight", 0).has_value());
}

TEST(MergeConfig, TaskVectorRecipeWithPerModelDensity) {
  MergeConfig c = parse_merge_config(R"(
merge_method: dare_ties
base_model: ./base
models:
  - model: ./base
  - model: ./math
    parameters: {weight: 0.5, density: 0.6}
  - model: ./code
    parameters: {weight: 0.5, density: [0.2, 0.8]}
parameters:
  int8_mask: true
  rescale: false
  lambda: 1.1
)",
                                     "r.yml");
  EXPECT_EQ(c.method, MergeMethod::DareTies);
  EXPECT_EQ(c.base_model, "./base");
  EXPECT_TRUE(c.models[0].params.empty());
  EXPECT_DOUBLE_EQ(eval(c.models[2].params.at("density"), "x", 0.5), 0.5);
  EXPECT_EQ(eval(c.params.at("int8_mask"), "x", 0), 1.0);
  EXPECT_EQ(eval(c.params.at("lambda"), "x", 0), 1.1);
  EXPECT_TRUE(c.warnings.empty());
}

TEST(MergeConfig, SettingsMergeKitIgnoresBecomeWarnings) {
  MergeConfig c = parse_merge_config(R"(
merge_method: linear
models:
  - model: /a
    parameters: {weight: 1, density: 0.5, normalize: false}
name: my-merge
chat_template: chatml
)",
                                     "r.yml");
  ASSERT_EQ(c.warnings.size(), 4u);
  EXPECT_NE(c.warnings[0].find("density"), std::string::npos);
  EXPECT_NE(c.warnings[1].find("normalize is read only from the top-level"), std::string::npos);
  EXPECT_EQ(c.models[0].params.count("density"), 0u);
}

TEST(MergeConfig, ErrorsNameTheFieldAndWhatWasExpected) {
  EXPECT_NE(error_of("models: [{model: /a}]\n").find("missing merge_method"), std::string::npos);
  EXPECT_NE(error_of("merge_method: average\nmodels: [{model: /a}]\n").find("unknown method \"average\""),
            std::string::npos);
  EXPECT_NE(error_of("merge_method: linear\n").find("missing models:"), std::string::npos);
  EXPECT_NE(error_of("merge_method: ties\nmodels: [{model: /a, parameters: {weight: 1}}]\n").find("needs base_model"),
            std::string::npos);
  EXPECT_NE(
      error_of("merge_method: linear\nmodels: [{model: /a}]\ndtype: float8\n").find("unsupported dtype \"float8\""),
      std::string::npos);
  EXPECT_NE(error_of("merge_method: linear\nmodels: [{path: /a}]\n").find("models[0]"), std::string::npos);
  EXPECT_NE(error_of("merge_method: linear\nmodels: [{model: /a, parameters: {weight: heavy}}]\n")
                .find("weight: expected a number or true/false, got \"heavy\""),
            std::string::npos);
  EXPECT_NE(error_of("merge_method: linear\nslices:\n  - sources: []\n").find("slices: is not supported"),
            std::string::npos);
  EXPECT_NE(error_of("merge_method: linear\nmodels: [{model: /a}]\ntokenizer_source: union\n")
                .find("only tokenizer_source: base"),
            std::string::npos);
  std::string syntax = error_of("merge_method: linear\nmodels:\n  - model: [unclosed\n");
  EXPECT_NE(syntax.find("recipe.yml:"), std::string::npos) << syntax;
  EXPECT_NE(syntax.find("not valid YAML"), std::string::npos) << syntax;
  EXPECT_NE(error_of("- just\n- a list\n").find("expected a YAML map"), std::string::npos);
}

TEST(MergeConfig, DtypeNames) {
  DType t;
  EXPECT_TRUE(parse_merge_dtype("bfloat16", &t) && t == DType::BF16);
  EXPECT_TRUE(parse_merge_dtype("torch.float16", &t) && t == DType::F16);
  EXPECT_TRUE(parse_merge_dtype("float32", &t) && t == DType::F32);
  EXPECT_FALSE(parse_merge_dtype("int8", &t));
  EXPECT_EQ(torch_dtype_name(DType::BF16), "bfloat16");
}
