// bamba train end to end on the CPU: the mixture of token-shard datasets (achieved proportions, resumable state),
// the real model's backward under the trainer (the loss falls; 6 steps straight equal 3 + resume + 3, byte for
// byte), and checkpoints that the inference commands load.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "data/token_shard.h"
#include "io/safetensors.h"
#include "model/hybrid.h"
#include "test_util.h"
#include "train/adamw.h"
#include "train/hybrid_trainable.h"
#include "train/mixture_source.h"
#include "data/doc_permutation.h"

namespace bamba {
namespace {

namespace fs = std::filesystem;

// Two datasets of the byte vocabulary (the tiny preset's 258 tokens; 256 = BOS as separator): "a" repeats a short
// phrase, "b" counts; a few documents each, two shards for "a".
std::string make_data(const std::string& tag) {
  const std::string dir = test::make_temp_dir(tag);
  fs::create_directories(dir + "/a");
  for (int shard = 0; shard < 2; ++shard) {
    TokenShardWriter w(dir + "/a/shard-0000" + std::to_string(shard) + ".bin", 258, 256);
    for (int d = 0; d < 5; ++d) {
      std::vector<int32_t> doc;
      for (char c : std::string("the river flows north; the bird sings. ")) doc.push_back(static_cast<unsigned char>(c));
      w.add_document(doc);
    }
    w.finish();
  }
  TokenShardWriter w(dir + "/b.bin", 258, 256);
  for (int d = 0; d < 7; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 37; ++i) doc.push_back('0' + (i + d) % 10);
    w.add_document(doc);
  }
  w.finish();
  return dir;
}

TEST(MixtureSource, FollowsTheWeightsAndResumes) {
  const std::string dir = make_data("mixture");
  std::vector<DatasetSpec> ds = {{"a", dir + "/a", 3}, {"b", dir + "/b.bin", 1}};
  MixtureSource src(ds, 258);
  for (int step = 0; step < 25; ++step) src.next(4, 16);
  auto drawn = src.drawn();
  EXPECT_EQ(drawn[0].second, 75 * 16);  // 100 rows: the most-behind dataset is drawn next, so exactly 3:1
  EXPECT_EQ(drawn[1].second, 25 * 16);
  const nlohmann::json st = src.state();
  const TokenBatch after = src.next(3, 16);
  MixtureSource again(ds, 258);
  again.restore(st);
  const TokenBatch resumed = again.next(3, 16);
  EXPECT_EQ(resumed.tokens, after.tokens);
  EXPECT_EQ(resumed.labels, resumed.tokens);
  // Wrong state or shards are clear errors.
  nlohmann::json bad = st;
  bad["datasets"][0]["name"] = "c";
  EXPECT_THROW(again.restore(bad), Error);
  bad = st;
  bad["seed"] = 7;  // another document order: not the same stream
  EXPECT_THROW(again.restore(bad), Error);
  EXPECT_THROW(again.restore(nlohmann::json::array()), Error);  // a state of the older, unshuffled loader
  EXPECT_THROW(MixtureSource({{"x", dir + "/nothing", 1}}, 258), Error);
  EXPECT_THROW(MixtureSource(ds, 100), Error);  // the shards' vocabulary exceeds the model's
}

TEST(DocPermutation, IsABijectionThatDependsOnTheSeed) {
  for (uint64_t n : {1ull, 2ull, 3ull, 5ull, 16ull, 17ull, 1000ull, 4097ull})
    for (uint64_t seed : {0ull, 1ull, 0xdeadbeefull}) {
      DocPermutation p(n, seed);
      std::vector<int> seen(n, 0);
      for (uint64_t i = 0; i < n; ++i) {
        const uint64_t j = p(i);
        ASSERT_LT(j, n) << "n " << n << " seed " << seed;
        ++seen[j];
      }
      for (uint64_t j = 0; j < n; ++j) ASSERT_EQ(seen[j], 1) << "n " << n << " seed " << seed << " index " << j;
    }
  // A shuffle, and another one for another seed (1000 documents: the chance of a fixed order is nil).
  DocPermutation a(1000, 1), b(1000, 2);
  int fixed = 0, same = 0;
  for (uint64_t i = 0; i < 1000; ++i) fixed += a(i) == i, same += a(i) == b(i);
  EXPECT_LT(fixed, 20);
  EXPECT_LT(same, 20);
}

// One dataset of `n` documents of distinct lengths 3..(n+2) (separator 256 in front of each), document d's text
// tokens all equal to d: a row tells which documents it holds and where each starts.
std::string make_numbered(const std::string& tag, int n, bool mask = false) {
  const std::string dir = test::make_temp_dir(tag);
  TokenShardWriter w0(dir + "/shard-00000.bin", 258, 256, mask), w1(dir + "/shard-00001.bin", 258, 256, mask);
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> doc(size_t(d % 7 + 2), d);
    std::vector<uint8_t> m(doc.size(), 0);
    for (size_t i = doc.size() / 2; i < doc.size(); ++i) m[i] = 1;  // the second half is "the assistant's"
    (d < n / 2 ? w0 : w1).add_document(doc, mask ? std::span<const uint8_t>(m) : std::span<const uint8_t>());
  }
  w0.finish();
  w1.finish();
  return dir;
}

