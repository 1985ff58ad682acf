// `bamba train CONFIG.yml [--resume DIR]`: trains (continued pretraining or fine-tuning) following a YAML config
// (docs/training.md). The loop, optimizer, schedules and checkpoints are in train/; this file resolves the model
// and data the config names, wires Ctrl-C to a clean save-and-exit, and prints the plan.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sstream>
#include <thread>
#include <string>

#include "backend/communicator.h"
#include "backend/op_profiler.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/hash_uniform.h"
#include "core/mapped_file.h"
#include "io/sharded_writer.h"
#include "model/config.h"
#include "train/batch_source.h"
#include "model/hybrid.h"
#include "train/checkpoint.h"
#include "train/data_parallel.h"
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
  std::string device = "cpu";  // cpu | cuda | auto
  double peak_tflops = 0;
  bool check = false, quiet = false;
  double gpu_memory_gib = 0;  // --gpu-memory: plan for a GPU of this size (default: GPU 0's, when training on one)
  // --bench: timed steps on generated weights and random tokens, no data, no checkpoints
  bool bench = false, profile = false;
  std::string preset;
  int64_t bench_steps = 3, bench_layers = 0, bench_seq_len = 0, bench_batch_tokens = 0;
  std::string bench_checkpointing;  // --activation-checkpointing[=full|selective]
  int64_t bench_checkpoint_layers = -1;  // --checkpoint-layers
  std::string bench_precision;
  int nproc = 1;  // data-parallel ranks as threads of this process
};

// The compute dtype of the GPU backend for a precision: bf16 for both mixed modes (fp32 masters and moments, or
// bf16 moments), fp32 for fp32. The CPU backend always computes in fp32.
DType precision_dtype(Precision p) { return p == Precision::Fp32 ? DType::F32 : DType::BF16; }

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
    const std::string text = read_text_file(c.model_config);
    m.config = parse_config(text, c.model_config);
    // Bamba's is written out normalised; a relative's config.json is kept as given (its own parser read it).
    m.ckpt.config_json = m.config.family == Family::Bamba ? config_to_json(m.config) : text;
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
  if (c.data.empty() && c.phases.empty())
    fail(c.label, ": data: no datasets (expected a list of {name, path, weight}, or phases)");
  for (const PhaseSpec& p : c.mixture_phases())
    for (size_t i = 0; i < p.data.size(); ++i)
      if (!std::filesystem::exists(p.data[i].path))
        fail(c.label, ": ", p.name.empty() ? "" : "phase " + p.name + ": ", "data[", i, "] (", p.data[i].name, "): ",
             p.data[i].path, " does not exist");
  for (size_t i = 0; i < c.validation.size(); ++i)
    if (!std::filesystem::exists(c.validation[i].path))
      fail(c.label, ": validation[", i, "] (", c.validation[i].name, "): ", c.validation[i].path, " does not exist");
}

// What a parameter costs on a rank's device: the weight the forward reads and its master (fp32: one; bf16-mixed: a
// bf16 weight + an fp32 master; bf16-memory: the weight + the master's low half), an fp32 gradient, and the two
// moments (fp32; bf16 under bf16-memory), which ZeRO-1 splits over the ranks (docs/multi-gpu.md).
double bytes_per_parameter(Precision p, int ranks = 1) {
  const double own = p == Precision::Bf16Mixed ? 6 + 4 : 4 + 4, moments = p == Precision::Bf16Memory ? 4 : 8;
  return own + moments / ranks;
}

// Binary units, as device memory is counted (GiB = 2^30 bytes).
std::string memory_size(double bytes) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  return cat(std::round(bytes * 100) / 100, " ", unit[u]);
}

