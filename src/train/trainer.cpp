#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "core/progress.h"
#include "train/lr_schedule.h"

namespace bamba {

namespace {

std::vector<ParamRef> with_decay_rules(std::vector<ParamRef> params, const std::vector<std::string>& no_decay) {
  for (auto& p : params)
    for (const auto& s : no_decay)
      if (p.name.find(s) != std::string::npos) p.decay = false;
  return params;
}

AdamWOptions adamw_options(const TrainConfig& c, size_t first_param = 0) {
  AdamWOptions o;
  o.first_param_index = first_param;
  o.beta1 = c.beta1, o.beta2 = c.beta2, o.eps = c.eps, o.weight_decay = c.weight_decay;
  o.bf16_moments = c.precision == Precision::Bf16Memory;
  o.seed = c.seed;
  return o;
}

// The parameters this rank's optimizer updates: a ZeRO-1 shard under data parallelism, else all.
std::pair<size_t, size_t> owned_range(const std::vector<ParamRef>& params, const TrainerHooks& h) {
  return h.data_parallel ? h.data_parallel->owned(params) : std::pair<size_t, size_t>{0, params.size()};
}

}  // namespace

Trainer::Trainer(const TrainConfig& cfg, Trainable& model, BatchSource& data, CheckpointOptions ckpt,
                 TrainerHooks hooks)
    : cfg_(cfg),
      model_(model),
      data_(data),
      ckpt_(std::move(ckpt)),
      hooks_(std::move(hooks)),
      params_(with_decay_rules(model.params(), cfg.no_decay)),
      owned_(params_.begin() + std::ptrdiff_t(owned_range(params_, hooks_).first),
             params_.begin() + std::ptrdiff_t(owned_range(params_, hooks_).second)),
      first_owned_(owned_range(params_, hooks_).first),
      opt_(owned_, adamw_options(cfg, first_owned_), model.param_device()) {
  BAMBA_CHECK(!params_.empty(), "the model has no trainable parameters");
  state_.seed = cfg.seed;
}

void Trainer::resume(const std::string& path) {
  const std::string dir = resolve_checkpoint(path);
  if (DataParallel* dp = hooks_.data_parallel) {  // every rank reads the whole optimizer and keeps its shard
    AdamW full(params_, adamw_options(cfg_), model_.param_device());
    load_checkpoint(dir, params_, full, state_);
    dp->scatter_optimizer(params_, full, opt_);
  } else {
    load_checkpoint(dir, params_, opt_, state_);
  }
  if (state_.step > cfg_.steps)
    fail(dir, ": is at step ", state_.step, ", past the ", cfg_.steps, " steps this config trains for");
  data_.restore(state_.data);
  last_checkpoint_ = dir;
  resumed_ = true;
}

std::string Trainer::save() {
  state_.data = data_.state();
  const std::string dir = checkpoint_dir(cfg_.output, state_.step);
  if (dir == last_checkpoint_) return dir;  // already saved at this step (e.g. resumed here and stopped at once)
  if (DataParallel* dp = hooks_.data_parallel) {
    std::unique_ptr<AdamW> full = dp->gather_optimizer(params_, opt_, adamw_options(cfg_), model_.param_device());
    if (dp->rank() == 0) save_checkpoint(dir, params_, *full, state_, ckpt_, /*replace=*/resumed_);
    dp->comm().barrier();  // the others see the checkpoint only once it is whole
    last_checkpoint_ = dir;
    if (dp->rank() == 0) prune_checkpoints(cfg_.output, cfg_.keep_last, state_.step);
    return dir;
  }
  save_checkpoint(dir, params_, opt_, state_, ckpt_, /*replace=*/resumed_);
  last_checkpoint_ = dir;
  prune_checkpoints(cfg_.output, cfg_.keep_last, state_.step);
  return dir;
}

TrainRunResult Trainer::run() {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(cfg_.output, ec);
  if (ec) fail(cfg_.output, ": cannot create the output folder (", ec.message(), ")");
  if (!resumed_ && !checkpoint_steps(cfg_.output).empty())
    fail(cfg_.output, ": already holds checkpoints (up to checkpoint-", checkpoint_steps(cfg_.output).back(),
         "); continue that run with --resume ", cfg_.output, ", or choose another output folder");

  DataParallel* dp = hooks_.data_parallel;
  const int64_t world = dp ? dp->size() : 1;
  const bool lead = !dp || dp->rank() == 0;  // logs, draws the bar, writes the checkpoints
  const LrSchedule schedule = cfg_.lr_schedule();
  // The step's rows are split over the ranks: each runs accum micro-batches of micro_batch_size rows.
  if (cfg_.rows_per_step() % (cfg_.micro_batch_size * world) != 0)
    fail("batch_tokens ", cfg_.batch_tokens, " (", cfg_.rows_per_step(), " rows of ", cfg_.seq_len,
         ") does not split into micro-batches of ", cfg_.micro_batch_size, " rows on each of ", world, " ranks");
  const int64_t accum = cfg_.rows_per_step() / (cfg_.micro_batch_size * world);
  // Only the lead rank keeps the metrics files (the ranks of one process share the output folder).
  std::unique_ptr<MetricsLog> log = lead ? std::make_unique<MetricsLog>(cfg_.output, state_.step) : nullptr;
  ProgressBar bar("training", size_t(cfg_.steps), hooks_.progress && lead, ProgressUnit::Count);
  bar.update(size_t(state_.step));  // the ETA's rate counts the steps of this run only
  const auto t0 = std::chrono::steady_clock::now();
  const double elapsed0 = !log || log->points().empty() ? 0 : log->points().back().elapsed_s;
  const int64_t first_step = state_.step;
  TrainRunResult result;

  while (state_.step < cfg_.steps) {
    const auto ts = std::chrono::steady_clock::now();
    const int64_t s = state_.step;
    ParamDevice* dev = model_.param_device();
    for (const auto& p : params_)
      if (dev) dev->zero(p.grad, p.size);
      else std::fill(p.grad, p.grad + p.size, 0.f);

    // The whole step's micro-batches first: the loss divisors are the step's counts.
    std::vector<TokenBatch> micro;
    int64_t labeled = 0, sequences = 0;
    for (int64_t k = 0; k < accum; ++k) {
      micro.push_back(data_.next(cfg_.micro_batch_size, cfg_.seq_len));
      const TokenBatch& b = micro.back();
      if (b.rows != cfg_.micro_batch_size || b.cols != cfg_.seq_len || b.tokens.size() != size_t(b.rows * b.cols) ||
          b.labels.size() != b.tokens.size())
        fail("step ", s + 1, ": the data gave a batch of ", b.rows, " × ", b.cols, " (", b.tokens.size(), " tokens, ",
             b.labels.size(), " labels), expected ", cfg_.micro_batch_size, " × ", cfg_.seq_len);
      labeled += b.labeled();
      sequences += b.labeled_sequences();
    }
    if (dp) {  // the divisors are the global step's
      double counts[2] = {double(labeled), double(sequences)};
      dp->sum(counts);
      labeled = int64_t(counts[0]), sequences = int64_t(counts[1]);
    }
    if (labeled == 0) fail("step ", s + 1, ": the batch has no scored tokens (every label is -100)");
    const LossDivisors div{cfg_.loss_sum ? sequences : labeled, world * accum * cfg_.micro_batch_size * cfg_.seq_len};
    double objective = 0;
    for (const auto& mb : micro) objective += model_.loss_and_grad(mb, div).loss;
    if (dp) {  // the ranks' shares add up to the step's loss and gradient
      double o[1] = {objective};
      dp->sum(o);
      objective = o[0];
      dp->all_reduce_gradients(params_);
    }
    const double loss = objective * double(div.labels) / double(labeled);  // per scored token, in either reduction

    const std::string keep =
        last_checkpoint_.empty() ? "no checkpoint was written yet" : "the last good checkpoint is " + last_checkpoint_;
    if (!std::isfinite(loss)) {
      bar.abandon();
      if (log) log->write_svg();
      fail("step ", s + 1, ": the loss is ", loss, "; training stopped without saving (", keep, ")");
    }
    // clipping's factor goes into the update (AdamW reads g·coef): no separate pass over every gradient
    const double norm = global_grad_norm(params_, dev);
    if (!std::isfinite(norm)) {
      bar.abandon();
      if (log) log->write_svg();
      fail("step ", s + 1, ": the gradient norm is ", norm, " (loss ", loss, "); training stopped without saving (",
           keep, ")");
    }
    const double lr = cfg_.lr * lr_multiplier(schedule, s);
    opt_.step(owned_, lr, clip_coefficient(norm, cfg_.grad_clip));
    if (dp) dp->broadcast_parameters(params_, dev);
    state_.step = s + 1;
    state_.tokens_seen += cfg_.batch_tokens;

    const auto now = std::chrono::steady_clock::now();
    const double step_s = std::chrono::duration<double>(now - ts).count();
    StepMetrics m;
    m.step = state_.step, m.loss = loss, m.lr = lr, m.grad_norm = norm, m.tokens_seen = state_.tokens_seen;
    m.data = data_.state();  // the achieved mixture, step by step
    if (m.data.is_object() && m.data.contains("phase") && m.data["phase"].is_string()) m.phase = m.data["phase"];
    m.tokens_per_s = step_s > 0 ? double(cfg_.batch_tokens) / step_s : 0;
    m.elapsed_s = elapsed0 + std::chrono::duration<double>(now - t0).count();
    if (hooks_.peak_flops > 0 && model_.flops_per_token() > 0)
      m.mfu = m.tokens_per_s * model_.flops_per_token() / hooks_.peak_flops;
    const bool eval_now = cfg_.eval_every > 0 && state_.step % cfg_.eval_every == 0;
    if (hooks_.eval && eval_now) m.eval_loss = hooks_.eval();
    std::string val_line;
    if (hooks_.validate && eval_now) {
      m.eval = hooks_.validate();
      double sum = 0;
      for (const auto& [name, v] : m.eval.items()) {
        sum += v.get<double>();
        char buf[96];
        std::snprintf(buf, sizeof buf, " %s %.4f", name.c_str(), v.get<double>());
        val_line += buf;
      }
      if (!m.eval.empty() && !hooks_.eval) m.eval_loss = sum / double(m.eval.size());
    }
    if (log) log->append(m);
    result.loss = loss;

    char note[160];
    std::snprintf(note, sizeof note, "loss %.4f lr %.3g gnorm %.3g %.0f tok/s", loss, lr, norm, m.tokens_per_s);
    std::string line = note;
    if (m.mfu >= 0) line += cat(" MFU ", int(m.mfu * 1000) / 10.0, "%");
    if (!val_line.empty() && hooks_.progress && lead)  // on its own line, above the bar's next drawing
      std::fprintf(stderr, "\r\033[Kstep %lld validation loss:%s\n", (long long)state_.step, val_line.c_str());
    bar.update(size_t(state_.step), line);

    bool stop = hooks_.stop_requested && hooks_.stop_requested();
    if (dp) {  // one rank's Ctrl-C stops them all at the same step (else the others would wait in a collective)
      double f[1] = {stop ? 1.0 : 0.0};
      dp->sum(f);
      stop = f[0] > 0;
    }
    if (state_.step == cfg_.steps || stop || (cfg_.save_every > 0 && state_.step % cfg_.save_every == 0)) {
      save();
      if (log) log->write_svg();
    }
    if (stop) {
      result.interrupted = true;
      break;
    }
  }
  if (log && state_.step == first_step && state_.step == cfg_.steps) log->write_svg();  // resumed at the end: nothing to do
  if (result.interrupted)
    bar.abandon();
  else
    bar.finish();
  result.step = state_.step;
  result.last_checkpoint = last_checkpoint_;
  return result;
}

}  // namespace bamba