// The documents in the order a stream visits them: the token after each separator.
std::vector<int> documents_of(const std::vector<int32_t>& tokens) {
  std::vector<int> out;
  for (size_t i = 0; i + 1 < tokens.size(); ++i)
    if (tokens[i] == 256) out.push_back(tokens[i + 1]);
  return out;
}

TEST(MixtureSource, ShufflesEveryEpochWithoutRepeats) {
  const std::string dir = make_numbered("mix-shuffle", 40);
  // 40 documents of 3..9 tokens (with the separator): 237 tokens an epoch; read 3 epochs and a bit.
  MixtureSource src({{"n", dir, 1}}, 258, {.seed = 5});
  std::vector<int32_t> all;
  for (int i = 0; i < 60; ++i) {
    TokenBatch b = src.next(1, 13);
    all.insert(all.end(), b.tokens.begin(), b.tokens.end());
  }
  const std::vector<int> docs = documents_of(all);
  ASSERT_GE(docs.size(), 120u);
  std::vector<std::vector<int>> epochs(3);
  for (int e = 0; e < 3; ++e) {
    epochs[e].assign(docs.begin() + e * 40, docs.begin() + (e + 1) * 40);
    std::vector<int> sorted = epochs[e];
    std::sort(sorted.begin(), sorted.end());
    for (int d = 0; d < 40; ++d) ASSERT_EQ(sorted[size_t(d)], d) << "epoch " << e << " misses or repeats a document";
  }
  EXPECT_NE(epochs[0], epochs[1]);  // a new order every epoch
  std::vector<int> in_order(40);
  for (int d = 0; d < 40; ++d) in_order[size_t(d)] = d;
  EXPECT_NE(epochs[0], in_order);
  // shuffle: false reads the shards in order.
  MixtureSource plain({{"n", dir, 1}}, 258, {.seed = 5, .shuffle = false});
  std::vector<int32_t> first;
  for (int i = 0; i < 20; ++i) {
    TokenBatch b = plain.next(1, 13);
    first.insert(first.end(), b.tokens.begin(), b.tokens.end());
  }
  const std::vector<int> pd = documents_of(first);
  for (size_t i = 0; i < std::min<size_t>(pd.size(), 40); ++i) EXPECT_EQ(pd[i], int(i));
}

TEST(MixtureSource, RanksShareOneGlobalStreamAndResumeAcrossRankCounts) {
  const std::string data = make_data("mix-ranks");
  const std::string dir = make_numbered("mix-ranks-n", 30);
  std::vector<DatasetSpec> ds = {{"a", data + "/a", 3}, {"n", dir, 1}};
  // One rank drawing 4 rows per micro-batch vs two ranks drawing 2 each: rank r holds rows [2r, 2r+2).
  MixtureSource one(ds, 258, {.seed = 3});
  MixtureSource r0(ds, 258, {.seed = 3, .rank = 0, .world = 2}), r1(ds, 258, {.seed = 3, .rank = 1, .world = 2});
  for (int k = 0; k < 12; ++k) {
    const TokenBatch g = one.next(4, 16), a = r0.next(2, 16), b = r1.next(2, 16);
    std::vector<int32_t> both = a.tokens;
    both.insert(both.end(), b.tokens.begin(), b.tokens.end());
    ASSERT_EQ(both, g.tokens) << "micro-batch " << k;
    ASSERT_EQ(r0.state(), one.state());  // the state is global: the same on every rank
    ASSERT_EQ(r1.state(), one.state());
  }
  // Resume the two-rank state on one rank (and the one-rank state on two): the same global stream goes on.
  MixtureSource straight(ds, 258, {.seed = 3});
  for (int k = 0; k < 12; ++k) straight.next(4, 16);
  MixtureSource single(ds, 258, {.seed = 3});
  single.restore(r1.state());
  MixtureSource t0(ds, 258, {.seed = 3, .rank = 0, .world = 2}), t1(ds, 258, {.seed = 3, .rank = 1, .world = 2});
  t0.restore(one.state());
  t1.restore(one.state());
  for (int k = 0; k < 5; ++k) {
    const TokenBatch want = straight.next(4, 16);
    EXPECT_EQ(single.next(4, 16).tokens, want.tokens);
    std::vector<int32_t> both = t0.next(2, 16).tokens;
    const TokenBatch b = t1.next(2, 16);
    both.insert(both.end(), b.tokens.begin(), b.tokens.end());
    EXPECT_EQ(both, want.tokens);
  }
}

