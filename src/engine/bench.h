// The benchmark behind `bamba bench`: a preset model shape with generated weights built directly on the
// backend's device, timed like llama-bench (mean ± stdev of tok/s over repeated runs after a warm-up) for prompt
// processing (ppN: one N-token prefill), text generation (tgN: N decode steps of one sequence) and batched decode
// (N sequences decoding together after 512-token prompts), each with the achieved TFLOP/s or GB/s and its share of
// the card's measured ceilings (bench/NOTES.md, Ceilings).
// decodeS@C (decode at depth): S sequences decoding at context C whose cache was filled without computing the
// prompt — KV pages of the right length holding arbitrary values (zeros), the Mamba state arbitrary (zeros): a
// decode step's cost depends on the lengths, not the values, so this measures decode at 32k-token depth without
// the minutes of prefill. Labelled "synthetic cache" wherever it is printed. With a cache budget, the sequences
// that do not fit are left out (as a server would queue them) and the row says how many ran.
#pragma once
#include <iosfwd>
#include <string>
#include <vector>

namespace bamba {

struct BenchOptions {
  std::string preset = "bamba-9b";  // bamba-9b | tiny (the built-in dummy shape)
  std::string device = "auto";
  std::string dtype = "bf16";  // GPU compute dtype (bf16 | fp32); the dummy weights have no checkpoint dtype
  std::string ssm_state = "fp32";  // SSM state dtype in the cache (fp32 | bf16)
  std::string quantization = "none";  // "fp8": linear weights FP8 (model/weights.h quantize_weights_fp8)
  bool fp8_lm_head = false;            // with fp8: lm_head too
  int reps = 3;
  std::vector<std::string> tests = {"pp512",   "pp2048",  "pp8192",  "tg128",    "decode1",
                                    "decode2", "decode4", "decode8", "decode16", "decode64"};
  int decode_prompt = 512;  // prompt length before batched decode
  int decode_steps = 128;   // decode steps timed per batched-decode run
  bool profile = false;     // after each test, one more run with every op timed (backend/op_profiler.h)
  // Ops never run (OpProfiler::set_leave_out): the step's time without them, for what they cost in the graph.
  // The outputs are then not the model's; the report says so.
  std::vector<std::string> leave_out;
  bool deterministic = false;  // batch-invariant kernels (Backend::set_batch_invariant), as serve --deterministic
  int tensor_parallel_size = 1;  // ranks the model is split over (GPUs 0..N-1, or threads on the CPU)
  double cache_gib = 0;     // decodeS@C: the cache budget (state slots + KV pages); 0 = whatever allocates
  // The ceilings "% of peak" divides by (HBM copy bandwidth, read + write counted; dense bf16 matmul): 0 = the
  // card's measured ones where bench/NOTES.md "Ceilings" has them (known_ceilings), else no percentage.
  double peak_tflops = 0;
  double peak_gbps = 0;
};

// The ceilings a bench run divides by, and where they come from.
struct BenchCeilings {
  double gbps = 0, tflops = 0;  // 0: unknown (the "% of peak" column shows "-")
  std::string source;
};
// The measured ceilings of the cards in bench/NOTES.md "Ceilings", by the backend's name (which holds the CUDA device's
// name). A matmul ceiling is bf16's, so none for compute dtype fp32.
BenchCeilings known_ceilings(const std::string& backend_name, bool bf16);

struct BenchRow {
  std::string test;          // pp512, tg128, decode16, ...
  int n_seqs = 1;            // sequences that ran
  int requested_seqs = 0;    // decodeS@C: S (more than n_seqs when they did not all fit the budget)
  int depth = 0;             // decodeS@C: C, the context each sequence decodes at
  double step_ms_p50 = 0, step_ms_p99 = 0;  // decodeS@C: one decode step = the inter-token latency
  std::string note;          // decodeS@C: "synthetic cache", what did not fit
  std::vector<double> tok_s; // one per timed run
  double mean = 0, stdev = 0;
  std::string rate_unit;     // "TFLOP/s" (prefill) or "GB/s" (decode)
  double rate = 0;           // at the mean tok/s
  double pct_of_peak = 0;
};

struct BenchReport {
  std::string model, backend, device;
  long long params = 0;
  BenchCeilings peak;  // one device's
  int ranks = 1;       // devices the model is split over: "% of peak" is of ranks × peak
  std::vector<BenchRow> rows;
};

// Runs the tests, printing progress to `log`. Throws Error on a bad preset / test name or device failure.
BenchReport run_bench(const BenchOptions& o, std::ostream& log);
void print_bench_table(const BenchReport& r, std::ostream& out);  // markdown, like llama-bench
std::string bench_json(const BenchReport& r);

}  // namespace bamba
