// `bamba merge CONFIG.yml --out DIR`: merges checkpoints following a MergeKit-style YAML recipe (docs/merge.md).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress.h"
#include "merge/merge_config.h"
#include "merge/merger.h"
#include "io/sharded_writer.h"

namespace bamba::cli {
namespace {

struct MergeArgs {
  std::string config, out, max_shard_size = "5GB";
  uint64_t seed = 0;
  bool force = false, quiet = false;
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
  std::unique_ptr<ProgressBar> bar;
  opt.on_progress = [&](const bamba::MergeProgress& p) {
    // A bar only where merging takes a noticeable time.
    if (!bar) bar = std::make_unique<ProgressBar>("merging", p.bytes_total, !a.quiet && p.bytes_total > (64u << 20));
    bar->update(p.bytes_done, cat(p.tensors_done, "/", p.tensors_total, " tensors"));
  };
  const auto t0 = std::chrono::steady_clock::now();
  bamba::MergeSummary s = bamba::run_merge(cfg, opt);
  if (bar) bar->finish();
  if (!a.quiet)
    std::fprintf(stderr, "merged %zu tensors (%s in %zu shard%s) into %s in %.1f s\n", s.tensors,
                 human_bytes(double(s.bytes)).c_str(), s.shards, s.shards == 1 ? "" : "s", a.out.c_str(),
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
  cmd->callback([a] { run_merge_command(*a); });
}

}  // namespace bamba::cli
