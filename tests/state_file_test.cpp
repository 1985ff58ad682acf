// Saved conversation states (model/state_file.h) on the fixture model bamba-tiny-a and the built-in dummy model:
// a restored state continues exactly as the unbroken run (greedy and seeded sampling), branches forked from one
// saved state each equal their run alone, bad files fail with errors naming the file and what is wrong, and
// `bamba generate --save-state / --load-state` continues a conversation across processes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "engine/drafter.h"
#include "engine/generator.h"
#include "model/state_file.h"
#include "fixture_runner.h"
#include "test_util.h"

namespace bamba {
namespace {

struct Model {
  std::unique_ptr<Backend> be = make_cpu_backend();
  HybridModel model;
  explicit Model(const std::string& name)
      : model(name == "dummy" ? dummy_model(*be) : load_model(test::fixture_model_dir(name), *be)) {}
};

std::vector<int32_t> random_tokens(int32_t n, int32_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (auto& t : p) t = int32_t(rng() % uint32_t(vocab));
  return p;
}

std::vector<int32_t> gen(Generator& g, const std::vector<int32_t>& prompt, int32_t n, SamplingParams sp = {}) {
  std::vector<int32_t> out;
  g.generate(prompt, n, sp, {}, [&](int32_t id) {
    out.push_back(id);
    return true;
  });
  return out;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(b.data(), std::streamsize(b.size()));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

class StateModels : public ::testing::TestWithParam<const char*> {};

TEST_P(StateModels, RestoredEqualsContinuedAndForkedBranchesEqualTheirRunsAlone) {
  Model m(GetParam());
  const int32_t V = int32_t(m.model.config().vocab_size);
  const std::string file = test::make_temp_dir("state") + "/conv.bin";
  const auto p1 = random_tokens(45, V, 1), p2 = random_tokens(20, V, 2), p3 = random_tokens(7, V, 3);
  const SamplingParams sampled{0.9f, 0, 1.f, 42};
  // The unbroken conversation: turn 1, save, turn 2.
  Generator a(m.model, 256, 16);
  a.set_keep_state(true);
  const auto out1 = gen(a, p1, 9);
  a.save_state(file);
  const auto cont = gen(a, p2, 12, sampled);
  // Restored in another generator (another slot and pages): the same turn 2.
  Generator b(m.model, 256, 16);
  b.load_state(file);
  EXPECT_EQ(b.tokens().size(), p1.size() + out1.size());
  EXPECT_EQ(gen(b, p2, 12, sampled), cont);
  // Forked: two branches from the one saved state, each equal to its conversation run alone in one go
  // (the Generator's own prefill of every token so far).
  for (const auto& p : {p2, p3}) {
    Generator branch(m.model, 256, 16);
    branch.load_state(file);
    std::vector<int32_t> whole = p1;
    whole.insert(whole.end(), out1.begin(), out1.end());
    whole.insert(whole.end(), p.begin(), p.end());
    Generator alone(m.model, 256, 64);
    EXPECT_EQ(gen(branch, p, 10), gen(alone, whole, 10)) << "branch of " << p.size() << " tokens";
  }
}

// Under speculative decoding (prompt lookup, which drafts a lot on a repetitive prompt) the kept state is still
// exactly the conversation's: a stop inside a verification step rolls it back to the step's snapshot.
TEST_P(StateModels, KeptUnderSpeculationEqualsPlain) {
  Model m(GetParam());
  const int32_t V = int32_t(m.model.config().vocab_size);
  const std::string file = test::make_temp_dir("state") + "/spec.bin";
  std::vector<int32_t> p1;
  for (int i = 0; i < 6; ++i) {
    auto r = random_tokens(7, V, 9);
    p1.insert(p1.end(), r.begin(), r.end());
  }
  const auto p2 = random_tokens(5, V, 10);
  NgramDrafter drafter(1, 4);
  Generator spec(m.model, 512, 16, {&drafter, 4});
  spec.set_keep_state(true);
  Generator plain(m.model, 512, 16);
  plain.set_keep_state(true);
  // The caller stops after n tokens (as a stop string does) while up to 40 are allowed, so the stop can come in
  // the middle of a verification step.
  auto stop_after = [](Generator& g, const std::vector<int32_t>& prompt, size_t n) {
    std::vector<int32_t> out;
    g.generate(prompt, 40, {}, {}, [&](int32_t id) {
      out.push_back(id);
      return out.size() < n;
    });
    return out;
  };
  for (size_t n : {7, 3, 11, 2, 5}) {
    EXPECT_EQ(stop_after(spec, p1, n), stop_after(plain, p1, n));
    spec.save_state(file);
    Generator restored(m.model, 512, 16);
    restored.load_state(file);
    EXPECT_EQ(gen(restored, p2, 9), gen(spec, p2, 9));
    gen(plain, p2, 9);
  }
  EXPECT_EQ(spec.tokens(), plain.tokens());
}

INSTANTIATE_TEST_SUITE_P(Models, StateModels, ::testing::Values("bamba-tiny-a", "dummy"));
INSTANTIATE_TEST_SUITE_P(Family, StateModels,
                         ::testing::Values("mamba2", "llama3", "granitemoehybrid-moe", "nemotron_h", "falcon_h1", "zamba2"),
                         [](const auto& info) { return test::fixture_param_name(info.param); });

TEST(StateFile, BadFilesFailWithClearErrors) {
  Model tiny("bamba-tiny-a"), dummy("dummy");
  const std::string dir = test::make_temp_dir("state");
  const std::string good = dir + "/good.bin";
  Generator a(tiny.model, 256, 16);
  a.set_keep_state(true);
  gen(a, random_tokens(30, int32_t(tiny.model.config().vocab_size), 4), 3);
  a.save_state(good);
  const std::string bytes = read_bytes(good);
  auto load_into = [&](const Model& m, const std::string& path) {
    return error_of([&] {
      Generator g(m.model, 256, 16);
      g.load_state(path);
    });
  };
  EXPECT_EQ(load_into(tiny, good), "(no error)");
  const std::string missing = dir + "/missing.bin";
  EXPECT_NE(load_into(tiny, missing).find("cannot open the state file " + missing), std::string::npos);
  write_bytes(dir + "/magic.bin", "NOTSTATE" + bytes.substr(8));
  EXPECT_NE(load_into(tiny, dir + "/magic.bin").find("magic.bin: not a bamba state file"), std::string::npos);
  write_bytes(dir + "/cut.bin", bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(load_into(tiny, dir + "/cut.bin").find("cut.bin: the checksum does not match"), std::string::npos)
      << load_into(tiny, dir + "/cut.bin");
  write_bytes(dir + "/short.bin", bytes.substr(0, 20));
  EXPECT_NE(load_into(tiny, dir + "/short.bin").find("short.bin: the state is cut short (in the model type"),
            std::string::npos)
      << load_into(tiny, dir + "/short.bin");
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x10;
  write_bytes(dir + "/flipped.bin", flipped);
  EXPECT_NE(load_into(tiny, dir + "/flipped.bin").find("checksum"), std::string::npos);
  const std::string other = load_into(dummy, good);
  EXPECT_NE(other.find("good.bin: saved from another model: its "), std::string::npos) << other;
  Model mamba("mamba2");
  const std::string kind = load_into(mamba, good);
  EXPECT_NE(kind.find("good.bin: saved from a \"bamba\" model, this one is \"mamba2\""), std::string::npos) << kind;
}

TEST(StateFile, GenerateSavesAndLoadsAConversation) {
  const std::string dir = test::make_temp_dir("state");
  // One process: "Hello" then " world" appended (no BOS in the middle: the same tokens as the second run).
  auto whole = test::run_bamba("generate -q --device cpu --prompt 'Hello' -n 8 --ignore-eos --save-state '" + dir +
                               "/a.bin'");
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  auto more = test::run_bamba("generate -q --device cpu --prompt ' and more' -n 8 --ignore-eos --load-state '" +
                              dir + "/a.bin' --save-state '" + dir + "/b.bin'");
  ASSERT_EQ(more.exit_code, 0) << more.err;
  auto again = test::run_bamba("generate -q --device cpu --prompt ' and more' -n 8 --ignore-eos --load-state '" +
                               dir + "/a.bin'");
  EXPECT_EQ(again.out, more.out);  // the same state, the same continuation
  EXPECT_GT(std::filesystem::file_size(dir + "/b.bin"), std::filesystem::file_size(dir + "/a.bin"));
  auto bad = test::run_bamba("generate -q --device cpu --prompt x --load-state '" + dir + "/none.bin'");
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.err.find("none.bin"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace bamba
