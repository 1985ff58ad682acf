// MATH (leaderboard_math_hard) answer scoring as lm-eval's sympy-era leaderboard/math/utils.py does it, which
// follows Minerva (Lewkowycz et al. 2022, appendix D), minus sympy:
//   candidate = normalize_final_answer(the text between "Final Answer: The final answer is" and the first
//               following ". I hope it is correct." on the same line; "[invalidanswer]" if there is none)
//   gold      = normalize_final_answer(remove_boxed(last_boxed_only_string(solution)))
//   correct   = candidate is not "[invalidanswer]" and candidate.strip() == gold.strip()
// lm-eval also counts a pair as correct when sympy.simplify(parse_latex(a) - parse_latex(b)) == 0 (1 s timeout);
// that second test is not ported, so this scorer can only count fewer answers correct than lm-eval does, never
// more (e.g. "0.5" against "\frac{1}{2}", or "2\sqrt{2}" against "\sqrt{8}").
#pragma once
#include <optional>
#include <string>
#include <string_view>

namespace bamba::eval {

inline constexpr std::string_view kMathInvalidAnswer = "[invalidanswer]";

// The last "\boxed{...}" (or "\fbox{...}", or "\boxed ..." up to the next '$') of `s`, braces balanced; nullopt if
// there is none or its braces never close.
std::optional<std::string> last_boxed_only_string(std::string_view s);
// "\boxed{x}" -> "x", "\boxed x" -> "x"; anything else -> "[invalidanswer]".
std::string remove_boxed(std::string_view s);
// Minerva's normalize_final_answer: last '=' side, SUBSTITUTIONS, REMOVED_EXPRESSIONS, $...$ / \text{} / \textbf{}
// / \overline{} / \boxed{} unwrapping, \fracab and \sqrta shorthand, '$' removed, commas dropped from digit strings.
std::string normalize_final_answer(std::string_view answer);

// The normalized candidate from a model generation.
std::string math_candidate_answer(const std::string& generation);
// The normalized gold answer from a MATH solution. Throws Error when the solution has no boxed answer (lm-eval
// would crash on such a row).
std::string math_gold_answer(const std::string& solution);
bool math_answers_equal(const std::string& candidate, const std::string& gold);

}  // namespace bamba::eval
