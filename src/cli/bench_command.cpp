// `bamba bench`: speed of a preset model shape with generated weights (engine/bench.h), as a markdown table on
// stdout (like llama-bench) and as JSON.
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "engine/bench.h"

namespace bamba::cli {

void register_bench(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  auto json = std::make_shared<std::string>("bench.json");
  auto tests = std::make_shared<std::string>();
  CLI::App* sub = app.add_subcommand("bench", "Prefill / decode / batched-decode speed with % of the hardware ceilings");
  sub->add_option("--preset", o->preset, "Model shape with generated weights: tiny, bamba-9b, llama-3.1-8b, granite-4.0-h-tiny or nemotron-h-8b")->capture_default_str();
  sub->add_option("--device", o->device, "cpu, cuda or auto")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "GPU compute dtype: bf16 or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  sub->add_option("--ssm-state", o->ssm_state, "SSM state dtype in the cache: fp32 or bf16 (CUDA only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "bf16"}));
  sub->add_option("--quantization", o->quantization, "none, or fp8: the linear weights in FP8 (docs/quantization.md)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "fp8"}));
  sub->add_flag("--fp8-lm-head", o->fp8_lm_head, kFp8LmHeadHelp);
  sub->add_option("--reps", o->reps, "Timed runs per test (after one warm-up)")->capture_default_str()->check(CLI::Range(1, 1000));
  sub->add_option("--json", *json, "Also write the table as JSON here")->capture_default_str();
  sub->add_option("--tests", *tests, "Comma-separated tests: ppN (N-token prefill), tgN (N decode steps, one "
                                     "sequence), decodeN (N sequences decoding after --prompt tokens each); "
                                     "default pp512,pp2048,pp8192,tg128,decode1,decode2,decode4,decode8,decode16,decode64");
  sub->add_option("--prompt", o->decode_prompt, "Prompt length before batched decode")->capture_default_str();
  sub->add_option("--steps", o->decode_steps, "Decode steps timed per batched-decode run")->capture_default_str();
  sub->add_flag("--deterministic", o->deterministic,
                "The batch-invariant kernels of serve --deterministic (docs/serving.md), to measure their cost");
  sub->add_option("--tensor-parallel-size,--tp", o->tensor_parallel_size,
                  "Split the model over N ranks: GPUs 0..N-1 with --device cuda, threads on the CPU")
      ->check(CLI::Range(1, 64));
  sub->add_option("--cache-memory", o->cache_gib,
                  "decodeS@C: GiB for state slots + KV pages (as `bamba serve --cache-memory`); sequences beyond it "
                  "are left out and the row says how many ran (default: no budget)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--peak-gbps", o->peak_gbps, "One device's memory-bandwidth ceiling for \"% of peak\" (default: "
                                               "measured for an H200 / H100 80GB HBM3, bench/NOTES.md; else none; "
                                               "with --tp N, of N devices)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--peak-tflops", o->peak_tflops, "One device's dense bf16 matmul ceiling for \"% of peak\" (default "
                                                   "as --peak-gbps)")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--profile", o->profile, "After each test, one more run with every op timed alone (per-op table on "
                                         "stderr; ops are synchronized one by one, so decode times include launch "
                                         "latency)");
  sub->add_option("--leave-out", o->leave_out,
                  "Comma-separated ops never to run, as --profile names them (\"ssd\", \"matmul\", \"matmul N=4096 "
                  "K=8192\"): the time without them, against the whole step's, is what they cost inside the "
                  "step's CUDA graph. Outputs are then meaningless (times only)")
      ->delimiter(',');
  sub->callback([o, json, tests] {
    if (!tests->empty()) {
      o->tests.clear();
      std::stringstream ss(*tests);
      for (std::string t; std::getline(ss, t, ',');) o->tests.push_back(t);
    }
    BenchReport r = run_bench(*o, std::cerr);
    print_bench_table(r, std::cout);
    std::ofstream f(*json);
    if (!f) fail("bench: cannot write ", *json);
    f << bench_json(r) << "\n";
  });
}

}  // namespace bamba::cli
