// Token shards and `data prepare`: the writer/reader round trip against hand-computed bytes, every reader error
// (truncation, wrong header, bad index), the document reader's errors (file and line named), and the whole
// pipeline on a small corpus compared with tokenizing each document by itself.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "data/data_prepare.h"
#include "data/document_reader.h"
#include "data/token_shard.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using bamba::TokenShard;
using bamba::TokenShardWriter;
using U32 = std::vector<uint32_t>;

namespace {

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

std::string read_file(const std::string& path) { return bamba::read_text_file(path); }

// Expects an Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "expected an error";
  } catch (const bamba::Error& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

struct ShardTest : ::testing::Test {
  std::string dir = bamba::test::make_temp_dir("shard");
  std::string path = dir + "/a.bin";
  void TearDown() override { fs::remove_all(dir); }

  // Two documents [5, 6, 7] and [8], separator 1, vocab 10.
  void write_two() {
    TokenShardWriter w(path, 10, 1);
    w.add_document(std::vector<int32_t>{5, 6, 7});
    w.add_document(std::vector<int32_t>{8});
    w.finish();
  }
};

}  // namespace

// The bytes are the layout of docs/data.md, built here by hand.
TEST_F(ShardTest, LayoutIsTheDocumentedOne) {
  write_two();
  std::string b = read_file(path);
  // 64 header + 6 tokens (24 bytes, already a multiple of 8) + 3 index entries.
  ASSERT_EQ(b.size(), 64u + 24 + 24);
  EXPECT_EQ(b.substr(0, 8), "BAMBATOK");
  auto u32 = [&](size_t off) { uint32_t v; std::memcpy(&v, b.data() + off, 4); return v; };
  auto u64 = [&](size_t off) { uint64_t v; std::memcpy(&v, b.data() + off, 8); return v; };
  EXPECT_EQ(u32(8), 1u);   // version
  EXPECT_EQ(u32(12), 64u); // header bytes
  EXPECT_EQ(u32(16), 10u); // vocab
  EXPECT_EQ(u32(20), 1u);  // separator
  EXPECT_EQ(u64(24), 6u);  // tokens
  EXPECT_EQ(u64(32), 2u);  // documents
  EXPECT_EQ((U32{u32(64), u32(68), u32(72), u32(76), u32(80), u32(84)}), (U32{1, 5, 6, 7, 1, 8}));
  EXPECT_EQ(u64(88), 0u);
  EXPECT_EQ(u64(96), 4u);
  EXPECT_EQ(u64(104), 6u);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(ShardTest, RoundTrip) {
  write_two();
  TokenShard s(path);
  EXPECT_EQ(s.n_tokens(), 6u);
  EXPECT_EQ(s.n_documents(), 2u);
  EXPECT_EQ(s.vocab_size(), 10u);
  EXPECT_EQ(s.separator(), 1u);
  auto d0 = s.document(0), d1 = s.document(1);
  EXPECT_EQ(U32(d0.begin(), d0.end()), (U32{1, 5, 6, 7}));
  EXPECT_EQ(U32(d1.begin(), d1.end()), (U32{1, 8}));
  s.check_tokens();
  EXPECT_THROW(s.document(2), bamba::Error);
}

// An odd token count is padded to 8 bytes before the index; no separator.
TEST_F(ShardTest, OddTokenCountIsPadded) {
  {
    TokenShardWriter w(path, 100, bamba::kNoSeparator);
    w.add_document(std::vector<int32_t>{42});
    w.finish();
  }
  EXPECT_EQ(read_file(path).size(), 64u + 8 + 16);
  TokenShard s(path);
  EXPECT_EQ(s.separator(), bamba::kNoSeparator);
  EXPECT_EQ(s.document(0)[0], 42u);
}

TEST_F(ShardTest, WriterErrorsAndCleanup) {
  {
    TokenShardWriter w(path, 10, 1);
    expect_error([&] { w.add_document(std::vector<int32_t>{10}); }, {"a.bin", "document 0", "token id 10"});
  }  // not finished: nothing left behind
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  expect_error([&] { TokenShardWriter(path, 10, 10); }, {"separator id 10"});
  expect_error([&] { TokenShardWriter(dir + "/no/such/dir/x.bin", 10, 1); }, {"x.bin.tmp", "cannot create"});
}

TEST_F(ShardTest, TruncatedAndWrongHeadersAreErrors) {
  write_two();
  const std::string good = read_file(path);
  auto with = [&](std::string bytes) {
    write_file(path, bytes);
    return [this] { TokenShard s(path); };
  };
  expect_error(with(good.substr(0, 10)), {"a.bin", "truncated at byte 10"});
  expect_error(with(good.substr(0, good.size() - 1)), {"a.bin", "truncated at byte 111", "expected 112 bytes"});
  expect_error(with(good + "x"), {"a.bin", "1 unexpected bytes at byte 112"});
  std::string b = good;
  b[0] = 'X';
  expect_error(with(b), {"a.bin", "byte 0", "magic"});
  b = good;
  b[8] = 3;
  expect_error(with(b), {"byte 8", "version 3"});
  b[8] = 2;  // version 2 is for shards with a label mask, and this one has none
  expect_error(with(b), {"byte 40", "flags 0 in a version 2 shard"});
  b = good;
  b[20] = 11;
  expect_error(with(b), {"byte 20", "separator id 11"});
  b = good;
  b[24] = 7;  // 7 tokens: the index would start elsewhere and the size no longer fits
  expect_error(with(b), {"truncated at byte 112"});
  b = good;
  b[96] = 7;  // index[1] = 7 > 6 tokens
  expect_error(with(b), {"byte 96", "document index entry 1 is 7"});
  b = good;
  b[104] = 5;  // the last entry must be the token count
  expect_error(with(b), {"byte 104", "entry 2 is 5", "token count 6"});
  b = good;
  b[68] = 12;  // token 1 = 12 >= vocab 10: caught by check_tokens
  write_file(path, b);
  TokenShard s(path);
  expect_error([&] { s.check_tokens(); }, {"byte 68", "token 1 is 12"});
  b = good;
  b[80] = 2;  // document 1 does not start with the separator
  write_file(path, b);
  TokenShard s2(path);
  expect_error([&] { s2.check_tokens(); }, {"byte 80", "document 1 does not start with the separator"});
}

TEST(DocumentReader, ErrorsNameFileAndLine) {
  std::string dir = bamba::test::make_temp_dir("docs");
  auto read_all = [&](const std::string& name, const std::string& bytes, bool jsonl,
                      bamba::DocumentReader::TextUnit unit = bamba::DocumentReader::TextUnit::line) {
    write_file(dir + "/" + name, bytes);
    bamba::DocumentReader r({dir + "/" + name, jsonl, 0}, "text", unit);
    std::vector<std::string> docs;
    for (std::string s; r.next(s);) docs.push_back(s);
    return docs;
  };
  // Lines keep their endings; a JSONL blank line is skipped.
  EXPECT_EQ(read_all("a.txt", "x\r\ny\nz", false), (std::vector<std::string>{"x\r\n", "y\n", "z"}));
  EXPECT_EQ(read_all("a.txt", "x\ny\n", false, bamba::DocumentReader::TextUnit::file),
            (std::vector<std::string>{"x\ny\n"}));
  EXPECT_EQ(read_all("a.jsonl", "{\"text\": \"a\\nb\"}\n\n{\"text\": \"\", \"n\": 1}\n", true),
            (std::vector<std::string>{"a\nb", ""}));
  expect_error([&] { read_all("b.txt", "ok\nbad \xC3\x28\n", false, bamba::DocumentReader::TextUnit::file); },
               {"b.txt line 2", "not valid UTF-8", "byte offset 4"});
  expect_error([&] { read_all("b.jsonl", "{\"text\": \"a\"}\n{\"txt\": \"a\"}\n", true); },
               {"b.jsonl line 2", "no field \"text\""});
  expect_error([&] { read_all("b.jsonl", "{\"text\": 3}\n", true); }, {"b.jsonl line 1", "field \"text\" is number"});
  expect_error([&] { read_all("b.jsonl", "{\"text\": \"a\"}\n{\"text\": \n", true); }, {"b.jsonl line 2", "invalid JSON"});
  expect_error([&] { read_all("b.jsonl", "[1]\n", true); }, {"b.jsonl line 1", "expected a JSON object"});
  expect_error([&] { read_all("b.jsonl", "{\"text\": \"\xFF\"}\n", true); }, {"b.jsonl line 1", "not valid UTF-8"});
  expect_error([&] { bamba::DocumentReader r({dir + "/missing.txt", false, 0}, "text",
                                             bamba::DocumentReader::TextUnit::file); },
               {"missing.txt", "cannot open"});
  expect_error([&] { bamba::list_input_files({dir + "/nothing"}, "auto"); }, {"nothing", "no such file"});
  fs::remove_all(dir);
}

// The pipeline: a folder of text files and a JSONL file, small shards; each document's tokens must equal the
// tokenizer's encoding of that document alone, behind the separator, in input order.
TEST(DataPrepare, ShardsHoldEachDocumentBehindTheSeparator) {
  std::string dir = bamba::test::make_temp_dir("prepare");
  fs::create_directories(dir + "/in/sub");
  std::vector<std::string> docs = {"First document.\nTwo lines.", "Second: café, 日本語 😀", "Third one",
                                   "from jsonl <|end_of_text|> inside", "last"};
  write_file(dir + "/in/a.txt", docs[0]);
  write_file(dir + "/in/sub/b.txt", docs[1]);
  write_file(dir + "/in/c.txt", docs[2]);
  write_file(dir + "/in/.hidden.txt", "never read");
  write_file(dir + "/in/empty.txt", "");
  write_file(dir + "/d.jsonl", "{\"body\": \"from jsonl <|end_of_text|> inside\"}\n{\"body\": \"last\"}\n");
  bamba::Tokenizer tok = bamba::Tokenizer::from_file(bamba::test::model_dir("bamba-tiny-e2e") + "/tokenizer.json");

  bamba::PrepareOptions o;
  o.inputs = {dir + "/in", dir + "/d.jsonl"};
  o.field = "body";
  o.out_dir = dir + "/out";
  o.shard_tokens = 12;  // a few documents per shard
  o.threads = 2;
  o.progress = false;
  bamba::PrepareSummary s = bamba::prepare_token_shards(tok, o);
  // Folder order: a.txt, c.txt, empty.txt, sub/b.txt (sorted paths), then the JSONL file.
  std::vector<std::string> order = {docs[0], docs[2], docs[1], docs[3], docs[4]};
  EXPECT_EQ(s.documents, 5u);
  EXPECT_EQ(s.empty_skipped, 1u);

  std::vector<std::vector<uint32_t>> got;
  uint64_t tokens = 0;
  for (const std::string& p : s.shards) {
    TokenShard shard(p);
    shard.check_tokens();
    EXPECT_EQ(shard.separator(), 128000u);
    EXPECT_EQ(shard.vocab_size(), 128256u);
    tokens += shard.n_tokens();
    for (uint64_t d = 0; d < shard.n_documents(); ++d) {
      auto span = shard.document(d);
      got.emplace_back(span.begin(), span.end());
    }
  }
  EXPECT_GE(s.shards.size(), 2u);
  EXPECT_EQ(tokens, s.tokens);
  ASSERT_EQ(got.size(), order.size());
  uint64_t text_bytes = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    std::vector<uint32_t> want = {128000};
    for (int32_t id : tok.encode(order[i], false)) want.push_back(uint32_t(id));
    EXPECT_EQ(got[i], want) << "document " << i;
    text_bytes += order[i].size();
  }
  EXPECT_EQ(s.text_bytes, text_bytes);
  EXPECT_EQ(s.tokens, s.text_tokens + 5);
  auto manifest = nlohmann::json::parse(bamba::read_text_file(o.out_dir + "/manifest.json"));
  EXPECT_EQ(manifest["tokens"], s.tokens);
  EXPECT_EQ(manifest["shards"].size(), s.shards.size());
  EXPECT_EQ(manifest["separator"]["id"], 128000);

  // A second run into the same folder needs --force; a bad document stops the run naming it.
  expect_error([&] { bamba::prepare_token_shards(tok, o); }, {"already holds token shards", "--force"});
  o.force = true;
  write_file(dir + "/in/bad.txt", "fine\nnot \xE2\x82 fine\n");
  expect_error([&] { bamba::prepare_token_shards(tok, o); }, {"bad.txt line 2", "not valid UTF-8"});
  o.separator = "<|nope|>";
  expect_error([&] { bamba::prepare_token_shards(tok, o); }, {"separator \"<|nope|>\""});
  fs::remove_all(dir);
}

