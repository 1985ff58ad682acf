// SFT data: conversations rendered with a chat template into tokens with a label mask on the assistant's turns
// (data/chat_example.h), `bamba data prepare --chat` writing them as label-mask shards, and `bamba train` on
// them with per-document packing, the summed loss and a validation loss per dataset (tests/data/sft: a byte-level
// tokenizer of the tiny preset's 258 tokens, a ChatML-like template, 20 + 4 short conversations).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>

#include "chat/chat_template.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "data/chat_example.h"
#include "data/token_shard.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const std::string kSft = std::string(BAMBA_SOURCE_DIR) + "/tests/data/sft";

// The masked and unmasked text of a tokenized conversation, decoded.
std::pair<std::string, std::string> split(const Tokenizer& tok, const ChatTokens& c) {
  std::vector<int32_t> target, context;
  for (size_t i = 0; i < c.tokens.size(); ++i) (c.mask[i] ? target : context).push_back(c.tokens[i]);
  return {tok.decode(target), tok.decode(context)};
}

TEST(ChatExample, MasksExactlyTheAssistantsTurns) {
  const Tokenizer tok = Tokenizer::from_file(kSft + "/tokenizer.json");
  const ChatTemplate tmpl = *ChatTemplate::from_model_dir(kSft);
  const ojson conv = ojson::parse(R"({"messages": [
      {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "1+1?"},
      {"role": "assistant", "content": "2."}]})");
  const ChatTokens c = tokenize_chat(tmpl, tok, conv, "conv");
  EXPECT_EQ(c.assistant_turns, 2);
  ASSERT_EQ(c.tokens.size(), c.mask.size());
  // Everything the template renders, and exactly that (the pieces tokenize to the whole text).
  EXPECT_EQ(tok.decode(c.tokens), tmpl.render(conv["messages"], false));
  const auto [target, context] = split(tok, c);
  // The content and the end-of-turn marker of each assistant message; not its header "<|assistant|>\n".
  EXPECT_EQ(target, "Hello.<|end_of_text|>\n2.<|end_of_text|>\n");
  EXPECT_EQ(context, "<|begin_of_text|><|system|>\nBe brief.<|end_of_text|>\n<|user|>\nHi?<|end_of_text|>\n"
                     "<|assistant|>\n<|user|>\n1+1?<|end_of_text|>\n<|assistant|>\n");
  // The separator in front of every shard document replaces the template's BOS, never doubles it.
  const ChatTokens d = tokenize_chat(tmpl, tok, conv, "conv", "<|begin_of_text|>");
  EXPECT_EQ(d.tokens.size(), c.tokens.size() - 1);
  EXPECT_EQ(d.tokens.front(), c.tokens[1]);
  // tools reach the template.
  ojson with_tools = conv;
  with_tools["tools"] = ojson::parse(R"([{"type": "function", "function": {"name": "paint"}}])");
  const ChatTokens t = tokenize_chat(tmpl, tok, with_tools, "conv");
  EXPECT_NE(tok.decode(t.tokens).find("Tools: [{\"type\": \"function\""), std::string::npos) << tok.decode(t.tokens);
  EXPECT_EQ(split(tok, t).first, target);
}