TEST(MixtureSource, PerDocumentPackingMarksEachDocumentAndKeepsTheTokens) {
  const std::string dir = make_numbered("mix-pack", 25, /*mask=*/true);
  MixtureSource cont({{"n", dir, 1}}, 258, {.seed = 9});
  MixtureSource per({{"n", dir, 1}}, 258, {.seed = 9, .packing = Packing::PerDocument});
  int masked = 0, scored = 0;
  for (int k = 0; k < 10; ++k) {
    const TokenBatch a = cont.next(2, 16), b = per.next(2, 16);
    EXPECT_TRUE(a.seq_start.empty());
    EXPECT_EQ(a.tokens, b.tokens);  // the same rows; only the boundaries differ
    EXPECT_EQ(a.labels, b.labels);
    const std::vector<int32_t> s = b.sequences();
    // Every separator starts a sequence, every row start is one, and nothing else is.
    std::vector<int32_t> want;
    for (int32_t t = 0; t < 32; ++t)
      if (t % 16 == 0 || b.tokens[size_t(t)] == 256) want.push_back(t);
    want.push_back(32);
    EXPECT_EQ(s, want) << "micro-batch " << k;
    // The label mask: separators and each document's first half are -100, the rest are their tokens.
    for (size_t t = 0; t < 32; ++t) {
      if (b.tokens[t] == 256) {
        EXPECT_EQ(b.labels[t], -100);
      }
      EXPECT_TRUE(b.labels[t] == -100 || b.labels[t] == b.tokens[t]);
      masked += b.labels[t] == -100 && b.tokens[t] != 256, scored += b.labels[t] != -100;
    }
  }
  EXPECT_GT(masked, 40);  // the mask's zeros and ones both reach the labels
  EXPECT_GT(scored, 40);
  // A shard with a mask is version 2; one without stays version 1 (what earlier readers read).
  EXPECT_TRUE(TokenShard(dir + "/shard-00000.bin").has_label_mask());
  EXPECT_FALSE(TokenShard(make_numbered("mix-pack-v1", 4) + "/shard-00000.bin").has_label_mask());
}

