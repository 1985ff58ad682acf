// Tokenizer tests: the real Llama-3 tokenizer against Hugging Face's output on the fixture cases, the streaming
// decoder, each option of the pipeline on small hand-made tokenizer.json files, speed, and every bad-input error.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "core/error.h"
#include "core/mapped_file.h"
#include "test_util.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/utf8.h"

using bamba::StreamDecoder;
using bamba::Tokenizer;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

namespace {

std::string llama3_path() { return bamba::test::model_dir("bamba-tiny-e2e") + "/tokenizer.json"; }

// Timings: the machine may be shared, so the limits are on this thread's CPU time; wall time is printed too.
// Debug and sanitizer builds are several times slower: they print the times without asserting them (g++ says ASan
// with __SANITIZE_ADDRESS__, clang before 17 only through __has_feature).
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BAMBA_TEST_ASAN 1
#endif
#endif
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__) && !defined(BAMBA_TEST_ASAN)
constexpr bool kCheckTimes = true;
#else
constexpr bool kCheckTimes = false;
#endif
struct Timer {
  std::chrono::steady_clock::time_point wall0 = std::chrono::steady_clock::now();
  double cpu0 = cpu_now();
  static double cpu_now() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
  }
  double cpu() const { return cpu_now() - cpu0; }
  double wall() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count(); }
};

// Loaded once for the whole suite (it is read-only and thread-safe).
const Tokenizer& llama3() {
  static const Tokenizer tok = Tokenizer::from_file(llama3_path());
  return tok;
}

struct Case {
  std::string text, decoded;
  Ids ids, ids_with_bos;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> out;
    const std::string path = bamba::test::fixtures_dir() + "/tokenizer/cases.jsonl";
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot open " + path);  // fail loudly, never test zero cases
    std::string line;
    while (std::getline(f, line)) {
      json j = json::parse(line);
      out.push_back({j["text"], j["decoded"], j["ids"], j["ids_with_bos"]});
    }
    return out;
  }();
  return all;
}

std::string show(const Ids& ids) {
  std::ostringstream os;
  for (size_t i = 0; i < ids.size(); ++i) os << (i ? "," : "") << ids[i];
  return os.str();
}

bool is_valid_utf8(std::string_view s) {
  try {
    bamba::utf8::check_valid(s, "piece");
    return true;
  } catch (const bamba::Error&) {
    return false;
  }
}

// Streams ids through a StreamDecoder; checks every piece is valid UTF-8 and returns the concatenation.
std::string stream(const Tokenizer& tok, const Ids& ids, bool skip_special = false) {
  StreamDecoder dec(tok, skip_special);
  std::string all;
  for (int32_t id : ids) {
    std::string piece = dec.push(id);
    EXPECT_TRUE(is_valid_utf8(piece)) << "after id " << id;
    all += piece;
  }
  std::string tail = dec.flush();
  EXPECT_TRUE(is_valid_utf8(tail));
  return all + tail;
}

// Ids of raw bytes for the tokenizers below, whose ids 0..255 are the bytes.
Ids bytes(std::string_view s) {
  Ids ids;
  for (unsigned char c : s) ids.push_back(c);
  return ids;
}
Ids operator+(Ids a, const Ids& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A small tokenizer.json in the shape of Llama-3's: ids 0..255 are the bytes (from byte_level_default's spelling),
// no merges, no added tokens, ByteLevel pre-tokenizer without prefix space and without regex. Tests edit it.
json small_json() {
  Tokenizer base = Tokenizer::byte_level_default();
  json vocab = json::object();
  for (int32_t b = 0; b < 256; ++b) vocab[std::string(base.id_to_token(b))] = b;
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", json::array()},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", json::array()}}}};
}

// Adds token `text` (byte-level spelling) at the next free id and returns that id.
int32_t add_vocab(json& j, const std::string& text) {
  int32_t id = int32_t(j["model"]["vocab"].size());
  j["model"]["vocab"][text] = id;
  return id;
}