// --check's memory lines: the parameter state and one micro-batch's step (counted by the code that allocates it),
// then whether they fit the GPU the plan is for (gpu.total_bytes 0: none known) and, if not, what would.
void print_memory(const TrainConfig& c, const ModelConfig& m, DType activation, int ranks, const GpuInfo& gpu) {
  const int64_t L = m.num_hidden_layers, ck = checkpointed_layer_count(c.activation_checkpointing, c.checkpoint_layers, L);
  auto step_bytes = [&](Checkpointing mode, int64_t layers) {
    const StepMemory s = training_step_memory(m, c.micro_batch_size, c.seq_len,
                                              {.activation_checkpointing = mode, .checkpoint_layers = layers}, activation);
    return std::pair{double(s.activations), double(s.cache)};
  };
  const double per_param = bytes_per_parameter(c.precision, ranks), state = double(m.parameter_count()) * per_param;
  const auto [acts, cache] = step_bytes(c.activation_checkpointing, c.checkpoint_layers);
  std::fprintf(stderr, "memory    parameter state %s (%g bytes a parameter%s)\n", memory_size(state).c_str(), per_param,
               ranks > 1 ? cat(", the moments split over ", ranks, " ranks").c_str() : "");
  std::fprintf(stderr, "          a micro-batch of %lld tokens: activations %s (%s, %s) + its cache %s\n",
               (long long)(c.micro_batch_size * c.seq_len), memory_size(acts).c_str(),
               activation == DType::F32 ? "fp32" : "bf16",
               ck == 0 ? "no checkpointing"
               : cat(c.activation_checkpointing == Checkpointing::Full ? "full" : "selective", " checkpointing of ",
                     ck == L ? "every layer" : cat("the first ", ck, " of ", L, " layers")).c_str(),
               memory_size(cache).c_str());
  // Not counted: the backend's op scratch, one buffer reused op after op (on CUDA the SSD backward's chunk states,
  // the cross-entropy's logits chunk: docs/training.md's memory table), and the CUDA context.
  const double total = state + acts + cache;
  std::fprintf(stderr, "          %s in all, and the backend's op scratch\n", memory_size(total).c_str());
  if (gpu.total_bytes <= 0) return;
  // What is left must hold the op scratch (≈ 1.3 GiB at the 9B's 4,096-token steps: bench/NOTES.md v36) and the
  // CUDA context (~0.5-1 GiB): the number is printed, not judged.
  const double room = double(gpu.total_bytes) - total;
  const std::string dev = cat(gpu.name, gpu.name.empty() ? "" : ", ", memory_size(double(gpu.total_bytes)));
  if (room >= 0) {
    std::fprintf(stderr, "          leaves %s of the GPU (%s) for the op scratch and the CUDA context\n",
                 memory_size(room).c_str(), dev.c_str());
    return;
  }
  std::string smaller;  // the checkpointing modes that take less
  for (Checkpointing k : {Checkpointing::Selective, Checkpointing::Full}) {
    const auto [a, ca] = step_bytes(k, -1);
    if (state + a + ca < total)
      smaller += cat(smaller.empty() ? "; checkpointing every layer: " : ", ",
                     k == Checkpointing::Full ? "full " : "selective ", memory_size(state + a + ca));
  }
  std::fprintf(stderr, "          does not fit the GPU (%s)%s\n", dev.c_str(),
               !smaller.empty() ? smaller.c_str()
                                : "; less: fewer tokens a micro-batch, or more ranks (ZeRO-1 splits the moments)");
}

