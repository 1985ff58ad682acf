// IFEval scoring tests. The table of crafted cases was scored by lm-eval's own checker code (the
// lm_eval/tasks/ifeval instructions.py and leaderboard utils.py strict/loose functions, run with Python 3.11,
// langdetect 1.0.9 with DetectorFactory.seed = 0, and NLTK 3.8's Treebank word tokenizer); each row holds that
// verdict. The other tests work the driver rules, langdetect and the Punkt approximation by hand or against the
// Python langdetect's exact probabilities.
#include "eval/ifeval.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "eval/langdetect.h"
#include "eval/punkt.h"
#include "eval/py_random.h"
#include "eval/py_re.h"
#include "eval/py_str.h"

using bamba::eval::ifeval_score;
using bamba::eval::IfevalOutcome;
using Json = nlohmann::ordered_json;

namespace {

// Every kwargs key the dataset has; the HF dataset gives each instruction all of them, null where unused.
const char* kAllKeys[] = {"keywords",       "keyword",          "frequency",     "relation",     "forbidden_words",
                          "letter",         "let_frequency",    "let_relation",  "language",     "num_sentences",
                          "num_paragraphs", "num_words",        "nth_paragraph", "first_word",   "num_placeholders",
                          "postscript_marker", "num_bullets",   "num_highlights", "section_spliter", "num_sections",
                          "prompt_to_repeat", "end_phrase",     "capital_frequency", "capital_relation"};

Json full_kwargs(const Json& used) {
  Json kw = Json::object();
  for (const char* k : kAllKeys) kw[k] = used.contains(k) ? used[k] : Json(nullptr);
  return kw;
}

Json row(const std::vector<std::pair<std::string, Json>>& instructions, int key = 1, std::string prompt = "p") {
  Json doc = {{"key", key}, {"prompt", prompt}, {"instruction_id_list", Json::array()}, {"kwargs", Json::array()}};
  for (const auto& [id, kw] : instructions) {
    doc["instruction_id_list"].push_back(id);
    doc["kwargs"].push_back(full_kwargs(kw));
  }
  return doc;
}

IfevalOutcome one(const std::string& id, const Json& kw, const std::string& response) {
  return ifeval_score(row({{id, kw}}), response);
}

struct Case {
  const char* id;
  const char* kwargs;
  const char* response;
  bool strict, loose;
};

// (instruction, kwargs, response) -> lm-eval's strict and loose verdicts.
const Case kCases[] = {
    {"keywords:existence", "{\"keywords\": [\"correlated\", \"experiencing\"]}", "We are Experiencing correlated events.", true, true},
    {"keywords:existence", "{\"keywords\": [\"correlated\", \"experiencing\"]}", "We are experiencing events.", false, false},
    {"keywords:existence", "{\"keywords\": [\"mom\", \"mother\"]}", "My mother is great.", false, false},
    {"keywords:existence", "{\"keywords\": [\"mom\", \"mother\"]}", "MOMents with my Mother", true, true},
    {"keywords:existence", "{\"keywords\": [\"café\"]}", "Un CAFÉ por favor", true, true},
    {"keywords:frequency", "{\"keyword\": \"war\", \"frequency\": 3, \"relation\": \"at least\"}", "war, War, WAR and the warden", true, true},
    {"keywords:frequency", "{\"keyword\": \"war\", \"frequency\": 5, \"relation\": \"at least\"}", "war, War, WAR and the warden", false, false},
    {"keywords:frequency", "{\"keyword\": \" story \", \"frequency\": 2, \"relation\": \"less than\"}", "one story here", true, true},
    {"keywords:frequency", "{\"keyword\": \"story\", \"frequency\": 2, \"relation\": \"less than\"}", "story story", false, false},
    {"keywords:forbidden_words", "{\"forbidden_words\": [\"rock\", \"field\"]}", "Rocky roads in the fields", true, true},
    {"keywords:forbidden_words", "{\"forbidden_words\": [\"rock\", \"field\"]}", "Let's ROCK tonight", false, false},
    {"keywords:forbidden_words", "{\"forbidden_words\": [\"nourriture\"]}", "La nourriture-saine", false, false},
    {"keywords:letter_frequency", "{\"letter\": \"t\", \"let_frequency\": 2, \"let_relation\": \"less than\"}", "A quiz about a chesterfield", false, false},
    {"keywords:letter_frequency", "{\"letter\": \"t\", \"let_frequency\": 2, \"let_relation\": \"less than\"}", "Test", false, false},
    {"keywords:letter_frequency", "{\"letter\": \"o\", \"let_frequency\": 6, \"let_relation\": \"at least\"}", "OoOo oO", true, true},
    {"keywords:letter_frequency", "{\"letter\": \"o\", \"let_frequency\": 6, \"let_relation\": \"at least\"}", "Oooo o", false, false},
    {"keywords:letter_frequency", "{\"letter\": \"k\", \"let_frequency\": 2, \"let_relation\": \"at least\"}", "K k", true, true},
    {"language:response_language", "{\"language\": \"kn\"}", "ಹ್ಯಾಂಬರ್ಗರ್‌ಗಳು ಸ್ಯಾಂಡ್‌ವಿಚ್‌ಗಳಲ್ಲ ಎಂದು ಅನೇಕ ಜನರು ಭಾವಿಸುತ್ತಾರೆ, ಏಕೆಂದರೆ ಅವುಗಳು ವಿಭಿನ್ನವಾಗಿವೆ.", true, true},
    {"language:response_language", "{\"language\": \"kn\"}", "Hamburgers are sandwiches according to many people.", false, false},
    {"language:response_language", "{\"language\": \"fr\"}", "Il est important de manger des aliments sains pour guérir le corps et rester en bonne santé.", true, true},
    {"language:response_language", "{\"language\": \"de\"}", "12345 !!! ???", true, true},
    {"length_constraints:number_sentences", "{\"relation\": \"less than\", \"num_sentences\": 3}", "One. Two.", true, true},
    {"length_constraints:number_sentences", "{\"relation\": \"less than\", \"num_sentences\": 3}", "One. Two! Three?", false, false},
    {"length_constraints:number_sentences", "{\"relation\": \"at least\", \"num_sentences\": 2}", "Is it? Yes it is", true, true},
    {"length_constraints:number_sentences", "{\"relation\": \"at least\", \"num_sentences\": 2}", "A line\nanother line\nno periods", false, false},
    {"length_constraints:number_sentences", "{\"relation\": \"less than\", \"num_sentences\": 4}", "Wow!!! Great... really?! Yes.", false, false},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 3}", "First para.\n***\nSecond para.\n***\nThird para.", true, true},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 3}", "***\nFirst.\n***\nSecond.\n***\nThird.\n***", true, true},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 3}", "First.\n***\n\n***\nThird.", false, false},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 2}", "First.\n* * *\nSecond.", false, false},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 2}", "First ***Second", true, true},
    {"length_constraints:number_paragraphs", "{\"num_paragraphs\": 2}", "**First** para\n***\n**Second**", true, true},
    {"length_constraints:number_words", "{\"relation\": \"less than\", \"num_words\": 5}", "one two three four", true, true},
    {"length_constraints:number_words", "{\"relation\": \"less than\", \"num_words\": 5}", "one two-three four's five", false, false},
    {"length_constraints:number_words", "{\"relation\": \"at least\", \"num_words\": 3}", "naïve café 東京", true, true},
    {"length_constraints:number_words", "{\"relation\": \"at least\", \"num_words\": 4}", "नमस्ते दुनिया", true, true},
    {"length_constraints:nth_paragraph_first_word", "{\"num_paragraphs\": 2, \"nth_paragraph\": 2, \"first_word\": \"Elm\"}", "Intro here.\n\n\"Elm, street\" is here.", true, true},
    {"length_constraints:nth_paragraph_first_word", "{\"num_paragraphs\": 2, \"nth_paragraph\": 2, \"first_word\": \"elm\"}", "Intro here.\n\nOak is here.", false, false},
    {"length_constraints:nth_paragraph_first_word", "{\"num_paragraphs\": 2, \"nth_paragraph\": 2, \"first_word\": \"elm\"}", "Intro.\n\n\n\nElm.", false, false},
    {"length_constraints:nth_paragraph_first_word", "{\"num_paragraphs\": 3, \"nth_paragraph\": 3, \"first_word\": \"president\"}", "A.\n\nB.\n\nPresident's speech.", true, true},
    {"length_constraints:nth_paragraph_first_word", "{\"num_paragraphs\": 2, \"nth_paragraph\": 1, \"first_word\": \"weekend\"}", "'Weekend! fun\n\nmore", true, true},
    {"detectable_content:number_placeholders", "{\"num_placeholders\": 2}", "Dear [name], at [address].", true, true},
    {"detectable_content:number_placeholders", "{\"num_placeholders\": 3}", "Dear [name], at [address].", false, false},
    {"detectable_content:number_placeholders", "{\"num_placeholders\": 1}", "Dear [na\nme]", false, false},
    {"detectable_content:postscript", "{\"postscript_marker\": \"P.S.\"}", "Hello.\n\nP.S. Bye", true, true},
    {"detectable_content:postscript", "{\"postscript_marker\": \"P.S.\"}", "Hello.\n\nPS Bye", false, false},
    {"detectable_content:postscript", "{\"postscript_marker\": \"P.P.S\"}", "Hello.\np. p. s. more", true, true},
    {"detectable_content:postscript", "{\"postscript_marker\": \"P.P.S\"}", "Hello.\nP.S. more", false, false},
    {"detectable_content:postscript", "{\"postscript_marker\": \" PS: \"}", "Hello.\nps: more", true, true},
    {"detectable_content:postscript", "{\"postscript_marker\": \"P.S.\"}", "**P.S.** bold postscript", true, true},
    {"detectable_format:number_bullet_lists", "{\"num_bullets\": 3}", "* one\n* two\n* three", true, true},
    {"detectable_format:number_bullet_lists", "{\"num_bullets\": 3}", "* one\n- two\n  * three\n**bold** line", true, true},
    {"detectable_format:number_bullet_lists", "{\"num_bullets\": 2}", "* one\n* two\n* three", false, true},
    {"detectable_format:number_bullet_lists", "{\"num_bullets\": 2}", "*\n* two", false, false},
    {"detectable_format:constrained_response", "{}", "My answer is yes.", true, true},
    {"detectable_format:constrained_response", "{}", "I think... My answer is maybe. Because", true, true},
    {"detectable_format:constrained_response", "{}", "My answer is Yes.", false, false},
    {"detectable_format:number_highlighted_sections", "{\"num_highlights\": 2}", "*one* and *two*", true, true},
    {"detectable_format:number_highlighted_sections", "{\"num_highlights\": 2}", "**bold** only", false, false},
    {"detectable_format:number_highlighted_sections", "{\"num_highlights\": 3}", "**bold** and *it*", false, false},
    {"detectable_format:number_highlighted_sections", "{\"num_highlights\": 1}", "* * and ** **", false, false},
    {"detectable_format:number_highlighted_sections", "{\"num_highlights\": 1}", "*multi\nline*", false, false},
    {"detectable_format:multiple_sections", "{\"section_spliter\": \"Section\", \"num_sections\": 2}", "Section 1\nA\nSection 2\nB", true, true},
    {"detectable_format:multiple_sections", "{\"section_spliter\": \"SECTION\", \"num_sections\": 2}", "Section 1\nA\nSection 2\nB", false, false},
    {"detectable_format:multiple_sections", "{\"section_spliter\": \" PARAGRAPH \", \"num_sections\": 2}", "PARAGRAPH 1 hi PARAGRAPH2 yo", true, true},
    {"detectable_format:multiple_sections", "{\"section_spliter\": \"Day\", \"num_sections\": 3}", "Day 1: Tokyo\nDay 2: Kyoto", false, false},
    {"detectable_format:json_format", "{}", "```json\n{\"a\": 1}\n```", true, true},
    {"detectable_format:json_format", "{}", "```JSON\n[1, 2, NaN]\n```", true, true},
    {"detectable_format:json_format", "{}", "Here is JSON: {\"a\": 1}", false, false},
    {"detectable_format:json_format", "{}", "  \"just a string\"  ", true, true},
    {"detectable_format:json_format", "{}", "```\n{\"a\": 1,}\n```", false, false},
    {"detectable_format:json_format", "{}", "```json\n{\"a\": 1}\n```\nDone", false, true},
    {"detectable_format:title", "{}", "<<Poem of joy>>\ntext", true, true},
    {"detectable_format:title", "{}", "<<  >> text", false, false},
    {"detectable_format:title", "{}", "<<split\ntitle>>", false, false},
    {"detectable_format:title", "{}", "<<<>>> and <<ok>>", true, true},
    {"combination:two_responses", "{}", "Answer one.\n******\nAnswer two.", true, true},
    {"combination:two_responses", "{}", "Same.\n******\n Same. ", false, false},
    {"combination:two_responses", "{}", "******\nA\n******\nB\n******", true, true},
    {"combination:two_responses", "{}", "A\n******\n******\nB", false, false},
    {"combination:two_responses", "{}", "A\n*******\nB", true, true},
    {"combination:repeat_prompt", "{\"prompt_to_repeat\": \"Write an email to my boss.\"}", "  write an EMAIL to my boss. Dear boss...", true, true},
    {"combination:repeat_prompt", "{\"prompt_to_repeat\": \"Write an email to my boss.\"}", "Sure! Write an email to my boss.", false, false},
    {"startend:end_checker", "{\"end_phrase\": \"Is there anything else I can help with?\"}", "Blah.\nIs there anything else I can help with?\"", true, true},
    {"startend:end_checker", "{\"end_phrase\": \"Is there anything else I can help with?\"}", "Blah. Is there anything else I can help with? Thanks", false, false},
    {"startend:end_checker", "{\"end_phrase\": \"Any other questions?\"}", "**Any other questions?**", false, true},
    {"startend:quotation", "{}", "\"Wrapped\"", true, true},
    {"startend:quotation", "{}", "\"", false, false},
    {"startend:quotation", "{}", "“Curly”", false, false},
    {"startend:quotation", "{}", "  \"x\"\n", true, true},
    {"change_case:capital_word_frequency", "{\"capital_frequency\": 3, \"capital_relation\": \"at least\"}", "I LOVE NASA and AT&T", true, true},
    {"change_case:capital_word_frequency", "{\"capital_frequency\": 3, \"capital_relation\": \"less than\"}", "DON'T STOP", false, false},
    {"change_case:capital_word_frequency", "{\"capital_frequency\": 2, \"capital_relation\": \"less than\"}", "HELLO,WORLD", false, false},
    {"change_case:capital_word_frequency", "{\"capital_frequency\": 2, \"capital_relation\": \"at least\"}", "\"GO\" (NOW) 3D", true, true},
    {"change_case:capital_word_frequency", "{\"capital_frequency\": 10, \"capital_relation\": \"less than\"}", "THE QUICK BROWN FOX, THE LAZY DOG. CANNOT STOP. I'M HERE", false, false},
    {"change_case:english_capital", "{}", "THIS IS A LETTER WRITTEN ENTIRELY IN CAPITAL LETTERS ABOUT THE WEATHER.", true, true},
    {"change_case:english_capital", "{}", "THIS IS A LETTER written IN CAPITALS.", false, false},
    {"change_case:english_capital", "{}", "CECI EST UNE LETTRE ÉCRITE ENTIÈREMENT EN MAJUSCULES SUR LA MÉTÉO DE DEMAIN.", false, false},
    {"change_case:english_capital", "{}", "ǅ TITLECASE LETTER", false, false},
    {"change_case:english_lowercase", "{}", "this is a tweet written in lowercase letters, asking everyone to go and vote.", true, true},
    {"change_case:english_lowercase", "{}", "this is a tweet with One capital.", false, false},
    {"change_case:english_lowercase", "{}", "ß straße groß", false, false},
    {"change_case:english_lowercase", "{}", "12345", false, false},
    {"punctuation:no_comma", "{}", "No commas here.", true, true},
    {"punctuation:no_comma", "{}", "One, two", false, false},
    {"punctuation:no_comma", "{}", "Full-width comma，ok", true, true},
    {"startend:end_checker", "{\"end_phrase\": \"Any other questions?\"}", "Any other questions?\nSure, here is a trailing line", false, true},
    {"combination:repeat_prompt", "{\"prompt_to_repeat\": \"Write a poem.\"}", "Sure, here you go:\nWrite a poem.\nRoses are red", false, true},
    {"detectable_format:json_format", "{}", "Here is the JSON:\n{\"a\": [1, 2]}", false, true},
    {"startend:quotation", "{}", "Here it is:\n\"*quoted*\"", false, true},
    {"detectable_format:title", "{}", "   \n", false, false},
};

}  // namespace