json added_token(int32_t id, const std::string& content, bool special = true) {
  return {{"id", id},        {"content", content},     {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", !special}, {"special", special}};
}

Tokenizer load(const json& j) { return Tokenizer::from_json(j.dump(), "test.json"); }

// from_json must throw an Error whose message holds every one of `parts`.
void expect_load_error(const std::string& text, std::initializer_list<std::string> parts) {
  try {
    Tokenizer::from_json(text, "test.json");
    ADD_FAILURE() << "no error; expected one mentioning " << *parts.begin();
  } catch (const bamba::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}
void expect_load_error(const json& j, std::initializer_list<std::string> parts) { expect_load_error(j.dump(), parts); }

template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning " << *parts.begin();
  } catch (const bamba::Error& e) {
    std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

// ---- The real Llama-3 tokenizer against HF tokenizers ----

TEST(Tokenizer, LoadsLlama3AndPrintsTime) {
  Timer t;
  Tokenizer tok = Tokenizer::from_file(llama3_path());
  double cpu = t.cpu(), wall = t.wall();
  std::printf("[ time ] loading the %zu-byte tokenizer.json: %.3f s CPU, %.3f s wall\n",
              bamba::read_text_file(llama3_path()).size(), cpu, wall);
  if (kCheckTimes) {
    EXPECT_LT(cpu, 1.0);
  }
  EXPECT_EQ(tok.vocab_size(), 128256);
  EXPECT_EQ(tok.bos_id(), 128000);
  EXPECT_EQ(tok.token_to_id("<|begin_of_text|>"), 128000);
  EXPECT_EQ(tok.token_to_id("Ġhello"), 24748);
  EXPECT_EQ(tok.token_to_id("no such token"), std::nullopt);
  EXPECT_EQ(tok.id_to_token(9906), "Hello");
  EXPECT_EQ(tok.id_to_token(128009), "<|eot_id|>");
  EXPECT_TRUE(tok.is_special(128000));
  EXPECT_FALSE(tok.is_special(9906));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_FALSE(tok.is_special(1 << 20));
}

TEST(Tokenizer, MatchesHuggingFaceOnAllFixtureCases) {
  const Tokenizer& tok = llama3();
  ASSERT_EQ(cases().size(), 447u);
  int bad = 0;
  for (const Case& c : cases()) {
    Ids ids = tok.encode(c.text, false);
    Ids with_bos = tok.encode(c.text, true);
    std::string decoded = tok.decode(c.ids);
    bool ok = ids == c.ids && with_bos == c.ids_with_bos && decoded == c.decoded;
    if (!ok && ++bad <= 5)
      ADD_FAILURE() << "text " << json(c.text).dump() << "\n  ours " << show(ids) << "\n  HF   " << show(c.ids)
                    << "\n  decoded " << json(decoded).dump();
  }
  EXPECT_EQ(bad, 0);
}

TEST(Tokenizer, StreamingEveryCaseEqualsDecode) {
  for (const Case& c : cases()) EXPECT_EQ(stream(llama3(), c.ids), c.decoded) << json(c.text).dump();
}

// Random ids cut characters anywhere and make ill-formed UTF-8: the stream must still equal decode().
TEST(Tokenizer, StreamingRandomIdsEqualsDecode) {
  const Tokenizer& tok = llama3();
  Tokenizer byte_tok = Tokenizer::byte_level_default();
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    Ids ids(1 + rng() % 12);
    for (int32_t& id : ids) id = int32_t(rng() % uint32_t(tok.vocab_size()));
    // Favour the ids of the single bytes 0x80..0xFF (spelled with 2-byte characters): they split characters.
    for (int32_t& id : ids)
      if (rng() % 2) id = *tok.token_to_id(byte_tok.id_to_token(128 + rng() % 128));
    EXPECT_EQ(stream(tok, ids), tok.decode(ids));
    EXPECT_EQ(stream(tok, ids, true), tok.decode(ids, true));
  }
}

TEST(Tokenizer, MergesAsPairsGiveTheSameIds) {
  json j = json::parse(bamba::read_text_file(llama3_path()));
  ASSERT_TRUE(j["model"]["merges"][0].is_string());
  for (json& m : j["model"]["merges"]) {
    std::string s = m;
    size_t space = s.find(' ');
    m = json::array({s.substr(0, space), s.substr(space + 1)});
  }
  Tokenizer pairs = Tokenizer::from_json(j.dump(), "pairs.json");
  for (const Case& c : cases()) EXPECT_EQ(pairs.encode(c.text, true), c.ids_with_bos) << json(c.text).dump();
}

TEST(Tokenizer, EncodesAMegabyteWellUnderASecond) {
  ASSERT_FALSE(cases().empty());
  std::string text;
  while (text.size() < (1 << 20))
    for (const Case& c : cases()) text += c.text + "\n";
  const Tokenizer& tok = llama3();
  Timer t;
  Ids ids = tok.encode(text, false);
  double cpu = t.cpu(), wall = t.wall();
  std::printf("[ time ] encoding %zu bytes -> %zu tokens: %.3f s CPU, %.3f s wall (%.1f MB/s)\n", text.size(),
              ids.size(), cpu, wall, double(text.size()) / cpu / 1e6);
  Timer t2;
  std::string back = tok.decode(ids);
  std::printf("[ time ] decoding them: %.3f s CPU\n", t2.cpu());
  EXPECT_EQ(back, text);
  if (kCheckTimes) {
    EXPECT_LT(cpu, 1.0);
  }
}

// Text never seen before (no help from the word cache): random mixes of letters, digits, CJK, emoji, spaces and
// pieces of special tokens must round-trip, since byte-level BPE loses nothing.
TEST(Tokenizer, RandomTextRoundTrips) {
  const std::vector<std::string> atoms = {"a",      "Z",      "é",  "ß",  "7",          "42", " ",  "  ",
                                          "\n",     "\r\n",   "\t", "'s", "'LL",        "你", "😀",  "👍🏽",
                                          "\u200d", "\u0301", "<|", "|>", "<|eot_id|>", "!",  "..."};
  std::mt19937 rng(3);
  const Tokenizer& tok = llama3();
  for (int round = 0; round < 500; ++round) {
    std::string text;
    for (int n = rng() % 30; n > 0; --n) text += atoms[rng() % atoms.size()];
    EXPECT_EQ(tok.decode(tok.encode(text, false)), text) << json(text).dump();
  }
}

TEST(Tokenizer, LongRunsAreFast) {
  const Tokenizer& tok = llama3();
  for (std::string text : {std::string(300000, ' '), std::string(300000, 'a'), std::string(300000, '7'),
                           std::string(100000, '!') + std::string(100000, '\n')}) {
    Timer t;
    Ids ids = tok.encode(text, false);
    if (kCheckTimes) {
      EXPECT_LT(t.cpu(), 1.0);
    }
    EXPECT_EQ(tok.decode(ids), text);
  }
}

TEST(Tokenizer, EncodeIsThreadSafe) {
  const Tokenizer& tok = llama3();
  std::vector<Ids> results(2);
  auto work = [&](int t) {
    for (const Case& c : cases()) {
      Ids ids = tok.encode(c.text, false);
      results[t].insert(results[t].end(), ids.begin(), ids.end());
    }
  };
  std::thread a(work, 0), b(work, 1);
  a.join();
  b.join();
  EXPECT_EQ(results[0], results[1]);
}

// ---- Byte-level default ----

TEST(Tokenizer, ByteLevelDefault) {
  Tokenizer tok = Tokenizer::byte_level_default();
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.id_to_token(' '), "Ġ");
  EXPECT_EQ(tok.id_to_token('\n'), "Ċ");
  EXPECT_EQ(tok.id_to_token('a'), "a");
  EXPECT_EQ(tok.id_to_token(257), "<|end_of_text|>");
  EXPECT_TRUE(tok.is_special(257));
  EXPECT_EQ(tok.encode("hé!", false), bytes("hé!"));
  EXPECT_EQ(tok.encode("hé!", true), Ids{256} + bytes("hé!"));
  EXPECT_EQ(tok.encode("a<|end_of_text|>b", false), bytes("a") + Ids{257} + bytes("b"));
  EXPECT_EQ(tok.decode(Ids{256, 'h', 'i', 257}), "<|begin_of_text|>hi<|end_of_text|>");
  EXPECT_EQ(tok.decode(Ids{256, 'h', 'i', 257}, true), "hi");
  EXPECT_EQ(tok.encode("", true), Ids{256});
  EXPECT_EQ(tok.encode("", false), Ids{});
}

// ---- Decoding ill-formed UTF-8 like Rust's String::from_utf8_lossy ----

TEST(Tokenizer, DecodeReplacesIllFormedUtf8LikeRust) {
  Tokenizer tok = Tokenizer::byte_level_default();
  const std::string R = "\xEF\xBF\xBD";  // U+FFFD
  // Unicode's own example (Table 3-8): one U+FFFD per maximal subpart.
  EXPECT_EQ(tok.decode(bytes("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64")),
            "a" + R + R + R + "b" + R + "c" + R + R + "d");
  EXPECT_EQ(tok.decode(bytes("\xF0\x9F\x98"
                             "A")),
            R + "A");                                               // truncated emoji: one U+FFFD
  EXPECT_EQ(tok.decode(bytes("\xE0\x80\x80")), R + R + R);          // overlong
  EXPECT_EQ(tok.decode(bytes("\xED\xA0\x80")), R + R + R);          // surrogate
  EXPECT_EQ(tok.decode(bytes("\xF4\x90\x80\x80")), R + R + R + R);  // above U+10FFFF
  EXPECT_EQ(tok.decode(bytes("\xC0\xAF\xFF")), R + R + R);
  EXPECT_EQ(tok.decode(bytes("\xF0\x9F\x98\x80")), "😀");
  EXPECT_EQ(tok.decode(bytes("\xE2\x82")), R);  // truncated at the very end
}

TEST(Tokenizer, StreamDecoderHoldsBackPartialCharacters) {
  Tokenizer tok = Tokenizer::byte_level_default();
  const std::string R = "\xEF\xBF\xBD";
  StreamDecoder d(tok);
  EXPECT_EQ(d.push(0xE2), "");
  EXPECT_EQ(d.push(0x82), "");
  EXPECT_EQ(d.push(0xAC), "€");
  EXPECT_EQ(d.push('x'), "x");
  EXPECT_EQ(d.push(0xF0), "");
  EXPECT_EQ(d.push(0x9F), "");
  EXPECT_EQ(d.push('A'), R + "A");  // cannot become valid any more: released at once
  EXPECT_EQ(d.push(0xFF), R);
  EXPECT_EQ(d.push(0xC3), "");
  EXPECT_EQ(d.flush(), R);  // never finished
  EXPECT_EQ(d.flush(), "");
  EXPECT_EQ(d.push(256), "<|begin_of_text|>");
  StreamDecoder skip(tok, /*skip_special=*/true);
  EXPECT_EQ(skip.push(256), "");
  EXPECT_EQ(skip.push('o'), "o");
  expect_error([&] { skip.push(258); }, {"258", "out of range"});
}

// ---- The pipeline's options, on small hand-made tokenizers ----

// Merge order: the lowest rank first wherever it is, leftmost first among equals; ignore_merges.
TEST(Tokenizer, BpeMergesByRank) {
  json j = small_json();
  int32_t bc = add_vocab(j, "bc"), ab = add_vocab(j, "ab"), aa = add_vocab(j, "aa"), abc = add_vocab(j, "abc");
  int32_t aaaa = add_vocab(j, "aaaa");
  j["model"]["merges"] = {"b c", "a b", "a a", "aa aa"};
  Tokenizer tok = load(j);
  EXPECT_EQ(tok.encode("abc", false), (Ids{'a', bc}));  // "b c" outranks "a b"
  EXPECT_EQ(tok.encode("abd", false), (Ids{ab, 'd'}));
  EXPECT_EQ(tok.encode("aaa", false), (Ids{aa, 'a'}));  // leftmost first
  EXPECT_EQ(tok.encode("aaaaa", false), (Ids{aaaa, 'a'}));
  j["model"]["ignore_merges"] = true;  // "abc" is in the vocabulary: emitted whole, never merged
  EXPECT_EQ(load(j).encode("abc", false), (Ids{abc}));
  EXPECT_EQ(load(j).encode("abcabc", false), (Ids{'a', bc, 'a', bc}));
  // The same merges written as pairs.
  j["model"]["merges"] = json::array(
      {json::array({"b", "c"}), json::array({"a", "b"}), json::array({"a", "a"}), json::array({"aa", "aa"})});
  j["model"]["ignore_merges"] = false;
  EXPECT_EQ(load(j).encode("abcaaa", false), (Ids{'a', bc, aa, 'a'}));
}

TEST(Tokenizer, ByteLevelPrefixSpaceAndRegex) {
  json j = small_json();
  int32_t sp_a = add_vocab(j, "Ġa"), a_sp = add_vocab(j, "aĠ");
  j["model"]["merges"] = {"a Ġ", "Ġ a"};
  EXPECT_EQ(load(j).encode("a a", false), (Ids{a_sp, 'a'}));  // no regex: one word
  j["pre_tokenizer"]["use_regex"] = true;                     // GPT-2 regex: "a", " a"
  EXPECT_EQ(load(j).encode("a a", false), (Ids{'a', sp_a}));
  j["pre_tokenizer"]["add_prefix_space"] = true;  // " a", " a"
  EXPECT_EQ(load(j).encode("a a", false), (Ids{sp_a, sp_a}));
  EXPECT_EQ(load(j).encode(" a", false), (Ids{sp_a}));  // already starts with a space
  // Left out of the file, both default to true, as in HF.
  j["pre_tokenizer"] = {{"type", "ByteLevel"}};
  EXPECT_EQ(load(j).encode("a a", false), (Ids{sp_a, sp_a}));
}

// HF adds the prefix space to every piece that the Split steps before ByteLevel produce.
TEST(Tokenizer, SplitThenByteLevelAddsPrefixSpaceToEachPiece) {
  json j = small_json();
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       {{{"type", "Split"}, {"pattern", {{"Regex", "\\d"}}}, {"behavior", "Isolated"}, {"invert", false}},
        {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", false}}}}};
  EXPECT_EQ(load(j).encode("a1b", false), bytes(" a 1 b"));
}

TEST(Tokenizer, SplitPatterns) {
  json j = small_json();
  int32_t ab = add_vocab(j, "ab"), a_dot = add_vocab(j, "a.");
  j["model"]["merges"] = {"a b", "a ."};
  auto with_split = [&](json pattern) {
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers",
                           {{{"type", "Split"}, {"pattern", pattern}, {"behavior", "Isolated"}, {"invert", false}},
                            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    return load(j);
  };
  EXPECT_EQ(with_split({{"Regex", "c"}}).encode("abcab", false), (Ids{ab, 'c', ab}));
  // An empty match still splits there (Oniguruma's iteration, as in HF): "x*" cuts between every character.
  EXPECT_EQ(with_split({{"Regex", "x*"}}).encode("ab", false), (Ids{'a', 'b'}));
  // A String pattern is literal text: "." is not "any character".
  EXPECT_EQ(with_split({{"String", "."}}).encode("a.ab", false), (Ids{'a', '.', ab}));
  EXPECT_EQ(with_split({{"Regex", "."}}).encode("a.", false), (Ids{'a', '.'}));
  EXPECT_EQ(with_split({{"Regex", "Q"}}).encode("a.", false), (Ids{a_dot}));
  // Case folding, as in the Llama-3 pattern: "b" and "B" both cut, so "ab" is never one word.
  EXPECT_EQ(with_split({{"Regex", "(?i:B)"}}).encode("abAB", false), (Ids{'a', 'b', 'A', 'B'}));
  EXPECT_EQ(with_split({{"Regex", "B"}}).encode("abAB", false), (Ids{ab, 'A', 'B'}));
}

TEST(Tokenizer, AddedTokensLongestMatchFirst) {
  json j = small_json();
  j["added_tokens"] = {added_token(256, "<a"), added_token(257, "<ab>"), added_token(258, "ab", false)};
  Tokenizer tok = load(j);
  EXPECT_EQ(tok.encode("<ab>", false), (Ids{257}));
  EXPECT_EQ(tok.encode("<ab", false), (Ids{256, 'b'}));  // the leftmost match wins over a later one
  EXPECT_EQ(tok.encode("xab<", false), (Ids{'x', 258, '<'}));
  EXPECT_FALSE(tok.is_special(258));
  EXPECT_EQ(tok.decode(Ids{257, 258}, /*skip_special=*/true), "ab");
  EXPECT_EQ(tok.token_to_id("<ab>"), 257);
}

TEST(Tokenizer, AddedTokenOptions) {
  json j = small_json();
  json mask = added_token(256, "<mask>", false);
  mask["single_word"] = true;
  j["added_tokens"] = json::array({mask});
  Tokenizer single = load(j);
  // Matched alone or next to punctuation; not glued to a letter (or a combining mark) on either side.
  EXPECT_EQ(single.encode("<mask> x <mask>", false), Ids({256}) + bytes(" x ") + Ids({256}));
  EXPECT_EQ(single.encode("A<mask> <mask>b", false), bytes("A<mask> <mask>b"));
  EXPECT_EQ(single.encode("(<mask>,", false), bytes("(") + Ids{256} + bytes(","));
  EXPECT_EQ(single.encode("e\u0301<mask>", false), bytes("e\u0301<mask>"));

  mask["single_word"] = false;
  mask["lstrip"] = mask["rstrip"] = true;
  j["added_tokens"] = json::array({mask});
  Tokenizer strip = load(j);
  EXPECT_EQ(strip.encode("Hi <mask> there", false), bytes("Hi") + Ids{256} + bytes("there"));
  // Unicode whitespace counts; spaces taken by one match are not taken again by the next.
  EXPECT_EQ(strip.encode("a\t<mask>\u2000 \t<mask>\n b", false), bytes("a") + Ids({256, 256}) + bytes("b"));
}

TEST(Tokenizer, PostProcessors) {
  json j = small_json();
  j["added_tokens"] = {added_token(256, "<s>"), added_token(257, "</s>")};
  Tokenizer plain = load(j);  // null post-processor: nothing added
  EXPECT_EQ(plain.encode("x", true), bytes("x"));
  EXPECT_EQ(plain.bos_id(), std::nullopt);

  json tmpl = {{"type", "TemplateProcessing"},
               {"single",
                {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                 {{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}}}},
               {"pair", json::array()},
               {"special_tokens",
                {{"<s>", {{"id", "<s>"}, {"ids", {256}}, {"tokens", {"<s>"}}}},
                 {"</s>", {{"id", "</s>"}, {"ids", {257}}, {"tokens", {"</s>"}}}}}}};
  // Llama-3.1 files wrap it in a Sequence with ByteLevel.
  j["post_processor"] = {{"type", "Sequence"},
                         {"processors", {{{"type", "ByteLevel"}, {"trim_offsets", false}}, tmpl}}};
  Tokenizer both = load(j);
  EXPECT_EQ(both.encode("x", true), (Ids{256, 'x', 257}));
  EXPECT_EQ(both.encode("x", false), bytes("x"));
  EXPECT_EQ(both.bos_id(), 256);
  j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}};
  EXPECT_EQ(load(j).encode("x", true), bytes("x"));
}

// ---- Bad input: each is an Error naming the file, the field and what was expected ----

TEST(TokenizerErrors, InvalidJson) {
  expect_load_error(std::string("{\"model\": "), {"test.json", "invalid JSON"});
  expect_load_error(std::string("[1, 2]"), {"test.json", "expected an object"});
  expect_load_error(std::string("{\"a\": \"\xFF\"}"), {"test.json", "invalid JSON"});
}

TEST(TokenizerErrors, MissingOrIllTypedFields) {
  json j = small_json();
  j.erase("model");
  expect_load_error(j, {"test.json", "missing field \"model\""});
  j = small_json();
  j["model"]["vocab"] = json::array();
  expect_load_error(j, {"model.vocab", "expected an object"});
  j = small_json();
  j["model"]["vocab"]["xyz"] = "7";
  expect_load_error(j, {"model.vocab[\"xyz\"]", "expected a token id", "got \"7\""});
  j["model"]["vocab"]["xyz"] = -3;
  expect_load_error(j, {"model.vocab[\"xyz\"]", "expected a token id", "-3"});
  j["model"]["vocab"]["xyz"] = 5;
  expect_load_error(j, {"model.vocab[", "id 5 is already used"});
  j = small_json();
  j["model"]["merges"] = {42};
  expect_load_error(j, {"model.merges[0]", "expected a merge"});
  j["model"]["merges"] = {"ab"};
  expect_load_error(j, {"model.merges[0]", "expected \"left right\""});
  j["model"]["merges"] = {{"a"}};
  expect_load_error(j, {"model.merges[0]", "expected a pair"});
  j["model"]["merges"] = json::array({"Ġ Ġ", json::array({json::object(), "b"})});
  expect_load_error(j, {"model.merges[1]", "expected a pair of strings, got an object"});
  j["model"]["merges"] = json::array({"Ġ Ġ", json::object()});
  expect_load_error(j, {"model.merges[1]", "expected a merge", "got an object"});
  j = small_json();
  j["model"]["ignore_merges"] = "yes";
  expect_load_error(j, {"model.ignore_merges", "expected true or false"});
  j = small_json();
  j["added_tokens"] = {{{"id", 256}, {"special", true}}};
  expect_load_error(j, {"added_tokens[0]", "missing field \"content\""});
  j["added_tokens"] = {{{"id", 1e12}, {"content", "<x>"}}};
  expect_load_error(j, {"added_tokens[0].id", "expected a token id"});
  j = small_json();
  j.erase("decoder");
  expect_load_error(j, {"missing field \"decoder\""});
}

TEST(TokenizerErrors, UnsupportedComponents) {
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    json j = small_json();
    j["model"]["type"] = type;
    expect_load_error(j, {"model.type", std::string("\"") + type + "\" is not supported", "expected \"BPE\""});
  }
  json j = small_json();
  j["normalizer"] = {{"type", "NFC"}};
  expect_load_error(j, {"normalizer", "\"NFC\" is not supported", "expected null"});
  j = small_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  expect_load_error(j, {"pre_tokenizer", "\"Metaspace\" is not supported", "expected ByteLevel"});
  j = small_json();
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}}, {{"type", "ByteLevel"}}}}};
  expect_load_error(j, {"pre_tokenizer.pretokenizers[0].type", "\"Digits\" is not supported"});
  j["pre_tokenizer"]["pretokenizers"][0] = {
      {"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Removed"}, {"invert", false}};
  expect_load_error(j, {"pretokenizers[0].behavior", "\"Removed\" is not supported", "Isolated"});
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Isolated";
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true;
  expect_load_error(j, {"pretokenizers[0].invert", "expected false"});
  j["pre_tokenizer"]["pretokenizers"][0]["invert"] = false;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(a"}};
  expect_load_error(j, {"pretokenizers[0].pattern.Regex", "invalid regex", "offset 2"});
  j = small_json();
  j["model"]["byte_fallback"] = true;
  expect_load_error(j, {"model.byte_fallback", "not supported"});
  j = small_json();
  j["model"]["continuing_subword_prefix"] = "##";
  expect_load_error(j, {"model.continuing_subword_prefix", "expected null"});
  j = small_json();
  j["model"]["dropout"] = 0.1;
  expect_load_error(j, {"model.dropout", "expected null"});
  j = small_json();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_load_error(j, {"decoder", "\"WordPiece\" is not supported", "expected ByteLevel"});
  j = small_json();
  j["post_processor"] = {{"type", "BertProcessing"}};
  expect_load_error(j, {"post_processor.type", "\"BertProcessing\" is not supported"});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}}}}}},
      {"special_tokens", json::object()}};
  expect_load_error(j, {"post_processor.single[0].SpecialToken.id", "\"<s>\" is not in"});
  j["post_processor"]["special_tokens"] = {{"<s>", {{"ids", {999}}}}};
  expect_load_error(j, {"post_processor.special_tokens.<s>.ids[0]", "999 is not in the vocabulary"});
}

