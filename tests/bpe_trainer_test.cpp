// BpeTrainer tests: small corpora worked by hand (merge order, count and id tie-breaks, min frequency, special
// tokens, overlapping pairs), and corpora whose vocab and merges Hugging Face tokenizers' BpeTrainer produced
// (tests/data/bpe/hf_*.json, from the GPU machine's Python, see tests/data/bpe/README.md).
#include "tokenizer/bpe_trainer.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "data/document_reader.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using bamba::BpeTrainer;
using bamba::BpeTrainerOptions;
using bamba::TrainedBpe;
using json = nlohmann::json;
using Merges = std::vector<std::pair<std::string, std::string>>;

namespace {

std::string data_dir() { return std::string(BAMBA_SOURCE_DIR) + "/tests/data/bpe"; }

BpeTrainerOptions options(int64_t vocab_size, std::vector<std::string> specials = {}, int64_t min_frequency = 0) {
  BpeTrainerOptions o;
  o.vocab_size = vocab_size;
  o.special_tokens = std::move(specials);
  o.min_frequency = min_frequency;
  o.progress = false;
  return o;
}

TrainedBpe train_words(const BpeTrainerOptions& o, const std::vector<std::pair<std::string, uint64_t>>& words) {
  BpeTrainer t(o);
  for (const auto& [w, c] : words) t.add_word(w, c);
  return t.train();
}

// The corpus as HF's train(files) / train_from_iterator(records) sees it.
TrainedBpe train_files(const BpeTrainerOptions& o, const std::string& path, bool jsonl) {
  BpeTrainer t(o);
  bamba::InputFile f{path, jsonl, 0};
  bamba::DocumentReader reader(f, "text", bamba::DocumentReader::TextUnit::line);
  std::vector<std::string> texts;
  std::string s;
  while (reader.next(s))
    if (!s.empty()) texts.push_back(s);
  t.feed(std::vector<std::string_view>(texts.begin(), texts.end()));
  return t.train();
}

}  // namespace

// The alphabet is ordered by the code point of each byte's spelling: '!' .. '~', '¡' .. '¬', '®' .. 'ÿ', then the
// 68 bytes spelled U+0100.. in byte order ('Ā' = 0x00, ..., 'Ġ' = ' ' is the 33rd of them).
TEST(BpeTrainer, AlphabetOrderAndSpecialsFirst) {
  TrainedBpe m = train_words(options(1000, {"<s>", "</s>"}), {});
  ASSERT_EQ(m.vocab.size(), 258u);
  EXPECT_EQ(m.vocab[0], "<s>");
  EXPECT_EQ(m.vocab[1], "</s>");
  EXPECT_EQ(m.vocab[2], "!");
  EXPECT_EQ(m.vocab[2 + 93], "~");
  EXPECT_EQ(m.vocab[2 + 94], "¡");
  EXPECT_EQ(m.vocab[2 + 105], "¬");
  EXPECT_EQ(m.vocab[2 + 106], "®");
  EXPECT_EQ(m.vocab[2 + 187], "ÿ");
  EXPECT_EQ(m.vocab[2 + 188], "Ā");
  EXPECT_EQ(m.vocab[2 + 188 + 32], "Ġ");
  EXPECT_EQ(m.vocab[257], "Ń");  // byte 0xAD, the 68th remapped byte: U+0100 + 67
  EXPECT_TRUE(m.merges.empty());
}

// Counts: (a,b)=2 (c,d)=2 (p,q)=2 (b,x)=1 (b,y)=1. Ties on 2 go to the smaller ids: a < c < p. Merging ab turns
// (b,x), (b,y) into (ab,x), (ab,y), count 1 each; x < y.
TEST(BpeTrainer, HighestCountThenSmallestPair) {
  std::vector<std::pair<std::string, uint64_t>> words = {{"abx", 1}, {"aby", 1}, {"cd", 2}, {"pq", 2}};
  TrainedBpe m = train_words(options(1000), words);
  EXPECT_EQ(m.merges, (Merges{{"a", "b"}, {"c", "d"}, {"p", "q"}, {"ab", "x"}, {"ab", "y"}}));
  EXPECT_EQ(m.vocab.size(), 256u + 5);
  EXPECT_EQ(m.vocab[256], "ab");
  EXPECT_EQ(m.vocab[260], "aby");
  // A higher count wins over a smaller pair.
  TrainedBpe n = train_words(options(1000), {{"ab", 1}, {"yz", 2}});
  EXPECT_EQ(n.merges, (Merges{{"y", "z"}, {"a", "b"}}));
}

TEST(BpeTrainer, StopsAtVocabSizeAndMinFrequency) {
  std::vector<std::pair<std::string, uint64_t>> words = {{"abx", 1}, {"aby", 1}, {"cd", 2}, {"pq", 2}};
  EXPECT_EQ(train_words(options(256 + 2), words).merges, (Merges{{"a", "b"}, {"c", "d"}}));
  // Specials count toward the vocab size.
  EXPECT_EQ(train_words(options(256 + 2, {"<s>"}), words).merges, (Merges{{"a", "b"}}));
  // The first pair seen once stops training when at least 2 are asked for.
  EXPECT_EQ(train_words(options(1000, {}, 2), words).merges, (Merges{{"a", "b"}, {"c", "d"}, {"p", "q"}}));
}

