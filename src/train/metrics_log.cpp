#include "train/metrics_log.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/mapped_file.h"

namespace bamba {

namespace {

nlohmann::ordered_json to_json(const StepMetrics& m) {
  nlohmann::ordered_json j = {{"step", m.step},           {"loss", m.loss},          {"lr", m.lr},
                              {"grad_norm", m.grad_norm}, {"tokens", m.tokens_seen}, {"tokens_per_s", m.tokens_per_s},
                              {"elapsed_s", m.elapsed_s}};
  if (!m.phase.empty()) j["phase"] = m.phase;
  if (m.mfu >= 0) j["mfu"] = m.mfu;
  if (m.eval_loss >= 0) j["eval_loss"] = m.eval_loss;
  if (!m.eval.is_null()) j["eval"] = m.eval;
  if (!m.data.is_null()) j["data"] = m.data;
  return j;
}

void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f << text;
    f.close();
    if (!f) fail(tmp, ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail(path, ": cannot rename ", tmp, " into place");
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

// One chart: a frame at (x0, y0) of size w × h, the series as polylines, min/max labels on both axes.
void chart(std::ostringstream& s, double x0, double y0, double w, double h, const std::string& title,
           const std::vector<std::pair<std::vector<std::pair<double, double>>, const char*>>& series) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& [pts, color] : series)
    for (auto [x, y] : pts) {
      if (!std::isfinite(y)) continue;
      xmin = std::min(xmin, x), xmax = std::max(xmax, x), ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    }
  s << "<rect x='" << x0 << "' y='" << y0 << "' width='" << w << "' height='" << h
    << "' fill='none' stroke='#888'/>\n<text x='" << x0 << "' y='" << y0 - 6 << "'>" << title << "</text>\n";
  if (!(xmin <= xmax)) return;  // no finite points
  if (xmax == xmin) xmax = xmin + 1;
  if (ymax == ymin) ymax = ymin + (ymin == 0 ? 1 : std::fabs(ymin) * 0.1);
  auto px = [&](double x) { return x0 + (x - xmin) / (xmax - xmin) * w; };
  auto py = [&](double y) { return y0 + h - (y - ymin) / (ymax - ymin) * h; };
  s << "<text x='" << x0 - 4 << "' y='" << y0 + 10 << "' text-anchor='end'>" << num(ymax) << "</text>\n"
    << "<text x='" << x0 - 4 << "' y='" << y0 + h << "' text-anchor='end'>" << num(ymin) << "</text>\n"
    << "<text x='" << x0 << "' y='" << y0 + h + 14 << "'>" << num(xmin) << "</text>\n"
    << "<text x='" << x0 + w << "' y='" << y0 + h + 14 << "' text-anchor='end'>step " << num(xmax) << "</text>\n";
  for (const auto& [pts, color] : series) {
    s << "<polyline fill='none' stroke='" << color << "' stroke-width='1.5' points='";
    for (auto [x, y] : pts)
      if (std::isfinite(y)) s << num(px(x)) << "," << num(py(y)) << " ";
    s << "'/>\n";
  }
}

}  // namespace

MetricsLog::MetricsLog(std::string output, int64_t resume_step) : output_(std::move(output)) {
  if (resume_step <= 0 || !file_exists(jsonl_path())) {
    rewrite();
    return;
  }
  std::istringstream in(read_text_file(jsonl_path()));
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step"))
      fail(jsonl_path(), ":", n, ": not a metrics line (a JSON object with \"step\")");
    StepMetrics m;
    m.step = j.value("step", int64_t(0));
    if (m.step > resume_step) continue;
    m.loss = j.value("loss", 0.0), m.lr = j.value("lr", 0.0), m.grad_norm = j.value("grad_norm", 0.0);
    m.tokens_seen = j.value("tokens", int64_t(0)), m.tokens_per_s = j.value("tokens_per_s", 0.0);
    m.elapsed_s = j.value("elapsed_s", 0.0), m.mfu = j.value("mfu", -1.0), m.eval_loss = j.value("eval_loss", -1.0);
    m.phase = j.value("phase", "");
    if (j.contains("data")) m.data = j["data"];
    if (j.contains("eval")) m.eval = nlohmann::ordered_json::parse(j["eval"].dump());
    points_.push_back(m);
  }
  rewrite();
}

void MetricsLog::rewrite() const {
  std::string text;
  for (const auto& m : points_) text += to_json(m).dump() + "\n";
  write_atomically(jsonl_path(), text);
}

void MetricsLog::append(const StepMetrics& m) {
  points_.push_back(m);
  std::ofstream f(jsonl_path(), std::ios::binary | std::ios::app);
  f << to_json(m).dump() << "\n";
  f.close();
  if (!f) fail(jsonl_path(), ": write failed");
}

void MetricsLog::write_svg() const { write_atomically(svg_path(), metrics_svg(points_)); }

std::string metrics_svg(const std::vector<StepMetrics>& points) {
  std::vector<std::pair<double, double>> loss, eval, lr;
  for (const auto& m : points) {
    loss.emplace_back(double(m.step), m.loss);
    if (m.eval_loss >= 0) eval.emplace_back(double(m.step), m.eval_loss);
    lr.emplace_back(double(m.step), m.lr);
  }
  std::ostringstream s;
  s << "<svg xmlns='http://www.w3.org/2000/svg' width='720' height='520' font-family='sans-serif' font-size='11'>\n"
    << "<rect width='720' height='520' fill='white'/>\n";
  chart(s, 70, 30, 620, 280, "loss (blue: train, red: eval)", {{loss, "#1f77b4"}, {eval, "#d62728"}});
  chart(s, 70, 370, 620, 120, "learning rate", {{lr, "#2ca02c"}});
  s << "</svg>\n";
  return s.str();
}

}  // namespace bamba
