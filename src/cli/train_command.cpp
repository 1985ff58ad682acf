// `bamba train CONFIG.yml [--resume DIR]`: trains (continued pretraining or fine-tuning) following a YAML config
// (docs/training.md). The loop, optimizer, schedules and checkpoints are in train/; this file resolves the model
// and data the config names, wires Ctrl-C to a clean save-and-exit, and prints the plan.
#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "io/sharded_writer.h"
#include "model/config.h"
#include "train/batch_source.h"
#include "model/hybrid.h"
#include "train/checkpoint.h"
#include "train/hybrid_trainable.h"
#include "train/mixture_source.h"
#include "train/train_config.h"
#include "train/trainable.h"
#include "train/trainer.h"
#include "train/validation.h"
#include "train/weight_init.h"

namespace bamba::cli {

namespace {

// A signal handler can reach nothing but a global. The first Ctrl-C asks the trainer to save after the current
// step and exit; SA_RESETHAND makes a second one end the process at once.
std::atomic<bool> g_train_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the flag must be async-signal-safe");
extern "C" void on_train_signal(int) { g_train_stop.store(true); }

struct TrainArgs {
  std::string config, resume;
  double peak_tflops = 0;
  bool check = false, quiet = false;
};

struct ResolvedModel {
  ModelConfig config;
  CheckpointOptions ckpt;
};

ResolvedModel resolve_model(const TrainConfig& c) {
  ResolvedModel m;
  if (!c.model_path.empty()) {
    m.config = load_config(c.model_path);
    m.ckpt.config_json = read_text_file(c.model_path + "/config.json");
  } else if (!c.model_config.empty()) {
    m.config = parse_config(read_text_file(c.model_config), c.model_config);
    m.ckpt.config_json = config_to_json(m.config);
  } else {
    m.config = c.model_preset == "bamba-9b" ? bamba_9b_config() : dummy_config();
    m.ckpt.config_json = config_to_json(m.config);
  }
  m.ckpt.tokenizer_dir = !c.tokenizer_path.empty() ? c.tokenizer_path : c.model_path;
  if (!c.tokenizer_path.empty() && !file_exists(c.tokenizer_path + "/tokenizer.json"))
    fail(c.label, ": model.tokenizer: ", c.tokenizer_path, " has no tokenizer.json");
  m.ckpt.save_dtype = c.save_dtype;
  m.ckpt.max_shard_bytes = parse_byte_size(c.max_shard_size);
  return m;
}

void check_data(const TrainConfig& c) {
  if (c.data.empty()) fail(c.label, ": data: no datasets (expected a list of {name, path, weight})");
  for (size_t i = 0; i < c.data.size(); ++i)
    if (!std::filesystem::exists(c.data[i].path))
      fail(c.label, ": data[", i, "] (", c.data[i].name, "): ", c.data[i].path, " does not exist");
  for (size_t i = 0; i < c.validation.size(); ++i)
    if (!std::filesystem::exists(c.validation[i].path))
      fail(c.label, ": validation[", i, "] (", c.validation[i].name, "): ", c.validation[i].path, " does not exist");
}

void print_plan(const TrainConfig& c, const ResolvedModel& m) {
  const double n = double(m.config.parameter_count());
  std::fprintf(stderr, "model     %s (%.3g parameters)\n",
               !c.model_path.empty()     ? c.model_path.c_str()
               : !c.model_config.empty() ? ("fresh weights, shape from " + c.model_config).c_str()
                                         : ("preset " + c.model_preset + ", fresh weights").c_str(),
               n);
  std::fprintf(stderr, "data      ");
  for (const auto& d : c.data) std::fprintf(stderr, "%s (weight %g)  ", d.name.c_str(), d.weight);
  std::fprintf(stderr, "\n          documents %s, packing %s\n",
               c.shuffle ? "shuffled (seeded, every epoch)" : "in file order",
               c.packing == Packing::PerDocument    ? "per-document (state reset at every document)"
               : c.packing == Packing::WholeDocuments ? "whole-documents (state reset, documents not split across rows)"
                                                      : "continuous");
  if (!c.validation.empty()) {
    std::fprintf(stderr, "validate  ");
    for (const auto& d : c.validation) std::fprintf(stderr, "%s  ", d.name.c_str());
    std::fprintf(stderr, "(%lld tokens each, every %lld steps)\n", (long long)c.eval_tokens, (long long)c.eval_every);
  }
  std::fprintf(stderr, "batch     %lld tokens = %lld rows of %lld, %lld micro-batch%s of %lld rows\n",
               (long long)c.batch_tokens, (long long)c.rows_per_step(), (long long)c.seq_len,
               (long long)c.accumulation_steps(), c.accumulation_steps() == 1 ? "" : "es",
               (long long)c.micro_batch_size);
  const LrSchedule s = c.lr_schedule();
  std::fprintf(stderr, "length    %lld steps, %.4g tokens (≈ %.3g FLOPs at 6N per token)\n", (long long)c.steps,
               double(c.steps) * double(c.batch_tokens), 6 * n * double(c.steps) * double(c.batch_tokens));
  std::fprintf(stderr, "optimizer adamw lr %g betas (%g, %g) eps %g weight_decay %g grad_clip %g, %s\n", c.lr, c.beta1,
               c.beta2, c.eps, c.weight_decay, c.grad_clip, precision_name(c.precision).c_str());
  std::fprintf(stderr, "schedule  %s, %lld warmup steps, final %g × lr\n", schedule_kind_name(c.schedule).c_str(),
               (long long)s.warmup_steps, c.final_lr_ratio);
  std::fprintf(stderr, "output    %s (save every %lld steps, keep %lld)\n", c.output.c_str(), (long long)c.save_every,
               (long long)c.keep_last);
}

// The model on the CPU backend (the backward's only backend so far): a checkpoint folder, or a shape with fresh
// weights initialised for training (train/weight_init.h, seeded by the config's seed).
std::unique_ptr<HybridModel> open_model(const TrainConfig& c, const ResolvedModel& m, Backend& be) {
  if (!c.model_path.empty()) return std::make_unique<HybridModel>(load_model(c.model_path, be));
  return std::make_unique<HybridModel>(m.config, init_weights(m.config, be, c.seed), be);
}

void run_train_command(const TrainArgs& a) {
  TrainConfig cfg = load_train_config(a.config);
  ResolvedModel model = resolve_model(cfg);
  check_data(cfg);
  if (!a.resume.empty()) resolve_checkpoint(a.resume);  // a bad --resume fails before any work
  if (!a.quiet || a.check) print_plan(cfg, model);
  if (a.check) return;

  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<HybridModel> hybrid = open_model(cfg, model, *be);
  HybridTrainable trainable_model(*hybrid, float(cfg.z_loss));
  Trainable* trainable = &trainable_model;
  MixtureOptions mix;
  mix.seed = cfg.seed, mix.shuffle = cfg.shuffle, mix.packing = cfg.packing;
  auto batches = std::make_unique<MixtureSource>(cfg.data, hybrid->config().vocab_size, mix);
  std::unique_ptr<Validation> validation;
  TrainerHooks hooks;
  if (!cfg.validation.empty()) {
    validation = std::make_unique<Validation>(cfg, *trainable, hybrid->config().vocab_size);
    hooks.validate = [&] { return validation->run(); };
  }
  hooks.progress = !a.quiet;
  hooks.peak_flops = a.peak_tflops * 1e12;
  hooks.stop_requested = [] { return g_train_stop.load(); };
  Trainer trainer(cfg, *trainable, *batches, model.ckpt, hooks);
  if (!a.resume.empty()) trainer.resume(a.resume);

  struct sigaction sa = {};
  sa.sa_handler = on_train_signal;
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  const TrainRunResult r = trainer.run();
  if (!a.quiet) {
    std::fprintf(stderr, "%s at step %lld (loss %.4f); checkpoint %s\n", r.interrupted ? "stopped" : "finished",
                 (long long)r.step, r.loss, r.last_checkpoint.c_str());
    int64_t total = 0;
    for (const auto& [name, n] : batches->drawn()) total += n;
    std::fprintf(stderr, "data drawn:");
    for (const auto& [name, n] : batches->drawn())
      std::fprintf(stderr, " %s %.2f%%", name.c_str(), total ? 100.0 * double(n) / double(total) : 0.0);
    std::fprintf(stderr, "\n");
  }
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train (continued pretraining or fine-tuning) following a YAML config");
  cmd->add_option("config", a->config, "training config (YAML): model, data, batch, optimizer, schedule, saving")
      ->required();
  cmd->add_option("--resume", a->resume,
                  "continue from a checkpoint folder, or the newest checkpoint-<step> of an output folder "
                  "(weights, optimizer moments, step, data position: the run continues exactly)");
  cmd->add_flag("--check", a->check, "validate the config, the model and the data paths, print the plan, and exit");
  cmd->add_option("--peak-tflops", a->peak_tflops, "the device's peak TFLOP/s (e.g. 989 for an H100 in bf16), for MFU");
  cmd->add_flag("--quiet,-q", a->quiet, "no plan, progress bar or summary");
  cmd->footer(
      "Ctrl-C saves a checkpoint after the current step and exits (a second Ctrl-C exits at once).\n"
      "Config reference and checkpoint format: docs/training.md");
  cmd->callback([a] { run_train_command(*a); });
}

}  // namespace bamba::cli