// The commands end to end: train a tokenizer on the test corpus, prepare shards with it, inspect them; bad input
// ends in one "error:" line naming the file and line, and exit status 1.
TEST(DataCli, TrainPrepareInspect) {
  std::string dir = bamba::test::make_temp_dir("datacli");
  std::string corpus = std::string(BAMBA_SOURCE_DIR) + "/tests/data/bpe/corpus.txt";
  auto r = bamba::test::run_bamba("tokenizer train " + corpus + " --vocab-size 400 --split llama3 --special-tokens "
                                  "'<|begin_of_text|>,<|end_of_text|>' --bos '<|begin_of_text|>' -q -o " + dir + "/tok.json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  bamba::Tokenizer tok = bamba::Tokenizer::from_file(dir + "/tok.json");
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.bos_id(), 0);
  r = bamba::test::run_bamba("data prepare " + corpus + " --tokenizer " + dir + "/tok.json --out " + dir + "/shards -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("1 documents"), std::string::npos) << r.out;
  bamba::TokenShard s(dir + "/shards/shard-00000.bin");
  std::vector<int32_t> want = tok.encode(bamba::read_text_file(corpus), true);  // BOS + text = separator + text
  ASSERT_EQ(s.n_tokens(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(s.tokens()[i], uint32_t(want[i])) << i;
  r = bamba::test::run_bamba("data inspect " + dir + "/shards/shard-00000.bin");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("1 documents, " + std::to_string(want.size()) + " tokens, vocab size 400, separator 0"),
            std::string::npos)
      << r.out;

  write_file(dir + "/bad.jsonl", "{\"text\": \"ok\"}\n{\"content\": \"no text\"}\n");
  r = bamba::test::run_bamba("data prepare " + dir + "/bad.jsonl --tokenizer " + dir + "/tok.json --out " + dir +
                             "/s2 -q");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: " + dir + "/bad.jsonl line 2: no field \"text\""), std::string::npos) << r.err;
  r = bamba::test::run_bamba("tokenizer train " + dir + "/bad.jsonl --vocab-size 300 -q -o " + dir + "/t2.json");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("bad.jsonl line 2: no field \"text\""), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir + "/t2.json"));
  write_file(dir + "/short.bin", "BAMBATOK");
  r = bamba::test::run_bamba("data inspect " + dir + "/short.bin");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("short.bin: truncated at byte 8"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
