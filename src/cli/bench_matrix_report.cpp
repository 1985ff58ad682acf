#include "cli/bench_matrix_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

namespace bamba::cli {

namespace {

using json = nlohmann::json;

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

std::string tokens_k(int n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); }

// Markdown cells must not carry '|' or newlines.
std::string cell_text(std::string s) {
  for (char& c : s)
    if (c == '|' || c == '\n') c = c == '|' ? '/' : ' ';
  return s;
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}

// A round axis maximum at or above v (1, 2, 2.5, 5 × 10^k).
double nice_max(double v) {
  if (v <= 0) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * p >= v) return m * p;
  return 10 * p;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

}  // namespace

const MatrixCell* MatrixReport::find(const std::string& model, int s, int c) const {
  for (const auto& x : cells)
    if (x.model == model && x.streams == s && x.context == c) return &x;
  return nullptr;
}

std::string matrix_json(const MatrixReport& r) {
  json j = {{"device", r.device},           {"cache_gib", r.cache_gib},         {"cell_cap_s", r.cell_cap_s},
            {"output_len", r.output_len},   {"depth_steps", r.depth_steps},     {"serve_max_tokens", r.serve_max_tokens},
            {"models", r.models},           {"streams", r.streams},             {"contexts", r.contexts}};
  j["cells"] = json::array();
  for (const auto& c : r.cells) {
    json d = {{"ran", c.depth.ran}, {"synthetic_cache", true}, {"seqs_run", c.depth.seqs_run},
              {"tok_s", c.depth.tok_s}, {"step_ms_p50", c.depth.step_ms_p50}, {"step_ms_p99", c.depth.step_ms_p99},
              {"note", c.depth.note}};
    auto opt = [](double v) { return v >= 0 ? json(v) : json(); };
    json s = {{"ran", c.serve.ran}, {"skipped", c.serve.skipped}, {"completed", c.serve.completed},
              {"cut", c.serve.cut}, {"cut_before_first_token", c.serve.cut_before_first_token},
              {"failed", c.serve.failed}, {"duration_s", c.serve.duration_s}, {"output_tok_s", c.serve.out_tok_s},
              {"ttft_p50_ms", c.serve.ttft_p50_ms}, {"ttft_p99_ms", c.serve.ttft_p99_ms},
              {"itl_p50_ms", c.serve.itl_p50_ms}, {"itl_p99_ms", c.serve.itl_p99_ms},
              {"max_running", opt(c.serve.max_running)}, {"max_waiting", opt(c.serve.max_waiting)},
              {"preemptions", opt(c.serve.preemptions)}, {"first_error", c.serve.first_error}};
    j["cells"].push_back({{"model", c.model}, {"streams", c.streams}, {"context", c.context}, {"depth", d}, {"serve", s}});
  }
  return j.dump(2);
}

