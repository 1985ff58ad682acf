// A Backend decorator that times every op of a forward step (`bamba bench --profile`): with timing on, each op
// runs alone between two synchronize() calls and its wall time is added to a per-op row (matmuls per weight
// shape). Recorded steps (CUDA graphs) are bypassed while timing so every op really runs; with timing off the
// decorator only forwards. The times include one launch + synchronize per op (a few µs on a GPU): right for
// prefill ops of milliseconds, an upper bound for the µs-sized ops of a decode step.
//
// Leaving ops out (`bamba bench --leave-out`): a left-out op is not run at all, in recorded steps too, so the
// step's time without it, against the whole step's, is what the op costs where it really runs — inside a CUDA
// graph, its launch overlapped with its neighbours by programmatic dependent launch — which timing each op
// alone cannot say. The outputs are then not the model's (only times mean anything).
#pragma once
#include <chrono>
#include <iosfwd>
#include <map>
#include <set>
#include <string>

#include "backend/backend.h"

namespace bamba {

class OpProfiler final : public Backend {
 public:
  explicit OpProfiler(Backend& inner) : in_(inner) {}

  void set_timing(bool on) { timing_ = on; }
  void reset() { rows_.clear(); }
  // Ops never to run: an op's name as print() shows it ("matmul N=4096 K=8192") or its first word ("matmul").
  void set_leave_out(std::set<std::string> ops) { leave_out_ = std::move(ops); }
  // The left-out names no op has matched so far (a misspelt name leaves nothing out).
  std::set<std::string> leave_out_unmatched() const {
    std::set<std::string> r;
    for (auto& n : leave_out_)
      if (!left_out_.count(n)) r.insert(n);
    return r;
  }
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
  void bind_thread() override { in_.bind_thread(); }
  void* native_stream() override { return in_.native_stream(); }
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
  bool fuse_decode(int64_t rows) const override { return in_.fuse_decode(rows); }
  void rmsnorm_matmul(Tensor y, Tensor x, Tensor norm_w, float eps, Tensor W, Tensor bias, Tensor scratch) override {
    timed("rmsnorm_matmul N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.rmsnorm_matmul(y, x, norm_w, eps, W, bias, scratch); });
  }
  void prefetch_weight(Tensor W, int64_t rows) override {
    timed("prefetch_weight", [&] { in_.prefetch_weight(W, rows); });
  }
  void matmul_swiglu(Tensor act, Tensor x, Tensor W, Tensor bias, Tensor gate_up) override {
    timed("matmul_swiglu N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.matmul_swiglu(act, x, W, bias, gate_up); });
  }
  void matmul_residual(Tensor h, Tensor x, Tensor W, Tensor bias, Tensor scratch) override {
    timed("matmul_residual N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.matmul_residual(h, x, W, bias, scratch); });
  }
  void swiglu_matmul_residual(Tensor h, Tensor gate_up, Tensor W, Tensor bias, Tensor act, Tensor out) override {
    timed("swiglu_matmul_residual N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.swiglu_matmul_residual(h, gate_up, W, bias, act, out); });
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
  // training (`bamba train --bench --profile`)
  void embed_backward(Tensor dtable, Tensor dout, int32_t padding_idx) override {
    timed("embed_backward", [&] { in_.embed_backward(dtable, dout, padding_idx); });
  }
  void matmul_backward(Tensor dx, Tensor dW, Tensor dbias, Tensor dy, Tensor x, Tensor W) override {
    timed("matmul_backward N=" + std::to_string(W.shape[0]) + " K=" + std::to_string(W.shape[1]),
          [&] { in_.matmul_backward(dx, dW, dbias, dy, x, W); });
  }
  void rmsnorm_backward(Tensor dx, Tensor dw, Tensor dout, Tensor x, Tensor w, float eps) override {
    timed("rmsnorm_backward", [&] { in_.rmsnorm_backward(dx, dw, dout, x, w, eps); });
  }
  void add_rmsnorm_backward(Tensor dh, Tensor dw, Tensor dout, Tensor h, Tensor w, float eps) override {
    timed("add_rmsnorm_backward", [&] { in_.add_rmsnorm_backward(dh, dw, dout, h, w, eps); });
  }
  void conv1d_silu_backward(Tensor dxBC, Tensor dweight, Tensor dbias, Tensor dout, Tensor xBC, Tensor weight,
                            Tensor bias) override {
    timed("conv1d_silu_backward", [&] { in_.conv1d_silu_backward(dxBC, dweight, dbias, dout, xBC, weight, bias); });
  }
  void ssd_backward(Tensor dxBC, Tensor ddt, Tensor dA_log, Tensor dD, Tensor ddt_bias, Tensor dstate0, Tensor dy,
                    Tensor xBC, Tensor dt, Tensor A_log, Tensor D, Tensor dt_bias, Tensor state0,
                    const MambaOpsConfig& c) override {
    timed("ssd_backward", [&] {
      in_.ssd_backward(dxBC, ddt, dA_log, dD, ddt_bias, dstate0, dy, xBC, dt, A_log, D, dt_bias, state0, c);
    });
  }
  void gated_rmsnorm_backward(Tensor dy, Tensor dz, Tensor dw, Tensor dout, Tensor y, Tensor z, Tensor w,
                              int64_t group_size, float eps) override {
    timed("gated_rmsnorm_backward", [&] { in_.gated_rmsnorm_backward(dy, dz, dw, dout, y, z, w, group_size, eps); });
  }
  void attention_backward(Tensor dqkv, Tensor dout, Tensor qkv, const AttentionOpsConfig& c) override {
    timed("attention_backward", [&] { in_.attention_backward(dqkv, dout, qkv, c); });
  }
  void swiglu_backward(Tensor dgate_up, Tensor dout, Tensor gate_up) override {
    timed("swiglu_backward", [&] { in_.swiglu_backward(dgate_up, dout, gate_up); });
  }
  double lm_head_cross_entropy(Tensor dx, Tensor dW, Tensor x, Tensor W, std::span<const int32_t> targets,
                               double ce_scale, double z_scale, int64_t chunk_rows) override {
    double r = 0;
    timed("lm_head_cross_entropy", [&] { r = in_.lm_head_cross_entropy(dx, dW, x, W, targets, ce_scale, z_scale, chunk_rows); });
    return r;
  }
  void adamw_update(Tensor w, Tensor g, Tensor m, Tensor v, const AdamWUpdate& a, Tensor model_copy,
                    Tensor w_lo) override {
    timed("adamw_update", [&] { in_.adamw_update(w, g, m, v, a, model_copy, w_lo); });
  }
  double sum_squares(Tensor g) override {
    double r = 0;
    timed("sum_squares", [&] { r = in_.sum_squares(g); });
    return r;
  }
  void scale_gradient(Tensor g, float c) override {
    timed("scale_gradient", [&] { in_.scale_gradient(g, c); });
  }
  void adamw_update_many(std::span<const AdamWTensor> ts, const AdamWUpdate& a) override {
    timed("adamw_update_many", [&] { in_.adamw_update_many(ts, a); });
  }
  double sum_squares_many(std::span<const Tensor> gs) override {
    double r = 0;
    timed("sum_squares_many", [&] { r = in_.sum_squares_many(gs); });
    return r;
  }
  int64_t peak_memory_bytes() const override { return in_.peak_memory_bytes(); }
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
    if (!leave_out_.empty()) {
      const std::string first = op.substr(0, op.find(' '));
      if (leave_out_.count(op) || leave_out_.count(first)) {
        left_out_.insert(leave_out_.count(op) ? op : first);
        return;
      }
    }
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
  std::set<std::string> leave_out_, left_out_;
  std::map<std::string, Row> rows_;
};

}  // namespace bamba