TEST(MixtureSource, WholeDocumentsPackingNeverSplitsADocumentThatFitsARow) {
  const std::string dir = make_numbered("mix-whole", 25, /*mask=*/true);
  MixtureSource src({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::WholeDocuments});
  std::vector<int> seen;
  int padded_rows = 0;
  for (int k = 0; k < 12; ++k) {
    const TokenBatch b = src.next(2, 16);
    const std::vector<int32_t> s = b.sequences();
    for (size_t q = 0; q + 1 < s.size(); ++q) {
      const int32_t t0 = s[q], t1 = s[q + 1];
      if (b.tokens[size_t(t0)] == 256 && (t1 - t0 == 1 || b.tokens[size_t(t0 + 1)] == 256)) {
        // padding: separators to the row's end, nothing scored
        EXPECT_EQ(t1 % 16, 0) << "padding ends its row";
        for (int32_t t = t0; t < t1; ++t) EXPECT_EQ(b.labels[size_t(t)], -100);
        ++padded_rows;
        continue;
      }
      // a whole document: its separator, then its d%7 + 2 tokens of value d
      ASSERT_EQ(b.tokens[size_t(t0)], 256) << "micro-batch " << k << " sequence " << q << " is not a whole document";
      const int d = b.tokens[size_t(t0 + 1)];
      EXPECT_EQ(t1 - t0, d % 7 + 3) << "document " << d << " was split";
      seen.push_back(d);
    }
  }
  EXPECT_GT(padded_rows, 0);
  // Every document of the first epoch comes once.
  std::vector<int> first(seen.begin(), seen.begin() + 25);
  std::sort(first.begin(), first.end());
  for (int d = 0; d < 25; ++d) EXPECT_EQ(first[size_t(d)], d);
  // Documents longer than a row (3 to 9 tokens in rows of 4) are split as in per-document packing, with no
  // padding: the rows hold the same tokens as per-document packing's.
  MixtureSource narrow({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::WholeDocuments});
  MixtureSource per({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::PerDocument});
  int differ = 0;
  for (int k = 0; k < 30; ++k) differ += narrow.next(1, 4).tokens != per.next(1, 4).tokens;
  EXPECT_GT(differ, 0);  // documents of 3 or 4 tokens still move to a fresh row rather than split
  // Resumed mid-stream it goes on the same way, and two ranks share the stream as with the other packings.
  MixtureSource a({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::WholeDocuments});
  for (int k = 0; k < 5; ++k) a.next(2, 16);
  MixtureSource b0({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::WholeDocuments, .rank = 0, .world = 2});
  MixtureSource b1({{"n", dir, 1}}, 258, {.seed = 4, .packing = Packing::WholeDocuments, .rank = 1, .world = 2});
  b0.restore(a.state());
  b1.restore(a.state());
  const TokenBatch want = a.next(2, 16), x = b0.next(1, 16), y = b1.next(1, 16);
  std::vector<int32_t> both = x.tokens;
  both.insert(both.end(), y.tokens.begin(), y.tokens.end());
  EXPECT_EQ(both, want.tokens);
}

std::string read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Phases: the deficit rule within each phase, a dataset shared by phases continuing where it was, and a resume
// anywhere (inside a phase, at its boundary, in a micro-batch that straddles it) continuing the same stream.
TEST(MixtureSource, PhasesFollowTheirOwnWeights) {
  const std::string dir = make_data("mix-phases");
  const DatasetSpec a{"a", dir + "/a", 3}, b{"b", dir + "/b.bin", 1};
  MixtureSource src(std::vector<MixturePhase>{{"pretrain", 40 * 16, {a, b}},
                                              {"anneal", 20 * 16, {{"b", dir + "/b.bin", 1}, {"a", dir + "/a", 1}}}},
                    258);
  EXPECT_EQ(src.phase(), "pretrain");
  for (int k = 0; k < 10; ++k) src.next(4, 16);  // exactly the first phase's 40 rows
  EXPECT_EQ(src.phase(), "pretrain");
  for (int k = 0; k < 5; ++k) src.next(4, 16);
  EXPECT_EQ(src.phase(), "anneal");
  const auto per = src.drawn_per_phase();
  ASSERT_EQ(per.size(), 2u);
  EXPECT_EQ(per[0].second, (std::vector<std::pair<std::string, int64_t>>{{"a", 30 * 16}, {"b", 10 * 16}}));  // 3:1
  EXPECT_EQ(per[1].second, (std::vector<std::pair<std::string, int64_t>>{{"b", 10 * 16}, {"a", 10 * 16}}));  // 1:1
  const auto all = src.drawn();  // one stream per dataset over the run
  EXPECT_EQ(all, (std::vector<std::pair<std::string, int64_t>>{{"a", 40 * 16}, {"b", 20 * 16}}));
  const nlohmann::json st = src.state();
  EXPECT_EQ(st["phase"], "anneal");
  EXPECT_EQ(st["phases"][0]["drawn"]["a"], 30 * 16);
  // The last phase goes on with its own mixture when drawn past its length.
  for (int k = 0; k < 5; ++k) src.next(4, 16);
  EXPECT_EQ(src.drawn_per_phase()[1].second[0].second, 20 * 16);
  // A `data:` list keeps the state of the loader without phases.
  MixtureSource plain(std::vector<DatasetSpec>{a, b}, 258);
  plain.next(4, 16);
  EXPECT_FALSE(plain.state().contains("phases"));
  EXPECT_FALSE(plain.state().contains("phase"));
  EXPECT_EQ(plain.phase(), "");
  // One name for two paths is an error.
  EXPECT_THROW(MixtureSource(std::vector<MixturePhase>{{"p", 16, {a}}, {"q", 16, {{"a", dir + "/b.bin", 1}}}}, 258),
               Error);
}

