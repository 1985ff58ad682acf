#include "eval/ifeval.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/hash_uniform.h"
#include "eval/langdetect.h"
#include "eval/punkt.h"
#include "eval/py_random.h"
#include "eval/py_re.h"
#include "eval/py_str.h"
#include "io/python_json.h"
#include "tokenizer/utf8.h"

namespace bamba::eval {
namespace {

using Json = nlohmann::ordered_json;
using Check = std::function<bool(std::string_view)>;

// lm-eval's instructions_util.LANGUAGE_CODES: the languages response_language accepts.
const std::vector<std::string_view> kLanguageCodes = {"en", "es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it",
                                                      "bn", "uk", "th", "ur", "ta", "te", "bg", "ko", "pl", "he",
                                                      "fa", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi"};

bool truthy(const Json& v) {
  if (v.is_null()) return false;
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0.0;
  if (v.is_string()) return !v.get_ref<const std::string&>().empty();
  if (v.is_array() || v.is_object()) return !v.empty();
  return true;
}

enum class Relation { kLessThan, kAtLeast };

bool compare(size_t actual, Relation r, int64_t threshold) {
  return r == Relation::kLessThan ? int64_t(actual) < threshold : int64_t(actual) >= threshold;
}

// The arguments of one instruction after lm-eval's falsy filter, with the draws that stand in for lm-eval's
// random defaults.
class Args {
 public:
  Args(const Json& kwargs, std::string where, std::set<std::string> allowed, uint64_t seed)
      : where_(std::move(where)), rng_(seed) {
    if (!kwargs.is_null() && !kwargs.is_object()) fail(where_, ": kwargs must be an object, got ", kwargs.dump());
    if (kwargs.is_object())
      for (const auto& [k, v] : kwargs.items()) {
        if (!truthy(v)) continue;
        if (!allowed.count(k)) fail(where_, ": unexpected argument '", k, "' (lm-eval's build_description rejects it)");
        values_.emplace(k, v);
      }
  }

  const std::string& where() const { return where_; }
  bool has(const std::string& k) const { return values_.count(k) > 0; }

  std::optional<int64_t> integer(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end()) return std::nullopt;
    const Json& v = it->second;
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == double(int64_t(v.get<double>()))) return int64_t(v.get<double>());
    fail(where_, ": argument '", k, "' must be an integer, got ", v.dump());
  }

  std::optional<std::string> string(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end()) return std::nullopt;
    if (!it->second.is_string()) fail(where_, ": argument '", k, "' must be a string, got ", it->second.dump());
    std::string s = it->second.get<std::string>();
    utf8::check_valid(s, cat(where_, ": argument '", k, "'"));
    return s;
  }

  std::vector<std::string> strings(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end())
      fail(where_, ": argument '", k, "' is missing or empty (lm-eval would pick random words from its word list)");
    if (!it->second.is_array()) fail(where_, ": argument '", k, "' must be a list of strings, got ", it->second.dump());
    std::vector<std::string> out;
    for (const Json& v : it->second) {
      if (!v.is_string()) fail(where_, ": argument '", k, "' must be a list of strings, got ", it->second.dump());
      out.push_back(v.get<std::string>());
      utf8::check_valid(out.back(), cat(where_, ": argument '", k, "'"));
    }
    return out;
  }

  std::string required_word(const std::string& k) const {
    auto s = string(k);
    if (!s) fail(where_, ": argument '", k, "' is missing or empty (lm-eval would pick a random word from its word list)");
    return *s;
  }

  // lm-eval: `if x is None or x < 0: x = random.randint(lo, hi)`.
  int64_t count(const std::string& k, int64_t lo, int64_t hi) {
    auto v = integer(k);
    if (v && *v >= 0) return *v;
    return randint(lo, hi);
  }

  // lm-eval: a missing relation is drawn; one outside ("less than", "at least") raises.
  Relation relation(const std::string& k) {
    auto s = string(k);
    if (!s) return rng_.below(2) == 0 ? Relation::kLessThan : Relation::kAtLeast;
    if (*s == "less than") return Relation::kLessThan;
    if (*s == "at least") return Relation::kAtLeast;
    fail(where_, ": argument '", k, "' is '", *s, "', expected 'less than' or 'at least'");
  }

  int64_t randint(int64_t lo, int64_t hi) { return lo + int64_t(rng_.below(uint32_t(hi - lo + 1))); }
  template <typename T>
  const T& choice(const std::vector<T>& options) {
    return options[rng_.below(uint32_t(options.size()))];
  }

 private:
  std::string where_;
  std::map<std::string, Json> values_;
  PyRandom rng_;
};