std::string matrix_markdown(const MatrixReport& r) {
  std::ostringstream o;
  o << "## Hybrid vs transformer on one engine\n\n";
  o << "Device: " << r.device << "; generated weights (presets); cache budget " << fmt("%g", r.cache_gib)
    << " GiB per model (state slots + KV pages).\n\n";
  o << "### Decode at depth (`bamba bench` decodeS@C: **synthetic cache**, no prefill computed)\n\n";
  o << "S sequences decode together at context C; their KV pages hold C tokens of arbitrary values and the Mamba "
       "state is arbitrary (decode cost depends on lengths, not values). tok/s = sequences × steps / time over "
    << r.depth_steps << " steps; ITL = one step. Sequences that do not fit the budget are left out, as a server "
       "queues them: *ran* says how many decoded at once.\n\n";
  const bool pair = r.models.size() == 2;
  o << "| context | streams |";
  for (auto& m : r.models) o << " " << m << " tok/s | ran | ITL p50 / p99 ms |";
  if (pair) o << " " << r.models[0] << " / " << r.models[1] << " |";
  o << "\n| ---: | ---: |";
  for (size_t i = 0; i < r.models.size(); ++i) o << " ---: | ---: | ---: |";
  if (pair) o << " ---: |";
  o << "\n";
  for (int c : r.contexts)
    for (int s : r.streams) {
      o << "| " << tokens_k(c) << " | " << s << " |";
      std::vector<double> tps;
      for (auto& m : r.models) {
        const MatrixCell* x = r.find(m, s, c);
        if (!x || !x->depth.ran) {
          o << " — | " << (x && !x->depth.note.empty() ? cell_text(x->depth.note) : "not run") << " | — |";
          tps.push_back(0);
          continue;
        }
        const DepthResult& d = x->depth;
        o << " " << fmt("%.0f", d.tok_s) << " | " << d.seqs_run << (d.seqs_run < s ? " of " + std::to_string(s) : "")
          << " | " << fmt("%.2f", d.step_ms_p50) << " / " << fmt("%.2f", d.step_ms_p99) << " |";
        tps.push_back(d.tok_s);
      }
      if (pair) o << " " << (tps[0] > 0 && tps[1] > 0 ? fmt("%.2f×", tps[0] / tps[1]) : std::string("—")) << " |";
      o << "\n";
    }
  o << "\n### Through the server (`bamba serve --preset` + `bamba bench-serve`)\n\n";
  o << "S streamed requests sent at once, each C prompt tokens (token ids) and " << r.output_len
    << " output tokens (ignore_eos); capped at " << fmt("%g", r.cell_cap_s)
    << " s per cell (requests still running then are cut, their tokens counted). Only cells whose prompts total "
       "at most "
    << r.serve_max_tokens << " tokens run (prefill time); out tok/s includes the prefill, so long contexts are "
       "prefill-bound. *running* / *waiting*: the most requests the server ran / queued at once.\n\n";
  o << "| context | streams | model | done / cut / failed | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | running "
       "| waiting | preemptions |\n";
  o << "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  auto num = [](double v) { return v >= 0 ? fmt("%.0f", v) : std::string("—"); };
  for (int c : r.contexts)
    for (int s : r.streams)
      for (auto& m : r.models) {
        const MatrixCell* x = r.find(m, s, c);
        if (!x) continue;
        const ServeResult& v = x->serve;
        o << "| " << tokens_k(c) << " | " << s << " | " << m << " | ";
        if (!v.ran) {
          o << "not run: " << cell_text(v.skipped) << " | | | | | | |\n";
          continue;
        }
        o << v.completed << " / " << v.cut << " / " << v.failed << " | " << fmt("%.1f", v.out_tok_s) << " | "
          << fmt("%.0f", v.ttft_p50_ms) << " / " << fmt("%.0f", v.ttft_p99_ms) << " | " << fmt("%.2f", v.itl_p50_ms)
          << " / " << fmt("%.2f", v.itl_p99_ms) << " | " << num(v.max_running) << " | " << num(v.max_waiting) << " | "
          << num(v.preemptions) << " |\n";
      }
  bool errors = false;
  for (const auto& x : r.cells)
    if (!x.serve.first_error.empty()) {
      if (!errors) o << "\nFirst failure per cell:\n\n";
      errors = true;
      o << "- " << x.model << ", " << x.streams << " × " << tokens_k(x.context) << ": " << cell_text(x.serve.first_error)
        << "\n";
    }
  return o.str();
}

