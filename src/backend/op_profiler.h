// A Backend decorator that times every op of a forward step (`bamba bench --profile`): with timing on, each op
// runs alone between two synchronize() calls and its wall time is added to a per-op row (matmuls per weight
// shape). Recorded steps (CUDA graphs) are bypassed while timing so every op really runs; with timing off the
// decorator only forwards. The times include one launch + synchronize per op (a few µs on a GPU): right for
// prefill ops of milliseconds, an upper bound for the µs-sized ops of a decode step.
#pragma once
#include <chrono>
#include <iosfwd>
#include <map>
#include <string>

#include "backend/backend.h"

namespace bamba {

class OpProfiler final : public Backend {
 public:
  explicit OpProfiler(Backend& inner) : in_(inner) {}

  void set_timing(bool on) { timing_ = on; }
  void reset() { rows_.clear(); }
  // The rows so far as a markdown table (op, calls, ms, % of the ops' total), largest first; `steps` divides
  // the times (ms per step).
  void print(std::ostream& out, int steps = 1) const;

  Device device() const override { return in_.device(); }
  std::string name() const override { return in_.name(); }
  DType weight_dtype() const override { return in_.weight_dtype(); }
  DType activation_dtype() const override { return in_.activation_dtype(); }
  Tensor alloc(DType dtype, std::initializer_list<int64_t> shape) override { return in_.alloc(dtype, shape); }
  void release(Tensor t) override { in_.release(t); }
  Tensor load_weight(std::span<const TensorInfo* const> parts, std::initializer_list<int64_t> shape) override {
    return in_.load_weight(parts, shape);
  }
  void fill_uniform(Tensor t, uint64_t seed, float lo, float hi) override { in_.fill_uniform(t, seed, lo, hi); }
  void fill(Tensor t, float value) override { in_.fill(t, value); }
  void to_host_f32(Tensor src, float* dst) override { in_.to_host_f32(src, dst); }
  void from_host_f32(Tensor dst, const float* src) override { in_.from_host_f32(dst, src); }
  void zero_state_slot(std::span<const Tensor> state, int32_t slot) override { in_.zero_state_slot(state, slot); }
  void copy_slice(Tensor t, int64_t src, int64_t dst) override { in_.copy_slice(t, src, dst); }
  void set_batch(const StepBatch& b) override { in_.set_batch(b); }
  void synchronize() override { in_.synchronize(); }
  void run_step(uint64_t key, const std::function<void()>& ops) override {
    if (timing_) ops();
    else in_.run_step(key, ops);
  }

  void embed(Tensor out, Tensor table) override {
    timed("embed", [&] { in_.embed(out, table); });
  }
  void matmul(Tensor y, Tensor x, Tensor W, Tensor bias) override {
    timed("matmul N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.matmul(y, x, W, bias); });
  }
  void rmsnorm(Tensor out, Tensor x, Tensor w, float eps) override {
    timed("rmsnorm", [&] { in_.rmsnorm(out, x, w, eps); });
  }
  void add_rmsnorm(Tensor h, Tensor x, Tensor out, Tensor w, float eps) override {
    timed("add_rmsnorm", [&] { in_.add_rmsnorm(h, x, out, w, eps); });
  }
  void add(Tensor h, Tensor x) override {
    timed("add", [&] { in_.add(h, x); });
  }
  void conv1d_silu(Tensor out, Tensor xBC, Tensor weight, Tensor bias, Tensor conv_state) override {
    timed("conv1d_silu", [&] { in_.conv1d_silu(out, xBC, weight, bias, conv_state); });
  }
  void ssd(Tensor y, Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor ssm_state,
           const MambaOpsConfig& c) override {
    timed("ssd", [&] { in_.ssd(y, xBC, dt, A_log, D, dt_bias, ssm_state, c); });
  }
  void gated_rmsnorm(Tensor out, Tensor y, Tensor z, Tensor w, int64_t group_size, float eps) override {
    timed("gated_rmsnorm", [&] { in_.gated_rmsnorm(out, y, z, w, group_size, eps); });
  }
  void attention(Tensor out, Tensor qkv, Tensor k_pages, Tensor v_pages, const AttentionOpsConfig& c) override {
    timed("attention", [&] { in_.attention(out, qkv, k_pages, v_pages, c); });
  }
  void swiglu(Tensor out, Tensor gate_up) override {
    timed("swiglu", [&] { in_.swiglu(out, gate_up); });
  }
  void scale(Tensor x, float s) override {
    timed("scale", [&] { in_.scale(x, s); });
  }
  void copy(Tensor dst, Tensor src) override {
    timed("copy", [&] { in_.copy(dst, src); });
  }
  void relu2(Tensor out, Tensor x) override {
    timed("relu2", [&] { in_.relu2(out, x); });
  }
  void geglu(Tensor out, Tensor gate_up) override {
    timed("geglu", [&] { in_.geglu(out, gate_up); });
  }
  void silu_gate(Tensor out, Tensor y, Tensor z) override {
    timed("silu_gate", [&] { in_.silu_gate(out, y, z); });
  }
  void moe_route(Tensor experts, Tensor weights, Tensor logits, Tensor bias, const MoeOpsConfig& c) override {
    timed("moe_route", [&] { in_.moe_route(experts, weights, logits, bias, c); });
  }
  void moe_experts(Tensor out, Tensor x, Tensor up, Tensor down, Tensor experts, Tensor weights, ExpertAct act,
                   const MoeScratch& scratch) override {
    timed("moe_experts", [&] { in_.moe_experts(out, x, up, down, experts, weights, act, scratch); });
  }
  void gather_logit_rows(Tensor out, Tensor x) override {
    timed("gather_logit_rows", [&] { in_.gather_logit_rows(out, x); });
  }
  void process_logits(Tensor logits, const LogitsProcessing& p) override {
    timed("process_logits", [&] { in_.process_logits(logits, p); });
  }
  void sample(Tensor logits, std::span<const SamplingParams> params, int32_t* out_tokens) override {
    timed("sample", [&] { in_.sample(logits, params, out_tokens); });
  }
  void token_logprobs(Tensor logits, std::span<const int32_t> rows, std::span<const int32_t> targets, float* logprob,
                      int32_t* greedy) override {
    timed("token_logprobs", [&] { in_.token_logprobs(logits, rows, targets, logprob, greedy); });
  }

 private:
  struct Row {
    long long calls = 0;
    double seconds = 0;
  };
  template <typename F>
  void timed(const std::string& op, F&& f) {
    if (!timing_) return f();
    in_.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    in_.synchronize();
    Row& r = rows_[op];
    ++r.calls;
    r.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Backend& in_;
  bool timing_ = false;
  std::map<std::string, Row> rows_;
};

}  // namespace bamba
