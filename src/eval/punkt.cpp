#include "eval/punkt.h"

#include <string_view>
#include <unordered_set>

#include "eval/py_re.h"
#include "eval/py_str.h"

namespace bamba::eval {
namespace {

// Abbreviations that do not end a sentence by themselves (lower case, without the final period). Punkt learns its
// list from a corpus; these are the common English ones.
const std::unordered_set<std::string_view>& abbreviations() {
  static const std::unordered_set<std::string_view> set = {
      "mr",   "mrs",  "ms",   "dr",   "prof", "sr",   "jr",    "st",   "vs",   "etc",  "e.g",  "i.e",  "cf",
      "a.m",  "p.m",  "u.s",  "u.k",  "u.n",  "inc",  "ltd",   "co",   "corp", "jan",  "feb",  "mar",  "apr",
      "jun",  "jul",  "aug",  "sep",  "sept", "oct",  "nov",   "dec",  "no",   "nos",  "vol",  "fig",  "approx",
      "dept", "est",  "gen",  "gov",  "col",  "lt",   "sgt",   "capt", "adm",  "rep",  "sen",  "rev",  "mt",
      "ft",   "ave",  "blvd", "rd",   "ph.d", "b.a",  "m.a",   "b.s",  "m.s",  "d.c",  "l.a",  "n.y",  "mass",
      "calif", "fla", "wash", "pp",   "ed",   "eds",  "assn",  "bros", "messrs", "mme", "mlle", "op",  "ca"};
  return set;
}

// Words Punkt has seen in lower case inside sentences, so that their capitalized form after an abbreviation, an
// initial or an ellipsis signals a new sentence (its "orthographic heuristic" and sentence-starter list).
const std::unordered_set<std::string_view>& common_words() {
  static const std::unordered_set<std::string_view> set = {
      "the",     "a",       "an",      "this",    "that",   "these",   "those",  "it",     "its",    "he",
      "she",     "we",      "they",    "you",     "there",  "then",    "but",    "and",    "or",     "so",
      "if",      "in",      "on",      "at",      "for",    "with",    "as",     "after",  "before", "however",
      "when",    "while",   "what",    "which",   "who",    "how",     "why",    "where",  "my",     "our",
      "your",    "his",     "her",     "their",   "some",   "many",    "most",   "all",    "each",   "every",
      "not",     "one",     "two",     "also",    "both",   "because", "although", "since", "today", "now",
      "here",    "yes",     "let",     "please",  "first",  "finally", "next",   "overall", "instead", "meanwhile",
      "moreover", "furthermore", "thus", "therefore", "still", "yet",  "even",   "once",   "by",     "from",
      "to",      "of",      "about",   "during",  "other",   "another", "such",  "no",     "do",
      "does",    "did",     "is",      "are",     "was",    "were",    "be",     "have",   "has",    "had",
      "can",     "could",   "will",    "would",   "should", "may",     "might",  "must",   "more",
      "much",    "into",    "over",   "under",   "between", "without", "within", "again"};
  return set;
}

bool is_sentence_end(char c) { return c == '.' || c == '?' || c == '!'; }
// Punkt's NonWord characters: after one of these a '.', '?' or '!' may end a sentence without whitespace.
bool is_non_word(char c) { return std::string_view("?!)\";}]*:@'({[").find(c) != std::string_view::npos; }

bool starts_upper(std::string_view w) {
  if (w.empty()) return false;
  size_t i = 0;
  std::string first;
  py::append_utf8(first, py::next_code_point(w, i));
  return py::is_upper(first);
}

bool starts_lower(std::string_view w) {
  if (w.empty()) return false;
  size_t i = 0;
  std::string first;
  py::append_utf8(first, py::next_code_point(w, i));
  return py::is_lower(first);
}

// The next token as a word type: lower case, without trailing punctuation.
std::string word_type(std::string_view next) {
  return py::lower(py::rstrip_chars(next, ".,;:!?)]}\"'"));
}

bool is_number(std::string_view w) {  // Punkt's ##number## type: -?[.,]?\d[\d,.-]*\.?
  static const PyRegex re("\\A-?[.,]?[0-9][0-9,.\\-]*\\.?\\z", PyRegex::kNone, "punkt number");
  return re.search(w);
}

bool is_initial(std::string_view w) {  // one letter and a period
  static const PyRegex re("\\A[^\\W\\d]\\.\\z", PyRegex::kNone, "punkt initial");
  return re.search(w);
}

// Whether the candidate ending `prefix` (a chunk up to and including its sentence-ending character) followed by
// `next` (the next chunk, or the non-word character right after) ends a sentence.
bool ends_sentence(std::string_view prefix, std::string_view next) {
  char last = prefix.back();
  if (last == '?' || last == '!') return true;
  // Punkt decides on the candidate and the next token together and breaks if any but the last of their words is
  // a break: a '?' or '!' inside the next token ("Great... really?! Yes") makes the candidate a break too.
  size_t inner = next.find_first_of("?!");
  if (inner != std::string_view::npos && inner + 1 < next.size()) return true;
  bool capital_common = starts_upper(next) && common_words().count(word_type(next)) > 0;
  if (prefix.size() >= 2 && prefix[prefix.size() - 2] == '.') return capital_common;  // an ellipsis
  // Punkt's words cannot start with these characters, so "(Dr." is the word "Dr." after "(".
  std::string_view word = py::lstrip_chars(prefix, "(\"`{[:;&#*@)}]-,'");
  if (word.empty()) return true;
  std::string base = py::lower(word.substr(0, word.size() - 1));
  size_t dash = base.rfind('-');
  if (abbreviations().count(base) || (dash != std::string::npos && abbreviations().count(base.substr(dash + 1))))
    return capital_common;
  if (is_initial(word)) return capital_common;
  if (is_number(word)) return !starts_lower(next);
  return true;
}

}  // namespace

size_t count_sentences(std::string_view text) {
  // Whitespace-separated chunks, as byte ranges.
  std::vector<std::string_view> chunks = py::split_whitespace(text);
  std::vector<size_t> breaks;  // byte offsets just after a sentence-ending character
  for (size_t k = 0; k < chunks.size(); ++k) {
    std::string_view c = chunks[k];
    // The last position in the chunk where an end character is followed by a non-word character or, at the end of
    // the chunk, by another chunk (Punkt's \S*[.?!] is greedy).
    for (size_t q = c.size(); q-- > 0;) {
      if (!is_sentence_end(c[q])) continue;
      bool at_end = q + 1 == c.size();
      if (at_end && k + 1 == chunks.size()) break;  // the end of the text: no break needed
      if (!at_end && !is_non_word(c[q + 1])) continue;
      std::string_view next = at_end ? chunks[k + 1] : c.substr(q + 1, 1);
      if (ends_sentence(c.substr(0, q + 1), next)) breaks.push_back(size_t(c.data() - text.data()) + q + 1);
      break;
    }
  }
  // Count the pieces; closing quotes and brackets right after a break belong to the sentence before.
  size_t count = 0, from = 0;
  breaks.push_back(text.size());
  for (size_t end : breaks) {
    std::string_view piece = py::strip(text.substr(from, end - from));
    if (!py::strip_chars(piece, "\"')]}").empty()) {
      // realignment moves only a leading run of closers that is followed by whitespace or the end
      ++count;
    }
    from = end;
  }
  return count;
}

std::vector<std::string> word_tokenize(std::string_view text) {
  struct Rule {
    PyRegex re;
    const char* repl;
  };
  static const std::vector<Rule> rules = [] {
    std::vector<Rule> r;
    auto add = [&](const char* pattern, const char* repl, int flags = PyRegex::kNone) {
      r.push_back({PyRegex(pattern, flags, "word_tokenize rule"), repl});
    };
    add("([«“‘„»”’]|`+|\")", " \\1 ");                // quotes, straight and curly, anywhere
    add("([:,])(?=\\D|$)", " \\1 ");                    // comma and colon, except inside numbers (1,000 10:30)
    add("\\.\\.\\.", " ... ");
    add("[;@#$%&?!]", " \\g<0> ");
    add("[\\]\\[(){}<>]", " \\g<0> ");
    add("--", " -- ");
    add("([^.])(\\.)([\\])}>\"']*)\\s*$", "\\1 \\2\\3 ");  // the final period
    add("([^' ])('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T)(?=\\s|$)", "\\1 \\2");  // clitics
    add("([^' ])'(?=\\s|$)", "\\1 ' ");
    add("\\b(can)(not)\\b", "\\1 \\2", PyRegex::kIgnoreCase);
    add("\\b(gon|wan)(na)\\b", "\\1 \\2", PyRegex::kIgnoreCase);
    add("\\b(got)(ta)\\b", "\\1 \\2", PyRegex::kIgnoreCase);
    add("\\b(gim|lem)(me)\\b", "\\1 \\2", PyRegex::kIgnoreCase);
    add("(?<=\\s|^)('t)(is|was)\\b", "\\1 \\2", PyRegex::kIgnoreCase);
    return r;
  }();
  std::string s(text);
  for (const auto& rule : rules) s = rule.re.sub(s, rule.repl);
  std::vector<std::string> out;
  for (std::string_view w : py::split_whitespace(s)) out.emplace_back(w);
  return out;
}

}  // namespace bamba::eval