std::string matrix_svg(const MatrixReport& r) {
  const int n = std::max<int>(1, int(r.contexts.size()));
  const double pw = 300, ph = 240, left = 70, top = 70, gap = 40, bottom = 50;
  const double W = left + n * pw + (n - 1) * gap + 20, H = top + ph + bottom + 20;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << left << "\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Output throughput vs concurrent "
       "streams ("
    << xml_escape(r.device) << ")</text>\n";
  // Legend: a line style per source, a colour per model.
  double lx = left;
  for (size_t m = 0; m < r.models.size(); ++m) {
    const char* col = kColors[m % 6];
    o << "<line x1=\"" << lx << "\" y1=\"40\" x2=\"" << lx + 24 << "\" y2=\"40\" stroke=\"" << col
      << "\" stroke-width=\"2\"/><text x=\"" << lx + 28 << "\" y=\"44\">" << xml_escape(r.models[m]) << "</text>\n";
    lx += 40 + 7.5 * double(r.models[m].size());
  }
  o << "<text x=\"" << left << "\" y=\"" << H - 8 << "\" fill=\"#444\">solid: decode at depth (synthetic cache; hollow = not all "
       "streams fit); dashed: through the server (incl. prefill)</text>\n";
  const int ns = std::max<int>(1, int(r.streams.size()));
  for (int p = 0; p < n; ++p) {
    const int ctx = r.contexts[size_t(p)];
    const double x0 = left + p * (pw + gap), y0 = top;
    double ymax = 0;
    for (const auto& c : r.cells)
      if (c.context == ctx) {
        if (c.depth.ran) ymax = std::max(ymax, c.depth.tok_s);
        if (c.serve.ran) ymax = std::max(ymax, c.serve.out_tok_s);
      }
    ymax = nice_max(ymax);
    auto X = [&](int i) { return x0 + (ns == 1 ? pw / 2 : pw * (0.06 + 0.88 * i / double(ns - 1))); };
    auto Y = [&](double v) { return y0 + ph - ph * v / ymax; };
    o << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << pw << "\" height=\"" << ph
      << "\" fill=\"none\" stroke=\"#888\"/>\n";
    o << "<text x=\"" << x0 + pw / 2 << "\" y=\"" << y0 - 8 << "\" text-anchor=\"middle\" font-weight=\"bold\">context "
      << tokens_k(ctx) << "</text>\n";
    for (int k = 0; k <= 4; ++k) {
      const double v = ymax * k / 4, y = Y(v);
      o << "<line x1=\"" << x0 << "\" y1=\"" << y << "\" x2=\"" << x0 + pw << "\" y2=\"" << y
        << "\" stroke=\"#ddd\"/><text x=\"" << x0 - 4 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">"
        << fmt(ymax >= 100 ? "%.0f" : "%.3g", v) << "</text>\n";
    }
    for (int i = 0; i < ns; ++i)
      o << "<text x=\"" << X(i) << "\" y=\"" << y0 + ph + 16 << "\" text-anchor=\"middle\">" << r.streams[size_t(i)]
        << "</text>\n";
    o << "<text x=\"" << x0 + pw / 2 << "\" y=\"" << y0 + ph + 34 << "\" text-anchor=\"middle\">concurrent streams</text>\n";
    if (p == 0)
      o << "<text x=\"" << 16 << "\" y=\"" << y0 + ph / 2 << "\" transform=\"rotate(-90 16 " << y0 + ph / 2
        << ")\" text-anchor=\"middle\">output tok/s</text>\n";
    for (size_t m = 0; m < r.models.size(); ++m) {
      const char* col = kColors[m % 6];
      std::string depth_pts, serve_pts;
      std::ostringstream marks;
      for (int i = 0; i < ns; ++i) {
        const MatrixCell* c = r.find(r.models[m], r.streams[size_t(i)], ctx);
        if (!c) continue;
        if (c->depth.ran) {
          depth_pts += fmt("%.1f,", X(i)) + fmt("%.1f ", Y(c->depth.tok_s));
          const bool all = c->depth.seqs_run >= c->streams;
          marks << "<circle cx=\"" << X(i) << "\" cy=\"" << Y(c->depth.tok_s) << "\" r=\"3.5\" stroke=\"" << col
                << "\" fill=\"" << (all ? col : "white") << "\"><title>" << xml_escape(r.models[m]) << ", "
                << c->streams << " streams × " << tokens_k(ctx) << ": " << fmt("%.0f", c->depth.tok_s) << " tok/s, "
                << c->depth.seqs_run << " ran</title></circle>\n";
          if (!all)
            marks << "<text x=\"" << X(i) + 5 << "\" y=\"" << Y(c->depth.tok_s) - 5 << "\" font-size=\"10\" fill=\""
                  << col << "\">" << c->depth.seqs_run << " fit</text>\n";
        }
        if (c->serve.ran) {
          serve_pts += fmt("%.1f,", X(i)) + fmt("%.1f ", Y(c->serve.out_tok_s));
          marks << "<rect x=\"" << X(i) - 3 << "\" y=\"" << Y(c->serve.out_tok_s) - 3
                << "\" width=\"6\" height=\"6\" fill=\"" << col << "\"><title>server: " << fmt("%.0f", c->serve.out_tok_s)
                << " tok/s</title></rect>\n";
        }
      }
      if (!depth_pts.empty())
        o << "<polyline points=\"" << depth_pts << "\" fill=\"none\" stroke=\"" << col << "\" stroke-width=\"2\"/>\n";
      if (!serve_pts.empty())
        o << "<polyline points=\"" << serve_pts << "\" fill=\"none\" stroke=\"" << col
          << "\" stroke-width=\"1.5\" stroke-dasharray=\"5,4\"/>\n";
      o << marks.str();
    }
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace bamba::cli
