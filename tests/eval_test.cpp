// bamba eval: the runner (shared contexts and forks give what one full sequence per request gives), the task
// format (requests byte for byte as lm-eval forms them: tests/data/eval/make_expected.py is the Python reference),
// scoring (from full-forward log-softmax sums, computed here independently) and bad task files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "eval/harness.h"
#include "eval/metrics.h"
#include "eval/py_random.h"
#include "eval/python_literal.h"
#include "model/hybrid.h"
#include "test_util.h"

namespace bamba::eval {
namespace {

using json = nlohmann::ordered_json;
const std::string kData = std::string(BAMBA_SOURCE_DIR) + "/tests/data/eval";

struct Loaded {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::unique_ptr<HybridModel> model;
  std::unique_ptr<Tokenizer> tok;
  explicit Loaded(const std::string& name) {
    const std::string dir = test::fixtures_dir() + "/models/" + name;
    model = std::make_unique<HybridModel>(load_model(dir, *be));
    tok = std::make_unique<Tokenizer>(Tokenizer::from_file(dir + "/tokenizer.json"));
  }
  // The reference: the whole of context + continuation as one fresh sequence, log-softmax in double.
  LoglikelihoodResult full_forward(const LoglikelihoodRequest& r) const {
    std::vector<int32_t> ids = r.context;
    ids.insert(ids.end(), r.continuation.begin(), r.continuation.end() - 1);
    const int32_t T = int32_t(ids.size());
    const ModelConfig& c = model->config();
    HybridCache cache(c, *be, HybridCache::sizes_for(c, 1, T));
    Workspace ws(c, *be, T, T);
    SeqCache seq;
    EXPECT_TRUE(cache.reserve(seq, T));
    StepBatch b;
    b.add(ids, 0, seq.slot, seq.blocks, true);
    Tensor logits = model->forward(b, cache, ws);
    std::vector<float> host(size_t(T) * size_t(c.vocab_size));
    be->to_host_f32(logits, host.data());
    LoglikelihoodResult out;
    for (size_t j = 0; j < r.continuation.size(); ++j) {
      const float* row = host.data() + (r.context.size() - 1 + j) * size_t(c.vocab_size);
      double m = row[0], s = 0;
      int32_t arg = 0;
      for (int64_t v = 0; v < c.vocab_size; ++v)
        if (row[v] > m) m = row[v], arg = int32_t(v);
      for (int64_t v = 0; v < c.vocab_size; ++v) s += std::exp(double(row[v]) - m);
      out.logprob += double(row[r.continuation[j]]) - m - std::log(s);
      out.is_greedy = out.is_greedy && arg == r.continuation[j];
    }
    return out;
  }
};

TEST(PyRandom, SampleAndShuffleMatchCPython) {
  // Values printed by CPython 3.11: random.Random(1234).sample(range(100), 5), then .sample(range(100), 6),
  // then .sample(range(10), 4) (the pool strategy); Random(0).shuffle of [0,1,2,3] twice;
  // Random(1234).sample(range(40398), 6) (Winogrande's train split size).
  PyRandom r(1234);
  EXPECT_EQ(r.sample(100, 5), (std::vector<size_t>{99, 56, 14, 0, 11}));
  EXPECT_EQ(r.sample(100, 6), (std::vector<size_t>{74, 4, 85, 88, 10, 12}));
  EXPECT_EQ(r.sample(10, 4), (std::vector<size_t>{5, 3, 0, 7}));
  PyRandom z(0);
  EXPECT_EQ(z.shuffle(4), (std::vector<size_t>{2, 0, 1, 3}));
  EXPECT_EQ(z.shuffle(4), (std::vector<size_t>{0, 1, 3, 2}));
  EXPECT_EQ(PyRandom(1234).sample(40398, 6), (std::vector<size_t>{28883, 7657, 490, 5940, 38156, 2288}));
}

TEST(PythonLiteral, ReadsWhatReprWrites) {
  EXPECT_EQ(python_literal("['a', \"b's\", 'c\\'d', 'e\\n']", "t"), json::parse(R"(["a", "b's", "c'd", "e\n"])"));
  EXPECT_EQ(python_literal("(1, -2.5, True, None, {'k': [1]})", "t"), json::parse(R"([1, -2.5, true, null, {"k": [1]}])"));
  EXPECT_EQ(python_literal("'\\u00e9' 'x'", "t"), json("\xc3\xa9x"));
  EXPECT_THROW(python_literal("[1, 2", "t"), Error);
  EXPECT_THROW(python_literal("foo", "t"), Error);
  EXPECT_THROW(python_literal("[1] 2", "t"), Error);
}

TEST(EvalEncode, MovesTrailingSpaceAndSplitsTheWholeEncoding) {
  Loaded m("bamba-tiny-e2e");
  const LoglikelihoodRequest r = encode_pair(*m.tok, "Answer: ", "yes", false);
  EXPECT_EQ(r.context, m.tok->encode("Answer:", false));
  const std::vector<int32_t> whole = m.tok->encode("Answer: yes", false);
  EXPECT_EQ(r.continuation, std::vector<int32_t>(whole.begin() + int64_t(r.context.size()), whole.end()));
  const LoglikelihoodRequest b = encode_pair(*m.tok, "Answer:", " yes", true);
  EXPECT_EQ(b.context.front(), 128000);  // BOS with --add-bos
  const LoglikelihoodRequest e = encode_pair(*m.tok, "", "Hello world", false);
  EXPECT_EQ(e.context, std::vector<int32_t>{128000});  // empty context: the prefix token
}

// Requests with a long shared prefix, repeated contexts, single- and multi-token continuations: the shared
// runner (with forks and a tiny cache that forces evictions) and the naive one equal full forwards.
TEST(EvalRunner, SharedAndNaiveEqualFullForward) {
  Loaded m("bamba-tiny-e2e");
  std::vector<LoglikelihoodRequest> reqs;
  const std::string prefix = "The following are questions about rivers and birds, with answers.\n\n";
  const char* qs[] = {"Where does the river flow?", "What does the bird sing?", "Is the water cold?", "Why?"};
  const char* conts[] = {" north", " a long song about the sea", " yes", " because the wind blows from the south"};
  for (const char* q : qs)
    for (const char* c : conts) reqs.push_back(encode_pair(*m.tok, prefix + "Question: " + q + "\nAnswer:", c, false));
  reqs.push_back(encode_pair(*m.tok, "x", " y", false));  // a one-token context
  std::vector<LoglikelihoodResult> ref;
  for (const auto& r : reqs) ref.push_back(m.full_forward(r));

  for (int variant : {0, 1, 2}) {
    RunnerOptions o;
    o.max_model_len = 256;
    o.share = variant != 1;
    o.max_seqs = variant == 2 ? 2 : 8;           // 2 slots: finished parents must give their state up
    o.max_tokens_per_step = variant == 2 ? 7 : 64;  // chunks split contexts and continuations
    o.max_logit_rows = variant == 2 ? 3 : 64;
    ModelRunner runner(*m.model, *m.tok, o);
    SCOPED_TRACE("variant " + std::to_string(variant));
    const auto got = runner.loglikelihood(reqs);
    ASSERT_EQ(got.size(), reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_NEAR(got[i].logprob, ref[i].logprob, 1e-4 * (1 + std::abs(ref[i].logprob))) << "variant " << variant << " request " << i;
      EXPECT_EQ(got[i].is_greedy, ref[i].is_greedy) << "variant " << variant << " request " << i;
    }
    if (variant == 0) {
      EXPECT_LT(runner.stats().tokens_fed * 2, runner.stats().tokens_requested);  // sharing pays
    }
    if (variant == 1) {
      EXPECT_EQ(runner.stats().tokens_fed, runner.stats().tokens_requested);
    }
  }
}

// Greedy generation through the runner equals HF's greedy tokens (bamba-tiny-e2e's generate_cases.json) up to
// the first near-tie, alone and batched with the other prompts.
TEST(EvalRunner, GenerateIsHfGreedy) {
  Loaded m("bamba-tiny-e2e");
  std::ifstream f(test::fixtures_dir() + "/models/bamba-tiny-e2e/generate_cases.json");
  const json cases = json::parse(f);
  std::vector<GenerateRequest> reqs;
  std::vector<std::string> expect;
  for (const json& c : cases) {
    const auto& margins = c["greedy_margins"];
    size_t safe = 0;
    while (safe < margins.size() && margins[safe].get<double>() > 1e-2) ++safe;
    if (safe == 0) continue;
    std::vector<int32_t> toks = c["greedy_new_tokens"].get<std::vector<int32_t>>();
    toks.resize(safe);
    reqs.push_back({c["prompt_ids"].get<std::vector<int32_t>>(), {}, int32_t(safe)});
    expect.push_back(m.tok->decode(toks, true));
  }
  ASSERT_FALSE(reqs.empty());
  reqs.push_back(reqs[0]);  // the same prompt twice: one context node, two generating children
  expect.push_back(expect[0]);
  RunnerOptions o;
  o.max_model_len = 128;
  ModelRunner runner(*m.model, *m.tok, o);
  EXPECT_EQ(runner.generate(reqs), expect);
  // A stop string cuts the text before it.
  std::vector<GenerateRequest> one = {reqs[0]};
  const std::string full = expect[0];
  ASSERT_GT(full.size(), 4u);
  one[0].until = {full.substr(3, 2)};
  EXPECT_EQ(runner.generate(one)[0], full.substr(0, full.find(full.substr(3, 2))));
}

json run_eval(Loaded& m, const std::vector<std::string>& tasks, std::optional<size_t> limit = {}) {
  RunnerOptions o;
  o.max_model_len = 512;
  ModelRunner runner(*m.model, *m.tok, o);
  EvalOptions e;
  e.tasks = tasks;
  e.tasks_dir = kData;
  e.data_dir = kData;
  e.limit = limit;
  e.progress = false;
  return evaluate(runner, *m.tok, e);
}

// tiny_mc and tiny_wino: the requests equal make_expected.py's (lm-eval's rules, Python's random and jinja2), and
// acc / acc_norm equal what full-forward log-likelihoods give.
TEST(EvalTask, RequestsAndScoresMatchTheReference) {
  std::ifstream f(kData + "/expected.json");
  const json expected = json::parse(f);
  Loaded m("bamba-tiny-e2e");
  for (const char* name : {"tiny_mc", "tiny_wino"}) {
    auto cfg = std::get<TaskConfig>(load_task_file(kData + "/" + name + ".yaml"));
    Task task(cfg, kData, std::nullopt);
    const auto ctxs = task.build_contexts(100);
    const json& exp = expected[name];
    ASSERT_EQ(ctxs.size(), exp.size()) << name;
    double acc = 0, acc_norm = 0;
    for (size_t i = 0; i < ctxs.size(); ++i) {
      const auto reqs = task.requests(task.eval_docs()[i], ctxs[i]);
      ASSERT_EQ(reqs.size(), exp[i]["requests"].size());
      std::vector<double> lls;
      for (size_t k = 0; k < reqs.size(); ++k) {
        EXPECT_EQ(reqs[k].context, exp[i]["requests"][k][0].get<std::string>()) << name << " doc " << i;
        EXPECT_EQ(reqs[k].continuation, exp[i]["requests"][k][1].get<std::string>()) << name << " doc " << i;
        lls.push_back(m.full_forward(encode_pair(*m.tok, reqs[k].context, reqs[k].continuation, false)).logprob);
      }
      size_t best = 0, best_norm = 0;
      for (size_t k = 1; k < lls.size(); ++k) {
        if (lls[k] > lls[best]) best = k;
        if (exp[i].contains("choice_chars") &&
            lls[k] / exp[i]["choice_chars"][k].get<double>() > lls[best_norm] / exp[i]["choice_chars"][best_norm].get<double>())
          best_norm = k;
      }
      acc += best == exp[i]["gold"].get<size_t>();
      acc_norm += best_norm == exp[i]["gold"].get<size_t>();
    }
    const json res = run_eval(m, {name});
    const json& r = res["results"][name];
    EXPECT_NEAR(r["acc,none"].get<double>(), acc / double(ctxs.size()), 1e-12) << name;
    if (r.contains("acc_norm,none")) {
      EXPECT_NEAR(r["acc_norm,none"].get<double>(), acc_norm / double(ctxs.size()), 1e-12);
    }
    const double p = acc / double(ctxs.size());
    if (ctxs.size() > 1) {  // lm-eval's mean_stderr of 0/1 values: sqrt(p(1-p) n/(n-1) / n)
      EXPECT_NEAR(r["acc_stderr,none"].get<double>(), std::sqrt(p * (1 - p) / double(ctxs.size() - 1)), 1e-12);
    }
  }
}

TEST(EvalTask, GroupIsSizeWeightedAndLimitApplies) {
  Loaded m("bamba-tiny-e2e");
  const json res = run_eval(m, {"tiny_group"});
  const double mc = res["results"]["tiny_mc"]["acc,none"], wino = res["results"]["tiny_wino"]["acc,none"];
  EXPECT_NEAR(res["groups"]["tiny_group"]["acc,none"].get<double>(), (6 * mc + 2 * wino) / 8, 1e-12);
  EXPECT_EQ(res["group_subtasks"]["tiny_group"], json::parse(R"(["tiny_mc", "tiny_wino"])"));
  const json lim = run_eval(m, {"tiny_mc"}, 3);
  EXPECT_EQ(lim["n-samples"]["tiny_mc"]["effective"], 3);
  EXPECT_FALSE(results_table(res).empty());
}

TEST(EvalTask, GenerateUntilFiltersAndExactMatch) {
  Loaded m("bamba-tiny-e2e");
  const json res = run_eval(m, {"tiny_gen"}, 2);
  const json& r = res["results"]["tiny_gen"];
  EXPECT_TRUE(r.contains("exact_match,strict-match"));
  EXPECT_TRUE(r.contains("exact_match,flexible-extract"));
  // The random model never writes "#### <label>": 0, and the filters say why in the sample log.
  EXPECT_EQ(r["exact_match,strict-match"].get<double>(), 0.0);
}

// loglikelihood_rolling: one window when the model length allows (the BOS predicts the first token), and lm-eval's
// disjoint windows otherwise (window k predicts its tokens from the up-to-L tokens before them).
TEST(EvalTask, RollingPerplexityAsLmEval) {
  Loaded m("bamba-tiny-e2e");
  auto cfg = std::get<TaskConfig>(load_task_file(kData + "/tiny_rolling.yaml"));
  Task task(cfg, kData, std::nullopt);
  for (int32_t L : {512, 5}) {
    double ll = 0, words = 0, bytes = 0;
    for (size_t i = 0; i < 3; ++i) {
      const std::string text = task.doc_to_target(task.eval_docs()[i]).get<std::string>();
      const std::vector<int32_t> t = m.tok->encode(text, false);
      for (size_t begin = 0; begin < t.size(); begin += size_t(L)) {  // predict t[begin, end)
        const size_t end = std::min(t.size(), begin + size_t(L));
        LoglikelihoodRequest r;
        if (begin == 0) r.context = {128000};
        else r.context.assign(t.begin() + int64_t(end > size_t(L) + 1 ? end - size_t(L) - 1 : 0), t.begin() + int64_t(begin));
        r.continuation.assign(t.begin() + int64_t(begin), t.begin() + int64_t(end));
        ll += m.full_forward(r).logprob;
      }
      std::istringstream ws(text);
      for (std::string w; ws >> w;) ++words;
      bytes += double(text.size());
    }
    RunnerOptions o;
    o.max_model_len = L;
    ModelRunner runner(*m.model, *m.tok, o);
    EvalOptions e;
    e.tasks = {"tiny_rolling"};
    e.tasks_dir = kData;
    e.data_dir = kData;
    e.limit = 3;
    e.progress = false;
    const json r = evaluate(runner, *m.tok, e)["results"]["tiny_rolling"];
    EXPECT_NEAR(r["word_perplexity,none"].get<double>(), std::exp(-ll / words), 1e-6 * std::exp(-ll / words)) << "L " << L;
    EXPECT_NEAR(r["byte_perplexity,none"].get<double>(), std::exp(-ll / bytes), 1e-6 * std::exp(-ll / bytes)) << "L " << L;
    EXPECT_NEAR(r["bits_per_byte,none"].get<double>(), -ll / bytes / std::log(2.0), 1e-6) << "L " << L;
  }
}

TEST(EvalCli, WritesTableJsonAndSamplesAndFailsClearly) {
  const std::string out = test::make_temp_dir("eval_cli");
  const std::string common = "eval -m " + test::model_dir("bamba-tiny-e2e") + " --device cpu --tasks-dir " + kData +
                             " --data-dir " + kData + " -q";
  test::RunResult r = test::run_bamba(common + " --tasks tiny_group,tiny_gen --limit 2 -o " + out + "/r.json --log-samples " +
                                      out + "/s.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| - tiny_mc|1.0|none|2|acc|"), std::string::npos) << r.out;  // a group member, as lm-eval prints it
  EXPECT_NE(r.out.find("|tiny_group|"), std::string::npos) << r.out;
  std::ifstream jf(out + "/r.json");
  const json res = json::parse(jf);
  EXPECT_TRUE(res["results"].contains("tiny_gen"));
  EXPECT_EQ(res["n-samples"]["tiny_mc"]["effective"], 2);
  EXPECT_TRUE(std::filesystem::exists(out + "/r.md"));
  std::ifstream sf(out + "/s.jsonl");
  size_t lines = 0;
  for (std::string l; std::getline(sf, l);) {
    ++lines;
    EXPECT_TRUE(json::parse(l).contains("doc"));
  }
  EXPECT_EQ(lines, 6u);  // 2 documents of each of the three tasks
  r = test::run_bamba(common + " --tasks tiny_mcc");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: eval: no task or group named 'tiny_mcc'"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("loaded in"), std::string::npos) << "the model was loaded before the task check: " << r.err;
}

TEST(EvalMetrics, FiltersAndExactMatchAsLmEval) {
  auto cfg = std::get<TaskConfig>(load_task_file(kData + "/tiny_gen.yaml"));
  const FilterPipeline& strict = cfg.filters[0];
  const FilterPipeline& flex = cfg.filters[1];
  EXPECT_EQ(apply_filter(strict, "so 3 + 4 = 7\n#### 1,234."), "1,234.");
  EXPECT_EQ(apply_filter(strict, "no answer here"), "[invalid]");
  EXPECT_EQ(apply_filter(flex, "It costs $12 or 15 dollars"), "15");  // the last match, its non-empty group
  EXPECT_EQ(apply_filter(flex, "answer: $1,000."), "$1,000.");
  const MetricSpec& em = cfg.metrics[0];
  EXPECT_TRUE(exact_match("1,234.", "#### 1234", em));  // "," "$" ".$" and "(?s).*#### " ignored on both sides
  EXPECT_TRUE(exact_match("$18", "Janet sells...\n#### 18", em));
  EXPECT_FALSE(exact_match("19", "#### 18", em));
  MetricSpec plain;
  plain.metric = "exact_match";
  plain.ignore_punctuation = true;
  plain.ignore_case = true;
  EXPECT_TRUE(exact_match("Yes!", "yes", plain));
}

TEST(EvalMetrics, AggregatesAndNormalization) {
  const Aggregate a = aggregate("acc", {1, 0, 1, 1});
  EXPECT_DOUBLE_EQ(a.value, 0.75);
  EXPECT_NEAR(a.stderr_, 0.25, 1e-15);  // sample stddev sqrt(0.75 / 3) / sqrt(4)
  EXPECT_NEAR(aggregate("perplexity", {-1, -3}).value, std::exp(2.0), 1e-12);
  EXPECT_NEAR(aggregate_pairs("word_perplexity", {{-4, 2}, {-2, 1}}).value, std::exp(2.0), 1e-12);
  EXPECT_NEAR(aggregate_pairs("bits_per_byte", {{-4, 2}, {-2, 1}}).value, 2 / std::log(2.0), 1e-12);
  // Pooled stderr of two groups equals the stderr of their concatenation (lm-eval's claim) for 0/1 data.
  const Aggregate g = aggregate_group({aggregate("acc", {1, 0, 1}), aggregate("acc", {0, 0, 1, 1})}, true);
  EXPECT_NEAR(g.value, 4.0 / 7, 1e-15);
  EXPECT_GT(g.stderr_, 0);
  // The leaderboard's published examples: a 4-choice task at 0.25 is 0, at 1.0 is 100, 0.4 -> 20.
  EXPECT_DOUBLE_EQ(leaderboard_normalize(0.25, 0.25), 0.0);
  EXPECT_DOUBLE_EQ(leaderboard_normalize(0.2, 0.25), 0.0);
  EXPECT_NEAR(leaderboard_normalize(0.4, 0.25), 20.0, 1e-12);
  EXPECT_DOUBLE_EQ(leaderboard_normalize(1.0, 0.1), 100.0);
}

TEST(EvalTask, BadTaskFilesAreClearErrors) {
  const std::string dir = ::testing::TempDir() + "/bamba_bad_tasks";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(dir + "/" + name) << text;
    return dir + "/" + name;
  };
  auto expect_error = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no error; expected one mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string base = "task: t\ndataset_path: tiny\ndata_files: {test: test.jsonl}\ntest_split: test\n"
                           "doc_to_text: q\nmetric_list: [{metric: acc}]\n";
  expect_error([&] { load_task_file(write("a.yaml", base + "doc_to_txet: x\n")); }, "unknown key 'doc_to_txet'");
  expect_error([&] { load_task_file(write("b.yaml", base + "process_docs: !function utils.process_docs\n")); }, "!function");
  expect_error([&] { load_task_file(write("c.yaml", base + "output_type: ranking\n")); }, "output_type 'ranking'");
  expect_error([&] { load_task_file(write("d.yaml", "task: t\n  bad: [\n")); }, "d.yaml");
  expect_error([&] { load_task_file(dir + "/missing.yaml"); }, "missing.yaml");
  auto cfg = std::get<TaskConfig>(load_task_file(write("e.yaml", base)));
  expect_error([&] { Task(cfg, dir, std::nullopt); }, "no data file matches");
  std::filesystem::create_directories(dir + "/tiny");
  std::ofstream(dir + "/tiny/test.jsonl") << "{\"q\": \"x\"}\n{not json\n";
  expect_error([&] { Task(cfg, dir, std::nullopt); }, "test.jsonl");
  std::ofstream(dir + "/tiny/test.jsonl") << "{\"question\": \"x\"}\n";
  auto cfg2 = std::get<TaskConfig>(load_task_file(write("f.yaml", base + "doc_to_choice: ['a']\ndoc_to_target: 0\n")));
  cfg2.doc_to_text = "{{ nosuchfield }}";
  expect_error([&] { Task(cfg2, dir, std::nullopt).build_contexts(1); }, "nosuchfield");
}

}  // namespace
}  // namespace bamba::eval
