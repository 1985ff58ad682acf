// Rule-based stand-ins for the two NLTK calls IFEval makes: the English Punkt sentence tokenizer
// (length_constraints:number_sentences) and nltk.word_tokenize (change_case:capital_word_frequency). Punkt's
// English model is a trained pickle that Debian does not package, so its learned abbreviation list, collocations
// and orthographic statistics are replaced by a hand-made list of common abbreviations and of common words
// (docs/evaluation.md, "IFEval and MATH scoring", lists where the two differ).
//
// What is kept from Punkt: a sentence can end only at the last '.', '?' or '!' of a whitespace-separated chunk that
// is followed by whitespace and another chunk or by one of Punkt's non-word characters ?!)";}]*:@'({[ (so
// `“Stop.” Then` does not break but `"Stop." Then` does, and text ending in '.' adds no empty sentence); '?' and
// '!' always end one; a word followed by '.' ends one unless it is an abbreviation; an abbreviation, an initial
// ("J.") or an ellipsis ends one only before a capitalized common word; a number followed by '.' (a list item
// "1.") ends one unless the next word is lower case; newlines alone never end one; closing quotes and brackets
// after a break stay with the sentence before.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace bamba::eval {

// len(PunktSentenceTokenizer(english).tokenize(text)), approximately. `text` must be valid UTF-8.
size_t count_sentences(std::string_view text);

// nltk.word_tokenize(text), approximately: Penn-Treebank conventions (punctuation, brackets and quotes split off,
// clitics split as in DO N'T, I 'M, JOHN 'S, CAN NOT), which is what decides how many all-capital tokens a text
// has. A period is split off only at the end of the text.
std::vector<std::string> word_tokenize(std::string_view text);

}  // namespace bamba::eval
