// MATH answer scoring tests. "lm-eval:" values were computed by running the sympy-era
// lm_eval/tasks/leaderboard/math/utils.py functions (get_unnormalized_answer, last_boxed_only_string, remove_boxed,
// normalize_final_answer) under Python 3.11; "by hand:" values follow the Minerva rules step by step.
#include "eval/math_answer.h"

#include <gtest/gtest.h>

#include "core/error.h"

using namespace bamba::eval;

TEST(MathAnswer, CandidateFromGeneration) {
  struct Case {
    const char* generation;
    const char* expected;  // lm-eval: normalize_final_answer(get_unnormalized_answer(generation))
  };
  const Case cases[] = {
      {"So x=5.\nFinal Answer: The final answer is $5$. I hope it is correct.", "5"},
      {"Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"},
      {"Final Answer: The final answer is \\frac12. I hope it is correct.", "\\frac{1}{2}"},
      {"Final Answer: The final answer is $\\boxed{10,000}$. I hope it is correct.", "10000"},
      // The appended "I hope it is correct." needs ". " before it: a cut-off answer without a period fails.
      {"Final Answer: The final answer is 10,000 dollars", "[invalidanswer]"},
      {"Final Answer: The final answer is $x = 3$.", "[invalidanswer]"},
      {"Final Answer: The final answer is $\\text{(B)}$. I hope it is correct.", "(B)"},
      {"No final answer here.", "[invalidanswer]"},
      {"Final Answer: The final answer is\n$5$. I hope it is correct.", "[invalidanswer]"},  // '.' stops at \n
      {"Final Answer: The final answer is $90^\\circ$. I hope it is correct.", "90"},
      {"Final Answer: The final answer is $\\sqrt2$. I hope it is correct. Final Answer: The final answer is $3$. I "
       "hope it is correct.",
       "\\sqrt{2}"},  // the first one counts
      {"Final Answer: The final answer is $2\\sqrt{2}$ units. I hope it is correct.", "2\\sqrt{2}"},
      {"Final Answer: The final answer is a 5 and an 6. I hope it is correct.", "5and6"},
      {"Final Answer: The final answer is $\\$1,234.50$. I hope it is correct.", "1,234.50"},  // not all digits
      {"Final Answer: The final answer is $(1,2)$. I hope it is correct.", "(1,2)"},
      {"Final Answer: The final answer is $\\textbf{12}$ cm. I hope it is correct.", "12"},
      {"Final Answer: The final answer is $\\overline{AB}$. I hope it is correct.", "AB"},
      {"Final Answer: The final answer is $\\dfrac{3}{4}$. I hope it is correct.", "\\dfrac{3}{4}"},
      {"Final Answer: The final answer is $5\\%$. I hope it is correct.", "5\\%"},
      {"Final Answer: The final answer is 12 \\text{ inches}. I hope it is correct.", "12"},
      {"Final Answer: The final answer is $1{,}000$. I hope it is correct.", "1000"},
      {"Final Answer: The final answer is \\mbox{dog}. I hope it is correct.", "dog"},
  };
  for (const Case& c : cases) EXPECT_EQ(math_candidate_answer(c.generation), c.expected) << c.generation;
}