TEST(MixtureSource, ADatasetSharedByPhasesContinuesWhereItWas) {
  const std::string data = make_data("mix-shared");
  const std::string numbered = make_numbered("mix-shared-n", 30);  // tokens 0..29 and the separator 256
  const DatasetSpec n{"n", numbered, 1}, a{"a", data + "/a", 1};
  MixtureSource src(std::vector<MixturePhase>{{"one", 5 * 16, {n}}, {"two", 0, {a, n}}}, 258);
  auto is_numbered = [](std::span<const int32_t> row) {
    return std::all_of(row.begin(), row.end(), [](int32_t t) { return t < 30 || t == 256; });
  };
  std::vector<int32_t> n_stream;  // the rows that came from "n", in order
  int n_rows = 0, a_rows = 0;
  for (int k = 0; k < 8; ++k) {
    const TokenBatch b = src.next(2, 16);
    for (int r = 0; r < 2; ++r) {
      std::span<const int32_t> row(b.tokens.data() + r * 16, 16);
      if (is_numbered(row)) {
        n_stream.insert(n_stream.end(), row.begin(), row.end()), ++n_rows;
      } else {
        ++a_rows;
      }
    }
  }
  EXPECT_EQ(n_rows, 5 + 5);  // phase one's 5 rows, then "two" alternates a, n, a, ... over 11 rows (ties: a)
  EXPECT_EQ(a_rows, 16 - n_rows);
  // "n" alone, from the start: the same tokens, so phase two went on where phase one stopped (no restart, no skip).
  MixtureSource alone(std::vector<DatasetSpec>{n}, 258);
  const TokenBatch ref = alone.next(n_rows, 16);
  EXPECT_EQ(n_stream, ref.tokens);
}

TEST(MixtureSource, ResumesAnywhereAcrossPhaseBoundaries) {
  const std::string data = make_data("mix-phase-resume");
  const std::string numbered = make_numbered("mix-phase-resume-n", 23);
  const std::vector<MixturePhase> phases = {
      {"pretrain", 7 * 16, {{"a", data + "/a", 3}, {"n", numbered, 1}}},  // 7 rows: calls of 3 rows straddle it
      {"mid", 5 * 16, {{"b", data + "/b.bin", 1}}},
      {"anneal", 9 * 16, {{"n", numbered, 2}, {"b", data + "/b.bin", 1}, {"a", data + "/a", 1}}}};
  MixtureSource straight(phases, 258);
  std::vector<nlohmann::json> states;
  std::vector<std::vector<int32_t>> batches;
  for (int k = 0; k < 8; ++k) {
    states.push_back(straight.state());
    batches.push_back(straight.next(3, 16).tokens);
  }
  for (size_t k = 0; k < states.size(); ++k) {
    MixtureSource resumed(phases, 258);
    resumed.restore(states[k]);
    for (size_t j = k; j < batches.size(); ++j)
      ASSERT_EQ(resumed.next(3, 16).tokens, batches[j]) << "resumed before call " << k << ", call " << j;
    EXPECT_EQ(resumed.state(), straight.state());
  }
  // States that do not fit the config are errors naming the phase.
  MixtureSource other(phases, 258);
  nlohmann::json bad = states[4];
  bad["phases"][1]["name"] = "middle";
  EXPECT_THROW(other.restore(bad), Error);
  bad = states[4];
  bad["phase"] = "cooldown";
  EXPECT_THROW(other.restore(bad), Error);
  bad = states[4];
  bad.erase("phases");  // a checkpoint of a run with one data list
  EXPECT_THROW(other.restore(bad), Error);
  MixtureSource plain(std::vector<DatasetSpec>{{"a", data + "/a", 3}, {"n", numbered, 1}, {"b", data + "/b.bin", 1}},
                      258);
  EXPECT_THROW(plain.restore(states[4]), Error);  // and the other way round
}

