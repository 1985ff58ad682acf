#include "engine/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>

#include "backend/op_profiler.h"
#include "core/error.h"
#include "model/hybrid.h"
#include "model/tensor_parallel.h"
#include "model/presets.h"
#include "model/quantization.h"

namespace bamba {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<int32_t> tokens(int n, int64_t vocab, uint32_t seed) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  uint32_t x = seed * 2654435761u + 1;
  for (auto& v : t) {
    x = x * 1664525u + 1013904223u;
    v = int32_t((x >> 8) % uint32_t(vocab));
  }
  return t;
}

// FLOPs of one prefill of n tokens that asks for one logits row: 2 per weight per token for every matmul
// (lm_head once), plus causal attention (q·k and p·v over n²/2 pairs).
// MoE: a token runs k of the E routed experts, so only those count.
double prefill_flops(const ModelConfig& c, int n) {
  const double H = double(c.hidden_size), V = double(c.vocab_size);
  const double unused = c.num_experts > 0 ? double(c.routed_expert_parameter_count()) *
                                                (1.0 - double(c.num_experts_per_tok) / double(c.num_experts))
                                          : 0.0;
  const double per_token = 2.0 * (double(c.parameter_count()) - 2.0 * V * H - unused);
  const double attn = double(c.n_attention_layers()) * 4.0 * double(c.num_attention_heads * c.head_dim) * 0.5 * n * n;
  return per_token * n + 2.0 * V * H + attn;
}

// Bytes one decode step of S sequences at context ~ctx must move: every weight once (bf16, or 1 byte for FP8
// weights; the embedding table only S rows), each sequence's Mamba state read and written (conv window fp32, SSM
// state `ssm`), and its KV read. MoE: only the experts some sequence picked are read — with the generated weights'
// near-uniform routing, a fraction 1 - (1 - k/E)^S of them (the experts stay bf16 under --quantization fp8).
double decode_bytes(const HybridModel& m, int S, int ctx, DType ssm) {
  const ModelConfig& c = m.config();
  const double V = double(c.vocab_size), H = double(c.hidden_size);
  double fp8 = 0;
  for (const NamedTensor& t : hf_tensors(c, m.weights()))
    if (t.t.dtype == DType::F8_E4M3) fp8 += double(t.t.numel());
  const double unread = c.num_experts > 0
                            ? double(c.routed_expert_parameter_count()) *
                                  std::pow(1.0 - double(c.num_experts_per_tok) / double(c.num_experts), S)
                            : 0.0;
  const double weights = 2.0 * (double(c.parameter_count()) - V * H - unread) - fp8;
  const double state = 2.0 * double(HybridCache::bytes_per_slot(c, ssm));
  const double kv = double(c.n_attention_layers()) * 2.0 * double(c.num_key_value_heads * c.head_dim) * 2.0 * ctx;
  return weights + S * (state + kv);
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const double at = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(at);
  return lo + 1 < v.size() ? v[lo] + (at - double(lo)) * (v[lo + 1] - v[lo]) : v[lo];
}

void stats(BenchRow& r) {
  double s = 0, s2 = 0;
  for (double v : r.tok_s) s += v;
  r.mean = s / double(r.tok_s.size());
  for (double v : r.tok_s) s2 += (v - r.mean) * (v - r.mean);
  r.stdev = r.tok_s.size() > 1 ? std::sqrt(s2 / double(r.tok_s.size() - 1)) : 0.0;
}

struct Runner {
  const BenchOptions& o;
  std::ostream& log;
  Backend& be;
  HybridModel& model;
  const ModelConfig& c;
  HybridCache& cache;
  Workspace& ws;
  OpProfiler& prof;

  void poison() { be.fill(ws.logits, NAN); }
  void check_written(int64_t rows) {
    if (!o.leave_out.empty()) return;  // ops left out: the logits may be anything
    std::vector<float> v(static_cast<size_t>(rows * c.vocab_size));
    be.to_host_f32(ws.logits.slice_rows(0, rows), v.data());
    for (float x : v)
      if (!std::isfinite(x)) fail("bench: the step left non-finite or unwritten logits");
  }

