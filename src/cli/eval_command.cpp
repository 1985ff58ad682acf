// bamba eval: lm-eval's tasks (YAML files under tasks/) scored as lm-evaluation-harness scores them; see
// docs/evaluation.md.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "eval/harness.h"
#include "model/presets.h"

namespace bamba::cli {

namespace {
struct EvalCliOptions {
  ModelOptions model;
  std::string tasks, tasks_dir, data_dir = ".", output, samples;
  int num_fewshot = -1;
  long long limit = -1;
  bool add_bos = false, naive = false, list = false;
  unsigned long long fewshot_seed = 1234;
  int32_t max_seqs = 0, max_tokens_per_step = 0;
  std::string preset;  // a model shape with generated weights and the byte-level tokenizer (speed measurements)
};

// tasks/ of the source tree the binary was built from (build/bamba -> ../tasks), else ./tasks.
std::string default_tasks_dir() {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (auto p : {exe.parent_path().parent_path() / "tasks", exe.parent_path() / "tasks"})
      if (std::filesystem::is_directory(p)) return p.string();
  }
  return "tasks";
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    size_t e = s.find(',', b);
    if (e == std::string::npos) e = s.size();
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

void write_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".partial";
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) fail("cannot write ", path);
    f << text;
    if (!f.flush()) fail("cannot write ", path);
  }
  std::filesystem::rename(tmp, path);
}

void run(const EvalCliOptions& o) {
  const std::string tasks_dir = o.tasks_dir.empty() ? default_tasks_dir() : o.tasks_dir;
  if (o.tasks.empty()) fail("--tasks: name at least one task or group (see tasks/ and docs/evaluation.md)");
  eval::EvalOptions eo;
  eo.tasks = split_commas(o.tasks);
  eo.tasks_dir = tasks_dir;
  eo.data_dir = o.data_dir;
  if (o.num_fewshot >= 0) eo.num_fewshot = o.num_fewshot;
  if (o.limit >= 0) eo.limit = size_t(o.limit);
  eo.add_bos = o.add_bos;
  eo.fewshot_seed = o.fewshot_seed;
  eo.samples_path = o.samples;
  eo.progress = !o.model.quiet;
  eval::check_tasks(eo);  // a typo or a missing file fails before a large model loads
  // With --preset: generated weights score nothing meaningful; this is for timing (bench/NOTES.md), and says so.
  ModelOptions mo = o.model;
  mo.preset = o.preset;
  LoadedModel m = load(mo, true);
  eo.model_name = o.preset.empty() ? m.name : "preset " + o.preset;
  eval::RunnerOptions ro;
  ro.max_model_len = m.max_model_len;
  ro.share = !o.naive;
  ro.eos = m.eos;
  const bool gpu = m.backend->device() != Device::CPU;
  ro.max_seqs = o.max_seqs > 0 ? o.max_seqs : (gpu ? 64 : 8);
  ro.max_tokens_per_step = o.max_tokens_per_step > 0 ? o.max_tokens_per_step : (gpu ? 8192 : 1024);
  ro.max_logit_rows = std::min(ro.max_tokens_per_step, gpu ? 1024 : 256);
  eval::ModelRunner runner(*m.model, *m.tokenizer, ro);

  const eval::json res = eval::evaluate(runner, *m.tokenizer, eo);

  std::string table = eval::results_table(res);
  const std::string v2 = eval::leaderboard_v2_table(res);
  if (!v2.empty()) table += "\n" + v2;
  std::cout << table;
  const eval::json& b = res["bamba"];
  std::fprintf(stderr, "%.1f s; %lld tokens computed for %lld requested (%.2fx less), %lld forks, %lld steps\n",
               b["seconds"].get<double>(), b["tokens_fed"].get<long long>(), b["tokens_requested"].get<long long>(),
               b["tokens_fed"].get<double>() > 0 ? b["tokens_requested"].get<double>() / b["tokens_fed"].get<double>() : 0.0,
               b["forks"].get<long long>(), b["steps"].get<long long>());
  if (!o.output.empty()) {
    write_file(o.output, res.dump(2) + "\n");
    const std::string md = std::filesystem::path(o.output).replace_extension(".md").string();
    write_file(md, table);
    std::fprintf(stderr, "results: %s, %s\n", o.output.c_str(), md.c_str());
  }
}
}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCliOptions>();
  CLI::App* cmd = app.add_subcommand("eval", "Evaluate a model on lm-eval tasks (Open LLM Leaderboard v1/v2), scored as lm-eval scores them");
  o->model.add_to(cmd);
  cmd->add_option("--tasks,-t", o->tasks, "Comma-separated task or group names (or YAML files), e.g. arc_challenge,hellaswag,mmlu")->required();
  cmd->add_option("--tasks-dir", o->tasks_dir, "Where task YAML files are looked up by name (default: the repository's tasks/)");
  cmd->add_option("--data-dir", o->data_dir, "Local copies of the Hugging Face datasets: <data-dir>/<dataset_path>/...")->capture_default_str();
  cmd->add_option("--num-fewshot", o->num_fewshot, "Override every task's few-shot count");
  cmd->add_option("--limit", o->limit, "Evaluate only the first N documents of each task");
  cmd->add_flag("--add-bos", o->add_bos, "Add the tokenizer's special tokens (BOS) to every request (lm-eval >= 0.4.10's default)");
  cmd->add_option("--fewshot-seed", o->fewshot_seed, "Seed of the few-shot sampler (lm-eval: 1234)")->capture_default_str();
  cmd->add_option("--output,-o", o->output, "Write lm-eval's results JSON here (and the table beside it as .md)");
  cmd->add_option("--log-samples", o->samples, "Write every document's prompt, target, responses and scores here (JSONL)");
  cmd->add_flag("--naive", o->naive, "Run every request as its own full sequence (no shared contexts or forks: for comparison)");
  cmd->add_option("--max-seqs", o->max_seqs, "Sequences in the cache at once (default 64 on the GPU, 8 on the CPU)");
  cmd->add_option("--max-tokens-per-step", o->max_tokens_per_step, "Tokens per forward step (default 8192 GPU, 1024 CPU)");
  cmd->add_option("--preset", o->preset, "Instead of --model: a model shape with generated weights (tiny, bamba-9b, llama-3.1-8b, granite-4.0-h-tiny, nemotron-h-8b), for timing");
  cmd->callback([o] { run(*o); });
}

}  // namespace bamba::cli