TEST(TrainEndToEnd, TinyModelLearnsAndResumesExactly) {
  const std::string data = make_data("train_data");
  const std::string out = test::make_temp_dir("train_out");
  fs::remove_all(out);
  const std::string cfg = data + "/run.yml";
  std::ofstream(cfg) << "model: {preset: tiny}\n"
                     << "data:\n  - {name: a, path: " << data << "/a, weight: 3}\n  - {name: b, path: " << data
                     << "/b.bin, weight: 1}\n"
                     << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 128\nsteps: 6\n"
                     << "optimizer: {lr: 0.01}\nschedule: {name: constant, warmup_steps: 1}\n"
                     << "precision: fp32\nsave_every: 3\nkeep_last: 0\noutput: " << out << "\n";
  test::RunResult r = test::run_bamba("train " + cfg + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out + "/checkpoint-3/trainer_state.json"));
  ASSERT_TRUE(fs::exists(out + "/checkpoint-6/config.json"));
  // The loss falls over six steps on this repetitive data.
  std::ifstream log(out + "/metrics.jsonl");
  std::vector<double> losses;
  for (std::string line; std::getline(log, line);) losses.push_back(nlohmann::json::parse(line)["loss"].get<double>());
  ASSERT_EQ(losses.size(), 6u);
  {  // metrics.jsonl logs the achieved mixture: after 6 steps of 4 rows, 18 rows of "a" and 6 of "b" (3:1)
    std::ifstream again(out + "/metrics.jsonl");
    std::string last;
    for (std::string line; std::getline(again, line);) last = line;
    const nlohmann::json data = nlohmann::json::parse(last)["data"]["datasets"];
    ASSERT_EQ(data.size(), 2u) << last;
    EXPECT_EQ(data[0]["drawn"].get<int64_t>(), 18 * 32);
    EXPECT_EQ(data[1]["drawn"].get<int64_t>(), 6 * 32);
  }
  EXPECT_LT(losses.back(), losses.front() - 0.1) << "loss " << losses.front() << " -> " << losses.back();
  const std::string straight = read_bytes(out + "/checkpoint-6/model-00001-of-00001.safetensors");
  ASSERT_FALSE(straight.empty());
  // Resume from step 3: steps 4-6 are redone and give the same bytes.
  r = test::run_bamba("train " + cfg + " -q --resume " + out + "/checkpoint-3");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_bytes(out + "/checkpoint-6/model-00001-of-00001.safetensors"), straight);
  // The checkpoint is a model folder the inference commands load.
  r = test::run_bamba("logits -m " + out + "/checkpoint-6 --ids 256,116,104,101 --out " + out + "/l.safetensors -q");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A config with phases through `bamba train`: metrics.jsonl names each step's phase, and resuming before the
// boundary or inside the second phase gives the straight run's final weights byte for byte.
TEST(TrainEndToEnd, PhasesLogTheirNameAndResumeAcrossTheBoundary) {
  const std::string data = make_data("train_phases");
  const std::string out = test::make_temp_dir("train_phases_out");
  fs::remove_all(out);
  const std::string cfg = data + "/phases.yml";
  std::ofstream(cfg) << "model: {preset: tiny}\n"
                     << "phases:\n"
                     << "  - {name: pretrain, steps: 4, data: [{name: a, path: " << data
                     << "/a, weight: 3}, {name: b, path: " << data << "/b.bin, weight: 1}]}\n"
                     << "  - {name: anneal, tokens: 384, data: [{name: b, path: " << data
                     << "/b.bin, weight: 1}, {name: a, path: " << data << "/a, weight: 1}]}\n"
                     << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 128\n"
                     << "optimizer: {lr: 0.01}\nschedule: {name: constant, warmup_steps: 1}\n"
                     << "precision: fp32\nsave_every: 3\nkeep_last: 0\noutput: " << out << "\n";
  test::RunResult r = test::run_bamba("train " + cfg + " -q");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out + "/checkpoint-7/config.json"));  // 4 steps + 384 tokens = 3 steps of 128
  std::ifstream log(out + "/metrics.jsonl");
  std::vector<std::string> phases;
  nlohmann::json last;
  for (std::string line; std::getline(log, line);) {
    last = nlohmann::json::parse(line);
    phases.push_back(last.value("phase", "?"));
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"pretrain", "pretrain", "pretrain", "pretrain", "anneal", "anneal",
                                              "anneal"}));
  // Each phase's own mixture: 16 rows at 3:1, then 12 rows at 1:1.
  EXPECT_EQ(last["data"]["phases"][0]["drawn"]["a"].get<int64_t>(), 12 * 32) << last.dump();
  EXPECT_EQ(last["data"]["phases"][0]["drawn"]["b"].get<int64_t>(), 4 * 32);
  EXPECT_EQ(last["data"]["phases"][1]["drawn"]["a"].get<int64_t>(), 6 * 32);
  EXPECT_EQ(last["data"]["phases"][1]["drawn"]["b"].get<int64_t>(), 6 * 32);
  const std::string straight = read_bytes(out + "/checkpoint-7/model-00001-of-00001.safetensors");
  ASSERT_FALSE(straight.empty());
  for (const char* from : {"/checkpoint-3", "/checkpoint-6"}) {  // before the boundary; inside the anneal
    r = test::run_bamba("train " + cfg + " -q --resume " + out + from);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_TRUE(read_bytes(out + "/checkpoint-7/model-00001-of-00001.safetensors") == straight)
        << "resumed from " << from << ": other weights";
  }
  // A config whose phases differ from the checkpoint's is refused with the reason.
  std::ofstream(data + "/plain.yml") << "model: {preset: tiny}\ndata: [{name: a, path: " << data
                                     << "/a}, {name: b, path: " << data << "/b.bin}]\n"
                                     << "seq_len: 32\nmicro_batch_size: 2\nbatch_tokens: 128\nsteps: 7\noutput: "
                                     << out << "\n";
  r = test::run_bamba("train " + data + "/plain.yml -q --resume " + out + "/checkpoint-3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("phases"), std::string::npos) << r.err;
}