TEST(ChatExample, ClearErrors) {
  const Tokenizer tok = Tokenizer::from_file(kSft + "/tokenizer.json");
  const ChatTemplate tmpl = *ChatTemplate::from_model_dir(kSft);
  auto message_of = [&](const ChatTemplate& tp, const char* json) {
    try {
      tokenize_chat(tp, tok, ojson::parse(json), "chat.jsonl line 3");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of(tmpl, R"({"text": "x"})").find("chat.jsonl line 3: no field \"messages\""), std::string::npos);
  EXPECT_NE(message_of(tmpl, R"({"messages": [{"content": "x"}]})").find("messages[0] must be an object with a string"),
            std::string::npos);
  EXPECT_NE(message_of(tmpl, R"({"messages": [{"role": "user", "content": "x"}]})").find("no assistant message"),
            std::string::npos);
  // A template that rewrites earlier assistant turns once later ones follow (as reasoning templates drop earlier
  // thoughts): the prefixes are not prefixes of the whole, and the error says so.
  const ChatTemplate rewriting = ChatTemplate::parse(
      "{% for m in messages %}{% if m.role == 'assistant' and not loop.last %}<|old|>{% else %}"
      "{{ '<|' + m.role + '|>' + m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>"
      "{% endif %}",
      "rewriting");
  const std::string e = message_of(rewriting, R"({"messages": [{"role": "user", "content": "a"},
      {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
      {"role": "assistant", "content": "d"}]})");
  EXPECT_NE(e.find("chat.jsonl line 3: messages[1] (assistant): the chat template does not render the conversation "
                   "up to this message as a prefix"),
            std::string::npos)
      << e;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

// The prefix method on real models' templates (tests/data/tools/templates), with a tool list (hermes2pro's
// template requires one): every assistant turn's content is a target, the users' and the system's text never is, and the targets decode to the assistant's content plus the
// template's end-of-turn text.
TEST(ChatExample, RealTemplatesGiveTheAssistantsContent) {
  const Tokenizer tok = Tokenizer::from_file(kSft + "/tokenizer.json");  // bytes: any text tokenizes
  const ojson conv = ojson::parse(R"({"messages": [
      {"role": "system", "content": "SYSTEM-TEXT"}, {"role": "user", "content": "USER-ONE"},
      {"role": "assistant", "content": "ANSWER-ONE"}, {"role": "user", "content": "USER-TWO"},
      {"role": "assistant", "content": "ANSWER-TWO"}],
      "tools": [{"type": "function", "function": {"name": "paint", "description": "Paint.", "parameters":
          {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}}}]})");
  const std::string dir = std::string(BAMBA_SOURCE_DIR) + "/tests/data/tools/templates";
  int checked = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ChatTemplate t = ChatTemplate::parse(read_text_file(e.path().string()), e.path().filename().string());
    t.bos_token = "<|begin_of_text|>";
    t.eos_token = "<|end_of_text|>";
    t.now = 1767225600;  // 2026-01-01: one date in every prefix
    const std::string name = e.path().filename().string();
    if (name == "mistral_nemo.jinja") {
      // It puts the system prompt in front of the *last* user message, so a prefix ending at the first answer
      // places it elsewhere than the whole conversation does: no assistant span exists, and the error says so.
      const std::string err = error_of([&] { tokenize_chat(t, tok, conv, name); });
      EXPECT_NE(err.find("mistral_nemo.jinja: messages[2] (assistant): the chat template does not render"),
                std::string::npos)
          << err;
      ++checked;
      continue;
    }
    const ChatTokens c = tokenize_chat(t, tok, conv, name);
    const auto [target, context] = split(tok, c);
    EXPECT_EQ(c.assistant_turns, 2) << name;
    EXPECT_NE(target.find("ANSWER-ONE"), std::string::npos) << name << ": " << target;
    EXPECT_NE(target.find("ANSWER-TWO"), std::string::npos) << name << ": " << target;
    EXPECT_LT(target.find("ANSWER-ONE"), 8u) << name << ": the target starts with the content, not a header: " << target;
    // after each answer, the end-of-turn text (<|eot_id|>, <|im_end|>, <|end_of_text|>, </s>, ...)
    EXPECT_GT(target.find("ANSWER-TWO"), target.find("ANSWER-ONE") + 10) << name << ": " << target;
    EXPECT_GT(target.size(), target.find("ANSWER-TWO") + 10) << name << ": " << target;
    for (const char* other : {"SYSTEM-TEXT", "USER-ONE", "USER-TWO"})
      EXPECT_EQ(target.find(other), std::string::npos) << name << ": " << other << " is a target: " << target;
    ++checked;
  }
  EXPECT_GE(checked, 9);
}

