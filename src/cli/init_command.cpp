// bamba init: a preset shape (model/presets.h), or a config.json's, with generated weights, written as a Hugging
// Face checkpoint folder (config.json, sharded safetensors named as transformers names them, a tokenizer). Other
// programs can then load the shapes bamba benchmarks, with the same weights: llama.cpp after its
// convert_hf_to_gguf.py, vLLM, transformers.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli/commands.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "io/config_json.h"
#include "io/sharded_writer.h"
#include "io/staging_dir.h"
#include "model/presets.h"
#include "model/weights.h"
#include "tokenizer/tokenizer.h"

namespace bamba::cli {

namespace {

namespace fs = std::filesystem;

struct InitOptions {
  std::string preset, config_file, out, tokenizer_dir;
  std::string dtype = "bf16";    // what the safetensors hold: bf16 | fp32
  std::string device = "auto";   // where the weights are generated (the GPU: seconds for 9B; the CPU: fp32 in RAM)
  std::string max_shard_size = "5GB";
  uint64_t seed = 1;             // 1: the weights `--preset` gives bench and serve (0: the dummy model's)
  bool force = false, quiet = false;
};

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) fail(path, ": write failed");
}

// The files of a tokenizer folder that a model folder carries along (those transformers' save_pretrained writes).
void copy_tokenizer(const std::string& from, const std::string& to) {
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                        "chat_template.jinja", "chat_template.json"})
    if (file_exists(from + "/" + f)) fs::copy_file(from + "/" + f, to + "/" + f);
}

void run(const InitOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  // The shape: a preset, or any config.json this program reads (its text is written out as it was given).
  const std::string config_text = o.preset.empty() ? read_text_file(o.config_file) : preset_config_json(o.preset);
  const std::string label = o.preset.empty() ? o.config_file : "preset " + o.preset;
  const ModelConfig cfg = parse_config(config_text, label);
  if (!o.tokenizer_dir.empty() && !file_exists(o.tokenizer_dir + "/tokenizer.json"))
    fail("--tokenizer: ", o.tokenizer_dir, " has no tokenizer.json");
  const DType file_dtype = o.dtype == "fp32" ? DType::F32 : DType::BF16;
  // Generated in bf16 on a GPU (the values `--preset` runs with there), in fp32 on the CPU.
  std::unique_ptr<Backend> be = make_backend(o.device, file_dtype == DType::F32 ? DType::F32 : DType::BF16);
  if (!o.quiet)
    std::fprintf(stderr, "bamba: init %s (%.3g parameters) on %s -> %s\n", label.c_str(),
                 double(cfg.parameter_count()), be->name().c_str(), o.out.c_str());
  ModelWeights w = dummy_weights(cfg, *be, o.seed);
  const std::vector<NamedTensor> tensors = hf_tensors(cfg, w);

  StagingDir staging(o.out, o.force);
  std::vector<TensorSpec> specs;
  for (const NamedTensor& t : tensors) specs.push_back({t.name, file_dtype, t.shape});
  ShardedWriter writer(staging.path(), specs, parse_byte_size(o.max_shard_size));
  std::vector<float> host;     // one tensor at a time: the largest is the embedding, [V, H]
  std::vector<uint16_t> half;
  for (const NamedTensor& t : tensors) {
    host.resize(size_t(t.t.numel()));
    be->to_host_f32(t.t, host.data());
    if (file_dtype == DType::F32) {
      writer.write(t.name, host.data(), host.size() * 4);
    } else {
      half.resize(host.size());
      convert_from_f32(host.data(), host.size(), DType::BF16, half.data());
      writer.write(t.name, half.data(), half.size() * 2);
    }
  }
  writer.finish();
  release_weights(cfg, w, *be);

  const char* dtype_name = file_dtype == DType::F32 ? "float32" : "bfloat16";
  write_text(staging.path() + "/config.json",
             config_json_with_dtype(config_text, dtype_name, label));
  if (!o.tokenizer_dir.empty())
    copy_tokenizer(o.tokenizer_dir, staging.path());
  else  // bytes as tokens: every preset's vocabulary holds them, so `bamba generate --model OUT` runs as it is
    write_text(staging.path() + "/tokenizer.json", Tokenizer::byte_level_default_json());
  staging.commit();
  if (!o.quiet)
    std::fprintf(stderr, "bamba: wrote %s: %zu tensors, %.2f GB in %zu shard(s), %s, %.1f s\n", o.out.c_str(),
                 tensors.size(), double(writer.total_bytes()) / 1e9, writer.num_shards(), dtype_name,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace

void register_init(CLI::App& app) {
  auto o = std::make_shared<InitOptions>();
  CLI::App* cmd = app.add_subcommand(
      "init", "Write a preset shape with generated weights as a Hugging Face checkpoint folder (config.json, "
              "safetensors, tokenizer), e.g. for llama.cpp's convert_hf_to_gguf.py");
  std::string presets;
  for (const auto& n : preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  auto* preset = cmd->add_option("--preset", o->preset, "The shape: " + presets);
  auto* config =
      cmd->add_option("--config", o->config_file, "Or the shape of this config.json (any model type bamba reads)");
  preset->excludes(config);
  cmd->add_option("--out,-o", o->out, "The folder to write (must not exist or be empty, unless --force)")->required();
  cmd->add_option("--dtype", o->dtype, "Weights in the files: bf16 (default) or fp32")
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--tokenizer", o->tokenizer_dir,
                  "Copy tokenizer.json (+ tokenizer_config.json, ...) from this folder (default: write a byte-level "
                  "tokenizer, ids 0..257)");
  cmd->add_option("--device", o->device,
                  "Where to generate the weights: auto (default: a GPU if there is one), cuda, cpu (holds them in "
                  "fp32: ~4 bytes a parameter of RAM)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  cmd->add_option("--seed", o->seed,
                  "Weight seed (default 1: the weights bench/serve --preset use; 0: --model dummy's)");
  cmd->add_option("--max-shard-size", o->max_shard_size, "Largest safetensors shard (default 5GB)");
  cmd->add_flag("--force", o->force, "Replace an existing --out folder");
  cmd->add_flag("--quiet,-q", o->quiet, "No progress lines on stderr");
  cmd->callback([o] {
    if (o->preset.empty() && o->config_file.empty()) fail("init: give --preset or --config");
    run(*o);
  });
}

}  // namespace bamba::cli