TEST(Ifeval, MatchesLmEvalOnCraftedCases) {
  std::set<std::string> covered;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(c.id) + " | " + c.response);
    IfevalOutcome o = one(c.id, Json::parse(c.kwargs), c.response);
    ASSERT_EQ(o.inst_strict.size(), 1u);
    EXPECT_EQ(o.inst_strict[0], c.strict);
    EXPECT_EQ(o.inst_loose[0], c.loose);
    covered.insert(c.id);
  }
  // Every instruction has at least one passing and one failing case in the table.
  for (const auto& id : bamba::eval::ifeval_instruction_ids()) {
    bool pass = false, fail = false;
    for (const Case& c : kCases)
      if (id == c.id) (c.strict ? pass : fail) = true;
    EXPECT_TRUE(pass && fail) << id;
  }
  EXPECT_EQ(covered.size(), 25u);
}

TEST(Ifeval, PromptLevelIsAllInstructions) {
  Json doc = row({{"punctuation:no_comma", {}}, {"startend:quotation", {}}}, 7);
  IfevalOutcome both = ifeval_score(doc, "\"no commas here\"");
  EXPECT_TRUE(both.prompt_strict);
  EXPECT_TRUE(both.prompt_loose);
  IfevalOutcome one_fails = ifeval_score(doc, "\"one, two\"");
  EXPECT_EQ(one_fails.inst_strict, (std::vector<bool>{false, true}));
  EXPECT_FALSE(one_fails.prompt_strict);
  EXPECT_FALSE(one_fails.prompt_loose);
}