// The product path — HybridTrainable's gradients, clip_grad_norm and train/adamw's AdamW — against PyTorch's three
// steps in tests/data/train (gen_grad_fixtures.py: torch.optim.AdamW lr 1e-3, betas 0.9/0.95, eps 1e-8, decay 0.1
// on tensors of rank >= 2, clip_grad_norm_ 1.0; HF's mean cross-entropy over the labels != -100).
TEST(TrainEndToEnd, TrainersAdamWStepsEqualPyTorch) {
  for (const std::string name : {"bamba-tiny-a", "bamba-tiny-b"}) {
    const std::string ref_path = std::string(BAMBA_SOURCE_DIR) + "/tests/data/train/" + name + "/train_expected.safetensors";
    if (!fs::exists(ref_path)) GTEST_SKIP() << "training reference " << ref_path << " is missing";
    SafetensorsFile ref(ref_path);
    auto f32 = [&](const std::string& n) {
      const TensorInfo* t = ref.find(n);
      EXPECT_NE(t, nullptr) << n;
      std::vector<float> v(size_t(t->numel()));
      std::memcpy(v.data(), t->data, t->nbytes);
      return v;
    };
    auto i32 = [&](const std::string& n) {
      const TensorInfo* t = ref.find(n);
      std::vector<int32_t> v(size_t(t->numel()));
      std::memcpy(v.data(), t->data, t->nbytes);
      return v;
    };
    std::unique_ptr<Backend> be = make_cpu_backend();
    HybridModel model = load_model(test::model_dir(name), *be);
    HybridTrainable trainable(model, {.z_loss_coefficient = model.config().z_loss_coefficient});
    const std::vector<ParamRef> params = trainable.params();
    AdamW opt(params, AdamWOptions{});  // defaults are the reference's betas, eps and decay
    TokenBatch b;
    b.rows = ref.find("batch.input_ids")->shape[0];
    b.cols = ref.find("batch.input_ids")->shape[1];
    b.tokens = i32("batch.input_ids");
    b.labels = i32("batch.labels");
    for (int step = 0; step <= 3; ++step) {
      for (const ParamRef& p : params) std::fill_n(p.grad, p.size, 0.f);
      const LossResult r = trainable.loss_and_grad(b, LossDivisors{b.labeled(), b.rows * b.cols});
      const double want = f32("step" + std::to_string(step) + ".loss")[0];
      EXPECT_NEAR(r.loss, want, 1e-4 * (1 + std::abs(want))) << name << " loss before step " << step;
      if (step == 3) break;
      clip_grad_norm(params, 1.0);
      opt.step(params, 1e-3);
    }
    for (const ParamRef& p : params) {
      EXPECT_EQ(p.decay, p.shape.size() >= 2) << p.name;  // the reference's rule
      const std::vector<float> w = f32("param." + p.name);
      ASSERT_EQ(w.size(), p.size) << p.name;
      double err = 0, scale = 0;
      for (size_t k = 0; k < p.size; ++k) err = std::max(err, double(std::abs(p.value[k] - w[k]))), scale = std::max(scale, double(std::abs(w[k])));
      EXPECT_LE(err, 1e-4 * (1 + scale)) << name << " " << p.name;
    }
  }
}

}  // namespace
}  // namespace bamba
