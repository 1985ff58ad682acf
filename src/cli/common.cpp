#include "cli/common.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "io/checkpoint.h"
#include "model/tensor_parallel.h"
#include "model/presets.h"
#include "model/quantization.h"

namespace bamba::cli {

void ModelOptions::add_to(CLI::App* cmd, bool with_max_len) {
  cmd->add_option("--model,-m", model,
                  "Hugging Face checkpoint folder (default: the built-in model, models/bamba-recipe; \"dummy\": a tiny "
                  "model with generated weights)");
  cmd->add_option("--device", device, "cpu, cuda or auto (the GPU when there is one)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_option("--dtype", dtype,
                  "GPU compute dtype: auto (fp32 for fp32 checkpoints, else bf16), bf16 or fp32 (the CPU is always fp32)")
      ->check(CLI::IsMember({"auto", "bf16", "fp32"}));
  if (with_max_len)
    cmd->add_option("--max-model-len", max_model_len, "Most tokens (prompt + output) per sequence (default: 8192)")
        ->check(CLI::PositiveNumber);
  cmd->add_option("--quantization", quantization,
                  "none, or fp8: the linear layers' bf16/fp32 weights become FP8 (e4m3, one scale per output channel) "
                  "at load; FP8 checkpoints load as FP8 either way (docs/quantization.md)")
      ->check(CLI::IsMember({"none", "fp8"}));
  cmd->add_flag("--fp8-lm-head", fp8_lm_head, kFp8LmHeadHelp);
  cmd->add_flag("--quiet,-q", quiet, "No loading messages");
  add_tensor_parallel_option(cmd, tensor_parallel_size);
}

void add_tensor_parallel_option(CLI::App* cmd, int32_t& size) {
  cmd->add_option("--tensor-parallel-size,--tp", size,
                  "Split the model over N ranks (Megatron-style: heads, MLP columns, vocabulary): N GPUs of this "
                  "machine with --device cuda, N threads on the CPU (docs/multi-gpu.md)")
      ->check(CLI::Range(1, 64));
}

void split_tensor_parallel(LoadedModel& m, int32_t n, const std::string& device, DType compute) {
  if (n <= 1) return;
  // The whole model was loaded into host memory (fp32, CPU backend); each rank's shard is copied out of it.
  std::unique_ptr<Backend> full_be = std::move(m.backend);
  std::unique_ptr<HybridModel> full = std::move(m.model);
  const bool gpu = device == "cuda" || (device == "auto" && cuda_device_count() > 0);
  std::vector<std::unique_ptr<Backend>> bes;
  std::vector<int> devices;
  for (int r = 0; r < n; ++r) bes.push_back(make_rank_backend(gpu ? "cuda" : "cpu", r, compute)), devices.push_back(r);
  std::vector<Backend*> raw;
  for (auto& b : bes) raw.push_back(b.get());
  auto comms = make_group_communicators(raw, devices);
  m.backend = std::move(bes[0]);
  bes.erase(bes.begin());
  m.model = make_tensor_parallel_model(full->config(), full->weights(), *full_be, *m.backend, std::move(bes), std::move(comms));
}

Tokenizer load_tokenizer(const std::string& dir) {
  std::string path = dir + "/tokenizer.json";
  if (!file_exists(path)) fail(dir, ": missing tokenizer.json (needed to turn text into tokens)");
  return Tokenizer::from_file(path);
}

namespace {
void add_eos(std::vector<int32_t>& eos, const nlohmann::json& v) {
  auto add = [&](const nlohmann::json& x) {
    if (x.is_number_integer() && std::find(eos.begin(), eos.end(), x.get<int32_t>()) == eos.end())
      eos.push_back(x.get<int32_t>());
  };
  if (v.is_array())
    for (auto& x : v) add(x);
  else
    add(v);
}
}  // namespace

std::string builtin_model_dir() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("BAMBA_BUILTIN_MODEL"); env && *env) candidates.push_back(env);
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back((exe.parent_path().parent_path() / "models/bamba-recipe").string());
    candidates.push_back((exe.parent_path().parent_path() / "share/bamba/models/bamba-recipe").string());
  }
  for (auto& c : candidates)
    if (file_exists(c + "/config.json")) return c;
  return "";
}