TEST(Ifeval, BlankResponseFailsEverything) {
  // lm-eval requires response.strip() to be non-empty even for checks a blank text would satisfy.
  IfevalOutcome o = one("punctuation:no_comma", {}, " \n\t");
  EXPECT_FALSE(o.inst_strict[0]);
  EXPECT_FALSE(o.inst_loose[0]);
}

TEST(Ifeval, LooseModeVariants) {
  // The first line is a preamble: strict fails, dropping the first line passes.
  IfevalOutcome o = one("startend:quotation", {}, "Sure:\n\"quoted\"");
  EXPECT_FALSE(o.inst_strict[0]);
  EXPECT_TRUE(o.inst_loose[0]);
  // Markdown stars break the end phrase; the star-free variant passes.
  o = one("startend:end_checker", {{"end_phrase", "Any other questions?"}}, "Text.\n**Any other questions?**");
  EXPECT_FALSE(o.inst_strict[0]);
  EXPECT_TRUE(o.inst_loose[0]);
  // A trailing line: only the variant without the last line ends with the phrase.
  o = one("startend:end_checker", {{"end_phrase", "Bye."}}, "Bye.\n(note)");
  EXPECT_FALSE(o.inst_strict[0]);
  EXPECT_TRUE(o.inst_loose[0]);
  // Both lines removed: a one-word middle.
  o = one("length_constraints:number_words", {{"num_words", 2}, {"relation", "less than"}}, "two words\nx\nand more");
  EXPECT_FALSE(o.inst_strict[0]);
  EXPECT_TRUE(o.inst_loose[0]);
}

