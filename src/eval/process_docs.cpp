// The built-in process_docs of the tasks bamba ships (lm-eval runs Python functions here; a YAML file names one
// of these instead). Each returns the documents with fields added, as datasets.map does.
#include <algorithm>
#include <cctype>
#include <regex>

#include "core/error.h"
#include "eval/math_answer.h"
#include "eval/py_random.h"
#include "eval/python_literal.h"
#include "eval/task.h"

namespace bamba::eval {
namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// Python str.strip() for the ASCII whitespace the datasets contain (Unicode spaces are left alone).
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// hellaswag/utils.py and gpqa/utils.py preprocess: strip, " [title]" -> ". ", drop [..] spans, "  " -> " "
// (one pass of str.replace, not repeated).
std::string preprocess(const std::string& text) {
  static const std::regex brackets("\\[.*?\\]");
  std::string t = replace_all(strip(text), " [title]", ". ");
  t = std::regex_replace(t, brackets, "");
  return replace_all(t, "  ", " ");
}

// Python str.capitalize() on ASCII letters (non-ASCII characters are kept: HellaSwag's contexts are English).
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) s[i] = char(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

std::string field(const json& d, const char* key, const std::string& task, size_t row) {
  BAMBA_CHECK(d.is_object() && d.contains(key), "task ", task, ": document ", row, " has no field '", key, "'");
  const json& v = d[key];
  if (v.is_null()) return "";
  BAMBA_CHECK(v.is_string(), "task ", task, ": document ", row, ": field '", key, "' is not a string");
  return v.get<std::string>();
}

}  // namespace

std::vector<json> process_docs(const std::string& name, std::vector<json> docs, const std::string& task) {
  if (name == "hellaswag") {
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      const std::string ctx = field(d, "ctx_a", task, i) + " " + capitalize(field(d, "ctx_b", task, i));
      d["query"] = preprocess(field(d, "activity_label", task, i) + ": " + ctx);
      json choices = json::array();
      for (const json& e : d.at("endings")) choices.push_back(preprocess(e.get<std::string>()));
      d["choices"] = choices;
      d["gold"] = std::stoll(d.at("label").is_string() ? d["label"].get<std::string>() : d["label"].dump());
    }
  } else if (name == "winogrande") {
    // preprocess_winogrande.py: the text is the gold index (a multiple-input task: each choice is a context),
    // the target the sentence after the blank.
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      const std::string s = field(d, "sentence", task, i), ans = field(d, "answer", task, i);
      const size_t blank = s.find('_');
      BAMBA_CHECK(blank != std::string::npos, "task ", task, ": document ", i, ": the sentence has no '_'");
      BAMBA_CHECK(ans == "1" || ans == "2", "task ", task, ": document ", i, ": answer must be \"1\" or \"2\"");
      d["gold_index"] = ans == "1" ? 0 : 1;
      d["choices"] = json::array({s.substr(0, blank) + field(d, "option1", task, i), s.substr(0, blank) + field(d, "option2", task, i)});
      d["target"] = strip(s.substr(blank + 1));
    }
  } else if (name == "gpqa") {
    // lm-eval shuffles with Python's global random after random.seed(0), in an order that depends on how
    // datasets caches its map: not reproducible. bamba shuffles with random.Random(0), documents in file order.
    PyRandom rnd(0);
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      // gpqa/utils.py preprocess: an empty cell (None) becomes " ", untouched by the rest.
      auto answer = [&](const char* key) {
        const std::string v = field(d, key, task, i);
        return d[key].is_null() ? std::string(" ") : preprocess(v);
      };
      std::vector<std::string> c = {answer("Incorrect Answer 1"), answer("Incorrect Answer 2"),
                                    answer("Incorrect Answer 3"), answer("Correct Answer")};
      const std::vector<size_t> perm = rnd.shuffle(4);
      std::vector<std::string> s(4);
      for (size_t k = 0; k < 4; ++k) s[k] = c[perm[k]];
      const size_t gold = size_t(std::find(s.begin(), s.end(), c[3]) - s.begin());
      for (size_t k = 0; k < 4; ++k) d["choice" + std::to_string(k + 1)] = s[k];
      d["answer"] = "(" + std::string(1, char('A' + gold)) + ")";
    }
  } else if (name == "musr") {
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      const json choices = python_literal(field(d, "choices", task, i), "task " + task + " document " + std::to_string(i) + " choices");
      std::string list;
      for (size_t k = 0; k < choices.size(); ++k) list += std::to_string(k + 1) + " - " + choices[k].get<std::string>() + "\n";
      d["prompt_text"] = field(d, "narrative", task, i) + "\n\n" + field(d, "question", task, i) + "\n\n" + list + "Answer:";
    }
  } else if (name == "mmlu_pro") {
    // leaderboard/mmlu_pro/utils.py doc_to_text and doc_to_choice: the options lettered A, B, ... one per line.
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      BAMBA_CHECK(d.is_object() && d.contains("options") && d["options"].is_array(), "task ", task, ": document ", i,
                  " has no list 'options'");
      const json& options = d["options"];
      BAMBA_CHECK(options.size() <= 26, "task ", task, ": document ", i, " has ", options.size(), " options (at most 26)");
      std::string text = field(d, "question", task, i) + "\n";
      json letters = json::array();
      for (size_t k = 0; k < options.size(); ++k) {
        const std::string letter(1, char('A' + k));
        BAMBA_CHECK(options[k].is_string(), "task ", task, ": document ", i, ": option ", k, " is not a string");
        text += letter + ". " + options[k].get<std::string>() + "\n";
        letters.push_back(letter);
      }
      d["prompt_text"] = text + "Answer:";
      d["choice_letters"] = letters;
    }
  } else if (name == "math_hard") {
    // leaderboard/math/utils.py process_docs with lm-eval's Level 5 filter (#2773): MATH-lighteval holds every
    // level, the leaderboard's MATH-Hard only level 5. `answer` is the normalized boxed answer of the solution.
    std::vector<json> kept;
    for (size_t i = 0; i < docs.size(); ++i) {
      json& d = docs[i];
      if (field(d, "level", task, i) != "Level 5") continue;
      try {
        d["answer"] = math_gold_answer(field(d, "solution", task, i));
      } catch (const Error& e) {
        throw Error("task " + task + ": document " + std::to_string(i) + ": " + e.what());
      }
      kept.push_back(std::move(d));
    }
    docs = std::move(kept);
  } else {
    throw Error("task " + task + ": unknown process_docs '" + name +
                "' (built-ins: hellaswag, winogrande, gpqa, musr, mmlu_pro, math_hard)");
  }
  return docs;
}

}  // namespace bamba::eval