  // Prefills n tokens for each of `seqs` fresh sequences (at most ws.max_tokens per step); returns their caches.
  std::vector<SeqCache> prefill(int S, int n, bool timed_check = false) {
    std::vector<SeqCache> sc(static_cast<size_t>(S));
    int s0 = 0;
    const int per_step = std::max(1, int(ws.max_tokens) / n);
    while (s0 < S) {
      StepBatch b;
      for (int s = s0; s < std::min(S, s0 + per_step); ++s) {
        if (!cache.reserve(sc[size_t(s)], n + o.decode_steps + 1)) fail("bench: cache too small");
        auto t = tokens(n, c.vocab_size, uint32_t(s + 1));
        b.add(t, 0, sc[size_t(s)].slot, sc[size_t(s)].blocks);
      }
      model.forward(b, cache, ws);
      s0 += per_step;
    }
    return sc;
  }
  // `steps` decode steps of all sequences in sc, which hold `past` tokens each.
  void decode(std::vector<SeqCache>& sc, int past, int steps) {
    for (int k = 0; k < steps; ++k) {
      StepBatch b;
      for (size_t s = 0; s < sc.size(); ++s) {
        const int32_t tok = int32_t((uint32_t(past + k) * 2654435761u + uint32_t(s)) % uint32_t(c.vocab_size));
        b.add(std::span(&tok, 1), past + k, sc[s].slot, sc[s].blocks);
      }
      model.forward(b, cache, ws);
    }
  }
  void release(std::vector<SeqCache>& sc) {
    for (auto& s : sc) cache.release(s);
  }

  BenchRow pp(int n) {
    BenchRow r;
    r.test = "pp" + std::to_string(n);
    for (int rep = -1; rep < o.reps; ++rep) {  // rep -1: warm-up
      poison();
      be.synchronize();
      auto t0 = Clock::now();
      auto sc = prefill(1, n);
      be.synchronize();
      const double t = seconds_since(t0);
      check_written(1);
      release(sc);
      if (rep >= 0) r.tok_s.push_back(n / t);
      log << "  " << r.test << (rep < 0 ? " warm-up " : " run ") << rep + 1 << ": " << n / t << " tok/s\n" << std::flush;
    }
    stats(r);
    if (o.profile) {
      prof.reset();
      prof.set_timing(true);
      auto sc = prefill(1, n);
      prof.set_timing(false);
      release(sc);
      log << "  " << r.test << ", every op timed alone (one prefill):\n";
      prof.print(log);
    }
    r.rate_unit = "TFLOP/s";
    r.rate = prefill_flops(c, n) * r.mean / n / 1e12;
    return r;
  }

  BenchRow decode_row(const std::string& name, int S, int prompt, int steps) {
    BenchRow r;
    r.test = name;
    r.n_seqs = S;
    for (int rep = -1; rep < o.reps; ++rep) {
      auto sc = prefill(S, prompt);
      poison();
      be.synchronize();
      auto t0 = Clock::now();
      decode(sc, prompt, steps);
      be.synchronize();
      const double t = seconds_since(t0);
      check_written(S);
      release(sc);
      if (rep >= 0) r.tok_s.push_back(double(S) * steps / t);
      log << "  " << name << (rep < 0 ? " warm-up " : " run ") << rep + 1 << ": " << double(S) * steps / t
          << " tok/s\n" << std::flush;
    }
    stats(r);
    if (o.profile) {
      auto sc = prefill(S, prompt);
      prof.reset();
      prof.set_timing(true);
      decode(sc, prompt, steps);
      prof.set_timing(false);
      release(sc);
      log << "  " << name << ", every op timed alone (ms per decode step, launch + sync included):\n";
      prof.print(log, steps);
    }
    r.rate_unit = "GB/s";
    r.rate = decode_bytes(model, S, prompt + steps / 2, cache.sizes().ssm_state_dtype) * (r.mean / S) / 1e9;
    return r;
  }
};