TEST(Ifeval, FalsyKwargsAreDropped) {
  // num_highlights 0 is dropped like null, so lm-eval draws a count in 1..4: a response with 4 highlights passes
  // whatever the draw, one with none fails whatever the draw.
  EXPECT_TRUE(one("detectable_format:number_highlighted_sections", {{"num_highlights", 0}}, "*a* *b* *c* *d*")
                  .inst_strict[0]);
  EXPECT_FALSE(one("detectable_format:number_highlighted_sections", {{"num_highlights", 0}}, "plain").inst_strict[0]);
  // An empty end phrase is dropped and one of lm-eval's two default endings is drawn.
  IfevalOutcome o = one("startend:end_checker", {{"end_phrase", ""}}, "Hi. Any other questions?");
  IfevalOutcome p = one("startend:end_checker", {{"end_phrase", ""}}, "Hi. Is there anything else I can help with?");
  EXPECT_NE(o.inst_strict[0], p.inst_strict[0]);
  // A letter that is not a-z ('#', as in the dataset's key 1122) is replaced by a drawn letter: the same row always
  // draws the same one.
  Json doc = row({{"keywords:letter_frequency", {{"letter", "#"}, {"let_frequency", 4}, {"let_relation", "at least"}}}});
  EXPECT_FALSE(ifeval_score(doc, "#### no letters 1234").inst_strict[0]);
  EXPECT_EQ(ifeval_score(doc, "abcdefghijklmnopqrstuvwxyz").inst_strict[0],
            ifeval_score(doc, "abcdefghijklmnopqrstuvwxyz").inst_strict[0]);
  // false, 0 and [] are falsy too: the other keys of the full dict do not reach the no-argument checkers.
  Json kw = full_kwargs({});
  kw["num_words"] = 0;
  kw["keywords"] = Json::array();
  kw["relation"] = false;
  Json d = {{"key", 3}, {"prompt", "p"}, {"instruction_id_list", {"punctuation:no_comma"}}, {"kwargs", {kw}}};
  EXPECT_TRUE(ifeval_score(d, "fine").inst_strict[0]);
}

