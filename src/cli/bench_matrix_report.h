// The results of `bamba bench-matrix` (one cell per model × streams × context) and how they are written: a JSON
// file, a markdown table and an SVG chart of throughput against streams, one panel per context.
#pragma once
#include <string>
#include <vector>

namespace bamba::cli {

struct DepthResult {  // `bamba bench` decodeS@C: decode at depth over a synthetic cache
  bool ran = false;
  int seqs_run = 0;  // < streams when they did not all fit the cache budget
  double tok_s = 0, step_ms_p50 = 0, step_ms_p99 = 0;
  std::string note;  // what the bench said (fit, failure)
};

struct ServeResult {  // `bamba serve` + `bamba bench-serve`
  bool ran = false;
  std::string skipped;  // why not (prefill over the budget, the server did not start, ...)
  int completed = 0, cut = 0, cut_before_first_token = 0, failed = 0;
  double duration_s = 0, out_tok_s = 0, ttft_p50_ms = 0, ttft_p99_ms = 0, itl_p50_ms = 0, itl_p99_ms = 0;
  double max_running = -1, max_waiting = -1, preemptions = -1;  // -1: not reported
  std::string first_error;
};

struct MatrixCell {
  std::string model;
  int streams = 0, context = 0;
  DepthResult depth;
  ServeResult serve;
};

struct MatrixReport {
  std::string device;
  double cache_gib = 0, cell_cap_s = 0;
  int output_len = 0, depth_steps = 0;
  long long serve_max_tokens = 0;
  std::vector<std::string> models;
  std::vector<int> streams, contexts;
  std::vector<MatrixCell> cells;  // models × contexts × streams

  const MatrixCell* find(const std::string& model, int streams, int context) const;
};

std::string matrix_json(const MatrixReport& r);
std::string matrix_markdown(const MatrixReport& r);
// Throughput (tok/s) against streams, a panel per context, a line per model: decode at depth solid (hollow marks
// where not every stream fit), through the server dashed.
std::string matrix_svg(const MatrixReport& r);

}  // namespace bamba::cli
