// bamba logits: per-position logits (and optionally the per-layer residual stream) for given tokens or text,
// written to a safetensors file with the names the fixtures use.
#include <cstdio>
#include <cstring>
#include <sstream>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "io/safetensors.h"

namespace bamba::cli {

namespace {
struct LogitsOptions {
  ModelOptions model;
  std::string ids_text, prompt, out;
  bool activations = false, no_bos = false;
  int32_t chunk = 0;  // 0: 512, or serve's deterministic chunk with --deterministic
  bool deterministic = false;
};

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || v < 0 || v > INT32_MAX)
      fail("--ids: \"", item, "\" is not a token id (expected comma-separated non-negative integers, e.g. 1,2,3)");
    ids.push_back(int32_t(v));
  }
  if (ids.empty()) fail("--ids: no token ids given");
  return ids;
}

void run(const LogitsOptions& o) {
  LoadedModel m = load(o.model, !o.prompt.empty());
  const ModelConfig& c = m.model->config();
  std::vector<int32_t> ids = o.prompt.empty() ? parse_ids(o.ids_text) : m.tokenizer->encode(o.prompt, !o.no_bos);
  const int32_t T = int32_t(ids.size());
  if (T == 0) fail("--prompt: the text gives no tokens");
  if (T > m.max_model_len) fail("the input has ", T, " tokens, more than --max-model-len ", m.max_model_len);
  for (int32_t id : ids)
    if (id >= c.vocab_size) fail("--ids: token id ", id, " is out of range for vocab_size ", c.vocab_size);

  const size_t V = size_t(c.vocab_size), H = size_t(c.hidden_size);
  std::vector<float> logits(size_t(T) * V);
  std::map<std::string, std::vector<float>> acts;
  // --deterministic: batch-invariant kernels and serve's chunks, so row t is bit for bit the logits the server
  // scores prompt token t + 1 with (prompt logprobs) under --deterministic.
  const int32_t want = o.chunk > 0 ? o.chunk : o.deterministic ? kDeterministicChunk : 512;
  if (o.deterministic) m.backend->set_batch_invariant(want);
  const int32_t chunk = std::min(want, T);
  HybridCache cache(c, *m.backend, HybridCache::sizes_for(c, 1, T));
  Workspace ws(c, *m.backend, chunk, chunk);
  SeqCache seq;
  std::vector<float> host;
  for (int32_t begin = 0; begin < T; begin += chunk) {  // chunked prefill: same numbers, bounded memory
    const int32_t end = std::min(T, begin + chunk);
    if (!cache.reserve(seq, end)) fail("internal: cache too small");
    StepBatch b;
    b.add(std::span(ids).subspan(size_t(begin), size_t(end - begin)), begin, seq.slot, seq.blocks, true);
    ActivationHook hook;
    if (o.activations)
      hook = [&](const std::string& name, Tensor h) {
        host.resize(size_t(h.numel()));
        m.backend->to_host_f32(h, host.data());
        auto& dst = acts[name];
        dst.insert(dst.end(), host.begin(), host.end());
      };
    Tensor lg = m.model->forward(b, cache, ws, hook);
    m.backend->to_host_f32(lg, logits.data() + size_t(begin) * V);
  }
  std::vector<TensorData> out = {{"input_ids", DType::I32, {T}, ids.data()},
                                 {"logits", DType::F32, {T, int64_t(V)}, logits.data()}};
  for (auto& [name, v] : acts) out.push_back({name, DType::F32, {T, int64_t(H)}, v.data()});
  write_safetensors(o.out, out, {{"format", "pt"}});
  if (!o.model.quiet) std::fprintf(stderr, "bamba: wrote %s (%d positions x %zu logits)\n", o.out.c_str(), T, V);
}
}  // namespace

void register_logits(CLI::App& app) {
  auto o = std::make_shared<LogitsOptions>();
  CLI::App* cmd = app.add_subcommand(
      "logits", "Write per-position logits (row t = after tokens 0..t) and optionally activations to a safetensors file");
  o->model.add_to(cmd);
  auto* ids = cmd->add_option("--ids", o->ids_text, "Token ids, comma-separated (e.g. 1,2,3)");
  auto* prompt = cmd->add_option("--prompt", o->prompt, "Text, tokenized with the model's tokenizer (BOS added)");
  ids->excludes(prompt);
  cmd->add_option("--out,-o", o->out, "Output .safetensors file")->required();
  cmd->add_flag("--activations", o->activations,
                "Also write embed, layer0..layer{L-1} (residual stream after each layer) and final_norm, [T, hidden]");
  cmd->add_flag("--no-bos", o->no_bos, "With --prompt: do not add BOS");
  cmd->add_option("--chunk", o->chunk, "Tokens per forward step (chunked prefill; default 512, with --deterministic "
                  "serve's 256)")->check(CLI::PositiveNumber);
  cmd->add_flag("--deterministic", o->deterministic,
                "Batch-invariant kernels and serve's chunks: row t is what serve --deterministic scores with "
                "(docs/serving.md)");
  cmd->callback([o, cmd] {
    if (!cmd->count("--ids") && !cmd->count("--prompt")) fail("logits: give --ids or --prompt");
    run(*o);
  });
}

}  // namespace bamba::cli