// activation: the step's activation dtype; ranks: data-parallel ranks; gpu: the device to fit (print_memory).
void print_plan(const TrainConfig& c, const ResolvedModel& m, DType activation, int ranks, const GpuInfo& gpu) {
  const double n = double(m.config.parameter_count());
  std::fprintf(stderr, "model     %s (%.3g parameters)\n",
               !c.model_path.empty()     ? c.model_path.c_str()
               : !c.model_config.empty() ? ("fresh weights, shape from " + c.model_config).c_str()
                                         : ("preset " + c.model_preset + ", fresh weights").c_str(),
               n);
  for (const PhaseSpec& p : c.mixture_phases()) {
    std::fprintf(stderr, "data      ");
    if (!p.name.empty()) std::fprintf(stderr, "phase %s, %lld steps: ", p.name.c_str(), (long long)p.steps);
    for (const auto& d : p.data) std::fprintf(stderr, "%s (weight %g)  ", d.name.c_str(), d.weight);
    std::fprintf(stderr, "\n");
  }
  std::fprintf(stderr, "          documents %s, packing %s\n",
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
  print_memory(c, m.config, activation, ranks, gpu);
  std::fprintf(stderr, "output    %s (save every %lld steps, keep %lld)\n", c.output.c_str(), (long long)c.save_every,
               (long long)c.keep_last);
}

// The model: a checkpoint folder, or a shape with fresh weights initialised for training (train/weight_init.h,
// seeded by the config's seed).
std::unique_ptr<HybridModel> open_model(const TrainConfig& c, const ResolvedModel& m, Backend& be) {
  if (!c.model_path.empty()) return std::make_unique<HybridModel>(load_model(c.model_path, be));
  return std::make_unique<HybridModel>(m.config, init_weights(m.config, be, c.seed), be);
}

// One rank of a run (the only one without data parallelism): its model replica, its rows of the data, its trainer.
void train_rank(const TrainArgs& a, const TrainConfig& cfg, const ResolvedModel& model, Backend& be, Communicator* comm) {
  const bool lead = !comm || comm->rank() == 0;
  const bool quiet = a.quiet || !lead;
  std::unique_ptr<HybridModel> hybrid = open_model(cfg, model, be);  // the same seeded weights on every rank
  HybridTrainable trainable_model(*hybrid, {.z_loss_coefficient = float(cfg.z_loss),
                                           .activation_checkpointing = cfg.activation_checkpointing,
                                           .checkpoint_layers = cfg.checkpoint_layers,
                                           .split_masters = cfg.precision == Precision::Bf16Memory});
  Trainable* trainable = &trainable_model;
  MixtureOptions mix;
  mix.seed = cfg.seed, mix.shuffle = cfg.shuffle, mix.packing = cfg.packing;
  if (comm) mix.rank = comm->rank(), mix.world = comm->size();  // this rank's rows of every global micro-batch
  std::vector<MixturePhase> phases;  // each phase's length in tokens of the global stream
  for (const PhaseSpec& p : cfg.mixture_phases())
    phases.push_back({p.name, p.name.empty() ? 0 : p.steps * cfg.batch_tokens, p.data});
  auto batches = std::make_unique<MixtureSource>(phases, hybrid->config().vocab_size, mix);
  std::unique_ptr<Validation> validation;
  std::unique_ptr<DataParallel> dp;
  TrainerHooks hooks;
  if (comm) {
    dp = std::make_unique<DataParallel>(*comm);
    hooks.data_parallel = dp.get();
  }
  if (!cfg.validation.empty()) {
    validation = std::make_unique<Validation>(cfg, *trainable, hybrid->config().vocab_size);
    hooks.validate = [&] { return validation->run(); };
  }
  hooks.progress = !quiet;
  hooks.peak_flops = a.peak_tflops * 1e12;
  hooks.stop_requested = [] { return g_train_stop.load(); };
  Trainer trainer(cfg, *trainable, *batches, model.ckpt, hooks);
  if (!a.resume.empty()) trainer.resume(a.resume);
  const TrainRunResult r = trainer.run();
  if (!quiet) {
    std::fprintf(stderr, "%s at step %lld (loss %.4f); checkpoint %s\n", r.interrupted ? "stopped" : "finished",
                 (long long)r.step, r.loss, r.last_checkpoint.c_str());
    auto print_drawn = [](const std::string& what, const std::vector<std::pair<std::string, int64_t>>& drawn) {
      int64_t total = 0;
      for (const auto& [name, n] : drawn) total += n;
      std::fprintf(stderr, "%s:", what.c_str());
      for (const auto& [name, n] : drawn)
        std::fprintf(stderr, " %s %.2f%%", name.c_str(), total ? 100.0 * double(n) / double(total) : 0.0);
      std::fprintf(stderr, "\n");
    };
    print_drawn("data drawn", batches->drawn());
    if (!cfg.phases.empty())
      for (const auto& [phase, drawn] : batches->drawn_per_phase()) print_drawn("  phase " + phase, drawn);
  }
}

void run_train_command(const TrainArgs& a) {
  TrainConfig cfg = load_train_config(a.config);
  ResolvedModel model = resolve_model(cfg);
  check_data(cfg);
  if (!a.resume.empty()) resolve_checkpoint(a.resume);  // a bad --resume fails before any work
  const LaunchEnv env = launch_env();
  if (a.nproc > 1 && env.world_size > 1)
    fail("--nproc ", a.nproc, " and a launcher's WORLD_SIZE=", env.world_size, ": use one or the other");
  const bool lead = env.rank == 0;
  // The activations' dtype without making a backend: fp32 on the CPU, the precision's on a GPU; the GPU to fit: the
  // size asked for, else GPU 0 (a rank's own: the same kind on one machine).
  const bool gpu = a.device == "cuda" || (a.device == "auto" && cuda_device_count() > 0);
  GpuInfo target = gpu ? cuda_device_info(0) : GpuInfo{};
  if (a.gpu_memory_gib > 0) target = {"", int64_t(a.gpu_memory_gib * double(1ll << 30))};
  if ((!a.quiet && lead) || a.check)
    print_plan(cfg, model, gpu || a.gpu_memory_gib > 0 ? precision_dtype(cfg.precision) : DType::F32,
               a.nproc > 1 ? a.nproc : env.world_size, target);
  if (a.check) return;

  struct sigaction sa = {};
  sa.sa_handler = on_train_signal;
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  const DType dtype = precision_dtype(cfg.precision);

  if (a.nproc > 1) {  // data parallelism over threads of this process (GPUs 0..n-1 with --device cuda)
    std::vector<std::unique_ptr<Backend>> bes;
    std::vector<Backend*> raw;
    std::vector<int> devices;
    for (int r = 0; r < a.nproc; ++r) {
      bes.push_back(make_rank_backend(a.device, r, dtype));
      raw.push_back(bes.back().get());
      devices.push_back(r);
    }
    if (!a.quiet)
      std::fprintf(stderr, "device    %d ranks (data parallel, threads of one process), each on %s\n", a.nproc,
                   bes[0]->name().c_str());
    auto comms = make_group_communicators(raw, devices);
    std::vector<std::exception_ptr> errs(static_cast<size_t>(a.nproc));
    std::vector<std::thread> ts;
    for (int r = 0; r < a.nproc; ++r)
      ts.emplace_back([&, r] {
        try {
          bes[size_t(r)]->bind_thread();
          train_rank(a, cfg, model, *bes[size_t(r)], comms[size_t(r)].get());
        } catch (const std::exception& e) {
          comms[size_t(r)]->abort(e.what());  // the other ranks stop instead of waiting for this one
          errs[size_t(r)] = std::current_exception();
        }
      });
    for (auto& t : ts) t.join();
    for (auto& e : errs)  // the first rank's own error (the others' say that a rank failed)
      if (e) std::rethrow_exception(e);
    return;
  }
  if (env.world_size > 1) {  // one rank of several processes (torchrun, srun, mpirun): NCCL on GPU LOCAL_RANK
    // GPU LOCAL_RANK; or the only GPU the process sees (Slurm --gpus-per-task 1, CUDA_VISIBLE_DEVICES per rank).
    const int gpu = cuda_device_count() == 1 ? 0 : env.local_rank;
    std::unique_ptr<Backend> be = make_rank_backend(a.device, gpu, dtype);
    if (!a.quiet && lead)
      std::fprintf(stderr, "device    %d ranks (data parallel, WORLD_SIZE), rank 0 on %s\n", env.world_size,
                   be->name().c_str());
    std::unique_ptr<Communicator> comm = make_launch_communicator(env, gpu, be->native_stream());
    try {
      train_rank(a, cfg, model, *be, comm.get());
    } catch (const std::exception& e) {
      comm->abort(e.what());
      throw;
    }
    return;
  }
  std::unique_ptr<Backend> be = make_backend(a.device, dtype);
  if (!a.quiet) std::fprintf(stderr, "device    %s\n", be->name().c_str());
  train_rank(a, cfg, model, *be, nullptr);
}


// The first `layers` layers of a shape (attention layers kept where they fall, else one in the middle), so that
// a model that does not fit can still be timed layer for layer at its real widths.
ModelConfig first_layers(const ModelConfig& c, int64_t layers) {
  if (layers <= 0 || layers >= c.num_hidden_layers) return c;
  nlohmann::json j = nlohmann::json::parse(config_to_json(c));
  nlohmann::json attn = nlohmann::json::array();
  for (int64_t i = 0; i < layers; ++i)
    if (c.layer_kinds[size_t(i)] == LayerKind::Attention) attn.push_back(i);
  if (attn.empty() && layers >= 2) attn.push_back(layers / 2);
  j["num_hidden_layers"] = layers;
  j["attn_layer_indices"] = attn;
  ModelConfig out = parse_config(j.dump(), cat("the first ", layers, " layers of the preset"));
  out.dtype = c.dtype;
  return out;
}

// `bamba train --bench`: optimizer steps (forward, backward, clipping, AdamW) on generated weights and one batch
// of random tokens, timed after a warm-up step; tok/s, MFU (6N FLOPs per token) and the backend's peak memory.
void run_train_bench(const TrainArgs& a) {
  TrainConfig cfg = a.config.empty() ? TrainConfig{} : load_train_config(a.config);
  if (!a.preset.empty()) {
    cfg.model_path.clear();
    cfg.model_config.clear();
    cfg.model_preset = a.preset;
  }
  if (a.bench_seq_len > 0) cfg.seq_len = a.bench_seq_len;
  if (!a.bench_precision.empty())
    cfg.precision = a.bench_precision == "fp32"          ? Precision::Fp32
                    : a.bench_precision == "bf16-memory" ? Precision::Bf16Memory
                                                         : Precision::Bf16Mixed;
  if (cfg.model_preset != "tiny" && cfg.model_preset != "bamba-9b")
    fail("--preset ", cfg.model_preset, ": expected tiny or bamba-9b");
  ModelConfig mc = !cfg.model_path.empty()   ? load_config(cfg.model_path)
                   : !cfg.model_config.empty() ? parse_config(read_text_file(cfg.model_config), cfg.model_config)
                   : cfg.model_preset == "bamba-9b" ? bamba_9b_config()
                                                    : dummy_config();
  mc = first_layers(mc, a.bench_layers);
  std::unique_ptr<Backend> device = make_backend(a.device, precision_dtype(cfg.precision));
  OpProfiler prof(*device);  // forwards only, unless --profile
  Backend* be = &prof;
  HybridModel model(mc, dummy_weights(mc, *be, cfg.seed), *be);
  const Checkpointing checkpointing = a.bench_checkpointing.empty() ? cfg.activation_checkpointing
                                                                    : *checkpointing_from_name(a.bench_checkpointing);
  if (a.bench_checkpoint_layers >= 0 && checkpointing == Checkpointing::Off)  // (it would do nothing)
    fail("--checkpoint-layers: only with --activation-checkpointing (or the config's activation_checkpointing)");
  const int64_t ckpt_layers = a.bench_checkpoint_layers >= 0 ? a.bench_checkpoint_layers : cfg.checkpoint_layers;
  const int64_t n_ckpt = checkpointed_layer_count(checkpointing, ckpt_layers, mc.num_hidden_layers);  // run again
  HybridTrainable tr(model, {.z_loss_coefficient = float(cfg.z_loss),
                             .activation_checkpointing = checkpointing,
                             .checkpoint_layers = ckpt_layers,
                             .split_masters = cfg.precision == Precision::Bf16Memory});
  std::vector<ParamRef> params = tr.params();
  AdamWOptions o;
  o.beta1 = cfg.beta1, o.beta2 = cfg.beta2, o.eps = cfg.eps, o.weight_decay = cfg.weight_decay;
  o.bf16_moments = cfg.precision == Precision::Bf16Memory;
  AdamW opt(params, o, tr.param_device());
  TokenBatch b;
  b.rows = cfg.micro_batch_size, b.cols = cfg.seq_len;
  for (int64_t i = 0; i < b.rows * b.cols; ++i) b.tokens.push_back(int32_t(splitmix64(uint64_t(i)) % uint64_t(mc.vocab_size)));
  b.labels = b.tokens;
  // A step is `accum` micro-batches and one optimizer step, as the trainer runs a batch_tokens step: AdamW and the
  // norm are per parameter, the rest per token, so their share of a step depends on how many tokens it holds.
  const int64_t micro_tokens = b.rows * b.cols;
  const int64_t batch_tokens = a.bench_batch_tokens > 0         ? a.bench_batch_tokens
                               : a.config.empty() || a.bench_seq_len > 0 ? micro_tokens
                                                                          : cfg.batch_tokens;
  if (batch_tokens % micro_tokens != 0)
    fail("--batch-tokens ", batch_tokens, " is not a multiple of micro_batch_size × seq_len = ", micro_tokens);
  const int64_t accum = batch_tokens / micro_tokens;
  const LossDivisors div{accum * b.labeled(), batch_tokens};
  ParamDevice* dev = tr.param_device();
  const double n_params = double(mc.parameter_count());
  std::fprintf(stderr, "bench     %s%s, %.3g parameters, %s%lld × %lld tokens per step, %s%s, %s\n",
               cfg.model_path.empty() ? ("preset " + cfg.model_preset).c_str() : cfg.model_path.c_str(),
               a.bench_layers > 0 ? cat(" (first ", mc.num_hidden_layers, " layers)").c_str() : "", n_params,
               accum > 1 ? cat(accum, " micro-batches of ").c_str() : "", (long long)b.rows, (long long)b.cols,
               precision_name(cfg.precision).c_str(),
               n_ckpt == 0 ? ""
               : cat(checkpointing == Checkpointing::Full ? ", activation checkpointing"
                                                          : ", selective activation checkpointing",
                     n_ckpt < mc.num_hidden_layers ? cat(" of the first ", n_ckpt, " layers") : "").c_str(),
               be->name().c_str());
  // Clipping's factor goes into AdamW (as the trainer does); BAMBA_BENCH_CLIP=scale scales every gradient in a
  // pass of its own first, as before, for comparisons.
  const char* clip_env = std::getenv("BAMBA_BENCH_CLIP");
  const bool clip_pass = clip_env && std::strcmp(clip_env, "scale") == 0;
  auto clip_and_step = [&](const std::vector<ParamRef>& ps, ParamDevice* d) {
    if (clip_pass) {
      clip_grad_norm(ps, cfg.grad_clip, d);
      opt.step(ps, cfg.lr);
    } else {
      opt.step(ps, cfg.lr, clip_coefficient(global_grad_norm(ps, d), cfg.grad_clip));
    }
  };
  std::vector<double> times;
  double loss = 0;
  for (int64_t step = 0; step <= a.bench_steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& p : params)
      if (dev) dev->zero(p.grad, p.size);
      else std::fill(p.grad, p.grad + p.size, 0.f);
    loss = 0;
    for (int64_t k = 0; k < accum; ++k) loss += tr.loss_and_grad(b, div).loss;
    clip_and_step(params, dev);
    be->synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "step %lld  %.3f s  loss %.4f%s\n", (long long)step, s, loss, step == 0 ? "  (warm-up)" : "");
    if (step > 0) times.push_back(s);
  }
  if (a.profile) {  // one more step with every op timed alone (synchronised around each)
    prof.set_timing(true);
    for (const auto& p : params)
      if (dev) dev->zero(p.grad, p.size);
    for (int64_t k = 0; k < accum; ++k) tr.loss_and_grad(b, div);
    clip_and_step(params, dev);
    prof.set_timing(false);
    std::ostringstream table;
    prof.print(table, 1);
    std::printf("per-op times of one step (each op synchronised alone):\n%s", table.str().c_str());
  }
  if (times.empty()) return;
  std::sort(times.begin(), times.end());
  const double med = times[times.size() / 2], tok_s = double(batch_tokens) / med;
  const double flops = 6.0 * n_params * tok_s;
  std::printf("train bench: %.0f tok/s (median step %.3f s over %zu), %.1f TFLOP/s at 6N", tok_s, med, times.size(),
              flops / 1e12);
  if (a.peak_tflops > 0) {
    std::printf(", MFU %.1f%% of %g TFLOP/s", 100.0 * flops / (a.peak_tflops * 1e12), a.peak_tflops);
    // MFU counts the model's 6N; checkpointing's recomputed forward is work the hardware did as well (HFU): 2 × the
    // checkpointed layers' parameters more when whole layers run again, 2 × their MLPs' up projections when only
    // they do (Selective).
    if (n_ckpt > 0) {
      double re = 0;
      if (checkpointing == Checkpointing::Selective) re = double(mc.mlp_up_parameter_count(n_ckpt));
      else
        for (int64_t i = 0; i < n_ckpt; ++i) re += double(mc.layer_parameter_count(i));
      std::printf(" (HFU at %.2fN: %.1f%%)", 6.0 + 2.0 * re / n_params,
                  100.0 * flops * (6.0 + 2.0 * re / n_params) / 6.0 / (a.peak_tflops * 1e12));
    }
  }
  const int64_t peak = be->peak_memory_bytes();
  if (peak >= 0) {
    // beside it what --check counts: the parameter state and one micro-batch's step (the rest: the op scratch)
    const StepMemory sm = training_step_memory(
        mc, b.rows, b.cols, {.activation_checkpointing = checkpointing, .checkpoint_layers = ckpt_layers},
        be->activation_dtype());
    const double gib = double(1ll << 30);
    std::printf(", peak memory %.2f GiB (counted: parameter state %.2f + step %.2f GiB)", double(peak) / gib,
                n_params * bytes_per_parameter(cfg.precision) / gib, double(sm.activations + sm.cache) / gib);
  }
  std::printf("\n");
}

}  // namespace

