// IFEval scoring as lm-eval's leaderboard_ifeval task does it (lm_eval/tasks/ifeval/instructions.py and
// leaderboard/ifeval/utils.py): the 25 verifiable instructions, the kwargs driver, and the strict and loose modes.
//
// Driver: each instruction's kwargs dict is first filtered to its truthy values (lm-eval's `if v`, which drops
// null but also 0, "", [] and false), then given to the instruction. Where an instruction then lacks an argument,
// lm-eval draws one from Python's unseeded global RNG (a count from the same range, a relation, a letter, a
// section marker, a postscript marker, an end phrase or a language); here the draw comes from a generator seeded by
// the row key and the instruction's index, so it is reproducible but not lm-eval's value. Where lm-eval would draw
// random keywords from its word list (keywords, keyword, forbidden_words, first_word) or raises
// (prompt_to_repeat missing, a relation other than "less than"/"at least", an argument the instruction does not
// take, a language not in its list), this is an Error naming the row, the instruction and the argument.
//
// An instruction passes (strict) when the response is not blank and its check holds. Loose mode passes when the
// check holds for any of 8 variants: the response, without its first line, without its last line, without both,
// and each of those with every '*' removed (lines dropped before stripping). Prompt level = all instructions pass.
//
// Exactness: Python `re` semantics come from PCRE2 (eval/py_re.h), str methods on Unicode from eval/py_str.h. Two
// checks are approximate: language detection (eval/langdetect.h, a port of langdetect with a fixed seed) and NLTK
// Punkt sentence counting / word_tokenize (eval/punkt.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace bamba::eval {

struct IfevalOutcome {
  bool prompt_strict = false, prompt_loose = false;
  std::vector<bool> inst_strict, inst_loose;
};

// doc: one dataset row as lm-eval sees it: key, prompt, instruction_id_list, kwargs (a list of dicts, one per
// instruction; keys an instruction does not use may be present with null/falsy values). Throws Error on a malformed
// row or an unknown instruction id.
IfevalOutcome ifeval_score(const nlohmann::ordered_json& doc, const std::string& response);

// The 25 instruction ids lm-eval registers.
const std::vector<std::string>& ifeval_instruction_ids();

}  // namespace bamba::eval