std::string_view remove_prefix(std::string_view s, std::string_view p) {
  return s.substr(0, p.size()) == p ? s.substr(p.size()) : s;
}
std::string_view remove_suffix(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p ? s.substr(0, s.size() - p.size()) : s;
}
bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool ends_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && s.substr(s.size() - p.size()) == p;
}

// langdetect raising (no usable n-gram) counts as a pass in lm-eval.
bool language_is(std::string_view text, std::string_view lang) {
  auto detected = default_lang_detector().detect(text);
  return !detected || *detected == lang;
}

Check make_check(const std::string& id, Args& a) {
  const std::string& where = a.where();
  if (id == "keywords:existence") {
    std::vector<PyRegex> res;
    for (const auto& k : a.strings("keywords")) res.emplace_back(k, PyRegex::kIgnoreCase, cat(where, ": keyword"));
    auto shared = std::make_shared<std::vector<PyRegex>>(std::move(res));
    return [shared](std::string_view r) {
      return std::all_of(shared->begin(), shared->end(), [&](const PyRegex& re) { return re.search(r); });
    };
  }
  if (id == "keywords:frequency") {
    auto re = std::make_shared<PyRegex>(py::strip(a.required_word("keyword")), PyRegex::kIgnoreCase,
                                        cat(where, ": keyword"));
    int64_t n = a.count("frequency", 1, 3);
    Relation rel = a.relation("relation");
    return [re, n, rel](std::string_view r) { return compare(re->finditer(r).size(), rel, n); };
  }
  if (id == "keywords:forbidden_words") {
    std::vector<std::string> words = a.strings("forbidden_words");
    auto res = std::make_shared<std::vector<PyRegex>>();
    for (const auto& w : words) res->emplace_back("\\b" + w + "\\b", PyRegex::kIgnoreCase, cat(where, ": forbidden word"));
    return [res](std::string_view r) {
      return std::none_of(res->begin(), res->end(), [&](const PyRegex& re) { return re.search(r); });
    };
  }
  if (id == "keywords:letter_frequency") {
    static const std::vector<char> letters = [] {
      std::vector<char> v;
      for (char c = 'a'; c <= 'z'; ++c) v.push_back(c);
      for (char c = 'A'; c <= 'Z'; ++c) v.push_back(c);
      return v;
    }();
    // lm-eval keeps the letter only if it is one character whose lower case is a-z; otherwise it draws one.
    auto given = a.string("letter");
    std::string letter;
    if (given && py::code_point_count(*given) == 1) {
      std::string low = py::lower(*given);
      if (low.size() == 1 && low[0] >= 'a' && low[0] <= 'z') letter = low;
    }
    if (letter.empty()) letter = std::string(1, char(std::tolower(a.choice(letters))));
    int64_t n = a.count("let_frequency", 1, 10);
    Relation rel = a.relation("let_relation");
    char c = letter[0];
    return [c, n, rel](std::string_view r) {
      std::string low = py::lower(r);
      return compare(size_t(std::count(low.begin(), low.end(), c)), rel, n);
    };
  }
  if (id == "language:response_language") {
    auto lang = a.string("language");
    std::string code = lang ? *lang : std::string(a.choice(kLanguageCodes));
    if (std::find(kLanguageCodes.begin(), kLanguageCodes.end(), code) == kLanguageCodes.end())
      fail(where, ": language '", code, "' is not one of lm-eval's 30 LANGUAGE_CODES");
    return [code](std::string_view r) { return language_is(r, code); };
  }
  if (id == "length_constraints:number_sentences") {
    int64_t n = a.count("num_sentences", 1, 20);
    Relation rel = a.relation("relation");
    return [n, rel](std::string_view r) { return compare(count_sentences(r), rel, n); };
  }
  if (id == "length_constraints:number_paragraphs") {
    int64_t n = a.count("num_paragraphs", 1, 5);
    return [n](std::string_view r) {
      static const PyRegex divider("\\s?\\*\\*\\*\\s?", PyRegex::kNone, "number_paragraphs divider");
      std::vector<std::string> parts = divider.split(r);
      int64_t count = int64_t(parts.size());
      for (size_t i = 0; i < parts.size(); ++i) {
        if (!py::strip(parts[i]).empty()) continue;
        if (i == 0 || i + 1 == parts.size()) --count;
        else return false;  // an empty paragraph between two dividers
      }
      return count == n;
    };
  }
  if (id == "length_constraints:number_words") {
    int64_t n = a.count("num_words", 100, 500);
    Relation rel = a.relation("relation");
    return [n, rel](std::string_view r) {
      static const PyRegex word("\\w+", PyRegex::kNone, "number_words");
      return compare(word.finditer(r).size(), rel, n);
    };
  }
  if (id == "length_constraints:nth_paragraph_first_word") {
    int64_t n = a.count("num_paragraphs", 1, 5);
    auto nth_given = a.integer("nth_paragraph");
    int64_t nth = nth_given && *nth_given > 0 && *nth_given <= n ? *nth_given : a.randint(1, n + 1);
    std::string first_word = py::lower(a.required_word("first_word"));
    return [n, nth, first_word](std::string_view r) {
      std::vector<std::string_view> paras = py::split(r, "\n\n");
      int64_t count = int64_t(paras.size());
      for (auto p : paras)
        if (py::strip(p).empty()) --count;
      if (nth > count) return false;
      std::string_view para = py::strip(paras[size_t(nth - 1)]);
      if (para.empty()) return false;
      std::string_view word = py::strip(py::split_whitespace(para)[0]);
      word = py::lstrip_chars(py::lstrip_chars(word, "'"), "\"");
      size_t cut = word.find_first_of(".,?!'\"");
      std::string got = py::lower(word.substr(0, cut));
      return count == n && got == first_word;
    };
  }
  if (id == "detectable_content:number_placeholders") {
    int64_t n = a.count("num_placeholders", 1, 4);
    return [n](std::string_view r) {
      static const PyRegex placeholder("\\[.*?\\]", PyRegex::kNone, "number_placeholders");
      return int64_t(placeholder.finditer(r).size()) >= n;
    };
  }
  if (id == "detectable_content:postscript") {
    auto given = a.string("postscript_marker");
    std::string marker = given ? std::string(py::strip(*given)) : a.choice(std::vector<std::string>{"P.S.", "P.P.S"});
    std::string pattern = marker == "P.P.S"  ? "\\s*p\\.\\s?p\\.\\s?s.*$"
                          : marker == "P.S." ? "\\s*p\\.\\s?s\\..*$"
                                             : "\\s*" + py::lower(marker) + ".*$";  // the marker is a regex there
    auto re = std::make_shared<PyRegex>(pattern, PyRegex::kMultiline, cat(where, ": postscript marker"));
    return [re](std::string_view r) { return re->search(py::lower(r)); };
  }
  if (id == "detectable_format:number_bullet_lists") {
    int64_t n = a.count("num_bullets", 1, 5);
    return [n](std::string_view r) {
      static const PyRegex star("^\\s*\\*[^\\*].*$", PyRegex::kMultiline, "number_bullet_lists");
      static const PyRegex dash("^\\s*-.*$", PyRegex::kMultiline, "number_bullet_lists");
      return int64_t(star.finditer(r).size() + dash.finditer(r).size()) == n;
    };
  }
  if (id == "detectable_format:constrained_response") {
    return [](std::string_view r) {
      std::string_view s = py::strip(r);
      for (std::string_view option : {"My answer is yes.", "My answer is no.", "My answer is maybe."})
        if (s.find(option) != std::string_view::npos) return true;
      return false;
    };
  }
  if (id == "detectable_format:number_highlighted_sections") {
    int64_t n = a.count("num_highlights", 1, 4);
    return [n](std::string_view r) {
      static const PyRegex single("\\*[^\\n\\*]*\\*", PyRegex::kNone, "number_highlighted_sections");
      static const PyRegex twice("\\*\\*[^\\n\\*]*\\*\\*", PyRegex::kNone, "number_highlighted_sections");
      int64_t count = 0;
      for (const auto& m : single.finditer(r)) count += !py::strip(py::strip_chars(m.groups[0], "*")).empty();
      for (const auto& m : twice.finditer(r))
        count += !py::strip(remove_suffix(remove_prefix(m.groups[0], "**"), "**")).empty();
      return count >= n;
    };
  }
  if (id == "detectable_format:multiple_sections") {
    auto given = a.string("section_spliter");
    std::string splitter =
        given ? std::string(py::strip(*given)) : a.choice(std::vector<std::string>{"Section", "SECTION"});
    int64_t n = a.count("num_sections", 1, 5);
    // The splitter is used as a regex, unescaped, as lm-eval does.
    auto re = std::make_shared<PyRegex>("\\s?" + splitter + "\\s?\\d+\\s?", PyRegex::kNone,
                                        cat(where, ": section splitter"));
    return [re, n](std::string_view r) { return int64_t(re->split(r).size()) - 1 >= n; };
  }
  if (id == "detectable_format:json_format") {
    return [](std::string_view r) {
      std::string_view s = py::strip(r);
      s = remove_prefix(s, "```json");
      s = remove_prefix(s, "```Json");
      s = remove_prefix(s, "```JSON");
      s = remove_prefix(s, "```");
      s = py::strip(remove_suffix(s, "```"));
      // Python's json.loads: any JSON value, and also the bare NaN / Infinity literals.
      return !parse_python_json(std::string(s)).is_discarded();
    };
  }
  if (id == "detectable_format:title") {
    return [](std::string_view r) {
      static const PyRegex title("<<[^\\n]+>>", PyRegex::kNone, "title");
      for (const auto& m : title.finditer(r))
        if (!py::strip(py::rstrip_chars(py::lstrip_chars(m.groups[0], "<"), ">")).empty()) return true;
      return false;
    };
  }
  if (id == "combination:two_responses") {
    return [](std::string_view r) {
      std::vector<std::string_view> parts = py::split(r, "******");
      std::vector<std::string_view> valid;
      for (size_t i = 0; i < parts.size(); ++i) {
        if (py::strip(parts[i]).empty()) {
          if (i != 0 && i + 1 != parts.size()) return false;
        } else {
          valid.push_back(parts[i]);
        }
      }
      return valid.size() == 2 && py::strip(valid[0]) != py::strip(valid[1]);
    };
  }
  if (id == "combination:repeat_prompt") {
    auto given = a.string("prompt_to_repeat");
    if (!given) fail(where, ": argument 'prompt_to_repeat' is missing or empty (lm-eval raises ValueError)");
    std::string want = py::lower(py::strip(*given));
    return [want](std::string_view r) { return starts_with(py::lower(py::strip(r)), want); };
  }
  if (id == "startend:end_checker") {
    auto given = a.string("end_phrase");
    std::string phrase = given ? *given
                               : a.choice(std::vector<std::string>{"Any other questions?",
                                                                   "Is there anything else I can help with?"});
    std::string want = py::lower(py::strip(phrase));
    return [want](std::string_view r) { return ends_with(py::lower(py::strip_chars(py::strip(r), "\"")), want); };
  }
  if (id == "startend:quotation") {
    return [](std::string_view r) {
      std::string_view s = py::strip(r);
      return py::code_point_count(s) > 1 && s.front() == '"' && s.back() == '"';
    };
  }
  if (id == "change_case:capital_word_frequency") {
    // lm-eval draws only when the frequency is None (no check for < 0 here).
    auto given = a.integer("capital_frequency");
    int64_t n = given ? *given : a.randint(1, 20);
    Relation rel = a.relation("capital_relation");
    return [n, rel](std::string_view r) {
      size_t capital = 0;
      for (const auto& w : word_tokenize(r)) capital += py::is_upper(w);
      return compare(capital, rel, n);
    };
  }
  if (id == "change_case:english_capital")
    return [](std::string_view r) { return py::is_upper(r) && language_is(r, "en"); };
  if (id == "change_case:english_lowercase")
    return [](std::string_view r) { return py::is_lower(r) && language_is(r, "en"); };
  if (id == "punctuation:no_comma")
    return [](std::string_view r) { return r.find(',') == std::string_view::npos; };
  fail(where, ": unknown instruction id");
}

