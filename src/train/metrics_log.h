// MetricsLog: one JSON line per optimizer step in <output>/metrics.jsonl, and the loss and learning-rate curves
// drawn from it as <output>/metrics.svg (written by hand: two line charts need no plotting library).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bamba {

struct StepMetrics {
  int64_t step = 0;  // optimizer steps done after this one (1-based)
  double loss = 0, lr = 0, grad_norm = 0;
  int64_t tokens_seen = 0;
  double tokens_per_s = 0, elapsed_s = 0;
  double mfu = -1;        // < 0: unknown
  double eval_loss = -1;  // < 0: not evaluated at this step
  std::string phase;      // the data's phase (a mixture with phases:), or ""
  nlohmann::json data;    // the data source's position after the step (a mixture: tokens drawn per dataset), or null
  nlohmann::ordered_json eval;  // validation loss per dataset ({"name": loss}), or null
};

class MetricsLog {
 public:
  // Reads an existing metrics.jsonl of `output` and keeps its lines with step <= `resume_step` (a resumed run
  // continues from there; later lines belonged to the abandoned tail). resume_step 0 starts afresh.
  MetricsLog(std::string output, int64_t resume_step);
  void append(const StepMetrics& m);  // appends the JSON line and flushes
  void write_svg() const;             // metrics.svg, via a temporary file and rename
  const std::vector<StepMetrics>& points() const { return points_; }
  std::string jsonl_path() const { return output_ + "/metrics.jsonl"; }
  std::string svg_path() const { return output_ + "/metrics.svg"; }

 private:
  void rewrite() const;
  std::string output_;
  std::vector<StepMetrics> points_;
};

// The SVG text for these points: loss (and eval loss, when present) above, learning rate below, against step.
std::string metrics_svg(const std::vector<StepMetrics>& points);

}  // namespace bamba