// "aaaa" + "aaa": (a,a) = 3 + 2. Merging left to right gives [aa, aa] and [aa, a]. In "aaaa" the second merge
// removes the (aa, a) the first one made, so (aa, a) = 1 (from "aaa") and (aa, aa) = 1: a tie that the smaller
// pair wins, since id(a) < id(aa).
TEST(BpeTrainer, OverlappingPairsMergeLeftToRight) {
  TrainedBpe m = train_words(options(1000), {{"aaaa", 1}, {"aaa", 1}});
  EXPECT_EQ(m.merges, (Merges{{"a", "a"}, {"aa", "a"}, {"aa", "aa"}}));
}

// Words are pre-tokens: merges never cross the split regex's pieces, and spaces are spelled 'Ġ'.
TEST(BpeTrainer, FeedSplitsWithTheRegex) {
  BpeTrainer t(options(1000));
  t.feed({"low low low", "lower"});
  // Words: "low" x1, " low" x2, "lower" x1. (l,o)=(o,w)=4 -> lo, low; then (Ġ,low)=2 beats (low,e)=1 ...
  TrainedBpe m = t.train();
  ASSERT_GE(m.merges.size(), 3u);
  EXPECT_EQ(m.merges[0], (std::pair<std::string, std::string>{"l", "o"}));
  EXPECT_EQ(m.merges[1], (std::pair<std::string, std::string>{"lo", "w"}));
  EXPECT_EQ(m.merges[2], (std::pair<std::string, std::string>{"Ġ", "low"}));
  EXPECT_EQ(t.distinct_words(), 3u);
}

TEST(BpeTrainer, BadOptionsAreErrors) {
  EXPECT_THROW(BpeTrainer(options(0)), bamba::Error);
  EXPECT_THROW(BpeTrainer(options(100, {""})), bamba::Error);
  BpeTrainerOptions o = options(100);
  o.split_pattern = "(unclosed";
  try {
    BpeTrainer t(o);
    FAIL() << "expected an error";
  } catch (const bamba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("split regex"), std::string::npos) << e.what();
  }
  TrainedBpe m = train_words(options(300, {"<s>"}), {{"ab", 1}});
  EXPECT_THROW(bamba::bpe_tokenizer_json(m, std::string(bamba::kGpt2SplitPattern), "<bos>"), bamba::Error);
}

// The written tokenizer.json loads in bamba's Tokenizer and encodes with the learned merges; the BOS is added.
TEST(BpeTrainer, WrittenFileLoadsAndEncodes) {
  TrainedBpe m = train_words(options(1000, {"<|endoftext|>", "<|begin_of_text|>"}),
                             {{"low", 5}, {" low", 4}, {" lower", 2}});
  std::string text = bamba::bpe_tokenizer_json(m, std::string(bamba::kGpt2SplitPattern), "<|begin_of_text|>");
  bamba::Tokenizer tok = bamba::Tokenizer::from_json(text, "trained");
  auto id = [&](const char* s) { return *tok.token_to_id(s); };
  EXPECT_EQ(tok.encode("low lower<|endoftext|>", true),
            (std::vector<int32_t>{1, id("low"), id("Ġlower"), 0}));
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.decode(tok.encode("low lower", false)), "low lower");
}

// HF's default BpeTrainer (vocab 30000, min frequency 0, no specials, an alphabet of the characters seen, which
// keeps them in the same relative order as the 256-byte alphabet) trained by HF tokenizers' Node binding on
// corpus.txt: its merges, in order, are ours with as many merges (tests/data/bpe/make_testdata.js).
class BpeTrainerHfDefault : public ::testing::TestWithParam<const char*> {};

TEST_P(BpeTrainerHfDefault, SameMergesAsHuggingFace) {
  json hf = json::parse(bamba::read_text_file(data_dir() + "/hf_default_corpus_" + GetParam() + ".json"));
  const size_t n = hf["merges"].size();
  ASSERT_GT(n, 300u);
  BpeTrainerOptions o = options(int64_t(256 + n));
  o.split_pattern = bamba::split_pattern_for(GetParam());
  TrainedBpe m = train_files(o, data_dir() + "/corpus.txt", false);
  ASSERT_EQ(m.merges.size(), n);
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(m.merges[i], (std::pair<std::string, std::string>{hf["merges"][i][0], hf["merges"][i][1]}))
        << "merge " << i;
  // The corpus runs out of pairs there: asking for more gives no more.
  o.vocab_size += 100;
  EXPECT_EQ(train_files(o, data_dir() + "/corpus.txt", false).merges.size(), n);
}

INSTANTIATE_TEST_SUITE_P(Splits, BpeTrainerHfDefault, ::testing::Values("gpt2", "llama3"));

// A tokenizer trained here, loaded by HF, gave these ids for these strings (HF's encode; tests/data/bpe/README.md).
TEST(BpeTrainer, TrainedTokenizerEncodesAsHuggingFace) {
  BpeTrainerOptions o = options(800, {"<|begin_of_text|>", "<|end_of_text|>"}, 2);
  o.split_pattern = bamba::split_pattern_for("llama3");
  TrainedBpe m = train_files(o, data_dir() + "/corpus.txt", false);
  bamba::Tokenizer tok =
      bamba::Tokenizer::from_json(bamba::bpe_tokenizer_json(m, o.split_pattern, "<|begin_of_text|>"), "trained");
  std::ifstream f(data_dir() + "/hf_ids_corpus_llama3.jsonl");
  size_t n = 0;
  for (std::string line; std::getline(f, line); ++n) {
    json j = json::parse(line);
    EXPECT_EQ(tok.encode(j["text"].get<std::string>(), true), j["ids_with_bos"].get<std::vector<int32_t>>())
        << "line " << n + 1;
  }
  EXPECT_GT(n, 100u);
}
