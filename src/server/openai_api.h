// The OpenAI-compatible API (docs/serving-api.md) without the HTTP: request JSON -> checked engine parameters
// (ApiError with the 4xx to answer otherwise), engine outputs -> response JSON or SSE chunks.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/request.h"
#include "chat/chat_template.h"
#include "chat/tool_call_parser.h"
#include "server/grammar_cache.h"
#include "structured/token_grammar.h"
#include "tokenizer/tokenizer.h"

namespace bamba {

// Keys keep their order: tool schemas reach the template (and `tojson`) in the client's order, as in transformers.
using json = nlohmann::ordered_json;

// An error for the client: HTTP status and the message of {"error": {...}}.
struct ApiError : Error {
  ApiError(int status, const std::string& message, std::string param = {})
      : Error(message), status(status), param(std::move(param)) {}
  int status;
  std::string param;
};

json error_body(int status, const std::string& message, const std::string& param = {});
// JSON text; invalid UTF-8 (a token cut inside a character) becomes U+FFFD instead of an exception.
std::string dump(const json& j);

// What the API layer needs to know about the model being served.
struct ServingContext {
  const Tokenizer* tok = nullptr;
  std::string model_name;
  int32_t max_model_len = 0;
  int32_t vocab_size = 0;
  std::optional<ChatTemplate> chat_template;
  std::optional<ToolCallFormat> tool_format;  // --tool-call-parser, or the one the chat template teaches
  json template_vars = json::object();      // bos_token, eos_token for the template
  json tokenizer_config = json::object();  // tokenizer_config.json, for /tokenizer_info
  int32_t max_n = 64;                      // choices per request
  int32_t max_sequences = 1024;            // prompts x n per request
  int32_t max_logprobs = 20;
  // What a request that leaves temperature / top_p / top_k out gets: OpenAI's defaults (1, 1, off), or the model's
  // generation_config.json sampling defaults (`serve --generation-config auto`, as vLLM does).
  SamplingParams default_sampling{.temperature = 1.f, .top_k = 0, .top_p = 1.f};
  std::shared_ptr<const TokenVocab> vocab;  // every token's bytes, for structured output (null: unsupported)
  std::shared_ptr<GrammarCache> grammars = std::make_shared<GrammarCache>();  // compiled grammars, shared
};

// What a chat request's `tools` and `tool_choice` ask of the output.
struct ToolUse {
  bool parse = false;  // look for tool calls in the output (tools given, tool_choice not "none")
  ToolCallFormat format = ToolCallFormat::Hermes;
  // tool_choice "required" or a named function: the opening of a call, written after the prompt, and the grammar
  // the rest of the output is held to (a call of an offered function whose arguments match its parameters, then
  // the format's closing; see tool_call_grammar), so the output always parses. The output is checked all the same.
  std::string forced;
  std::shared_ptr<TokenGrammar> grammar;
  bool forced_whole = false;  // `forced` is the whole call (a named function without parameters): nothing to generate
  std::string named;          // tool_choice's function
  std::vector<std::string> names;  // the functions offered
  bool parallel = true;            // parallel_tool_calls: false keeps the first call only
};

// A chat request's prompt: messages, tools, documents and chat_template_kwargs through the model's template
// (docs/chat-templates.md says what is converted), then the text tool_choice forces.
struct ChatPrompt {
  std::string text;
  ToolUse tools;
};
ChatPrompt chat_prompt(const json& body, const ServingContext& ctx);

// One /v1/completions or /v1/chat/completions request, checked.
struct Job {
  bool chat = false, stream = false, include_usage = false, echo = false;
  int32_t n = 1;
  int32_t logprobs = -1;  // completions: top k per token (-1: none); chat: top_logprobs when logprobs is true
  std::vector<std::vector<int32_t>> prompts;
  RequestParams base;     // everything but the prompt and the seed
  std::optional<uint64_t> seed;
  ToolUse tools;  // chat
  // Sequence i = prompts[i / n], choice i % n.
  int32_t num_sequences() const { return int32_t(prompts.size()) * n; }
  RequestParams sequence(int32_t i, uint64_t random_seed) const;
};

Job parse_completions(const json& body, const ServingContext& ctx);
Job parse_chat(const json& body, const ServingContext& ctx);

// Turns the engine's outputs for one Job into the response (non-streaming) or SSE chunks (streaming).
class ResponseBuilder {
 public:
  ResponseBuilder(const Job& job, const ServingContext& ctx, std::string id, int64_t created);
  // Streaming: the data: payloads this output produces (maybe none). Non-streaming: only accumulates.
  std::vector<json> add(const RequestOutput& o);
  json response() const;     // non-streaming body
  json usage_chunk() const;  // the last streamed chunk with include_usage
  bool all_done() const { return done_ == job_.num_sequences(); }
  const std::string& error() const { return error_; }  // an engine failure, if any

 private:
  struct Choice {
    std::string text;
    std::vector<TokenLogprob> prompt_lp, lp;
    std::vector<int32_t> tokens;
    FinishReason finish = FinishReason::None;
    bool started = false;  // streaming: first chunk sent
    int32_t text_offset = 0;
    std::optional<ToolCallParser> parser;  // streaming with tools
    std::vector<std::string> call_ids;     // streaming: the id of each call announced
  };
  // Streaming with tools: the delta JSON for this much of the output.
  json tool_delta(Choice& c, const ToolCallParser::Delta& d);
  // The finished output against tool_choice: an error message if a forced call did not come out valid.
  std::string check_forced(const ToolCallParser::Result& r) const;
  std::string new_call_id() const;
  // offset: text_offset of the first token; advanced past the last.
  json completion_logprobs(const std::vector<TokenLogprob>& lps, int32_t& offset) const;
  json chat_logprobs(const std::vector<TokenLogprob>& lps) const;
  std::string token_text(int32_t id) const;
  json usage() const;

  const Job& job_;
  const ServingContext& ctx_;
  std::string id_;
  int64_t created_;
  std::vector<Choice> choices_;
  int32_t done_ = 0;
  std::string error_;
  mutable uint64_t rng_;  // tool call ids
};

// vLLM's /tokenize, /detokenize and /tokenizer_info.
json tokenize(const json& body, const ServingContext& ctx);
json detokenize(const json& body, const ServingContext& ctx);
json tokenizer_info(const ServingContext& ctx);
json models(const ServingContext& ctx, int64_t created);

}  // namespace bamba
