// bamba serve: the OpenAI-compatible HTTP server (docs/serving-api.md) with continuous batching.
#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "engine/drafter.h"
#include "engine/engine.h"
#include "server/http_server.h"

namespace bamba::cli {

namespace {

// The one global: a signal handler can reach nothing else. SIGTERM/SIGINT set it; serve() then drains.
std::atomic<bool> g_stop_requested{false};
static_assert(std::atomic<bool>::is_always_lock_free, "the flag must be async-signal-safe");
extern "C" void on_stop_signal(int) { g_stop_requested.store(true); }

struct ServeOptions {
  ModelOptions model;
  HttpOptions http;
  std::string served_name, chat_template, tool_call_parser = "auto", generation_config = "auto";
  int32_t max_num_seqs = 256, max_batched_tokens = 2048, num_kv_blocks = 0, max_n = 64, max_logprobs = 20;
  double cache_gib = 4;
  int32_t max_sessions = 0;
  bool prefix_cache = true, prefix_decode_snapshots = false;
  bool deterministic = false;
  int32_t deterministic_chunk = kDeterministicChunk;
  double prefix_cache_gib = -1;  // < 0: a quarter of cache_gib
  double max_body_mib = 32;
  std::string speculative;  // "ngram", "self" or a draft model folder
  int32_t num_speculative_tokens = 4, prompt_lookup_min = 1, prompt_lookup_max = 4, speculative_max_seqs = -1;
  std::string speculative_rollback = "per-position";
};

// A token written in tokenizer_config.json as "text" or {"content": "text", ...}.
json token_string(const json& v) {
  if (v.is_string()) return v;
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"];
  return nullptr;
}

void run(ServeOptions o) {
  if (o.deterministic && !o.speculative.empty())
    fail("serve: --deterministic and --speculative exclude each other (verification steps are other steps than "
         "a request alone would take)");
  LoadedModel m = load(o.model, true);
  const ModelConfig& cfg = m.model->config();
  if (const char* key = std::getenv("BAMBA_API_KEY"); key && *key && o.http.api_key.empty()) o.http.api_key = key;

  ServingContext ctx;
  ctx.tok = m.tokenizer.get();
  ctx.model_name = !o.served_name.empty() ? o.served_name : m.name;
  ctx.max_model_len = m.max_model_len;
  ctx.vocab_size = int32_t(cfg.vocab_size);
  ctx.max_n = o.max_n;
  ctx.max_logprobs = o.max_logprobs;
  if (o.generation_config == "auto" && m.sampling_defaults) {
    ctx.default_sampling = *m.sampling_defaults;
    if (!o.model.quiet)
      std::fprintf(stderr, "serve: requests that leave them out sample with the model's generation_config.json "
                           "defaults: temperature %g, top_p %g, top_k %d (--generation-config vllm: 1, 1, off)\n",
                   double(ctx.default_sampling.temperature), double(ctx.default_sampling.top_p),
                   ctx.default_sampling.top_k);
  }
  ctx.vocab = std::make_shared<const TokenVocab>(*m.tokenizer);  // structured output walks every token's bytes
  if (!m.dummy && file_exists(m.dir + "/tokenizer_config.json")) {
    ctx.tokenizer_config = json::parse(read_text_file(m.dir + "/tokenizer_config.json"), nullptr, false);
    if (!ctx.tokenizer_config.is_object()) fail(m.dir, "/tokenizer_config.json is not a JSON object");
    for (const char* k : {"bos_token", "eos_token", "pad_token", "unk_token"})
      if (ctx.tokenizer_config.contains(k)) ctx.template_vars[k] = token_string(ctx.tokenizer_config[k]);
  }
  if (!o.chat_template.empty()) ctx.chat_template = ChatTemplate::parse(read_text_file(o.chat_template), o.chat_template);
  else if (!m.dummy) ctx.chat_template = ChatTemplate::from_model_dir(m.dir);
  if (o.tool_call_parser == "auto") {
    if (ctx.chat_template) ctx.tool_format = detect_tool_call_format(ctx.chat_template->source());
  } else if (o.tool_call_parser != "none") {
    ctx.tool_format = tool_call_format_from_name(o.tool_call_parser);
  }

  // Batch invariance: the prefix cache's hits depend on the other requests, so it is off.
  if (o.deterministic) o.prefix_cache = false;
  EngineOptions eo;
  eo.max_model_len = m.max_model_len;
  eo.eos = m.eos;
  eo.max_logprobs = o.max_logprobs;
  eo.sched.max_num_seqs = o.max_num_seqs;
  eo.sched.max_batched_tokens = std::max(o.max_batched_tokens, o.max_num_seqs);
  eo.sched.max_logit_rows = std::max(o.max_num_seqs, 256);  // scored prompts: up to 256 rows per step
  if (o.deterministic) {  // a whole chunk fits any step
    eo.sched.deterministic_chunk = o.deterministic_chunk;
    eo.sched.max_batched_tokens = std::max(eo.sched.max_batched_tokens, o.deterministic_chunk);
    eo.sched.max_logit_rows = std::max(eo.sched.max_logit_rows, o.deterministic_chunk);
  }
  // The prefix cache's snapshots are whole state slots: as many as its memory holds (at most 4096).
  int32_t snapshots = 0;
  if (o.prefix_cache) {
    const double gib = o.prefix_cache_gib >= 0 ? o.prefix_cache_gib : o.cache_gib / 4;
    const double fit = std::floor(gib * double(1u << 30) / double(HybridCache::bytes_per_slot(cfg)));
    snapshots = int32_t(std::clamp(fit, 0.0, 4096.0));
    if (snapshots == 0)
      std::fprintf(stderr, "bamba: warning: --prefix-cache-memory holds no state snapshot (%.1f MiB each): "
                           "prompts will not hit the prefix cache\n",
                   double(HybridCache::bytes_per_slot(cfg)) / double(1u << 20));
  }
  eo.sched.prefix_cache = o.prefix_cache;
  eo.sched.prefix_snapshots = snapshots;
  eo.sched.prefix_decode_snapshots = o.prefix_cache && o.prefix_decode_snapshots;
  eo.max_sessions = o.max_sessions;
  // Speculative decoding: prompt lookup, or a draft model on the same device drafting for every sequence.
  LoadedModel draft;  // (declared before the drafter, which holds a cache on the draft's backend)
  std::unique_ptr<Drafter> drafter;
  int32_t spec_slots = 0;
  if (!o.speculative.empty()) {
    if (o.speculative == "ngram") {
      drafter = std::make_unique<NgramDrafter>(o.prompt_lookup_min, o.prompt_lookup_max);
    } else if (o.speculative == "self") {  // the target drafting for itself: every draft accepted (an upper bound)
      drafter = std::make_unique<BatchModelDrafter>(*m.model, cfg.vocab_size, o.max_num_seqs, m.max_model_len,
                                                    eo.sched.max_batched_tokens);
    } else {
      ModelOptions d = o.model;
      d.model = o.speculative;
      draft = load(d, false);
      drafter = std::make_unique<BatchModelDrafter>(*draft.model, cfg.vocab_size, o.max_num_seqs, m.max_model_len,
                                                    eo.sched.max_batched_tokens);
    }
    eo.drafter = drafter.get();
    eo.num_speculative_tokens = o.num_speculative_tokens;
    eo.spec_rollback = o.speculative_rollback == "recompute" ? SpecRollback::Recompute : SpecRollback::PerPosition;
    // Default: as many sequences as half of --cache-memory holds rollback slots for (a Bamba-9B slot is 135 MiB).
    const double per_seq = double(Engine::speculative_slots(1, o.num_speculative_tokens, eo.spec_rollback)) *
                           double(HybridCache::bytes_per_slot(cfg));
    const int32_t fit = int32_t(std::clamp(std::floor(o.cache_gib * double(1u << 30) / 2 / per_seq), 1.0, 65536.0));
    const int32_t seqs = std::min(o.speculative_max_seqs < 0 ? fit : o.speculative_max_seqs, o.max_num_seqs);
    spec_slots = Engine::speculative_slots(seqs, o.num_speculative_tokens, eo.spec_rollback);
    eo.speculative_max_seqs = seqs;
    // The draft tokens need room in the step's budgets too (a decode of every sequence still fits first).
    eo.sched.max_batched_tokens = std::max(eo.sched.max_batched_tokens, seqs * (o.num_speculative_tokens + 1));
    eo.sched.max_logit_rows = std::max(eo.sched.max_logit_rows, seqs * (o.num_speculative_tokens + 1));
  }
  const DType kv_dtype = m.backend->activation_dtype();
  eo.cache = Engine::cache_sizes(cfg, o.max_num_seqs, m.max_model_len, o.cache_gib * double(1u << 30), o.num_kv_blocks,
                                 snapshots + o.max_sessions + spec_slots, kv_dtype);
  Engine engine(*m.model, m.tokenizer.get(), eo);

  o.http.max_body_bytes = size_t(o.max_body_mib * double(1u << 20));
  HttpServer server(engine, ctx, o.http);
  const int port = server.bind();
  struct sigaction sa = {};
  sa.sa_handler = on_stop_signal;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must be a failed write, not the end of the process
  const CacheSizes& cs = eo.cache;
  const double mib = (double(HybridCache::bytes_per_slot(cfg)) * cs.n_slots +
                      double(HybridCache::bytes_per_block(cfg, cs.block_size, kv_dtype)) * cs.n_blocks) / double(1u << 20);
  if (drafter)
    std::fprintf(stderr, "bamba: speculative decoding: %s, %d tokens per step, %s rollback (%d state slots: %d "
                         "sequences at once)\n", drafter->name().c_str(), o.num_speculative_tokens,
                 o.speculative_rollback.c_str(), spec_slots,
                 spec_slots / Engine::speculative_slots(1, o.num_speculative_tokens, eo.spec_rollback));
  std::fprintf(stderr, "bamba: serving %s on http://%s:%d (%d state slots, %d KV pages of %d tokens, %.1f MiB; "
                       "prefix cache: %s, %d state snapshots; max-model-len %d; tool calls: %s%s)\n",
               ctx.model_name.c_str(), o.http.host.c_str(), port, cs.n_slots, cs.n_blocks, cs.block_size, mib,
               o.prefix_cache ? "on" : "off", snapshots, m.max_model_len,
               ctx.tool_format ? tool_call_format_name(*ctx.tool_format) : "none",
               o.deterministic ? "; deterministic: batch-invariant" : "");
  server.serve(g_stop_requested);
  std::fprintf(stderr, "bamba: stopped\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  o->model.add_to(cmd);
  cmd->add_option("--preset", o->model.preset,
                  "Instead of --model: a model shape with generated weights and a byte-level tokenizer (tiny, "
                  "bamba-9b, llama-3.1-8b, granite-4.0-h-tiny, nemotron-h-8b), for load tests with token-id prompts");
  cmd->add_option("--host", o->http.host, "Address to listen on (default 127.0.0.1: this machine only)");
  cmd->add_option("--port", o->http.port, "Port (0: any free port, printed at start)")->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", o->http.api_key, "Require 'Authorization: Bearer KEY' on /v1 routes (or BAMBA_API_KEY)");
  cmd->add_option("--served-model-name", o->served_name, "The model's name in the API (default: the --model path)");
  cmd->add_option("--generation-config", o->generation_config,
                  "Default sampling for requests that leave temperature/top_p/top_k out: auto (the model's "
                  "generation_config.json when it samples, else OpenAI's 1/1/off) or vllm (always 1/1/off)")
      ->check(CLI::IsMember({"auto", "vllm"}));
  cmd->add_option("--chat-template", o->chat_template, "Jinja2 chat template file (default: the model's own)");
  cmd->add_option("--tool-call-parser", o->tool_call_parser,
                  "How tool calls are read from the output: auto (from the chat template), hermes, llama3_json, "
                  "granite, mistral, none")
      ->check(CLI::IsMember({"auto", "hermes", "llama3_json", "granite", "mistral", "none"}));
  cmd->add_option("--max-num-seqs", o->max_num_seqs, "Most sequences in a batch (= state slots)")->check(CLI::Range(1, 65536));
  cmd->add_option("--max-num-batched-tokens", o->max_batched_tokens, "Most tokens per step (prompts are chunked to fit)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--cache-memory", o->cache_gib, "GiB for the state slots and KV pages")->check(CLI::PositiveNumber);
  cmd->add_flag("--prefix-cache,!--no-prefix-cache", o->prefix_cache,
                "Reuse the cached state of prompt prefixes (KV pages + Mamba state snapshots; default on)");
  cmd->add_option("--prefix-cache-memory", o->prefix_cache_gib,
                  "GiB of --cache-memory for the prefix cache's Mamba state snapshots (default: a quarter); its KV "
                  "pages share the KV pool and are evicted, least recently used first, when sequences need them")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--prefix-cache-decode-snapshots", o->prefix_decode_snapshots,
                "Also snapshot the state of decoding sequences at page boundaries (the latest per sequence), so the "
                "next turn of a chat restores past the previous answer; one state copy per page of output");
  cmd->add_flag("--deterministic", o->deterministic,
                "Batch invariance: a request's tokens and logprobs are bitwise the same whatever else runs beside "
                "it (prompt chunks at fixed positions, one kind of part per step, batch-invariant matmuls; no "
                "prefix cache, no n > 1 forks; slower: docs/serving.md)");
  cmd->add_option("--deterministic-chunk", o->deterministic_chunk,
                  "With --deterministic: prompts are computed in chunks ending at multiples of this many tokens")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--max-sessions", o->max_sessions,
                  "Sequence states kept between requests (the 'session' field, /v1/sessions; 0 = off); each has its "
                  "own state slot, and its KV pages come from the pool")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--num-kv-blocks", o->num_kv_blocks, "KV pages, overriding --cache-memory (testing preemption)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-concurrent-requests", o->http.max_concurrent, "Generation requests in flight; more get 429")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--max-body-mib", o->max_body_mib, "Largest request body (413 above)")->check(CLI::PositiveNumber);
  cmd->add_option("--max-n", o->max_n, "Largest 'n' per request")->check(CLI::Range(1, 4096));
  cmd->add_option("--max-logprobs", o->max_logprobs, "Largest 'logprobs' per request")->check(CLI::Range(0, 1000));
  cmd->add_option("--speculative", o->speculative,
                  "Speculative decoding for every request (a request may send \"speculative\": false): 'ngram' "
                  "(prompt lookup), a draft model folder (same tokenizer) or 'self' (the model drafts for itself: "
                  "all drafts accepted, for measuring)");
  cmd->add_option("--num-speculative-tokens", o->num_speculative_tokens, "Tokens drafted per sequence and step")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--speculative-rollback", o->speculative_rollback,
                  "How a rejected draft's Mamba state is undone: per-position (the verification keeps the state after "
                  "each draft position; one copy) or recompute (snapshot, restore, re-feed the accepted tokens)")
      ->check(CLI::IsMember({"recompute", "per-position"}));
  cmd->add_option("--speculative-max-seqs", o->speculative_max_seqs,
                  "Sequences that may speculate in one step (default: as many as half of --cache-memory holds, at "
                  "most --max-num-seqs): the rollback's state slots (1 per sequence for recompute, "
                  "--num-speculative-tokens for per-position) come from --cache-memory")
      ->check(CLI::Range(0, 65536));
  cmd->add_option("--prompt-lookup-min", o->prompt_lookup_min, "ngram drafting: shortest tail to match")->check(CLI::Range(1, 64));
  cmd->add_option("--prompt-lookup-max", o->prompt_lookup_max, "ngram drafting: longest tail to match")->check(CLI::Range(1, 64));
  cmd->callback([o] { run(*o); });
}

}  // namespace bamba::cli