// decodeS@C: S sequences at depth C in a cache of their own (the "synthetic cache" of bench.h), timed step by
// step after two untimed steps (the second records the CUDA graph of this batch shape).
BenchRow depth_row(const BenchOptions& o, std::ostream& log, Backend& be, HybridModel& model, OpProfiler& prof,
                   const std::string& name, int S, int ctx) {
  const ModelConfig& c = model.config();
  BenchRow r;
  r.test = name;
  r.requested_seqs = S;
  r.depth = ctx;
  r.rate_unit = "GB/s";
  const int steps = o.decode_steps, len = ctx + 2 + steps + 1;
  CacheSizes sizes = HybridCache::sizes_for(c, 1, len, 16);
  sizes.ssm_state_dtype = o.ssm_state == "bf16" ? DType::BF16 : DType::F32;
  const double per_seq = double(HybridCache::bytes_per_slot(c, sizes.ssm_state_dtype)) +
                         double(sizes.n_blocks) * double(HybridCache::bytes_per_block(c, 16, be.activation_dtype()));
  int fit = S;
  if (o.cache_gib > 0) fit = int(std::min<double>(S, std::floor(o.cache_gib * double(1u << 30) / per_seq)));
  r.n_seqs = fit;
  char buf[256];
  std::snprintf(buf, sizeof buf, "synthetic cache; %.1f MiB per sequence", per_seq / double(1u << 20));
  r.note = buf;
  if (fit < S) {
    std::snprintf(buf, sizeof buf, "; %d of %d fit %.3g GiB (the rest would queue)", fit, S, o.cache_gib);
    r.note += buf;
  }
  log << "  " << name << ": " << r.note << "\n" << std::flush;
  if (fit == 0) return r;
  sizes.n_slots = fit;
  sizes.n_blocks *= fit;
  HybridCache cache(c, be, sizes);
  // Arbitrary but finite contents: Backend::alloc zero-fills (fresh device memory could hold NaN bit patterns).
  Workspace ws(c, be, fit, fit);
  Runner run{o, log, be, model, c, cache, ws, prof};
  std::vector<SeqCache> sc(static_cast<size_t>(fit));
  for (auto& q : sc)
    if (!cache.reserve(q, len)) fail("bench: ", name, ": the cache cannot hold its sequences");
  run.decode(sc, ctx, 2);
  std::vector<double> step_s;
  for (int k = 0; k < steps; ++k) {
    be.synchronize();
    const auto t0 = Clock::now();
    run.decode(sc, ctx + 2 + k, 1);
    be.synchronize();
    step_s.push_back(seconds_since(t0));
  }
  run.check_written(fit);
  double total = 0;
  for (double t : step_s) total += t;
  r.tok_s.push_back(double(fit) * steps / total);
  stats(r);
  r.step_ms_p50 = percentile(step_s, 50) * 1e3;
  r.step_ms_p99 = percentile(step_s, 99) * 1e3;
  if (o.profile) {
    prof.reset();
    prof.set_timing(true);
    run.decode(sc, ctx + 2 + steps, 1);
    prof.set_timing(false);
    log << "  " << name << ", every op timed alone (ms per decode step, launch + sync included):\n";
    prof.print(log, 1);
  }
  run.release(sc);
  log << "  " << name << ": " << r.mean << " tok/s, step " << r.step_ms_p50 << " ms (p50), " << r.step_ms_p99
      << " ms (p99)\n" << std::flush;
  r.rate = decode_bytes(model, fit, ctx + 2 + steps / 2, sizes.ssm_state_dtype) * (r.mean / fit) / 1e9;
  return r;
}

}  // namespace

BenchCeilings known_ceilings(const std::string& backend_name, bool bf16) {
  struct Card {
    const char* name;  // as cudaGetDeviceProperties names it (a part of it)
    double gbps, tflops;
    const char* where;
  };
  // Measured with PyTorch on the device machines (bench/NOTES.md "Ceilings"): a large tensor copy, read + write
  // counted, and an 8192³ bf16 matmul. Data-sheet peaks would flatter no kernel and mislead every one (an H200's
  // 4.8 TB/s or an H100's 3.35 are not reachable by a copy).
  static const Card cards[] = {
      {"H200", 4300, 790, "NVIDIA H200"},
      {"H100 80GB HBM3", 3049, 782, "NVIDIA H100 80GB HBM3"},
  };
  for (const Card& c : cards)
    if (backend_name.find(c.name) != std::string::npos)
      return {c.gbps, bf16 ? c.tflops : 0, cat("measured on an ", c.where, " (bench/NOTES.md, Ceilings)")};
  return {};
}

