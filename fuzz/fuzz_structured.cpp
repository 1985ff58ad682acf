// libFuzzer target: any bytes as a structured-output constraint (the first byte picks a regex or a JSON schema,
// the rest is the pattern / schema text). Compiling may fail with an Error (that is the 400 path); when it
// succeeds, every automaton state a walk reaches must still be completable (some accepting state reachable: the
// guarantee masks rely on), and the token mask of every state reached must equal walking each token of a small
// vocabulary alone. A crash, a sanitizer report or a broken invariant (trap) is a bug.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "structured/byte_dfa.h"
#include "structured/json_grammar.h"
#include "structured/regex_grammar.h"
#include "structured/token_grammar.h"

namespace {

bool completable(bamba::ByteDfa& d, int32_t s) {
  std::set<int32_t> seen = {s};
  std::vector<int32_t> todo = {s};
  while (!todo.empty() && seen.size() < 2000) {
    const int32_t q = todo.back();
    todo.pop_back();
    if (d.accepting(q)) return true;
    for (int b = 0; b < 256; ++b) {
      const int32_t t = d.step(q, uint8_t(b));
      if (t != bamba::ByteDfa::kDead && seen.insert(t).second) todo.push_back(t);
    }
  }
  return seen.size() >= 2000;  // too big to search to the end: not a failure
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 4096) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  bamba::ByteNfa nfa(20000);
  try {
    if (data[0] & 1) {
      nfa.finish(bamba::compile_regex(nfa, text));
    } else {
      auto schema = nlohmann::ordered_json::parse(text, nullptr, false);
      if (schema.is_discarded()) return 0;
      nfa.finish(bamba::compile_json_schema(nfa, schema));
    }
    auto vocab = std::make_shared<const bamba::TokenVocab>(std::vector<std::string>{
        "a", "b", "ab", "\"", "{\"", "\":", "1", "0.", "]", "}", "[", ",", " ", "\xc3", "\xa9", "\xc3\xa9", "true", "null"});
    bamba::TokenGrammar g(nfa, vocab);
    bamba::ByteDfa d(nfa, 2000);
    // A walk driven by the input bytes: at each step, the first live byte at or after the next input byte.
    int32_t s = d.start();
    for (size_t i = 1; i < size; ++i) {
      if (!completable(d, s)) __builtin_trap();
      int32_t next = bamba::ByteDfa::kDead;
      for (int k = 0; k < 256 && next == bamba::ByteDfa::kDead; ++k) next = d.step(s, uint8_t(data[i] + k));
      if (next == bamba::ByteDfa::kDead) break;
      s = next;
    }
    // Token masks against one-token walks, along a walk of allowed tokens.
    int32_t t = g.start();
    for (size_t i = 1; i < size && i < 64; ++i) {
      const std::vector<uint32_t> m = g.mask(t);
      int32_t pick = -1;
      for (int32_t id = 0; id < vocab->size(); ++id) {
        const bool bit = (m[size_t(id) >> 5] >> (id & 31)) & 1u;
        if (bit != (g.advance(t, id) >= 0)) __builtin_trap();
        if (bit && (pick < 0 || id == data[i] % vocab->size())) pick = id;
      }
      if (pick < 0) break;
      t = g.advance(t, pick);
    }
  } catch (const bamba::Error&) {
  }
  return 0;
}
