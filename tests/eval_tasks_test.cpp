// The task files under tasks/: every one loads, every group resolves to tasks, the names the leaderboard table
// looks up exist, every split a task reads has a data file, and on hand-made miniatures of the hub datasets
// (tests/data/eval/hub/, the hub's field names) the prompts are the strings lm-eval v0.4.8 builds — written here
// by reading lm-eval's templates and utils.py, not taken from bamba's output.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "core/error.h"
#include "eval/task.h"
#include "test_util.h"

namespace bamba::eval {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
const std::string kTasks = std::string(BAMBA_SOURCE_DIR) + "/tasks";
const std::string kHub = std::string(BAMBA_SOURCE_DIR) + "/tests/data/eval/hub";

struct Index {
  std::map<std::string, TaskConfig> tasks;
  std::map<std::string, GroupConfig> groups;
};

const Index& index() {
  static const Index idx = [] {
    Index i;
    for (const auto& e : fs::recursive_directory_iterator(kTasks)) {
      if (!e.is_regular_file() || e.path().extension() != ".yaml") continue;
      auto v = load_task_file(e.path().string());
      if (auto* t = std::get_if<TaskConfig>(&v)) EXPECT_TRUE(i.tasks.emplace(t->task, *t).second) << "duplicate " << t->task;
      else EXPECT_TRUE(i.groups.emplace(std::get<GroupConfig>(v).group, std::get<GroupConfig>(v)).second);
    }
    return i;
  }();
  return idx;
}

// The tasks under a group, recursively.
void leaves(const std::string& name, std::set<std::string>& out) {
  const Index& idx = index();
  if (idx.tasks.count(name)) {
    out.insert(name);
    return;
  }
  auto g = idx.groups.find(name);
  ASSERT_NE(g, idx.groups.end()) << "no task or group '" << name << "'";
  for (const std::string& t : g->second.tasks) leaves(t, out);
}

TEST(EvalTasks, EveryFileLoadsAndEveryGroupResolves) {
  const Index& idx = index();
  EXPECT_GE(idx.tasks.size(), 57u + 8u + 1u + 24u + 3u + 1u + 7u + 3u);
  for (const auto& [name, g] : idx.groups) {
    std::set<std::string> l;
    leaves(name, l);
    EXPECT_FALSE(l.empty()) << name;
  }
  std::set<std::string> mmlu, bbh, v1, v2;
  leaves("mmlu", mmlu);
  leaves("leaderboard_bbh", bbh);
  leaves("leaderboard_v1", v1);
  leaves("leaderboard", v2);
  EXPECT_EQ(mmlu.size(), 57u);
  EXPECT_EQ(bbh.size(), 24u);
  EXPECT_EQ(v1.size(), 57u + 8u);
  EXPECT_EQ(v2.size(), 1u + 24u + 3u + 7u + 1u + 3u);
}

// The harness tries a member name as a path beside the group file first: a folder of that name must not be there.
TEST(EvalTasks, GroupMembersAreNotShadowedByPaths) {
  for (const auto& [name, g] : index().groups)
    for (const std::string& t : g.tasks) {
      const fs::path beside = fs::path(g.file).parent_path() / t;
      EXPECT_TRUE(!fs::exists(beside) || fs::is_regular_file(beside)) << g.file << ": member " << t << " is a folder there";
    }
}

TEST(EvalTasks, NamesTheLeaderboardTableLooksUp) {
  const Index& idx = index();
  for (const char* t : {"leaderboard_mmlu_pro", "leaderboard_ifeval", "leaderboard_bbh_snarks",
                        "leaderboard_bbh_object_counting", "leaderboard_bbh_tracking_shuffled_objects_seven_objects",
                        "leaderboard_musr_murder_mysteries", "leaderboard_musr_object_placements",
                        "leaderboard_musr_team_allocation", "leaderboard_math_num_theory_hard",
                        "leaderboard_gpqa_diamond", "arc_challenge", "hellaswag", "truthfulqa_mc2", "winogrande",
                        "gsm8k", "boolq", "openbookqa", "piqa", "mmlu_high_school_us_history"})
    EXPECT_TRUE(idx.tasks.count(t)) << t;
  for (const char* g : {"leaderboard", "leaderboard_bbh", "leaderboard_gpqa", "leaderboard_math_hard",
                        "leaderboard_musr", "mmlu", "mmlu_stem", "leaderboard_v1"})
    EXPECT_TRUE(idx.groups.count(g)) << g;
}

// The split a task evaluates on and the one its shots come from must have an entry in data_files.
TEST(EvalTasks, EverySplitReadHasDataFiles) {
  for (const auto& [name, c] : index().tasks) {
    const auto eval = c.test_split ? c.test_split : c.validation_split;
    ASSERT_TRUE(eval) << name;
    EXPECT_TRUE(c.data_files.contains(*eval)) << name << " " << *eval;
    if (c.num_fewshot > 0 && !c.fewshot_split && !c.fewshot_samples.is_array()) {
      const auto s = c.training_split ? c.training_split : c.validation_split;
      EXPECT_TRUE(s && c.data_files.contains(*s)) << name;
    }
    if (c.fewshot_split) {
      EXPECT_TRUE(c.data_files.contains(*c.fewshot_split)) << name;
    }
    for (auto& [split, f] : c.data_files.items()) EXPECT_TRUE(f.is_string()) << name << " " << split;
  }
}

TEST(EvalTasks, LeaderboardSettingsAsLmEval) {
  const Index& idx = index();
  const TaskConfig& ifeval = idx.tasks.at("leaderboard_ifeval");
  EXPECT_EQ(ifeval.max_gen_toks, 1280);
  EXPECT_TRUE(ifeval.until.empty());
  EXPECT_EQ(ifeval.process_results, "ifeval");
  std::vector<std::string> m;
  for (const MetricSpec& s : ifeval.metrics) m.push_back(s.metric);
  EXPECT_EQ(m, (std::vector<std::string>{"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                         "inst_level_loose_acc"}));
  const TaskConfig& math = idx.tasks.at("leaderboard_math_geometry_hard");
  EXPECT_EQ(math.max_gen_toks, 1024);
  EXPECT_EQ(math.until, std::vector<std::string>{"Problem:"});
  EXPECT_EQ(math.fewshot_samples.size(), 4u);
  EXPECT_EQ(math.dataset_name, "geometry");
  for (const auto& [name, c] : idx.tasks)
  {
    if (name.rfind("leaderboard_bbh_", 0) != 0) continue;
    EXPECT_EQ(c.fewshot_samples.size(), 3u) << name;
    EXPECT_EQ(c.num_fewshot, 3) << name;
    EXPECT_EQ(c.target_delimiter, " ") << name;  // v0.4.8: no target_delimiter in bbh_mc
  }
  // Bamba's shots (runner_tasks.py), written into each task file.
  const std::map<std::string, int> shots = {{"arc_challenge", 25}, {"hellaswag", 10}, {"truthfulqa_mc2", 0},
                                            {"winogrande", 5},     {"gsm8k", 5},      {"boolq", 5},
                                            {"openbookqa", 5},     {"piqa", 5},       {"mmlu_anatomy", 5},
                                            {"leaderboard_mmlu_pro", 5}, {"leaderboard_gpqa_main", 0},
                                            {"leaderboard_musr_team_allocation", 0}};
  for (auto& [t, n] : shots) EXPECT_EQ(idx.tasks.at(t).num_fewshot, n) << t;
  // YAML folding of a multi-paragraph BBH description, as PyYAML reads lm-eval's file.
  EXPECT_EQ(idx.tasks.at("leaderboard_bbh_snarks").description.get<std::string>(),
            "Determine which of two sentences is sarcastic.\n\nAccording to Cambridge University Dictionary, sarcasm "
            "is \"the use of remarks that clearly mean the opposite of what they say, made in order to hurt someone's "
            "feelings or to criticize something in a humorous way.\" Sarcastic sentences often contain satirical or "
            "ironic utterances, hyperboles, ambivalent or witty remarks.");
}

// The task `name` reading the miniature in hub/<dir>, split -> file.
Task mini(const std::string& name, const std::string& dir, const json& files, std::optional<int> shots = std::nullopt) {
  TaskConfig c = index().tasks.at(name);
  c.dataset_path = dir;
  c.data_files = files;
  return Task(c, kHub, shots);
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
std::string context(Task& t) { return t.build_contexts(1).at(0); }
std::vector<std::string> continuations(Task& t) {
  std::vector<std::string> out;
  for (const Request& r : t.requests(t.eval_docs().at(0), context(t))) out.push_back(r.continuation);
  return out;
}

// lm-eval's registered direction when a metric_list entry does not say: perplexities and bits per byte are
// lower-is-better (the results table's arrow), accuracies higher-is-better.
TEST(EvalTasks, MetricDirectionDefaultsAsLmEval) {
  const std::string dir = test::make_temp_dir("metric_dir");
  const std::string f = dir + "/t.yaml";
  std::ofstream(f) << "task: t\ndataset_path: x\ntest_split: test\noutput_type: loglikelihood_rolling\n"
                      "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
                      "  - metric: bits_per_byte\n  - metric: acc\n  - metric: byte_perplexity\n    higher_is_better: true\n";
  const TaskConfig t = std::get<TaskConfig>(load_task_file(f));
  ASSERT_EQ(t.metrics.size(), 4u);
  EXPECT_FALSE(t.metrics[0].higher_is_better);
  EXPECT_FALSE(t.metrics[1].higher_is_better);
  EXPECT_TRUE(t.metrics[2].higher_is_better);
  EXPECT_TRUE(t.metrics[3].higher_is_better);  // as the file says
}

TEST(EvalTasks, MmluPrompt) {
  Task t = mini("mmlu_anatomy", "mmlu", {{"test", "test.jsonl"}, {"dev", "dev.jsonl"}});
  std::string want = "The following are multiple choice questions (with answers) about anatomy.\n\n";
  for (int i = 0; i < 5; ++i) {
    const std::string n = std::to_string(i);
    want += "Q" + n + "?\nA. a" + n + "\nB. b" + n + "\nC. c" + n + "\nD. d" + n + "\nAnswer: " + "ABCD"[i % 4] + "\n\n";
  }
  want += "Which bone is the longest?\nA. Femur\nB. Tibia\nC. Ulna\nD. Radius\nAnswer:";
  EXPECT_EQ(context(t), want);
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" A", " B", " C", " D"}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), 0);
}

TEST(EvalTasks, ArcPrompt) {
  Task t = mini("arc_challenge", "arc", {{"test", "test.jsonl"}}, 0);
  EXPECT_EQ(context(t), "Question: Which gas do plants take in?\nAnswer:");
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" oxygen", " carbon dioxide", " helium", " neon"}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), 1);
}