BenchReport run_bench(const BenchOptions& o, std::ostream& log) {
  const ModelConfig cfg = preset_config(o.preset);
  int max_pp = 0, max_seqs = 1;
  // decodeS@C: S sequences at depth C (a cache of its own, filled without prefill).
  auto depth_test = [](const std::string& t, int& S, int& C) {
    const size_t at = t.find('@');
    if (t.rfind("decode", 0) != 0 || at == std::string::npos) return false;
    try {
      size_t used = 0;
      S = std::stoi(t.substr(6, at - 6), &used);
      if (used != at - 6) throw std::invalid_argument("S");
      C = std::stoi(t.substr(at + 1), &used);
      if (used != t.size() - at - 1) throw std::invalid_argument("C");
    } catch (const std::exception&) {
      fail("bench: bad test \"", t, "\" (decodeS@C: S sequences at depth C, e.g. decode64@8192)");
    }
    if (S < 1 || C < 1) fail("bench: bad test \"", t, "\" (S and C must be positive)");
    return true;
  };
  for (auto& t : o.tests) {
    int S = 0, C = 0;
    if (depth_test(t, S, C)) continue;
    if (t.rfind("pp", 0) == 0) max_pp = std::max(max_pp, std::stoi(t.substr(2)));
    else if (t.rfind("decode", 0) == 0) max_seqs = std::max(max_seqs, std::stoi(t.substr(6)));
    else if (t.rfind("tg", 0) != 0) fail("bench: unknown test \"", t, "\" (ppN, tgN, decodeN, decodeS@C)");
  }
  const bool fp8 = parse_quantization(o.quantization, o.fp8_lm_head);
  auto be = make_backend(o.device, compute_dtype(o.dtype, DType::BF16));
  // The kernels of serve --deterministic (its 256-token chunks: a ppN test above 256 is one longer part).
  if (o.deterministic) be->set_batch_invariant(256);
  BenchReport rep;
  rep.model = o.preset;
  rep.backend = be->name() + (o.deterministic ? " [deterministic]" : "") +
                (fp8 ? o.fp8_lm_head ? " [fp8 weights, lm_head too]" : " [fp8 weights]" : "");
  rep.device = o.device;
  rep.params = cfg.parameter_count();
  rep.peak = known_ceilings(be->name(), be->activation_dtype() == DType::BF16);
  rep.ranks = std::max(1, o.tensor_parallel_size);
  if (o.peak_gbps > 0 || o.peak_tflops > 0) {
    if (o.peak_gbps > 0) rep.peak.gbps = o.peak_gbps;
    if (o.peak_tflops > 0) rep.peak.tflops = o.peak_tflops;
    rep.peak.source = rep.peak.source.empty() ? "given" : "given, else " + rep.peak.source;
  }
  log << "bench: " << o.preset << ", " << rep.params << " parameters, backend " << rep.backend << "\n" << std::flush;
  // The model runs through the profiler, which only forwards until a profiled run switches its timing on.
  OpProfiler prof(*be);
  if (!o.leave_out.empty()) {
    std::string ops;
    for (auto& op : o.leave_out) ops += (ops.empty() ? "" : ", ") + op;
    prof.set_leave_out({o.leave_out.begin(), o.leave_out.end()});
    rep.backend += " [left out: " + ops + "]";
    log << "bench: leaving out " << ops << ": times only, the outputs are not the model's\n" << std::flush;
  }
  std::unique_ptr<HybridModel> owned;
  std::vector<std::unique_ptr<Backend>> keep;  // (only to build the split model)
  if (o.tensor_parallel_size > 1) {
    // The generated weights are made whole on the CPU (fill_uniform draws the same numbers on every backend)
    // and split over the ranks; rank 0 computes through the profiler like a single device does.
    const int n = o.tensor_parallel_size;
    auto host = make_cpu_backend();
    ModelWeights full = dummy_weights(cfg, *host, 1);
    // The one-device scales; each rank's shard takes its own.
    if (fp8) quantize_weights_fp8(cfg, full, *host, o.fp8_lm_head);
    std::vector<std::unique_ptr<Backend>> others;
    std::vector<Backend*> raw = {be.get()};
    std::vector<int> devices = {0};
    for (int r = 1; r < n; ++r) {
      others.push_back(make_rank_backend(be->device() == Device::CPU ? "cpu" : "cuda", r, compute_dtype(o.dtype, DType::BF16)));
      raw.push_back(others.back().get());
      devices.push_back(r);
    }
    owned = make_tensor_parallel_model(cfg, full, *host, prof, std::move(others), make_group_communicators(raw, devices));
    rep.backend += cat(" × ", n, " (tensor parallel)");
    log << "bench: split over " << n << " ranks\n" << std::flush;
  } else {
    ModelWeights w = dummy_weights(cfg, *be, 1);
    if (fp8) quantize_weights_fp8(cfg, w, *be, o.fp8_lm_head);
    owned = std::make_unique<HybridModel>(cfg, std::move(w), prof);
  }
  HybridModel& model = *owned;
  const ModelConfig& mcfg = model.config();  // a rank's shard when split: the cache holds its heads
  // Pages for the largest test alone: one ppN/tgN sequence, or decodeN's N sequences of --prompt tokens (not N
  // sequences of the longest prefill: 64 × 8k tokens of Llama-3.1-8B KV is 64 GiB).
  const int tail = std::max(o.decode_steps, 128) + 8;
  CacheSizes sizes = HybridCache::sizes_for(mcfg, max_seqs, o.decode_prompt + tail, 16);
  sizes.n_blocks = std::max(sizes.n_blocks, HybridCache::sizes_for(mcfg, 1, max_pp + tail, 16).n_blocks);
  if (o.ssm_state != "fp32" && o.ssm_state != "bf16") fail("bench: --ssm-state must be fp32 or bf16");
  sizes.ssm_state_dtype = o.ssm_state == "bf16" ? DType::BF16 : DType::F32;
  HybridCache cache(mcfg, *be, sizes);
  const int ws_tokens = std::max({max_pp, std::min(max_seqs * o.decode_prompt, 8192), max_seqs});
  Workspace ws(mcfg, *be, ws_tokens, std::max(max_seqs, 1));
  Runner run{o, log, *be, model, model.config(), cache, ws, prof};
  for (auto& t : o.tests) {
    int S = 0, C = 0;
    if (depth_test(t, S, C)) {
      // A cell that fails (e.g. out of device memory with no --cache-memory) is a result, not the end of the run.
      try {
        rep.rows.push_back(depth_row(o, log, *be, model, prof, t, S, C));
      } catch (const Error& e) {
        BenchRow r;
        r.test = t;
        r.requested_seqs = S;
        r.n_seqs = 0;
        r.depth = C;
        r.note = std::string("failed: ") + e.what();
        log << "  " << t << ": " << r.note << "\n" << std::flush;
        rep.rows.push_back(r);
      }
    }
    else if (t.rfind("pp", 0) == 0) rep.rows.push_back(run.pp(std::stoi(t.substr(2))));
    else if (t.rfind("tg", 0) == 0) {
      BenchRow r = run.decode_row(t, 1, 1, std::stoi(t.substr(2)));
      rep.rows.push_back(r);
    } else {
      const int S = std::stoi(t.substr(6));
      rep.rows.push_back(run.decode_row(o.ssm_state == "bf16" ? t + " (bf16 state)" : t, S, o.decode_prompt, o.decode_steps));
    }
  }
  for (auto& n : prof.leave_out_unmatched())
    fail("bench: --leave-out \"", n, "\" matched no op of the step (names as --profile prints them, or their "
         "first word)");
  // The ceilings are one device's; split over N ranks the rates are the N devices' together.
  const double ranks = double(rep.ranks);
  for (BenchRow& r : rep.rows) {
    const double peak = ranks * (r.rate_unit == "TFLOP/s" ? rep.peak.tflops : rep.peak.gbps);
    r.pct_of_peak = peak > 0 && r.rate > 0 ? 100.0 * r.rate / peak : -1;
  }
  return rep;
}

