// What several subcommands share: which model (a folder, the built-in model, or the generated-weights dummy), on
// which device, its tokenizer and stop tokens.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "backend/backend.h"
#include "model/hybrid.h"
#include "tokenizer/tokenizer.h"

namespace bamba::cli {

// --deterministic (batch invariance, docs/serving.md): prompts are computed in chunks ending at multiples of this
// many tokens, in `serve`, `generate` and `logits` alike, so the three give a request the same bits.
constexpr int32_t kDeterministicChunk = 256;
// --fp8-lm-head's help (run, serve, eval, ... and bench).
inline constexpr const char* kFp8LmHeadHelp =
    "With --quantization fp8, lm_head in FP8 too (left bf16 by default, as vLLM does): its bytes halve, ~0.5 GB less "
    "a decode step on Bamba-9B; the logits' error is measured in docs/quantization.md";

struct ModelOptions {
  std::string model;  // empty: the built-in model (builtin_model_dir); "dummy": the generated-weights tiny model
  std::string device = "auto";
  std::string dtype = "auto";  // compute dtype on the GPU (backend.h compute_dtype)
  int32_t max_model_len = 0;  // 0: min(max_position_embeddings, 8192)
  int32_t tensor_parallel_size = 1;  // ranks the model is split over (threads on the CPU, one GPU each on CUDA)
  std::string quantization = "none";  // "fp8": linear weights quantized at load (model/weights.h quantize_weights_fp8)
  bool fp8_lm_head = false;            // with fp8: lm_head too
  bool quiet = false;
  std::string preset;  // instead of model: a preset shape with generated weights (model/presets.h); only where
                       // a command offers --preset

  void add_to(CLI::App* cmd, bool with_max_len = true);
};

struct LoadedModel {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<HybridModel> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the folder has no tokenizer.json
  std::vector<int32_t> eos;              // config.json + generation_config.json
  // generation_config.json's sampling defaults when it says do_sample (transformers and vLLM apply them when a
  // request leaves them unset); empty otherwise.
  std::optional<SamplingParams> sampling_defaults;
  int32_t max_model_len = 0;
  bool dummy = false;
  std::string dir;   // the folder loaded ("" for the dummy): --model, or the built-in model's
  std::string name;  // what to call it: the folder as given, "bamba-recipe" (built-in) or "bamba-dummy"
};

void add_tensor_parallel_option(CLI::App* cmd, int32_t& size);
// --tensor-parallel-size n > 1: m (loaded whole on the CPU backend) becomes rank 0's shard of n ranks (GPUs 0..n-1
// for device cuda / auto with GPUs, else threads on the CPU), each shard converted to `compute` on a GPU.
void split_tensor_parallel(LoadedModel& m, int32_t n, const std::string& device, DType compute);
// The built-in model: the recipe's merged result (examples/recipe), shipped in the repository under
// models/bamba-recipe with its model card. Looked up at $BAMBA_BUILTIN_MODEL, beside the binary
// (<exe>/../models/bamba-recipe: a build tree inside the checkout; <exe>/../share/bamba/models/bamba-recipe: an
// install). "" when none has a config.json.
std::string builtin_model_dir();

// Loads the model (with a progress bar for large checkpoints) and says on stderr what was loaded. With
// o.preset: that shape with generated weights and the byte-level tokenizer (for timing; its output is noise), the
// compute dtype bf16 unless --dtype fp32, max_model_len --max-model-len or min(max_position_embeddings, 8192);
// name = the preset's.
LoadedModel load(const ModelOptions& o, bool need_tokenizer);
Tokenizer load_tokenizer(const std::string& model_dir);  // <dir>/tokenizer.json, with a clear error if absent

}  // namespace bamba::cli
