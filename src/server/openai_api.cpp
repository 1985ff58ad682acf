#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "core/hash_uniform.h"
#include "structured/json_grammar.h"
#include "structured/regex_grammar.h"

namespace bamba {

namespace {

const char* error_type(int status) {
  switch (status) {
    case 400: return "BadRequestError";
    case 401: return "AuthenticationError";
    case 404: return "NotFoundError";
    case 413: return "RequestTooLargeError";
    case 429: return "RateLimitError";
    case 503: return "ServiceUnavailableError";
    default: return "InternalServerError";
  }
}

[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

// A field that is present and not null.
const json* field(const json& b, const char* k) {
  auto it = b.find(k);
  return it == b.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int64_t> get_int(const json& b, const char* k) {
  const json* v = field(b, k);
  if (!v) return std::nullopt;
  if (v->is_number_integer() && !(v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX)))
    return v->get<int64_t>();
  if (v->is_number_float()) {  // 5.0 is an integer to a JSON client
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 9e15) return int64_t(d);
  }
  bad(k, cat("'", k, "' must be an integer"));
}

std::optional<double> get_num(const json& b, const char* k) {
  const json* v = field(b, k);
  if (!v) return std::nullopt;
  if (!v->is_number()) bad(k, cat("'", k, "' must be a number"));
  return v->get<double>();
}

std::optional<bool> get_bool(const json& b, const char* k) {
  const json* v = field(b, k);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) bad(k, cat("'", k, "' must be a boolean"));
  return v->get<bool>();
}

int32_t int_in(const json& b, const char* k, int64_t lo, int64_t hi, int32_t def) {
  auto v = get_int(b, k);
  if (!v) return def;
  if (*v < lo || *v > hi) bad(k, cat("'", k, "' must be in [", lo, ", ", hi, "] (got ", *v, ")"));
  return int32_t(*v);
}

std::vector<int32_t> token_ids(const json& a, const char* param, const ServingContext& ctx) {
  std::vector<int32_t> ids;
  for (const json& t : a) {
    if (!t.is_number_integer()) bad(param, cat("'", param, "' token ids must be integers"));
    int64_t id = t.is_number_unsigned() && t.get<uint64_t>() > uint64_t(INT64_MAX) ? -1 : t.get<int64_t>();
    if (id < 0 || id >= ctx.vocab_size) bad(param, cat("token id ", id, " is out of range [0, ", ctx.vocab_size, ")"));
    ids.push_back(int32_t(id));
  }
  return ids;
}

std::vector<int32_t> encode(const ServingContext& ctx, const std::string& text, bool add_special, const char* param) {
  try {
    return ctx.tok->encode(text, add_special);
  } catch (const Error& e) {
    bad(param, e.what());
  }
}

void check_model(const json& b, const ServingContext& ctx) {
  const json* m = field(b, "model");
  if (!m) return;
  if (!m->is_string()) bad("model", "'model' must be a string");
  if (m->get<std::string>() != ctx.model_name)
    throw ApiError(404, cat("The model `", m->get<std::string>(), "` does not exist."), "model");
}

std::shared_ptr<TokenGrammar> compile_constraint(const std::string& param, const std::string& kind, const json* value,
                                                 const ServingContext& ctx);

// The output constraint a request asks for, if any: response_format (json_object, json_schema), vLLM's
// guided_json / guided_regex / guided_choice, or its structured_outputs object with the same keys. At most one.
std::shared_ptr<TokenGrammar> structured_output(const json& b, const ServingContext& ctx) {
  struct Ask {
    std::string param, kind;  // kind: json_object, json, regex, choice
    const json* value;
  };
  std::vector<Ask> asks;
  if (const json* rf = field(b, "response_format")) {
    if (!rf->is_object() || !(*rf).contains("type") || !(*rf)["type"].is_string())
      bad("response_format", "'response_format' must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}");
    const std::string t = (*rf)["type"].get<std::string>();
    if (t == "json_object") {
      asks.push_back({"response_format", "json_object", nullptr});
    } else if (t == "json_schema") {
      const json* js = field(*rf, "json_schema");
      const json* schema = js && js->is_object() ? field(*js, "schema") : nullptr;
      if (!schema) bad("response_format", "'response_format' json_schema needs {\"json_schema\": {\"schema\": {...}}}");
      asks.push_back({"response_format", "json", schema});
    } else if (t != "text") {
      bad("response_format", cat("'response_format' type \"", t, "\" is not one of text, json_object, json_schema"));
    }
  }
  for (const char* k : {"guided_grammar", "guided_whitespace_pattern"})
    if (field(b, k)) bad(k, cat("'", k, "' is not supported (structured output takes response_format, guided_json, "
                                "guided_regex or guided_choice)"));
  if (const json* v = field(b, "guided_json")) asks.push_back({"guided_json", "json", v});
  if (const json* v = field(b, "guided_regex")) asks.push_back({"guided_regex", "regex", v});
  if (const json* v = field(b, "guided_choice")) asks.push_back({"guided_choice", "choice", v});
  if (const json* so = field(b, "structured_outputs")) {
    if (!so->is_object()) bad("structured_outputs", "'structured_outputs' must be an object");
    for (auto it = so->begin(); it != so->end(); ++it) {
      const std::string& k = it.key();
      if (it->is_null()) continue;
      if (k == "json" || k == "regex" || k == "choice") asks.push_back({"structured_outputs", k, &*it});
      else if (k == "json_object") {
        if (!it->is_boolean()) bad("structured_outputs", "'structured_outputs.json_object' must be a boolean");
        if (it->get<bool>()) asks.push_back({"structured_outputs", "json_object", nullptr});
      } else {
        bad("structured_outputs", cat("'structured_outputs.", k, "' is not supported (json, regex, choice and json_object are)"));
      }
    }
  }
  if (asks.empty()) return nullptr;
  if (asks.size() > 1)
    bad(asks[1].param, cat("'", asks[0].param, "' and '", asks[1].param, "' both constrain the output: give one"));
  const Ask& a = asks[0];
  if (!ctx.vocab) bad(a.param, "structured output needs the model's tokenizer");
  const std::string key = a.kind + "\n" + (a.value ? a.value->dump() : "");
  try {
    return ctx.grammars->get(key, [&] { return compile_constraint(a.param, a.kind, a.value, ctx); });
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    bad(a.param, cat("'", a.param, "': ", e.what()));
  }
}

// The grammar for one constraint of structured_output() (kind: json_object, json, regex, choice).
std::shared_ptr<TokenGrammar> compile_constraint(const std::string& param, const std::string& kind, const json* value,
                                                 const ServingContext& ctx) {
  ByteNfa nfa;
  ByteNfa::Frag f;
  if (kind == "json_object") {
    f = json_any_object(nfa);
  } else if (kind == "json") {
    json schema = *value;
    if (schema.is_string()) {  // guided_json may be the schema's JSON text
      schema = json::parse(value->get<std::string>(), nullptr, false);
      if (schema.is_discarded()) bad(param, cat("'", param, "' is not valid JSON"));
    }
    f = compile_json_schema(nfa, schema);
  } else if (kind == "regex") {
    if (!value->is_string()) bad(param, cat("'", param, "' regex must be a string"));
    f = compile_regex(nfa, value->get<std::string>());
  } else {
    if (!value->is_array() || value->empty()) bad(param, cat("'", param, "' choice must be a non-empty list of strings"));
    std::vector<ByteNfa::Frag> alts;
    for (const json& c : *value) {
      if (!c.is_string()) bad(param, cat("'", param, "' choice must be a non-empty list of strings"));
      alts.push_back(nfa.bytes(c.get<std::string>()));
    }
    f = nfa.alt(alts);
  }
  nfa.finish(f);
  return std::make_shared<TokenGrammar>(nfa, ctx.vocab);
}

// The fields completions and chat share.
void parse_common(const json& b, const ServingContext& ctx, Job& job) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  check_model(b, ctx);
  RequestParams& p = job.base;
  job.stream = get_bool(b, "stream").value_or(false);
  if (const json* so = field(b, "stream_options")) {
    if (!so->is_object()) bad("stream_options", "'stream_options' must be an object");
    job.include_usage = get_bool(*so, "include_usage").value_or(false);
  }
  job.n = int_in(b, "n", 1, ctx.max_n, 1);
  const double t = get_num(b, "temperature").value_or(ctx.default_sampling.temperature);
  if (!(t >= 0 && t <= 1e4)) bad("temperature", "'temperature' must be >= 0");
  p.sampling.temperature = float(t);
  const double tp = get_num(b, "top_p").value_or(ctx.default_sampling.top_p);
  if (!(tp > 0 && tp <= 1)) bad("top_p", "'top_p' must be in (0, 1]");
  p.sampling.top_p = float(tp);
  const int32_t k = int_in(b, "top_k", -1, std::numeric_limits<int32_t>::max(), ctx.default_sampling.top_k);
  p.sampling.top_k = k < 0 ? 0 : k;  // -1 = off, as in vLLM
  if (auto s = get_int(b, "seed")) job.seed = uint64_t(*s);
  // Logits processing (vLLM's semantics; Backend::process_logits).
  auto penalty = [&](const char* k, double lo, double hi, double def) {
    const double v = get_num(b, k).value_or(def);
    if (!(v >= lo && v <= hi)) bad(k, cat("'", k, "' must be in [", lo, ", ", hi, "] (got ", v, ")"));
    return float(v);
  };
  p.presence_penalty = penalty("presence_penalty", -2, 2, 0);
  p.frequency_penalty = penalty("frequency_penalty", -2, 2, 0);
  p.repetition_penalty = penalty("repetition_penalty", 0, 100, 1);
  if (p.repetition_penalty == 0.f) bad("repetition_penalty", "'repetition_penalty' must be > 0");
  p.min_p = penalty("min_p", 0, 1, 0);
  if (const json* lb = field(b, "logit_bias")) {
    if (!lb->is_object()) bad("logit_bias", "'logit_bias' must be an object mapping token ids to biases");
    for (auto it = lb->begin(); it != lb->end(); ++it) {
      const std::string& key = it.key();
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != key.size() || key.empty()) bad("logit_bias", cat("'logit_bias' key \"", key, "\" is not a token id"));
      if (id < 0 || id >= ctx.vocab_size)
        bad("logit_bias", cat("'logit_bias' token id ", id, " is out of range [0, ", ctx.vocab_size, ")"));
      if (!it->is_number() || !(it->get<double>() >= -100 && it->get<double>() <= 100))
        bad("logit_bias", cat("'logit_bias' values must be numbers in [-100, 100] (token ", id, ")"));
      p.logit_bias.push_back({int32_t(id), float(it->get<double>())});
    }
  }
  if (const json* al = field(b, "allowed_token_ids")) {
    if (!al->is_array() || al->empty()) bad("allowed_token_ids", "'allowed_token_ids' must be a non-empty list of token ids");
    p.allowed_token_ids = token_ids(*al, "allowed_token_ids", ctx);
  }
  p.grammar = structured_output(b, ctx);
  // vLLM fields whose effect is not implemented: a request that asks for them gets a 400, not a silent no-op.
  if (int_in(b, "min_tokens", 0, std::numeric_limits<int32_t>::max(), 0) > 0)
    bad("min_tokens", "'min_tokens' is not supported (only 0)");
  if (auto bo = get_int(b, "best_of"); bo && *bo != 1 && *bo != job.n)
    bad("best_of", "'best_of' is not supported (only 1 or n)");
  if (get_bool(b, "use_beam_search").value_or(false)) bad("use_beam_search", "beam search is not supported");
  if (get_num(b, "length_penalty").value_or(1) != 1) bad("length_penalty", "'length_penalty' is not supported (only 1)");
  if (const json* bw = field(b, "bad_words"); bw && !(bw->is_array() && bw->empty()))
    bad("bad_words", "'bad_words' is not supported");
  for (const char* k : {"prompt_logprobs", "truncate_prompt_tokens", "logits_processors"})
    if (field(b, k)) bad(k, cat("'", k, "' is not supported"));
  if (get_bool(b, "return_tokens_as_token_ids").value_or(false))
    bad("return_tokens_as_token_ids", "'return_tokens_as_token_ids' is not supported");
  if (const json* st = field(b, "stop")) {
    if (st->is_string()) p.stop.push_back(st->get<std::string>());
    else if (st->is_array()) {
      for (const json& s : *st) {
        if (!s.is_string()) bad("stop", "'stop' must be a string or a list of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else bad("stop", "'stop' must be a string or a list of strings");
  }
  if (const json* st = field(b, "stop_token_ids")) {
    if (!st->is_array()) bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    p.stop_token_ids = token_ids(*st, "stop_token_ids", ctx);
  }
  p.include_stop_str = get_bool(b, "include_stop_str_in_output").value_or(false);
  p.ignore_eos = get_bool(b, "ignore_eos").value_or(false);
  p.skip_special = get_bool(b, "skip_special_tokens").value_or(true);
  p.speculative = get_bool(b, "speculative").value_or(true);  // bamba: false opts out of --speculative
}

int32_t max_tokens_field(const json& b, const char* k, const ServingContext& ctx, int32_t def) {
  return int_in(b, k, 0, ctx.max_model_len, def);
}

void check_total(const Job& job, const ServingContext& ctx) {
  if (int64_t(job.prompts.size()) * job.n > ctx.max_sequences)
    bad("n", cat("prompts x n = ", job.prompts.size() * size_t(job.n), " is over the limit of ", ctx.max_sequences));
}

}  // namespace

json error_body(int status, const std::string& message, const std::string& param) {
  return {{"error",
           {{"message", message}, {"type", error_type(status)}, {"param", param.empty() ? json() : json(param)},
            {"code", status}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

RequestParams Job::sequence(int32_t i, uint64_t random_seed) const {
  RequestParams p = base;
  p.prompt = prompts[size_t(i / n)];
  // A given seed makes the run reproducible (the same draws as `bamba generate --seed`); choices of one prompt
  // draw differently.
  p.sampling.seed = seed ? *seed + uint64_t(i % n) * 0x9e3779b97f4a7c15ull : random_seed;
  return p;
}

Job parse_completions(const json& b, const ServingContext& ctx) {
  Job job;
  parse_common(b, ctx, job);
  const json* pr = field(b, "prompt");
  if (!pr) bad("prompt", "'prompt' is required");
  const bool add_special = get_bool(b, "add_special_tokens").value_or(true);
  auto bad_prompt = [] { bad("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids"); };
  if (pr->is_string()) {
    job.prompts.push_back(encode(ctx, pr->get<std::string>(), add_special, "prompt"));
  } else if (pr->is_array()) {
    if (pr->empty()) bad("prompt", "'prompt' is empty");
    if ((*pr)[0].is_number()) {
      job.prompts.push_back(token_ids(*pr, "prompt", ctx));
    } else {
      for (const json& x : *pr) {
        if (x.is_string()) job.prompts.push_back(encode(ctx, x.get<std::string>(), add_special, "prompt"));
        else if (x.is_array()) job.prompts.push_back(token_ids(x, "prompt", ctx));
        else bad_prompt();
      }
    }
  } else {
    bad_prompt();
  }
  for (auto& p : job.prompts)
    if (p.empty()) bad("prompt", "the prompt is empty (no tokens)");
  job.base.max_tokens = max_tokens_field(b, "max_tokens", ctx, 16);
  job.echo = get_bool(b, "echo").value_or(false);
  job.logprobs = int_in(b, "logprobs", 0, ctx.max_logprobs, -1);
  job.base.logprobs = job.logprobs;
  job.base.prompt_logprobs = job.echo ? job.logprobs : -1;
  if (job.base.grammar && job.base.ignore_eos)
    bad("ignore_eos", "'ignore_eos' cannot be combined with structured output (the output ends where it is complete)");
  check_total(job, ctx);
  return job;
}

namespace {

// The messages as the template sees them. As vLLM passes them: a field that is null is absent (a template's
// `is defined` must not see it), a null content is "", and a tool call's "arguments" JSON string becomes the object
// it encodes (templates print it with tojson or walk it). Content part lists go to ChatTemplate as they are.
json template_messages(const json* msgs) {
  if (!msgs || !msgs->is_array() || msgs->empty()) bad("messages", "'messages' must be a non-empty list");
  json out = json::array();
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string at = cat("messages[", i, "]");
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      bad("messages", at + " must be an object with a string 'role'");
    json fm = json::object();
    for (auto it = m.begin(); it != m.end(); ++it)
      if (!it->is_null()) fm[it.key()] = *it;
    if (!fm.contains("content")) fm["content"] = "";
    else if (!fm["content"].is_string() && !fm["content"].is_array())
      bad("messages", at + ".content must be a string, null or a list of text parts");
    if (fm.contains("function_call")) bad("messages", at + ".function_call is not supported: use tool_calls");
    if (fm.contains("tool_call_id") && !fm["tool_call_id"].is_string())
      bad("messages", at + ".tool_call_id must be a string");
    if (fm.contains("tool_calls")) {
      json& calls = fm["tool_calls"];
      if (!calls.is_array()) bad("messages", at + ".tool_calls must be a list");
      for (size_t k = 0; k < calls.size(); ++k) {
        json& tc = calls[k];
        const std::string ct = cat(at, ".tool_calls[", k, "]");
        if (!tc.is_object()) bad("messages", ct + " must be an object");
        if (tc.contains("type") && tc["type"] != "function") bad("messages", ct + ".type must be \"function\"");
        if (tc.contains("id") && !tc["id"].is_string()) bad("messages", ct + ".id must be a string");
        if (!tc.contains("function") || !tc["function"].is_object() || !tc["function"].contains("name") ||
            !tc["function"]["name"].is_string())
          bad("messages", ct + ".function must be an object with a string 'name'");
        json& fn = tc["function"];
        if (!fn.contains("arguments") || fn["arguments"].is_null()) fn["arguments"] = json::object();
        else if (fn["arguments"].is_string()) {
          json a = json::parse(fn["arguments"].get<std::string>(), nullptr, false);
          if (a.is_discarded()) bad("messages", ct + ".function.arguments is not valid JSON");
          fn["arguments"] = std::move(a);
        } else if (!fn["arguments"].is_object()) {
          bad("messages", ct + ".function.arguments must be a JSON string or an object");
        }
      }
    }
    out.push_back(std::move(fm));
  }
  return out;
}

// A function's arguments: its parameters schema compiled (structured/json_grammar.h); `{}` for a function
// without properties; any JSON object where the schema uses what the compiler does not support (the call
// still parses, its arguments are not held to that keyword).
ByteNfa::Frag tool_arguments(ByteNfa& nfa, const json* params) {
  const json* props = params ? field(*params, "properties") : nullptr;
  if (!props || (props->is_object() && props->empty())) return nfa.bytes("{}");
  try {
    return compile_json_schema(nfa, *params);
  } catch (const Error&) {
    return json_any_object(nfa);  // (the pieces built before the failure stay unreachable)
  }
}

std::shared_ptr<TokenGrammar> build_tool_call_grammar(const ToolUse& tu, const std::vector<const json*>& params,
                                                      const ServingContext& ctx);

// What may follow the opening `tool_choice` forced (tool_call_opening, plus the name for a named function):
//   named:     ARGS closing
//   required:  CALL (separator CALL)* closing, CALL = one offered name, the format's after-name text, its ARGS;
//              the separator opens the next call (Hermes: `}\n</tool_call>\n<tool_call>\n{"name": "`; Granite and
//              Mistral lists: `}, {"name": "`) and is left out with parallel_tool_calls false and for Llama 3 JSON.
// Every format's markers sit in the forced opening (they are special tokens in Granite's and Mistral's
// vocabularies, which a structured output never draws), so one construction serves all four parsers.
std::shared_ptr<TokenGrammar> tool_call_grammar(const ToolUse& tu, const std::vector<const json*>& params,
                                                const ServingContext& ctx) {
  std::string key = cat("tools\n", tool_call_format_name(tu.format), "\n", tu.named, "\n", tu.parallel);
  for (size_t i = 0; i < tu.names.size(); ++i) key += "\n" + tu.names[i] + "\n" + (params[i] ? params[i]->dump() : "");
  return ctx.grammars->get(key, [&] { return build_tool_call_grammar(tu, params, ctx); });
}

std::shared_ptr<TokenGrammar> build_tool_call_grammar(const ToolUse& tu, const std::vector<const json*>& params,
                                                      const ServingContext& ctx) {
  ByteNfa nfa;
  const std::string closing = tool_call_closing(tu.format);
  ByteNfa::Frag whole;
  // Every closing starts with the `}` of the call object; `tail` is the rest (`\n</tool_call>`, `]`, nothing).
  const std::string tail = closing.substr(1);
  if (!tu.named.empty()) {
    const size_t i = size_t(std::find(tu.names.begin(), tu.names.end(), tu.named) - tu.names.begin());
    whole = nfa.seq(tool_arguments(nfa, params[i]), nfa.bytes(closing));
  } else {
    std::vector<ByteNfa::Frag> calls;
    for (size_t i = 0; i < tu.names.size(); ++i) {
      const std::string name = json(tu.names[i]).dump();  // JSON-escaped, without the quotes below
      calls.push_back(nfa.seq(nfa.bytes(name.substr(1, name.size() - 2) + tool_call_after_name(tu.format)),
                              nfa.seq(tool_arguments(nfa, params[i]), nfa.bytes("}"))));
    }
    const ByteNfa::Frag call = nfa.alt(calls);
    const ByteNfa::Frag end = nfa.bytes(tail);
    nfa.eps(call.out, end.in);
    std::string sep;
    if (tu.parallel && tu.format == ToolCallFormat::Hermes) sep = tail + "\n" + tool_call_opening(tu.format);
    else if (tu.parallel && tu.format != ToolCallFormat::Llama3Json) {
      const std::string open = tool_call_opening(tu.format);
      sep = ", " + open.substr(open.find('{'));
    }
    if (!sep.empty()) {
      const ByteNfa::Frag again = nfa.bytes(sep);
      nfa.eps(call.out, again.in);
      nfa.eps(again.out, call.in);
    }
    whole = {call.in, end.out};
  }
  nfa.finish(whole);
  return std::make_shared<TokenGrammar>(nfa, ctx.vocab);
}

// Checks tools / tool_choice / parallel_tool_calls, puts the tools where the template reads them, and says what
// the output must be parsed for.
ToolUse tool_use(const json& b, const ServingContext& ctx, json& vars) {
  ToolUse tu;
  if (field(b, "functions")) bad("functions", "'functions' is not supported: use 'tools'");
  if (field(b, "function_call")) bad("function_call", "'function_call' is not supported: use 'tool_choice'");
  const json* tools = field(b, "tools");
  const json* params_of_named = nullptr;
  std::vector<const json*> tu_params;  // each tool's parameters schema (null: none)
  if (tools) {
    if (!tools->is_array()) bad("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}");
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& t = (*tools)[i];
      const std::string at = cat("tools[", i, "]");
      if (!t.is_object()) bad("tools", at + " must be an object");
      if (t.value("type", "") != "function") bad("tools", at + ".type must be \"function\" (the only kind supported)");
      const json* fn = field(t, "function");
      if (!fn || !fn->is_object()) bad("tools", at + ".function must be an object");
      const json* name = field(*fn, "name");
      if (!name || !name->is_string() || name->get<std::string>().empty())
        bad("tools", at + ".function.name must be a non-empty string");
      if (const json* d = field(*fn, "description"); d && !d->is_string())
        bad("tools", at + ".function.description must be a string");
      if (const json* p = field(*fn, "parameters"); p && !p->is_object())
        bad("tools", at + ".function.parameters must be a JSON schema object");
      const std::string n = name->get<std::string>();
      if (std::find(tu.names.begin(), tu.names.end(), n) != tu.names.end())
        bad("tools", cat(at, ".function.name \"", n, "\" is given twice"));
      tu.names.push_back(n);
      tu_params.push_back(field(*fn, "parameters"));
    }
  }
  const bool have_tools = !tu.names.empty();
  if (have_tools) {
    if (ctx.chat_template->source().find("tools") == std::string::npos)
      bad("tools", "this model's chat template does not render tools (start the server with --chat-template FILE "
                   "for one that does)");
    vars["tools"] = *tools;
  }
  std::string choice = have_tools ? "auto" : "none";
  const auto bad_choice = [] {
    bad("tool_choice", "'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                       "\"function\": {\"name\": ...}}");
  };
  if (const json* tc = field(b, "tool_choice")) {
    if (tc->is_string()) {
      choice = tc->get<std::string>();
      if (choice != "none" && choice != "auto" && choice != "required") bad_choice();
    } else if (tc->is_object()) {
      const json* fn = field(*tc, "function");
      if (tc->value("type", "") != "function" || !fn || !fn->is_object() || !fn->contains("name") ||
          !(*fn)["name"].is_string())
        bad_choice();
      tu.named = (*fn)["name"].get<std::string>();
      const auto it = std::find(tu.names.begin(), tu.names.end(), tu.named);
      if (it == tu.names.end()) bad("tool_choice", cat("'tool_choice' names \"", tu.named, "\", which is not in 'tools'"));
      params_of_named = field((*tools)[size_t(it - tu.names.begin())]["function"], "parameters");
      choice = "named";
    } else {
      bad_choice();
    }
    if (choice != "none" && !have_tools) bad("tool_choice", cat("'tool_choice' \"", choice, "\" needs 'tools'"));
  }
  tu.parallel = get_bool(b, "parallel_tool_calls").value_or(true);
  if (choice == "none") return tu;
  if (!ctx.tool_format)
    bad("tools", "no tool-call parser for this model: its chat template teaches no known format; start the server "
                 "with --tool-call-parser hermes|llama3_json|granite|mistral");
  tu.parse = true;
  tu.format = *ctx.tool_format;
  if (choice == "required") {
    tu.forced = tool_call_opening(tu.format);
  } else if (choice == "named") {
    tu.forced = tool_call_opening(tu.format) + json(tu.named).dump().substr(1);  // the name, JSON-escaped
    tu.forced.pop_back();
    tu.forced += tool_call_after_name(tu.format);
    // A function without parameters has one valid call: nothing is left for the model to write.
    const json* props = params_of_named ? field(*params_of_named, "properties") : nullptr;
    if (!props || (props->is_object() && props->empty())) {
      tu.forced += "{}" + tool_call_closing(tu.format);
      tu.forced_whole = true;
    }
  }
  if (!tu.forced.empty() && !tu.forced_whole && ctx.vocab) tu.grammar = tool_call_grammar(tu, tu_params, ctx);
  return tu;
}

}  // namespace

ChatPrompt chat_prompt(const json& b, const ServingContext& ctx) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  if (!ctx.chat_template)
    bad("messages", "this model has no chat template (tokenizer_config.json has no chat_template): start the "
                    "server with --chat-template FILE");
  json messages = template_messages(field(b, "messages"));
  json vars = json(ctx.template_vars);
  ChatPrompt cp;
  cp.tools = tool_use(b, ctx, vars);
  if (const json* docs = field(b, "documents")) {
    if (!docs->is_array()) bad("documents", "'documents' must be a list of objects");
    for (const json& d : *docs)
      if (!d.is_object()) bad("documents", "'documents' must be a list of objects");
    vars["documents"] = *docs;
  }
  if (const json* kw = field(b, "chat_template_kwargs")) {
    if (!kw->is_object()) bad("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    for (auto it = kw->begin(); it != kw->end(); ++it) {
      if (it.key() == "messages" || it.key() == "add_generation_prompt")
        bad("chat_template_kwargs", cat("'chat_template_kwargs' cannot set '", it.key(), "'"));
      vars[it.key()] = *it;
    }
  }
  const bool add_generation_prompt = get_bool(b, "add_generation_prompt").value_or(true);
  if (!cp.tools.forced.empty() && !add_generation_prompt)
    bad("tool_choice", "'tool_choice' \"required\" or a named function needs add_generation_prompt");
  try {
    cp.text = ctx.chat_template->render(messages, add_generation_prompt, vars);
  } catch (const Error& e) {
    bad("messages", cat("the chat template failed: ", e.what()));
  }
  cp.text += cp.tools.forced;
  return cp;
}

Job parse_chat(const json& b, const ServingContext& ctx) {
  Job job;
  job.chat = true;
  parse_common(b, ctx, job);
  ChatPrompt cp = chat_prompt(b, ctx);
  job.tools = std::move(cp.tools);
  // The template writes the special tokens (BOS) itself.
  job.prompts.push_back(encode(ctx, cp.text, get_bool(b, "add_special_tokens").value_or(false), "messages"));
  if (job.prompts[0].empty()) bad("messages", "the rendered prompt is empty");
  const int32_t room = std::max(0, ctx.max_model_len - int32_t(job.prompts[0].size()));
  int32_t mt = max_tokens_field(b, "max_tokens", ctx, room);
  job.base.max_tokens = max_tokens_field(b, "max_completion_tokens", ctx, mt);
  if (job.tools.forced_whole) job.base.max_tokens = 0;
  if (job.tools.grammar) {
    if (job.base.grammar)
      bad("response_format", "'response_format' (or guided_*) cannot be combined with tool_choice \"required\" or a "
                             "named function: the call's format is the constraint");
    job.base.grammar = job.tools.grammar;
  }
  if (job.base.grammar && job.base.ignore_eos)
    bad("ignore_eos", "'ignore_eos' cannot be combined with structured output (the output ends where it is complete)");
  // Call markers (<tool_call>, [TOOL_CALLS], ...) are special tokens in their models' vocabularies.
  if (job.tools.parse) job.base.skip_special = false;
  if (get_bool(b, "logprobs").value_or(false)) job.logprobs = int_in(b, "top_logprobs", 0, ctx.max_logprobs, 0);
  job.base.logprobs = job.logprobs;
  check_total(job, ctx);
  return job;
}

// ---- responses

ResponseBuilder::ResponseBuilder(const Job& job, const ServingContext& ctx, std::string id, int64_t created)
    : job_(job), ctx_(ctx), id_(std::move(id)), created_(created), choices_(size_t(job.num_sequences())),
      rng_((uint64_t(std::random_device{}()) << 32) ^ std::random_device{}()) {}

std::string ResponseBuilder::new_call_id() const {
  static const char kAlnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  // Mistral's template refuses ids other than 9 alphanumerics; the others get OpenAI's "call_" shape.
  const bool mistral = job_.tools.format == ToolCallFormat::Mistral;
  std::string id = mistral ? "" : "call_";
  for (int i = 0; i < (mistral ? 9 : 24); ++i) {
    rng_ = rng_ * 6364136223846793005ull + 1442695040888963407ull;
    id += kAlnum[(rng_ >> 33) % 62];
  }
  return id;
}

std::string ResponseBuilder::check_forced(const ToolCallParser::Result& r) const {
  if (job_.tools.forced.empty()) return {};
  const std::string what = job_.tools.named.empty() ? "a tool call (tool_choice \"required\")"
                                                    : cat("a call of \"", job_.tools.named, "\" (tool_choice)");
  if (!r.valid || r.calls.empty())
    return cat("the model's output is not ", what, ": its arguments are not a complete JSON object");
  for (const ToolCall& c : r.calls) {
    if (!job_.tools.named.empty() ? c.name != job_.tools.named
                                  : std::find(job_.tools.names.begin(), job_.tools.names.end(), c.name) == job_.tools.names.end())
      return cat("the model's output is not ", what, ": it calls \"", c.name, "\"");
  }
  return {};
}

json ResponseBuilder::tool_delta(Choice& c, const ToolCallParser::Delta& d) {
  json delta = json::object();
  if (!d.content.empty()) delta["content"] = d.content;
  json calls = json::array();
  for (const ToolCallDelta& t : d.calls) {
    if (!job_.tools.parallel && t.index > 0) continue;
    json call = {{"index", t.index}};
    if (t.name) {
      c.call_ids.push_back(new_call_id());
      call["id"] = c.call_ids.back();
      call["type"] = "function";
      call["function"] = {{"name", *t.name}, {"arguments", t.arguments}};
    } else {
      call["function"] = {{"arguments", t.arguments}};
    }
    calls.push_back(std::move(call));
  }
  if (!calls.empty()) delta["tool_calls"] = std::move(calls);
  return delta;
}

std::string ResponseBuilder::token_text(int32_t id) const {
  if (id < 0 || id >= ctx_.tok->vocab_size()) return "";
  try {
    return ctx_.tok->decode(std::span(&id, 1), false);
  } catch (const Error&) {
    return "";
  }
}

json ResponseBuilder::completion_logprobs(const std::vector<TokenLogprob>& lps, int32_t& offset) const {
  json tokens = json::array(), values = json::array(), tops = json::array(), offsets = json::array();
  for (const TokenLogprob& t : lps) {
    std::string s = token_text(t.id);
    tokens.push_back(s);
    offsets.push_back(offset);
    offset += int32_t(s.size());
    if (std::isnan(t.logprob)) {
      values.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    values.push_back(t.logprob);
    json top = json::object();
    for (auto& [id, lp] : t.top) top[token_text(id)] = lp;
    top[s] = t.logprob;  // the chosen token is always listed
    tops.push_back(std::move(top));
  }
  return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

json ResponseBuilder::chat_logprobs(const std::vector<TokenLogprob>& lps) const {
  json content = json::array();
  auto entry = [&](int32_t id, float lp) {
    std::string s = token_text(id);
    json bytes = json::array();
    for (unsigned char ch : s) bytes.push_back(int(ch));
    return json{{"token", s}, {"logprob", lp}, {"bytes", bytes}};
  };
  for (const TokenLogprob& t : lps) {
    json e = entry(t.id, t.logprob), top = json::array();
    for (auto& [id, lp] : t.top) top.push_back(entry(id, lp));
    e["top_logprobs"] = top;
    content.push_back(std::move(e));
  }
  return {{"content", content}};
}

json ResponseBuilder::usage() const {
  int64_t prompt = 0, completion = 0;
  for (auto& p : job_.prompts) prompt += int64_t(p.size());
  for (auto& c : choices_) completion += int64_t(c.tokens.size());
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
}

std::vector<json> ResponseBuilder::add(const RequestOutput& o) {
  Choice& c = choices_.at(size_t(o.index));
  const bool first = !c.started;
  c.started = true;
  std::string echo_text;
  if (job_.echo && first) {
    auto& p = job_.prompts[size_t(o.index / job_.n)];
    echo_text = ctx_.tok->decode(p, false);
  }
  if (!o.prompt_logprobs.empty()) c.prompt_lp = o.prompt_logprobs;
  c.tokens.insert(c.tokens.end(), o.tokens.begin(), o.tokens.end());
  c.lp.insert(c.lp.end(), o.logprobs.begin(), o.logprobs.end());
  c.text += echo_text + o.text;
  if (o.finish != FinishReason::None) {
    c.finish = o.finish;
    ++done_;
    if (!o.error.empty()) error_ = o.error;
    // A constrained call cut short by max_tokens is not a failure: it comes back as it is, finish "length".
    const bool cut = job_.tools.grammar && o.finish == FinishReason::Length;
    if (!job_.stream && job_.tools.parse && o.error.empty() && !cut)
      if (std::string err = check_forced(ToolCallParser::parse(job_.tools.format, job_.tools.forced + c.text)); !err.empty())
        error_ = err;
  }
  if (!job_.stream) return {};

  std::vector<json> out;
  const json finish = o.finish == FinishReason::None ? json() : json(finish_reason_name(o.finish));
  const std::string text = echo_text + o.text;
  if (job_.chat) {
    auto chunk = [&](json delta, json fin, json lp) {
      return json{{"id", id_}, {"object", "chat.completion.chunk"}, {"created", created_}, {"model", ctx_.model_name},
                  {"choices", json::array({{{"index", o.index}, {"delta", delta}, {"logprobs", lp}, {"finish_reason", fin}}})}};
    };
    if (first) out.push_back(chunk({{"role", "assistant"}, {"content", ""}}, nullptr, nullptr));
    if (job_.tools.parse) {
      if (first) c.parser.emplace(job_.tools.format);
      ToolCallParser::Delta d = c.parser->feed(first ? job_.tools.forced + text : text);
      json fin = finish;
      if (o.finish != FinishReason::None) {
        ToolCallParser::Delta e = c.parser->finish();
        d.content += e.content;
        d.calls.insert(d.calls.end(), e.calls.begin(), e.calls.end());
        ToolCallParser::Result r{"", c.parser->calls(), c.parser->valid()};
        if (!(job_.tools.grammar && o.finish == FinishReason::Length))
          if (std::string err = check_forced(r); !err.empty()) error_ = err;
        if (r.valid && !r.calls.empty() && o.finish != FinishReason::Abort) fin = "tool_calls";
      }
      json delta = tool_delta(c, d);
      if (!delta.empty() || o.finish != FinishReason::None || job_.logprobs >= 0)
        out.push_back(chunk(delta, fin, job_.logprobs >= 0 ? chat_logprobs(o.logprobs) : json()));
    } else if (!text.empty() || !o.tokens.empty() || o.finish != FinishReason::None) {
      json delta = text.empty() && o.finish != FinishReason::None ? json::object() : json{{"content", text}};
      out.push_back(chunk(delta, finish, job_.logprobs >= 0 ? chat_logprobs(o.logprobs) : json()));
    }
  } else if (!text.empty() || !o.tokens.empty() || o.finish != FinishReason::None || !o.prompt_logprobs.empty()) {
    json lp;
    if (job_.logprobs >= 0) {
      std::vector<TokenLogprob> all = o.prompt_logprobs;
      all.insert(all.end(), o.logprobs.begin(), o.logprobs.end());
      lp = completion_logprobs(all, c.text_offset);
    }
    out.push_back({{"id", id_}, {"object", "text_completion"}, {"created", created_}, {"model", ctx_.model_name},
                   {"choices", json::array({{{"index", o.index}, {"text", text}, {"logprobs", lp}, {"finish_reason", finish}}})}});
  }
  return out;
}

json ResponseBuilder::response() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = choices_[i];
    const json finish = finish_reason_name(c.finish);
    if (job_.chat) {
      json message = {{"role", "assistant"}, {"content", c.text}};
      json fin = finish;
      if (job_.tools.parse) {
        ToolCallParser::Result r = ToolCallParser::parse(job_.tools.format, job_.tools.forced + c.text);
        if (!job_.tools.parallel && r.calls.size() > 1) r.calls.resize(1);
        json calls = json::array();
        for (const ToolCall& t : r.calls)
          calls.push_back({{"id", new_call_id()},
                           {"type", "function"},
                           {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
        message["content"] = r.content.empty() && !calls.empty() ? json() : json(r.content);
        if (!calls.empty()) {
          message["tool_calls"] = std::move(calls);
          if (c.finish != FinishReason::Abort) fin = "tool_calls";
        }
      }
      choices.push_back({{"index", i},
                         {"message", message},
                         {"logprobs", job_.logprobs >= 0 ? chat_logprobs(c.lp) : json()},
                         {"finish_reason", fin}});
    } else {
      json lp;
      if (job_.logprobs >= 0) {
        std::vector<TokenLogprob> all = c.prompt_lp;
        all.insert(all.end(), c.lp.begin(), c.lp.end());
        int32_t offset = 0;
        lp = completion_logprobs(all, offset);
      }
      choices.push_back({{"index", i}, {"text", c.text}, {"logprobs", lp}, {"finish_reason", finish}});
    }
  }
  return {{"id", id_},
          {"object", job_.chat ? "chat.completion" : "text_completion"},
          {"created", created_},
          {"model", ctx_.model_name},
          {"choices", choices},
          {"usage", usage()}};
}

json ResponseBuilder::usage_chunk() const {
  return {{"id", id_},
          {"object", job_.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created_},
          {"model", ctx_.model_name},
          {"choices", json::array()},
          {"usage", usage()}};
}

// ---- tokenizer routes

json tokenize(const json& b, const ServingContext& ctx) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  check_model(b, ctx);
  std::vector<int32_t> ids;
  if (field(b, "messages")) {
    ids = encode(ctx, chat_prompt(b, ctx).text, get_bool(b, "add_special_tokens").value_or(false), "messages");
  } else {
    const json* p = field(b, "prompt");
    if (!p || !p->is_string()) bad("prompt", "'prompt' must be a string");
    ids = encode(ctx, p->get<std::string>(), get_bool(b, "add_special_tokens").value_or(true), "prompt");
  }
  json strs = nullptr;
  if (get_bool(b, "return_token_strs").value_or(false)) {
    strs = json::array();
    for (int32_t id : ids) strs.push_back(std::string(ctx.tok->id_to_token(id)));
  }
  return {{"count", ids.size()}, {"max_model_len", ctx.max_model_len}, {"tokens", ids}, {"token_strs", strs}};
}

json detokenize(const json& b, const ServingContext& ctx) {
  if (!b.is_object()) bad("", "the request body must be a JSON object");
  check_model(b, ctx);
  const json* t = field(b, "tokens");
  if (!t || !t->is_array()) bad("tokens", "'tokens' must be a list of token ids");
  std::vector<int32_t> ids = token_ids(*t, "tokens", ctx);
  try {
    return {{"prompt", ctx.tok->decode(ids, false)}};
  } catch (const Error& e) {
    bad("tokens", e.what());
  }
}

json tokenizer_info(const ServingContext& ctx) {
  json j = ctx.tokenizer_config.is_object() ? ctx.tokenizer_config : json::object();
  j.erase("added_tokens_decoder");  // large and not needed by clients
  if (!j.contains("tokenizer_class")) j["tokenizer_class"] = "PreTrainedTokenizerFast";
  j["vocab_size"] = ctx.tok->vocab_size();
  j["model_max_length"] = ctx.max_model_len;
  return j;
}

json models(const ServingContext& ctx, int64_t created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", ctx.model_name},
                                 {"object", "model"},
                                 {"created", created},
                                 {"owned_by", "bamba"},
                                 {"root", ctx.model_name},
                                 {"max_model_len", ctx.max_model_len}}})}};
}

}  // namespace bamba