void print_bench_table(const BenchReport& r, std::ostream& out) {
  char buf[512];
  out << "| model | params | backend | test | seqs | t/s | rate | % of peak |\n";
  out << "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: |\n";
  bool depth = false;
  for (auto& row : r.rows) {
    depth |= row.depth > 0;
    char pct[32] = "-";
    if (row.pct_of_peak >= 0) std::snprintf(pct, sizeof pct, "%.1f %%", row.pct_of_peak);
    std::snprintf(buf, sizeof buf, "| %s | %lld | %s | %s | %d | %.2f ± %.2f | %.1f %s | %s |\n", r.model.c_str(),
                  r.params, r.backend.c_str(), row.test.c_str(), row.n_seqs, row.mean, row.stdev, row.rate,
                  row.rate_unit.c_str(), pct);
    out << buf;
  }
  if (r.peak.gbps <= 0 && r.peak.tflops <= 0) {
    out << "\n% of peak: no measured ceilings for this device: give --peak-gbps / --peak-tflops\n";
  } else {
    auto ceiling = [](double v, const char* unit) { return v > 0 ? cat(v, " ", unit) : std::string("none"); };
    out << "\n% of peak: of " << ceiling(r.peak.gbps, "GB/s") << " (HBM copy) and " << ceiling(r.peak.tflops, "TFLOP/s")
        << " (dense bf16 matmul)" << (r.ranks > 1 ? cat(" per device, × ", r.ranks, " ranks") : std::string()) << ", "
        << r.peak.source << "\n";
  }
  if (!depth) return;
  out << "\ndecodeS@C (synthetic cache: KV pages and Mamba state filled with zeros, no prefill computed):\n\n";
  out << "| test | sequences run | step ms p50 | step ms p99 | t/s | note |\n| --- | ---: | ---: | ---: | ---: | --- |\n";
  for (auto& row : r.rows)
    if (row.depth > 0) {
      std::snprintf(buf, sizeof buf, "| %s | %d of %d | %.2f | %.2f | %.1f | %s |\n", row.test.c_str(), row.n_seqs,
                    row.requested_seqs, row.step_ms_p50, row.step_ms_p99, row.mean, row.note.c_str());
      out << buf;
    }
}