// The argument names each instruction's build_description takes.
const std::map<std::string, std::set<std::string>>& instruction_args() {
  static const std::map<std::string, std::set<std::string>> m = {
      {"keywords:existence", {"keywords"}},
      {"keywords:frequency", {"keyword", "frequency", "relation"}},
      {"keywords:forbidden_words", {"forbidden_words"}},
      {"keywords:letter_frequency", {"letter", "let_frequency", "let_relation"}},
      {"language:response_language", {"language"}},
      {"length_constraints:number_sentences", {"num_sentences", "relation"}},
      {"length_constraints:number_paragraphs", {"num_paragraphs"}},
      {"length_constraints:number_words", {"num_words", "relation"}},
      {"length_constraints:nth_paragraph_first_word", {"num_paragraphs", "nth_paragraph", "first_word"}},
      {"detectable_content:number_placeholders", {"num_placeholders"}},
      {"detectable_content:postscript", {"postscript_marker"}},
      {"detectable_format:number_bullet_lists", {"num_bullets"}},
      {"detectable_format:constrained_response", {}},
      {"detectable_format:number_highlighted_sections", {"num_highlights"}},
      {"detectable_format:multiple_sections", {"section_spliter", "num_sections"}},
      {"detectable_format:json_format", {}},
      {"detectable_format:title", {}},
      {"combination:two_responses", {}},
      {"combination:repeat_prompt", {"prompt_to_repeat"}},
      {"startend:end_checker", {"end_phrase"}},
      {"startend:quotation", {}},
      {"change_case:capital_word_frequency", {"capital_frequency", "capital_relation"}},
      {"change_case:english_capital", {}},
      {"change_case:english_lowercase", {}},
      {"punctuation:no_comma", {}},
  };
  return m;
}