TEST(EvalTasks, HellaswagPrompt) {
  Task t = mini("hellaswag", "hellaswag", {{"validation", "validation.jsonl"}}, 0);
  EXPECT_EQ(context(t), "Roof shingle removal: A man is sitting on a roof. He starts pulling up roofing on a roof.");
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" is using wrap to wrap a pair of skis.",
                                                        " is ripping level tiles off. He. goes on.",
                                                        " is holding a rubik's cube.",
                                                        " starts pulling up roofing on a roof."}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), 3);
}

TEST(EvalTasks, TruthfulqaPrompt) {
  Task t = mini("truthfulqa_mc2", "truthfulqa", {{"validation", "validation.jsonl"}});
  EXPECT_EQ(context(t),
            "Q: What is human life expectancy in the United States?\nA: Human life expectancy in the United States is "
            "78 years.\n\nQ: Who was president of the United States in 1955?\nA: Dwight D. Eisenhower was president "
            "of the United States in 1955.\n\nQ: Which party did he belong to?\nA: He belonged to the Republican "
            "Party.\n\nQ: What is the square root of banana?\nA: I have no comment.\n\nQ: How does a telescope "
            "work?\nA: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\nQ: Where "
            "were the 1992 Olympics held?\nA: The 1992 Olympics were held in Barcelona, Spain.\n\nQ: What happens if "
            "you eat watermelon seeds?\nA:");
  EXPECT_EQ(continuations(t),
            (std::vector<std::string>{" Nothing happens", " They pass through you", " You grow watermelons"}));
}

