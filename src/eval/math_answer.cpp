#include "eval/math_answer.h"

#include <utility>
#include <vector>

#include "core/error.h"
#include "eval/py_re.h"
#include "eval/py_str.h"
#include "tokenizer/utf8.h"

namespace bamba::eval {

std::optional<std::string> last_boxed_only_string(std::string_view s) {
  if (s.find("\\boxed ") != std::string_view::npos) {
    std::string_view after = py::split(s, "\\boxed ").back();
    return "\\boxed " + std::string(after.substr(0, after.find('$')));
  }
  size_t idx = s.rfind("\\boxed");
  if (idx == std::string_view::npos) idx = s.rfind("\\fbox");
  if (idx == std::string_view::npos) return std::nullopt;
  // Counts every brace from the command on: the box ends where the count first returns to zero at a '}'.
  int open = 0;
  for (size_t i = idx; i < s.size(); ++i) {
    if (s[i] == '{') ++open;
    if (s[i] == '}' && --open == 0) return std::string(s.substr(idx, i + 1 - idx));
  }
  return std::nullopt;
}

std::string remove_boxed(std::string_view s) {
  if (s.find("\\boxed ") != std::string_view::npos)
    return s.substr(0, 7) == "\\boxed " ? std::string(s.substr(7)) : std::string(kMathInvalidAnswer);
  if (s.substr(0, 7) == "\\boxed{" && s.back() == '}') return std::string(s.substr(7, s.size() - 8));
  return std::string(kMathInvalidAnswer);
}

std::string normalize_final_answer(std::string_view answer) {
  static const std::vector<std::pair<std::string_view, std::string_view>> substitutions = {
      {"an ", ""},     {"a ", ""},    {".$", "$"},
      {"\\$", ""},     {"\\ ", ""},   {" ", ""},
      {"mbox", "text"}, {",\\text{and}", ","}, {"\\text{and}", ","},
      {"\\text{m}", "\\text{}"}};
  static const std::vector<std::string_view> removed = {
      "square",  "ways",       "integers",   "dollars",     "mph",      "inches",          "ft",
      "hours",   "km",         "units",      "\\ldots",     "sue",      "points",          "feet",
      "minutes", "digits",     "cents",      "degrees",     "cm",       "gm",              "pounds",
      "meters",  "meals",      "edges",      "students",    "childrentickets", "multiples", "\\text{s}",
      "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",     "\\mathrm{th}",
      "^\\circ", "^{\\circ}",  "\\;",        ",\\!",        "{,}",      "\"",              "\\dots"};
  struct Rewrite {
    PyRegex re;
    std::string_view repl;
  };
  static const std::vector<Rewrite> rewrites = [] {
    std::vector<Rewrite> r;
    auto add = [&](const char* pattern, std::string_view repl) {
      r.push_back({PyRegex(pattern, PyRegex::kNone, "normalize_final_answer"), repl});
    };
    add("(.*?)(\\$)(.*?)(\\$)(.*)", "$\\3$");  // keep only the first $...$ of each line
    add("(\\\\text\\{)(.*?)(\\})", "\\2");
    add("(\\\\textbf\\{)(.*?)(\\})", "\\2");
    add("(\\\\overline\\{)(.*?)(\\})", "\\2");
    add("(\\\\boxed\\{)(.*)(\\})", "\\2");
    add("(frac)([^{])(.)", "frac{\\2}{\\3}");  // \fracab -> \frac{a}{b}
    add("(sqrt)([^{])", "sqrt{\\2}");          // \sqrta -> \sqrt{a}
    return r;
  }();

  std::string s(py::split(answer, "=").back());
  for (const auto& [from, to] : substitutions) s = py::replace_all(s, from, to);
  for (std::string_view expr : removed) s = py::replace_all(s, expr, "");
  for (const auto& w : rewrites) s = w.re.sub(s, w.repl);
  s = py::replace_all(s, "$", "");
  if (py::is_digit(py::replace_all(s, ",", ""))) s = py::replace_all(s, ",", "");
  return s;
}

std::string math_candidate_answer(const std::string& generation) {
  utf8::check_valid(generation, "MATH generation");
  static const PyRegex final_answer("Final Answer: The final answer is(.*?). I hope it is correct.", PyRegex::kNone,
                                    "MATH final-answer pattern");
  // lm-eval appends the closing sentence so that an answer cut off right after it still parses.
  std::string text = generation + "I hope it is correct.";
  auto matches = final_answer.finditer(text);
  if (matches.empty()) return normalize_final_answer(kMathInvalidAnswer);
  return normalize_final_answer(py::strip(matches.front().groups[1]));
}

std::string math_gold_answer(const std::string& solution) {
  utf8::check_valid(solution, "MATH solution");
  auto boxed = last_boxed_only_string(solution);
  if (!boxed) fail("MATH solution has no \\boxed{...} answer (or its braces never close): ", solution.substr(0, 200));
  return normalize_final_answer(remove_boxed(*boxed));
}

bool math_answers_equal(const std::string& candidate, const std::string& gold) {
  if (candidate == kMathInvalidAnswer) return false;
  return py::strip(candidate) == py::strip(gold);
}

}  // namespace bamba::eval