void register_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* cmd = app.add_subcommand("train", "Train (continued pretraining or fine-tuning) following a YAML config");
  cmd->add_option("config", a->config, "training config (YAML): model, data, batch, optimizer, schedule, saving "
                                       "(required unless --bench)");
  cmd->add_option("--device", a->device, "cpu, cuda or auto (the GPU when there is one)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  cmd->add_flag("--bench", a->bench,
                "time optimizer steps on generated weights and random tokens (no data, no checkpoints): tok/s, MFU "
                "(with --peak-tflops), peak device memory");
  cmd->add_flag("--activation-checkpointing{full}", a->bench_checkpointing,
                "--bench: recompute each layer's activations in the backward; =selective keeps the projections' "
                "outputs and recomputes only the norms, conv, scan and MLP up projection (as the config's "
                "activation_checkpointing)")
      ->check(CLI::IsMember({"full", "selective"}));
  cmd->add_option("--checkpoint-layers", a->bench_checkpoint_layers,
                  "--bench: checkpoint only the first N layers, the rest keep every activation (as the config's "
                  "activation_checkpointing_layers)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--precision", a->bench_precision, "--bench: bf16-mixed, bf16-memory or fp32 (default: the config's)")
      ->check(CLI::IsMember({"bf16-mixed", "bf16-memory", "fp32"}));
  cmd->add_flag("--profile", a->profile, "--bench: then one step with every op timed alone (a per-op table)");
  cmd->add_option("--preset", a->preset, "--bench: the model shape (tiny | bamba-9b), overriding the config's model");
  cmd->add_option("--bench-steps", a->bench_steps, "--bench: timed steps after one warm-up step (default 3)");
  cmd->add_option("--bench-layers", a->bench_layers, "--bench: only the first N layers (a shape too big to fit)");
  cmd->add_option("--seq-len", a->bench_seq_len, "--bench: sequence length (default: the config's, 4096)");
  cmd->add_option("--batch-tokens", a->bench_batch_tokens,
                  "--bench: tokens per optimizer step, run as micro-batches of micro_batch_size × seq_len (default: "
                  "the config's batch_tokens, else one micro-batch)");
  cmd->add_option("--resume", a->resume,
                  "continue from a checkpoint folder, or the newest checkpoint-<step> of an output folder "
                  "(weights, optimizer moments, step, data position: the run continues exactly)");
  cmd->add_option("--nproc", a->nproc,
                  "data-parallel ranks as threads of this process (GPUs 0..N-1 with --device cuda); several "
                  "processes: launch with torchrun-style WORLD_SIZE/RANK/MASTER_ADDR (docs/multi-gpu.md)")
      ->check(CLI::Range(1, 64));
  cmd->add_flag("--check", a->check, "validate the config, the model and the data paths, print the plan, and exit");
  cmd->add_option("--gpu-memory", a->gpu_memory_gib,
                  "GiB: say whether a step fits a GPU of this size (default: GPU 0's when --device picks a GPU)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--peak-tflops", a->peak_tflops, "the device's peak TFLOP/s (e.g. 989 for an H100 in bf16), for MFU");
  cmd->add_flag("--quiet,-q", a->quiet, "no plan, progress bar or summary");
  cmd->footer(
      "Ctrl-C saves a checkpoint after the current step and exits (a second Ctrl-C exits at once).\n"
      "Config reference and checkpoint format: docs/training.md");
  cmd->callback([a] {
    if (a->bench) return run_train_bench(*a);
    if (a->config.empty()) fail("bamba train: a config file is required (or --bench)");
    run_train_command(*a);
  });
}

}  // namespace bamba::cli