LoadedModel load(const ModelOptions& o, bool need_tokenizer) {
  LoadedModel m;
  auto t0 = std::chrono::steady_clock::now();
  const bool preset = !o.preset.empty();
  if (preset && !o.model.empty()) fail("--preset and --model exclude each other (a preset is a shape with generated weights)");
  m.dir = o.model;
  m.name = o.model;
  if (o.model.empty() && !preset) {
    m.dir = builtin_model_dir();
    m.name = "bamba-recipe";
    if (m.dir.empty() && !o.quiet)
      std::fprintf(stderr, "bamba: no --model given and the built-in model (models/bamba-recipe) was not found beside "
                           "the binary: using generated weights instead.\n");
  }
  const bool tp = o.tensor_parallel_size > 1;  // split below from a whole copy in host memory
  const bool fp8 = parse_quantization(o.quantization, o.fp8_lm_head);
  // --quantization fp8 turns the weights into FP8 on the backend before the model is built. With tensor
  // parallelism that is the whole model in host memory, so every weight gets the scales it has on one device and
  // the ranks' shards take theirs (model/tensor_parallel.cpp).
  auto quantized = [&](const ModelConfig& cfg, ModelWeights w) {
    if (fp8) quantize_weights_fp8(cfg, w, *m.backend, o.fp8_lm_head);
    return w;
  };
  const bool dummy = !preset && (m.dir.empty() || (o.model == "dummy" && !file_exists("dummy/config.json")));
  if (preset) {
    ModelConfig cfg = preset_config(o.preset);
    m.backend = make_backend(tp ? "cpu" : o.device, compute_dtype(o.dtype == "auto" ? "bf16" : o.dtype, DType::BF16));
    m.dummy = true;
    m.name = o.preset;
    m.model = std::make_unique<HybridModel>(cfg, quantized(cfg, dummy_weights(cfg, *m.backend, 1)), *m.backend);
    m.tokenizer = std::make_unique<Tokenizer>(Tokenizer::byte_level_default());
    if (!o.quiet)
      std::fprintf(stderr, "bamba: --preset %s: generated weights and a byte-level tokenizer (timing only: the output "
                           "is noise; prompts may be token ids up to the model's vocabulary)\n",
                   o.preset.c_str());
  } else if (dummy) {
    m.backend = make_backend(tp ? "cpu" : o.device, compute_dtype(o.dtype, DType::BF16));  // generated weights: bf16-class
    m.dummy = true;
    m.dir.clear();
    m.name = "bamba-dummy";
    const ModelConfig cfg = dummy_config();
    m.model = std::make_unique<HybridModel>(cfg, quantized(cfg, dummy_weights(cfg, *m.backend)), *m.backend);
    m.tokenizer = std::make_unique<Tokenizer>(Tokenizer::byte_level_default());
    if (!o.quiet)
      std::fprintf(stderr, "bamba: the dummy model: a tiny Bamba with generated weights, whose output is gibberish. "
                           "Pass --model DIR to run a real checkpoint.\n");
  } else {
    if (need_tokenizer) m.tokenizer = std::make_unique<Tokenizer>(load_tokenizer(m.dir));
    ModelConfig cfg = load_config(m.dir);
    m.backend = make_backend(tp ? "cpu" : o.device, compute_dtype(o.dtype, cfg.dtype));
    Checkpoint ckpt(m.dir);
    // A bar only where loading takes a noticeable time.
    ProgressBar bar("loading " + m.dir, ckpt.total_bytes(), !o.quiet && ckpt.total_bytes() > (256u << 20));
    ModelWeights w = load_weights(cfg, ckpt, *m.backend, [&](size_t done, size_t) { bar.update(done); });
    bar.finish();
    w = quantized(cfg, std::move(w));
    m.model = std::make_unique<HybridModel>(std::move(cfg), std::move(w), *m.backend);
    std::string gen = m.dir + "/generation_config.json";
    if (file_exists(gen)) {
      auto j = nlohmann::json::parse(read_text_file(gen), nullptr, false);
      if (j.is_object() && j.contains("eos_token_id")) add_eos(m.eos, j["eos_token_id"]);
      if (j.is_object() && j.value("do_sample", false)) {
        SamplingParams p;
        p.temperature = 1.f;  // transformers' defaults for the fields it leaves out
        p.top_k = 50;
        auto num = [&](const char* k, auto& v) {
          if (!j.contains(k)) return;
          if (!j[k].is_number()) fail(gen, ": \"", k, "\" must be a number");
          v = j[k].get<std::decay_t<decltype(v)>>();
        };
        num("temperature", p.temperature);
        num("top_k", p.top_k);
        num("top_p", p.top_p);
        try {
          check_sampling(p);
        } catch (const Error& e) {
          fail(gen, ": ", e.what());
        }
        m.sampling_defaults = p;
      }
    }
  }
  if (o.tensor_parallel_size > 1) {
    const DType checkpoint = m.dummy ? DType::BF16 : m.model->config().dtype;
    split_tensor_parallel(m, o.tensor_parallel_size, o.device, compute_dtype(o.dtype, checkpoint));
  }
  const ModelConfig& c = m.model->config();
  for (int64_t e : c.eos_token_ids) add_eos(m.eos, int32_t(e));
  m.max_model_len = o.max_model_len ? o.max_model_len : int32_t(std::min<int64_t>(c.max_position_embeddings, 8192));
  if (!o.quiet) {
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string what = o.model.empty() && !m.dummy ? "built-in model bamba-recipe (" + m.dir +
                                                               "; its model card: README.md there)"
                                                         : m.name;
    std::fprintf(stderr, "bamba: %s: %lld layers (%lld attention), %.2fM parameters%s, on %s, loaded in %.2fs\n",
                 what.c_str(), (long long)c.num_hidden_layers, (long long)c.n_attention_layers(),
                 double(c.parameter_count()) / 1e6, has_fp8_weights(c, m.model->weights()) ? " (FP8 linear weights)" : "",
                 m.backend->name().c_str(), s);
    if (c.tp_size > 1)
      std::fprintf(stderr, "bamba: tensor parallel over %d ranks (%s); the parameter count above is one rank's shard\n",
                   c.tp_size, m.backend->device() == Device::CPU ? "threads" : "GPUs over NCCL");
  }
  return m;
}

}  // namespace bamba::cli