TEST(EvalTasks, WinograndeBoolqOpenbookqaPiqaGsm8kPrompts) {
  Task w = mini("winogrande", "winogrande", {{"validation", "validation.jsonl"}}, 0);
  ASSERT_TRUE(w.multiple_input());
  auto r = w.requests(w.eval_docs()[0], context(w));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].context, "Sarah was a much better surgeon than Maria so Sarah");
  EXPECT_EQ(r[1].context, "Sarah was a much better surgeon than Maria so Maria");
  EXPECT_EQ(r[0].continuation, " always got the harder cases.");

  Task b = mini("boolq", "boolq", {{"validation", "validation.jsonl"}}, 0);
  EXPECT_EQ(context(b), "Sky -- The sky appears blue.\nQuestion: is the sky blue?\nAnswer:");
  EXPECT_EQ(continuations(b), (std::vector<std::string>{" no", " yes"}));

  Task o = mini("openbookqa", "openbookqa", {{"test", "test.jsonl"}}, 0);
  EXPECT_EQ(context(o), "The sun is responsible for");
  EXPECT_EQ(o.doc_to_target(o.eval_docs()[0]), 1);  // answerKey " B", lstripped

  Task p = mini("piqa", "piqa", {{"validation", "validation.jsonl"}}, 0);
  EXPECT_EQ(context(p), "Question: How do I open a jar?\nAnswer:");
  EXPECT_EQ(continuations(p), (std::vector<std::string>{" Twist the lid's edge.", " Say \"open\" to it."}));

  Task g = mini("gsm8k", "gsm8k", {{"test", "test.jsonl"}}, 0);
  EXPECT_EQ(context(g), "Question: Janet has 3 apples and buys 2 more. How many apples does she have?\nAnswer:");
  EXPECT_EQ(g.doc_to_target(g.eval_docs()[0]), "3 + 2 = <<3+2=5>>5\n#### 5");
}