TEST(TokenizerErrors, MergeNamingAnUnknownToken) {
  json j = small_json();
  j["model"]["merges"] = {"a b"};  // "ab" is not in the vocabulary
  expect_load_error(j, {"model.merges[0]", "merged token \"ab\"", "is not in the vocabulary"});
  j["model"]["merges"] = {"a zz"};
  expect_load_error(j, {"model.merges[0]", "right token \"zz\""});
  j = small_json();
  j["model"]["vocab"].erase("Ġ");
  expect_load_error(j, {"model.vocab", "no token for byte 0x20"});
}

TEST(TokenizerErrors, BadIdsOnDecode) {
  Tokenizer tok = Tokenizer::byte_level_default();
  expect_error([&] { tok.decode(Ids{'a', 258}); }, {"token id 258", "out of range", "< 258"});
  expect_error([&] { tok.decode(Ids{-1}); }, {"token id -1", "out of range"});
  expect_error([&] { tok.id_to_token(1000); }, {"token id 1000", "out of range"});
  json j = small_json();
  j["added_tokens"] = json::array({added_token(300, "<far>")});  // ids 256..299 have no token
  expect_error([&] { load(j).decode(Ids{280}); }, {"token id 280", "has no token"});
}

TEST(TokenizerErrors, InvalidUtf8Text) {
  const Tokenizer& tok = llama3();
  expect_error([&] { tok.encode("abc\xFF", false); }, {"not valid UTF-8", "0xFF", "byte offset 3"});
  expect_error([&] { tok.encode("ab\xE2\x82", false); }, {"not valid UTF-8", "truncated", "byte offset 2"});
  expect_error([&] { tok.encode("\xED\xA0\x80", true); }, {"not valid UTF-8", "byte offset 0"});  // surrogate
  expect_error([&] { tok.encode("\xC0\x80", true); }, {"not valid UTF-8", "byte offset 0"});      // overlong NUL
  std::string nul("a\0b", 3);                                                                     // NUL is valid text
  EXPECT_EQ(tok.decode(tok.encode(nul, false)), nul);
}

TEST(TokenizerErrors, MissingFileNamesThePath) {
  expect_error([] { Tokenizer::from_file("/nonexistent/dir/tokenizer.json"); }, {"/nonexistent/dir/tokenizer.json"});
}
