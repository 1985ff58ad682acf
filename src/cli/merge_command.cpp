// `bamba merge CONFIG.yml --out DIR`: merges checkpoints following a MergeKit-style YAML recipe (docs/merge.md).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "merge/merge_config.h"
#include "merge/merger.h"
#include "merge/sharded_writer.h"

namespace {

struct MergeArgs {
  std::string config, out, max_shard_size = "5GB";
  uint64_t seed = 0;
  bool force = false, quiet = false;
};

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= 1'000'000'000)
    std::snprintf(buf, sizeof buf, "%.2f GB", double(b) / 1e9);
  else if (b >= 1'000'000)
    std::snprintf(buf, sizeof buf, "%.1f MB", double(b) / 1e6);
  else
    std::snprintf(buf, sizeof buf, "%.1f kB", double(b) / 1e3);
  return buf;
}

// One line on stderr redrawn in place, about ten times a second; drawn only on a terminal, so that logs and
// pipes get the final summary alone.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled && ::isatty(2)) {}
  void update(const bamba::MergeProgress& p) {
    if (!enabled_) return;
    auto now = std::chrono::steady_clock::now();
    if (p.tensors_done < p.tensors_total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 30;
    int filled = p.bytes_total ? int(double(kWidth) * double(p.bytes_done) / double(p.bytes_total)) : kWidth;
    std::string bar(size_t(filled), '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r[%s] %zu/%zu tensors  %s / %s  %.1f s\x1b[K", bar.c_str(), p.tensors_done, p.tensors_total,
                 human_bytes(p.bytes_done).c_str(), human_bytes(p.bytes_total).c_str(),
                 std::chrono::duration<double>(now - start_).count());
    if (p.tensors_done == p.tensors_total) std::fputc('\n', stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_{};
};

void run_merge_command(const MergeArgs& a) {
  bamba::MergeConfig cfg = bamba::load_merge_config(a.config);
  if (!a.quiet)
    for (const auto& w : cfg.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  bamba::MergeOptions opt;
  opt.out_dir = a.out;
  opt.force = a.force;
  opt.seed = a.seed;
  opt.max_shard_bytes = bamba::parse_byte_size(a.max_shard_size);
  ProgressBar bar(!a.quiet);
  opt.on_progress = [&bar](const bamba::MergeProgress& p) { bar.update(p); };
  const auto t0 = std::chrono::steady_clock::now();
  bamba::MergeSummary s = bamba::run_merge(cfg, opt);
  if (!a.quiet)
    std::fprintf(stderr, "merged %zu tensors (%s in %zu shard%s) into %s in %.1f s\n", s.tensors,
                 human_bytes(s.bytes).c_str(), s.shards, s.shards == 1 ? "" : "s", a.out.c_str(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace

void register_merge(CLI::App& app) {
  auto a = std::make_shared<MergeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "merge", "Merge checkpoints as MergeKit does (linear, slerp, task_arithmetic, ties, dare_ties, dare_linear)");
  cmd->add_option("config", a->config,
                  "MergeKit-style YAML recipe (merge_method, models, base_model, parameters, "
                  "dtype, out_dtype)")
      ->required();
  cmd->add_option("--out,-o", a->out, "output folder; written next to it first, then renamed into place")->required();
  cmd->add_option("--max-shard-size", a->max_shard_size, "largest shard, like Hugging Face: 5GB (default), 2GB, 500MB");
  cmd->add_flag("--force", a->force, "replace an existing non-empty output folder");
  cmd->add_option("--random-seed", a->seed, "seed of DARE's random drop (default 0; same seed, same result)");
  cmd->add_flag("--quiet,-q", a->quiet, "no progress bar, warnings or summary");
  cmd->footer("Recipe format, methods and formulas: docs/merge.md");
  cmd->callback([a] {
    try {
      run_merge_command(*a);
    } catch (const std::exception& e) {  // bamba::Error, and the odd std::bad_alloc or filesystem error
      std::fprintf(stderr, "error: %s\n", e.what());
      throw CLI::RuntimeError(1);
    }
  });
}