TEST(Ifeval, BadRowsAreErrors) {
  auto expect_error = [](const Json& doc, const std::string& part) {
    try {
      ifeval_score(doc, "response");
      ADD_FAILURE() << "no error for " << doc.dump();
    } catch (const bamba::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_error(row({{"keywords:nonexistent", {}}}, 42), "unknown instruction id 'keywords:nonexistent'");
  expect_error(row({{"keywords:nonexistent", {}}}, 42), "row 42");
  expect_error(row({{"punctuation:no_comma", {{"num_words", 5}}}}), "unexpected argument 'num_words'");
  expect_error(row({{"combination:repeat_prompt", {}}}), "prompt_to_repeat");
  expect_error(row({{"keywords:existence", {{"keywords", Json::array()}}}}), "'keywords' is missing or empty");
  expect_error(row({{"length_constraints:number_words", {{"num_words", 5}, {"relation", "at most"}}}}),
               "expected 'less than' or 'at least'");
  expect_error(row({{"length_constraints:number_words", {{"num_words", "5"}, {"relation", "at least"}}}}),
               "must be an integer");
  expect_error(row({{"language:response_language", {{"language", "xx"}}}}), "LANGUAGE_CODES");
  expect_error(row({{"keywords:existence", {{"keywords", {"(unclosed"}}}}}), "invalid regex");
  Json bad = row({{"punctuation:no_comma", {}}});
  bad["kwargs"].push_back(Json::object());
  expect_error(bad, "'kwargs' has 2 entries for 1 instructions");
  bad = row({{"punctuation:no_comma", {}}});
  bad.erase("prompt");
  expect_error(bad, "'prompt'");
}

TEST(Ifeval, InvalidUtf8ResponseIsAnError) {
  EXPECT_THROW(one("punctuation:no_comma", {}, std::string("bad \xff byte")), bamba::Error);
}

TEST(PyStr, UnicodeCasePredicates) {
  namespace py = bamba::eval::py;
  EXPECT_TRUE(py::is_upper("ÉCOLE 123!"));
  EXPECT_FALSE(py::is_upper("123!"));         // no cased character
  EXPECT_FALSE(py::is_upper("ǅ"));            // titlecase
  EXPECT_TRUE(py::is_upper("Ⓐ"));             // Other_Uppercase counts
  EXPECT_TRUE(py::is_lower("straße ß"));
  EXPECT_TRUE(py::is_lower("ª"));             // Other_Lowercase, no case mapping
  EXPECT_FALSE(py::is_lower("Straße"));
  EXPECT_EQ(py::lower("ÀÉÎ ΣΑΣ İ K"), "àéî σασ i\u0307 k");  // simple mappings; U+0130 -> i + dot, Kelvin -> k
  EXPECT_EQ(py::strip("\u3000\x1c hi \u2028"), "hi");  // str.isspace() includes U+3000, U+001C, U+2028
  EXPECT_EQ(py::strip("\u200b hi"), "\u200b hi");      // ZERO WIDTH SPACE is not whitespace in Python
  EXPECT_EQ(py::split_whitespace(" a\u00a0b  c ").size(), 3u);
}

TEST(PyRe, PythonEmptyMatchRules) {
  using bamba::eval::PyRegex;
  // Python 3.7+: re.sub('x*', '-', 'abxd') == '-a-b--d-', re.split('x*', 'abxd') == ['', 'a', 'b', '', 'd', '']
  PyRegex x("x*", PyRegex::kNone, "test");
  EXPECT_EQ(x.sub("abxd", "-"), "-a-b--d-");
  EXPECT_EQ(x.split("abxd"), (std::vector<std::string>{"", "a", "b", "", "d", ""}));
  // Groups are kept by split, and \1 / \g<2> fill sub templates.
  PyRegex g("(-)(\\d)", PyRegex::kNone, "test");
  EXPECT_EQ(g.split("a-1b-2"), (std::vector<std::string>{"a", "-", "1", "b", "-", "2", ""}));
  EXPECT_EQ(g.sub("a-1b-2", "<\\g<2>\\1>"), "a<1->b<2->");
  // Unicode \w and case-insensitive matching.
  EXPECT_EQ(PyRegex("\\w+", PyRegex::kNone, "test").finditer("naïve 東京 x_1").size(), 3u);
  EXPECT_TRUE(PyRegex("ÉTÉ", PyRegex::kIgnoreCase, "test").search("un été chaud"));
}

TEST(PyRandom, MatchesCPython) {
  // random.Random(0): random() 0.8444218515250481, gauss() 0.05219198828260849 then -1.0434089742005737,
  // choice(range(1000)) 265, getrandbits(32) 4146640122 (CPython 3.11).
  bamba::eval::PyRandom r(0);
  EXPECT_EQ(r.random(), 0.8444218515250481);
  EXPECT_EQ(r.gauss(), 0.05219198828260849);
  EXPECT_EQ(r.gauss(), -1.0434089742005737);
  EXPECT_EQ(r.below(1000), 265u);
  EXPECT_EQ(r.next_u32(), 4146640122u);
  EXPECT_EQ(bamba::eval::PyRandom(123456789012ull).random(), 0.37701448538609916);  // a two-word seed
}

TEST(LangDetect, MatchesPythonLangdetectWithTheSameSeed) {
  // Python langdetect 1.0.9 (profiles loaded in sorted order, DetectorFactory.seed = s): get_probabilities().
  struct Ref {
    uint64_t seed;
    const char* text;
    std::vector<std::pair<std::string, double>> probs;
  };
  const Ref refs[] = {
      {0, "Hello world, this is a simple English sentence.", {{"en", 0.9999940126138398}}},
      {0, "Il est important de manger des aliments sains.", {{"fr", 0.9999957627502418}}},
      {0, "Der schnelle braune Fuchs springt über den faulen Hund.", {{"de", 0.9999973166840513}}},
      {0, "東京は日本の首都です。", {{"ja", 0.9999997058155705}}},
      {0, "Привет, как дела? Всё хорошо.", {{"ru", 0.9999965410886739}}},
      {0, "syntax error", {{"cy", 0.42857100787291336}, {"da", 0.4285696299999472}, {"so", 0.14285695503078655}}},
      {0, "Visit https://example.com or mail me@example.org now", {{"en", 0.99999742358852}}},
      {0, "THE NASA AND ESA PLAN", {{"en", 0.8571389422442034}, {"hu", 0.14285612559165292}}},
      {0, "Tiếng Việt có dấu", {{"vi", 0.9999997614482204}}},
      {42, "syntax error", {{"da", 0.5714256463015658}, {"cy", 0.28571488349775165}, {"so", 0.14285709136749172}}},
      {42, "THE NASA AND ESA PLAN", {{"en", 0.8571384244897764}, {"pt", 0.1428605209006709}}},
  };
  const auto& d = bamba::eval::default_lang_detector();
  EXPECT_EQ(d.languages().size(), 55u);
  for (const Ref& r : refs) {
    SCOPED_TRACE(r.text);
    auto got = d.probabilities(r.text, r.seed);
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(got->size(), r.probs.size());
    for (size_t i = 0; i < got->size(); ++i) {
      EXPECT_EQ((*got)[i].first, r.probs[i].first);
      EXPECT_DOUBLE_EQ((*got)[i].second, r.probs[i].second);
    }
  }
  // Text without letters has no features: Python raises, here nullopt (and the IFEval checks then pass).
  EXPECT_FALSE(d.detect("12345 !!! ???").has_value());
}

TEST(LangDetect, MissingProfilesAreAClearError) {
  try {
    bamba::eval::LangDetector d("/nonexistent/langdetect");
    ADD_FAILURE() << "no error";
  } catch (const bamba::Error& e) {
    EXPECT_NE(std::string(e.what()).find("python3-langdetect"), std::string::npos) << e.what();
  }
}

TEST(Punkt, SentenceCountsOnCraftedText) {
  using bamba::eval::count_sentences;
  EXPECT_EQ(count_sentences("One. Two! Three?"), 3u);
  EXPECT_EQ(count_sentences("No final period here"), 1u);
  EXPECT_EQ(count_sentences("Lines\nwithout\nperiods"), 1u);           // newlines never end a sentence
  EXPECT_EQ(count_sentences("Wow!!! Great?! Yes."), 3u);               // a run of marks is one end
  EXPECT_EQ(count_sentences("He said \"Go.\" Then he left."), 2u);     // '"' is a non-word character
  EXPECT_EQ(count_sentences("She said “Stop.” Then left."), 1u);       // '”' is not: no break (Punkt's quirk)
  EXPECT_EQ(count_sentences("Mr. Smith met Dr. Jones. They talked."), 2u);  // abbreviations
  EXPECT_EQ(count_sentences("The U.S. economy grew. It was fast."), 2u);
  EXPECT_EQ(count_sentences("See e.g. the report. It is long."), 2u);
  EXPECT_EQ(count_sentences("1. Apples are red.\n2. Bananas are yellow."), 4u);  // list numbers stand alone
  EXPECT_EQ(count_sentences("Step 1. then step 2."), 1u);             // a number before lower case does not end
  EXPECT_EQ(count_sentences("J. R. R. Tolkien wrote it."), 1u);       // initials before names
  EXPECT_EQ(count_sentences("Wait... The end."), 2u);                 // ellipsis before a common capitalized word
  EXPECT_EQ(count_sentences("Wait... what happened."), 1u);
  EXPECT_EQ(count_sentences("Great... really?! Yes."), 3u);           // a '?' inside the next token decides
  EXPECT_EQ(count_sentences("version 3.5 is out.Next"), 1u);          // no space after the period
  EXPECT_EQ(count_sentences("(See above.) Next one."), 2u);
  EXPECT_EQ(count_sentences(""), 0u);
}

TEST(Punkt, WordTokenizeSplitsLikeTreebank) {
  using bamba::eval::word_tokenize;
  // NLTK 3.8 NLTKWordTokenizer: "I DON'T KNOW, AT&T (NOW)." ->
  // ['I', 'DO', "N'T", 'KNOW', ',', 'AT', '&', 'T', '(', 'NOW', ')', '.']
  EXPECT_EQ(word_tokenize("I DON'T KNOW, AT&T (NOW)."),
            (std::vector<std::string>{"I", "DO", "N'T", "KNOW", ",", "AT", "&", "T", "(", "NOW", ")", "."}));
  // "We're gonna win: 10:30, 1,000 people CANNOT stop JOHN'S band" ->
  // ['We', "'re", 'gon', 'na', 'win', ':', '10:30', ',', '1,000', 'people', 'CAN', 'NOT', 'stop', 'JOHN', "'S", 'band']
  EXPECT_EQ(word_tokenize("We're gonna win: 10:30, 1,000 people CANNOT stop JOHN'S band"),
            (std::vector<std::string>{"We", "'re", "gon", "na", "win", ":", "10:30", ",", "1,000", "people", "CAN",
                                      "NOT", "stop", "JOHN", "'S", "band"}));
}