TEST(MathAnswer, GoldFromSolution) {
  struct Case {
    const char* solution;
    const char* boxed;     // lm-eval: last_boxed_only_string
    const char* expected;  // lm-eval: normalize_final_answer(remove_boxed(boxed))
  };
  const Case cases[] = {
      {"Thus the answer is $\\boxed{5}$.", "\\boxed{5}", "5"},
      {"We get $\\boxed{\\frac{1}{2}}$ and also $\\boxed{3}$.", "\\boxed{3}", "3"},  // the last box
      {"So $x=\\boxed{10,000}$.", "\\boxed{10,000}", "10000"},
      {"\\boxed 7$ is the answer", "\\boxed 7", "7"},
      {"The answer is \\fbox{4}.", "\\fbox{4}", "[invalidanswer]"},  // remove_boxed only knows \boxed
      {"The domain is $\\boxed{[2,5)}$.", "\\boxed{[2,5)}", "[2,5)"},
      {"Answer: $\\boxed{\\text{(C)}}$", "\\boxed{\\text{(C)}}", "(C)"},
      {"$\\boxed{-\\frac{2}{3}}.$", "\\boxed{-\\frac{2}{3}}", "-\\frac{2}{3}"},
      {"Final: \\boxed{x^{2}+1}", "\\boxed{x^{2}+1}", "x^{2}+1"},
      {"Nested \\boxed{\\sqrt{\\frac{a}{b}}} end", "\\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"},
      {"The angle is $\\boxed{90^\\circ}$.", "\\boxed{90^\\circ}", "90"},
      {"$\\boxed{1,\\!000}$", "\\boxed{1,\\!000}", "1000"},
      {"\\boxed{\\text{Devon}}", "\\boxed{\\text{Devon}}", "Devon"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.solution);
    auto boxed = last_boxed_only_string(c.solution);
    ASSERT_TRUE(boxed.has_value());
    EXPECT_EQ(*boxed, c.boxed);
    EXPECT_EQ(math_gold_answer(c.solution), c.expected);
  }
  EXPECT_FALSE(last_boxed_only_string("Unclosed \\boxed{5").has_value());
  EXPECT_THROW(math_gold_answer("Unclosed \\boxed{5"), bamba::Error);
  EXPECT_THROW(math_gold_answer("no box at all"), bamba::Error);
}

TEST(MathAnswer, NormalizationByHand) {
  // by hand: "x = \frac{3}{4}" -> after '=': " \frac{3}{4}" -> " " removed -> "\frac{3}{4}".
  EXPECT_EQ(normalize_final_answer("x = \\frac{3}{4}"), "\\frac{3}{4}");
  // by hand: "\text{5 meters}" -> " " removed -> "\text{5meters}" -> "meters" removed -> "\text{5}" -> unwrapped "5".
  EXPECT_EQ(normalize_final_answer("\\text{5 meters}"), "5");
  // by hand: "\sqrt3" -> sqrt shorthand -> "\sqrt{3}"; "\frac34" -> "\frac{3}{4}".
  EXPECT_EQ(normalize_final_answer("\\sqrt3+\\frac34"), "\\sqrt{3}+\\frac{3}{4}");
  // by hand: "1,000,000" -> digits once commas go -> "1000000"; "1,2" also (lm-eval's quirk), "(1,2)" keeps them.
  EXPECT_EQ(normalize_final_answer("1,000,000"), "1000000");
  EXPECT_EQ(normalize_final_answer("1,2"), "12");
  EXPECT_EQ(normalize_final_answer("(1,2)"), "(1,2)");
  // by hand: "$5$ and $6$" -> spaces out -> "$5$and$6$" -> first $...$ kept -> "$5$" -> "5".
  EXPECT_EQ(normalize_final_answer("$5$ and $6$"), "5");
  // by hand: "10^{\circ}" -> "^{\circ}" removed -> "10"; "\boxed{\textbf{7}}" -> "7".
  EXPECT_EQ(normalize_final_answer("10^{\\circ}"), "10");
  EXPECT_EQ(normalize_final_answer("\\boxed{\\textbf{7}}"), "7");
  // by hand: "\ldots" is dropped, leaving "1,2," whose comma-free form "12" is all digits -> "12";
  // "\mbox{a}" becomes "\text{a}" and then "a". (Both checked against lm-eval's function too.)
  EXPECT_EQ(normalize_final_answer("1,2,\\ldots"), "12");
  EXPECT_EQ(normalize_final_answer("\\mbox{a}"), "a");
}

TEST(MathAnswer, EqualityIsStringEqualityAfterNormalization) {
  EXPECT_TRUE(math_answers_equal("\\frac{1}{2}", "\\frac{1}{2}"));
  EXPECT_TRUE(math_answers_equal(math_candidate_answer("Final Answer: The final answer is $\\frac12$. I hope it is "
                                                       "correct."),
                                 math_gold_answer("so $\\boxed{\\frac{1}{2}}$")));
  // sympy would accept these; the string scorer does not (it can only under-count).
  EXPECT_FALSE(math_answers_equal("0.5", "\\frac{1}{2}"));
  EXPECT_FALSE(math_answers_equal("[invalidanswer]", "[invalidanswer]"));  // an invalid candidate never scores
}
