// Error: the one exception type. Every failure a user can cause becomes an Error whose message names the file,
// tensor or field and what was expected; the CLI prints it and exits non-zero, the server maps it to a 4xx.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace bamba {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// cat("tensor ", name, " has ", n, " rows") -> std::string (g++ 12 has no <format>).
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(Args&&... args) {
  throw Error(cat(std::forward<Args>(args)...));
}

}  // namespace bamba

// BAMBA_CHECK(cond, "what", ...): a user-facing check (stays in release builds).
#define BAMBA_CHECK(cond, ...)                \
  do {                                        \
    if (!(cond)) ::bamba::fail(__VA_ARGS__);  \
  } while (0)