TEST(TokenShardV2, LabelMaskRoundTripsAndBadFilesAreClearErrors) {
  const std::string dir = test::make_temp_dir("shard-v2");
  const std::string path = dir + "/s.bin";
  {
    TokenShardWriter w(path, 258, 0, /*label_mask=*/true);
    const std::vector<int32_t> a = {5, 6, 7}, b = {8, 9};
    const std::vector<uint8_t> ma = {0, 1, 1}, mb = {1, 0};
    w.add_document(a, ma);
    w.add_document(b, mb);
    EXPECT_NE(error_of([&] { w.add_document(a); }).find("0 label-mask entries for 3 tokens"), std::string::npos);
    w.finish();
  }
  const TokenShard s(path);
  ASSERT_TRUE(s.has_label_mask());
  const std::vector<uint8_t> want = {0, 0, 1, 1, 0, 1, 0};  // separators are never targets
  EXPECT_EQ(std::vector<uint8_t>(s.label_mask().begin(), s.label_mask().end()), want);
  s.check_tokens();
  std::string bytes = read_text_file(path);
  EXPECT_EQ(bytes.size(), 64u + 32u + 24u + 8u);  // header, 7 tokens padded, 3 index entries, 7 mask bytes padded
  auto write = [&](const std::string& b) { std::ofstream(path, std::ios::binary) << b; };
  write(bytes.substr(0, bytes.size() - 1));
  EXPECT_NE(error_of([&] { TokenShard t(path); }).find("truncated at byte 127"), std::string::npos);
  std::string bad = bytes;
  bad[64 + 32 + 24 + 2] = 2;
  write(bad);
  EXPECT_NE(error_of([&] { TokenShard(path).check_tokens(); }).find("label mask of token 2 is 2"), std::string::npos);
  bad = bytes;
  bad[8] = 1;  // version 1 with the mask flag set
  write(bad);
  EXPECT_NE(error_of([&] { TokenShard t(path); }).find("byte 40: flags 1 in a version 1 shard"), std::string::npos);
  // A writer without a mask refuses one.
  TokenShardWriter plain(dir + "/p.bin", 258, 0);
  const std::vector<int32_t> a = {5};
  const std::vector<uint8_t> m = {1};
  EXPECT_NE(error_of([&] { plain.add_document(a, m); }).find("a label mask was given to a shard without one"),
            std::string::npos);
  fs::remove_all(dir);
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_text_file(path));
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(SftEndToEnd, PrepareChatShardsAndTrainWithValidation) {
  const std::string dir = test::make_temp_dir("sft-e2e");
  fs::remove_all(dir);
  test::RunResult r = test::run_bamba("data prepare " + kSft + "/chat.jsonl --chat --model " + kSft + " --out " + dir +
                                      "/train -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("20 conversations, 28 assistant turns"), std::string::npos) << r.out;
  r = test::run_bamba("data prepare " + kSft + "/chat-val.jsonl --chat --model " + kSft + " --out " + dir + "/val -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const TokenShard shard(dir + "/train/shard-00000.bin");
  ASSERT_TRUE(shard.has_label_mask());
  shard.check_tokens();
  // A file of plain text is refused in chat mode, naming it.
  r = test::run_bamba("data prepare " + kSft + "/tokenizer_config.json --chat --model " + kSft + " --out " + dir +
                      "/bad -q");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("chat data must be JSONL"), std::string::npos) << r.err;

  const std::string cfg = dir + "/sft.yml";
  std::ofstream(cfg) << "model: {preset: tiny, tokenizer: " << kSft << "}\n"
                     << "data:\n  - {name: chat, path: " << dir << "/train}\n"
                     << "validation:\n  - {name: held-out, path: " << dir << "/val}\n  - {name: seen, path: " << dir
                     << "/train}\n"
                     << "packing: whole-documents\nloss_reduction: sum\n"
                     << "seq_len: 128\nmicro_batch_size: 2\nbatch_tokens: 512\nsteps: 8\neval_every: 4\n"
                     << "optimizer: {lr: 0.003}\nschedule: {name: constant, warmup_steps: 1}\n"
                     << "precision: fp32\nsave_every: 4\nkeep_last: 0\noutput: " << dir << "/out\n";
  r = test::run_bamba("train " + cfg);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("step 4 validation loss: held-out"), std::string::npos) << r.err;
  const auto lines = read_jsonl(dir + "/out/metrics.jsonl");
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_FALSE(lines[2].contains("eval"));
  ASSERT_TRUE(lines[3].contains("eval")) << lines[3].dump();
  ASSERT_TRUE(lines[7].contains("eval"));
  for (const char* name : {"held-out", "seen"}) {
    const double at4 = lines[3]["eval"][name].get<double>(), at8 = lines[7]["eval"][name].get<double>();
    EXPECT_LT(at8, at4) << name << ": the validation loss falls as training goes on";
  }
  EXPECT_LT(lines[7]["loss"].get<double>(), lines[0]["loss"].get<double>());
  // Resumed from step 4, the run ends in the same bytes.
  const std::string straight = read_text_file(dir + "/out/checkpoint-8/model-00001-of-00001.safetensors");
  r = test::run_bamba("train " + cfg + " -q --resume " + dir + "/out/checkpoint-4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_text_file(dir + "/out/checkpoint-8/model-00001-of-00001.safetensors"), straight);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace bamba