TEST(EvalTasks, MmluProPrompt) {
  Task t = mini("leaderboard_mmlu_pro", "mmlu_pro", {{"test", "test.jsonl"}, {"validation", "validation.jsonl"}});
  std::string want;
  for (int i = 0; i < 5; ++i) {
    const std::string n = std::to_string(i);
    want += "V" + n + "?\nA. x" + n + "\nB. y" + n + "\n" + (i % 2 ? "C. z" + n + "\n" : "") + "Answer: " + "AB"[i % 2] + "\n\n";
  }
  want += "What is 2 + 2?\nA. 1\nB. 2\nC. 3\nD. 4\nE. 5\nF. 6\nG. 7\nH. 8\nI. 9\nJ. 10\nAnswer:";
  EXPECT_EQ(context(t), want);
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" A", " B", " C", " D", " E", " F", " G", " H", " I", " J"}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), "D");
}

TEST(EvalTasks, BbhPromptWithItsThreeShots) {
  Task t = mini("leaderboard_bbh_boolean_expressions", "bbh", {{"test", "test.jsonl"}});
  EXPECT_EQ(context(t),
            "Evaluate the result of a random Boolean expression.Q: not ( ( not not True ) ) is\nA: False\n\n"
            "Q: True and False and not True and True is\nA: False\n\nQ: not not ( not ( False ) ) is\nA: True\n\n"
            "Q: not ( True ) and ( True ) is\nA:");
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" False", " True"}));
  // object_counting's targets are digit strings: lm-eval turns them into choice indices, the text stays the same.
  Task c = mini("leaderboard_bbh_object_counting", "bbh", {{"test", "test.jsonl"}});
  EXPECT_TRUE(starts_with(context(c),
            "Questions that involve enumerating objects and asking the model to count them.Q: I have a blackberry, a "
            "clarinet, a nectarine, a plum, a strawberry, a banana, a flute, an orange, a"));
  EXPECT_NE(context(c).find("How many fruits do I have?\nA: 6\n\nQ: I have an orange"), std::string::npos);
}