std::string bench_json(const BenchReport& r) {
  nlohmann::json j = {{"model", r.model}, {"params", r.params}, {"backend", r.backend}, {"device", r.device},
                      {"peak_gbps", r.peak.gbps}, {"peak_tflops", r.peak.tflops}, {"peak_source", r.peak.source},
                      {"ranks", r.ranks}};
  j["rows"] = nlohmann::json::array();
  for (auto& row : r.rows)
    j["rows"].push_back({{"test", row.test}, {"n_seqs", row.n_seqs}, {"tok_s", row.tok_s}, {"mean", row.mean},
                         {"stdev", row.stdev}, {"rate", row.rate}, {"rate_unit", row.rate_unit},
                         {"pct_of_peak", row.pct_of_peak >= 0 ? nlohmann::json(row.pct_of_peak) : nlohmann::json()}});
  for (size_t i = 0; i < r.rows.size(); ++i)
    if (const BenchRow& row = r.rows[i]; row.depth > 0) {
      auto& j_row = j["rows"][i];
      j_row["synthetic_cache"] = true;
      j_row["requested_seqs"] = row.requested_seqs;
      j_row["depth"] = row.depth;
      j_row["step_ms_p50"] = row.step_ms_p50;
      j_row["step_ms_p99"] = row.step_ms_p99;
      j_row["note"] = row.note;
    }
  return j.dump(2);
}

}  // namespace bamba