// The 8 texts loose mode tries, in lm-eval's order.
std::vector<std::string> loose_variants(const std::string& response) {
  std::vector<std::string_view> lines = py::split(response, "\n");
  auto join = [&](size_t from, size_t to) {  // "\n".join(lines[from:to]).strip()
    std::string s;
    for (size_t i = from; i < to && i < lines.size(); ++i) {
      if (i > from) s += '\n';
      s.append(lines[i]);
    }
    return std::string(py::strip(s));
  };
  size_t n = lines.size();
  std::string remove_first = join(1, n), remove_last = join(0, n - 1), remove_both = join(1, n - 1);
  auto no_stars = [](const std::string& s) { return py::replace_all(s, "*", ""); };
  return {response,     no_stars(response),     remove_first,           remove_last,
          remove_both,  no_stars(remove_first), no_stars(remove_last),  no_stars(remove_both)};
}

}  // namespace

const std::vector<std::string>& ifeval_instruction_ids() {
  static const std::vector<std::string> ids = [] {
    std::vector<std::string> v;
    for (const auto& [id, args] : instruction_args()) v.push_back(id);
    return v;
  }();
  return ids;
}

IfevalOutcome ifeval_score(const nlohmann::ordered_json& doc, const std::string& response) {
  if (!doc.is_object()) fail("IFEval row: expected a JSON object, got ", doc.dump());
  std::string row = doc.contains("key") ? doc["key"].dump() : std::string("(no key)");
  std::string where = cat("IFEval row ", row);
  if (!doc.contains("prompt") || !doc["prompt"].is_string()) fail(where, ": field 'prompt' must be a string");
  if (!doc.contains("instruction_id_list") || !doc["instruction_id_list"].is_array())
    fail(where, ": field 'instruction_id_list' must be a list");
  if (!doc.contains("kwargs") || !doc["kwargs"].is_array()) fail(where, ": field 'kwargs' must be a list");
  const Json& ids = doc["instruction_id_list"];
  const Json& kwargs = doc["kwargs"];
  if (kwargs.size() != ids.size())
    fail(where, ": 'kwargs' has ", kwargs.size(), " entries for ", ids.size(), " instructions");
  const std::string& prompt = doc["prompt"].get_ref<const std::string&>();
  utf8::check_valid(prompt, cat(where, ": prompt"));
  utf8::check_valid(response, cat(where, ": response"));

  uint64_t key_seed = 0xcbf29ce484222325ull;  // FNV-1a of the key as JSON: stable across builds
  for (unsigned char c : row) key_seed = (key_seed ^ c) * 0x100000001b3ull;
  std::vector<std::string> variants = loose_variants(response);
  IfevalOutcome out;
  out.prompt_strict = out.prompt_loose = true;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].is_string()) fail(where, ": instruction_id_list[", i, "] must be a string");
    const std::string& id = ids[i].get_ref<const std::string&>();
    std::string inst_where = cat(where, ": instruction ", i, " (", id, ")");
    auto allowed = instruction_args().find(id);
    if (allowed == instruction_args().end()) fail(where, ": unknown instruction id '", id, "'");
    Args args(kwargs[i], inst_where, allowed->second, splitmix64(key_seed ^ splitmix64(i)));
    Check check = make_check(id, args);
    bool strict = !py::strip(response).empty() && check(response);
    bool loose = false;
    for (const auto& v : variants)
      if (!py::strip(v).empty() && check(v)) {
        loose = true;
        break;
      }
    out.inst_strict.push_back(strict);
    out.inst_loose.push_back(loose);
    out.prompt_strict = out.prompt_strict && strict;
    out.prompt_loose = out.prompt_loose && loose;
  }
  return out;
}

}  // namespace bamba::eval
