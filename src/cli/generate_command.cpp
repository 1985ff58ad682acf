// bamba generate: prompt -> text streamed to the terminal, with tokens/s at the end.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "backend/backend.h"
#include "engine/drafter.h"
#include "engine/generator.h"
#include "engine/text_stream.h"

namespace bamba::cli {

namespace {
struct GenerateOptions {
  ModelOptions model;
  std::string prompt;
  bool prompt_given = false;
  int32_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  bool no_bos = false;
  std::string speculative;  // "ngram" or a draft model folder
  int32_t num_speculative_tokens = 4, prompt_lookup_min = 1, prompt_lookup_max = 4;
  std::string save_state, load_state;
  bool temperature_given = false, top_k_given = false, top_p_given = false;
};

void run(const GenerateOptions& o) {
  std::string prompt = o.prompt;
  if (!o.prompt_given) prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  LoadedModel m = load(o.model, true);
  SamplingParams sampling = o.sampling;
  if (m.sampling_defaults) {  // the model's own defaults, for what the command line leaves unset
    if (!o.temperature_given) sampling.temperature = m.sampling_defaults->temperature;
    if (!o.top_k_given) sampling.top_k = m.sampling_defaults->top_k;
    if (!o.top_p_given) sampling.top_p = m.sampling_defaults->top_p;
    if (!o.model.quiet && !(o.temperature_given && o.top_k_given && o.top_p_given))
      std::fprintf(stderr, "bamba: sampling with temperature %g, top_k %d, top_p %g (the model's generation_config.json "
                           "for what the command line leaves unset; -t 0 for greedy)\n",
                   double(sampling.temperature), sampling.top_k, double(sampling.top_p));
  }
  // Speculative decoding: prompt lookup, or a draft model loaded on the same device.
  std::unique_ptr<Drafter> drafter;
  LoadedModel draft;
  if (o.speculative == "ngram") {
    drafter = std::make_unique<NgramDrafter>(o.prompt_lookup_min, o.prompt_lookup_max);
  } else if (!o.speculative.empty()) {
    ModelOptions d = o.model;
    d.model = o.speculative;
    draft = load(d, false);
    drafter = std::make_unique<ModelDrafter>(*draft.model, m.model->config().vocab_size, m.max_model_len);
  }
  Generator gen(*m.model, m.max_model_len, 512, {drafter.get(), o.num_speculative_tokens});
  gen.set_keep_state(!o.save_state.empty());
  // A loaded conversation goes on: the prompt is appended to it, without a second BOS.
  if (!o.load_state.empty()) gen.load_state(o.load_state);
  std::vector<int32_t> ids = m.tokenizer->encode(prompt, !o.no_bos && o.load_state.empty());
  TextStream text(*m.tokenizer, o.stop);
  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  GenerationStats st = gen.generate(ids, o.max_tokens, sampling, o.ignore_eos ? std::vector<int32_t>{} : m.eos,
                                    [&](int32_t id) {
                                      std::string piece = text.push(id);
                                      std::fwrite(piece.data(), 1, piece.size(), stdout);
                                      std::fflush(stdout);
                                      return !text.stopped();
                                    });
  if (!o.save_state.empty()) gen.save_state(o.save_state);
  std::string rest = text.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!o.model.quiet) {
    const char* why = text.stopped() ? "stop string" : st.hit_eos ? "end of text" : st.hit_length ? "--max-model-len" : "--max-tokens";
    std::fprintf(stderr, "\nbamba: prompt %d tokens in %.3fs (%.1f tok/s); generated %d tokens in %.3fs (%.1f tok/s); stopped at %s\n",
                 st.prompt_tokens, st.prefill_seconds, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9),
                 st.new_tokens, st.decode_seconds,
                 st.new_tokens > 1 ? (st.new_tokens - 1) / std::max(st.decode_seconds, 1e-9) : 0.0, why);
    if (drafter)
      std::fprintf(stderr, "bamba: speculative (%s, %d tokens): %d of %d drafted tokens accepted (%.1f%%), %.2f tokens per "
                   "target step (%d steps, %d of them verifications)\n", drafter->name().c_str(), o.num_speculative_tokens,
                   st.accepted, st.drafted, st.drafted ? 100.0 * st.accepted / st.drafted : 0.0,
                   st.decode_steps ? double(st.new_tokens - 1) / st.decode_steps : 0.0, st.decode_steps, st.verify_steps);
  }
}
}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt, streamed to the terminal");
  o->model.add_to(cmd);
  cmd->add_option("--prompt,-p", o->prompt, "The prompt (default: read from stdin)");
  cmd->add_option("--max-tokens,-n", o->max_tokens, "Most new tokens")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature,-t", o->sampling.temperature, "Sampling temperature; 0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", o->sampling.top_k, "Sample among the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->sampling.top_p, "Nucleus sampling mass, in (0, 1]")->check(CLI::Range(1e-6, 1.0));
  cmd->add_option("--seed", o->sampling.seed, "Random seed (same seed, same output)");
  cmd->add_option("--stop", o->stop, "Stop before this text (repeatable)");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Keep generating past the end-of-text token");
  cmd->add_flag("--no-bos", o->no_bos, "Do not add the tokenizer's special tokens (BOS) to the prompt");
  cmd->add_option("--speculative", o->speculative,
                  "Speculative decoding: 'ngram' (prompt lookup) or a draft model folder (same tokenizer)");
  cmd->add_option("--num-speculative-tokens", o->num_speculative_tokens, "Tokens drafted per verification step")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--prompt-lookup-min", o->prompt_lookup_min, "Shortest n-gram prompt lookup matches")->check(CLI::Range(1, 64));
  cmd->add_option("--prompt-lookup-max", o->prompt_lookup_max, "Longest n-gram prompt lookup tries first")->check(CLI::Range(1, 64));
  cmd->add_option("--save-state", o->save_state,
                  "Write the conversation's state (tokens, Mamba states, KV rows) to FILE at the end (docs/serving.md)");
  cmd->add_option("--load-state", o->load_state,
                  "Continue the conversation saved in FILE: the prompt (may be empty) is appended to it");
  cmd->callback([o, cmd] {
    o->prompt_given = cmd->count("--prompt") > 0;
    o->temperature_given = cmd->count("--temperature") > 0;
    o->top_k_given = cmd->count("--top-k") > 0;
    o->top_p_given = cmd->count("--top-p") > 0;
    run(*o);
  });
}

}  // namespace bamba::cli