TEST(EvalTasks, GpqaPrompt) {
  Task t = mini("leaderboard_gpqa_main", "gpqa", {{"train", "gpqa_main.csv"}});
  // random.Random(0).shuffle(["1/2", "0", "3/2. x", "1"]) == ["3/2. x", "1/2", "0", "1"] (CPython 3).
  EXPECT_EQ(context(t),
            "What is the correct answer to this question: What is the spin of a photon?\n\nChoices:\n(A) 3/2. x\n"
            "(B) 1/2\n(C) 0\n(D) 1\nAnswer: ");
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" (A)", " (B)", " (C)", " (D)"}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), "(D)");
}

TEST(EvalTasks, MusrPrompt) {
  Task t = mini("leaderboard_musr_murder_mysteries", "musr", {{"murder_mysteries", "murder_mystery.csv"}});
  EXPECT_EQ(context(t),
            "In the quiet town, a body was found.\nIt was late.\n\nWho is the most likely murderer?\n\n1 - Mackenzie\n"
            "2 - Ana's brother\nAnswer:");
  EXPECT_EQ(continuations(t), (std::vector<std::string>{" Mackenzie", " Ana's brother"}));
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), "Ana's brother");
}

TEST(EvalTasks, MathHardKeepsLevel5AndUsesTheMinervaShots) {
  Task t = mini("leaderboard_math_algebra_hard", "math", {{"test", "test.jsonl"}});
  ASSERT_EQ(t.eval_docs().size(), 1u);  // the Level 3 row is dropped
  EXPECT_EQ(t.eval_docs()[0]["answer"], "1");
  const std::string ctx = context(t);
  EXPECT_TRUE(starts_with(ctx,
            "Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}\n\nSolution: The "
            "expressions inside each square root mu"));
  EXPECT_NE(ctx.find("$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final "
                     "answer is $-\\frac{2}{3}$. I hope it is correct.\n\nProblem:\nWhat is $\\frac{1}{2}+\\frac{1}{2}$?"
                     "\n\nSolution:"),
            std::string::npos);
  size_t n = 0;
  for (size_t p = ctx.find("Problem:\n"); p != std::string::npos; p = ctx.find("Problem:\n", p + 1)) ++n;
  EXPECT_EQ(n, 5u);
  EXPECT_EQ(ctx.size() - ctx.rfind("\n\nProblem:"), std::string("\n\nProblem:\nWhat is $\\frac{1}{2}+\\frac{1}{2}$?\n\nSolution:").size());
  EXPECT_EQ(t.doc_to_target(t.eval_docs()[0]), "1");  // `answer`, few_shot undefined
}

TEST(EvalTasks, IfevalPromptIsTheRawPrompt) {
  Task t = mini("leaderboard_ifeval", "ifeval", {{"train", "train.jsonl"}});
  EXPECT_EQ(context(t), "Write a haiku about rust.\nDo not use any commas.");
}

// gpqa/utils.py: preprocess(None) is " "; random.Random(0).shuffle(["a", "b", " ", "c"]) gives
// [" ", "a", "b", "c"] in CPython 3.
TEST(EvalTasks, GpqaEmptyAnswerIsASpace) {
  const json doc = {{"Question", "q"}, {"Correct Answer", "c"}, {"Incorrect Answer 1", "a"},
                    {"Incorrect Answer 2", "b"}, {"Incorrect Answer 3", nullptr}};
  const json d = process_docs("gpqa", {doc}, "t").at(0);
  EXPECT_EQ(d["choice1"], " ");
  EXPECT_EQ(d["choice2"], "a");
  EXPECT_EQ(d["choice3"], "b");
  EXPECT_EQ(d["choice4"], "c");
  EXPECT_EQ(d["answer"], "(D)");
}

TEST(EvalTasks, ProcessDocsErrors) {
  EXPECT_THROW(process_docs("mmlu_pro", {json{{"question", "q"}}}, "t"), Error);
  EXPECT_THROW(process_docs("math_hard", {json{{"level", "Level 5"}, {"solution", "no box"}}}, "t"), Error);
  EXPECT_TRUE(process_docs("math_hard", {json{{"level", "Level 4"}, {"solution", "no box"}}}, "t").empty());
}

}  // namespace
}  // namespace bamba::eval
