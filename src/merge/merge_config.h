// MergeConfig: a MergeKit-style merge recipe (YAML) as plain data. Parsing checks what the file alone can tell
// (types, method names, dtypes, parameter names); whatever depends on the models is checked by the merger.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace bamba {

enum class MergeMethod { Linear, Slerp, TaskArithmetic, Ties, DareTies, DareLinear };

// A parameter MergeKit knows for a method, with its default (none: required).
struct ParamDef {
  std::string_view name;
  std::optional<double> default_value;
};

// What a method reads and how it combines task vectors (see docs/merge.md for the formulas).
struct MethodInfo {
  MergeMethod method = MergeMethod::Linear;
  std::string_view name;      // as written in merge_method:
  bool needs_base = false;    // slerp and the task-vector methods
  bool task_vectors = false;  // works on deltas from the base (task_arithmetic, ties, dare_*)
  enum Sparsify { None, Magnitude, Random } sparsify = None;
  bool sign_consensus = false;      // TIES sign election
  std::vector<ParamDef> global;     // top-level parameters:
  std::vector<ParamDef> per_model;  // models[i].parameters: (or top-level as a fallback)
};
const MethodInfo& method_info(MergeMethod m);

// One parameter value as MergeKit accepts it: a scalar; a gradient [v0, ..., vk] interpolated over the layers;
// or a list of {filter, value} conditions where the first whose filter is a substring of the tensor name (or
// that has no filter, or filter "*") supplies the value. Booleans are stored as 0/1.
struct ParamSetting {
  struct Condition {
    std::string filter;          // "" matches every tensor
    std::vector<double> values;  // one value: a scalar; more: a gradient
  };
  std::vector<Condition> conditions;

  // The value for `tensor` at layer fraction t in [0, 1]; nullopt when no condition matches.
  std::optional<double> evaluate(std::string_view tensor, double t) const;
};
using ParamMap = std::map<std::string, ParamSetting, std::less<>>;

struct MergeModel {
  std::string path;  // a local folder, as written
  ParamMap params;
};

struct MergeConfig {
  MergeMethod method = MergeMethod::Linear;
  std::vector<MergeModel> models;
  std::string base_model;             // "" = none
  ParamMap params;                    // top-level parameters:
  std::optional<DType> dtype;         // inputs are rounded to this before the arithmetic
  std::optional<DType> out_dtype;     // dtype of the written tensors (default: dtype, else the base model's)
  std::string label;                  // the YAML's path, for messages
  std::string source_text;            // the YAML as read; saved next to the weights as mergekit_config.yml
  std::vector<std::string> warnings;  // MergeKit settings that are accepted but have no effect here
};

MergeConfig parse_merge_config(const std::string& yaml_text, const std::string& label);
MergeConfig load_merge_config(const std::string& path);

// "bfloat16", "float16", "float32" (optionally "torch."-prefixed) and the short forms bf16, fp16, fp32.
bool parse_merge_dtype(std::string_view name, DType* out);
std::string_view torch_dtype_name(DType t);  // "bfloat16", ... as config.json spells it

}  // namespace bamba
