// TokenizerJson: tokenizer.json read into memory, and JsonField, a JSON value that knows its path for errors.
// model.vocab and model.merges are 99% of a 6 MB file: a SAX pass streams them into flat vectors (checking each entry)
// and builds an ordinary nlohmann DOM for the rest. A DOM of the whole file costs about three times as long to
// build and free (nlohmann puts every string on the heap and every object in a std::map).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"

namespace bamba {

// Far above any real vocabulary (Llama-3 has 128256 tokens, Gemma 262144), low enough that a corrupt id cannot
// make us allocate gigabytes for the id -> token tables.
inline constexpr int64_t kMaxTokens = int64_t(1) << 21;

struct TokenizerJson {
  // Error "<label>: invalid JSON ..." or, for a bad vocab/merges entry, "<label>: model.merges[7]: expected ...".
  static TokenizerJson parse(std::string_view text, const std::string& label);

  nlohmann::json root;  // model.vocab / model.merges are left empty here when they were streamed out
  std::vector<std::pair<std::string, int32_t>> vocab;       // model.vocab in file order
  std::vector<std::pair<std::string, std::string>> merges;  // model.merges in rank order
};

// A JSON value with its path from the root, so that every error names the file and the field:
// "tokenizer.json: model.merges[3]: expected ...".
class JsonField {
 public:
  using json = nlohmann::json;
  JsonField(const json& v, std::string path, const std::string& label) : v_(v), path_(std::move(path)), label_(label) {}

  const json& value() const { return v_; }
  const std::string& path() const { return path_; }
  bool is_null() const { return v_.is_null(); }

  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    bamba::fail(label_, ": ", path_.empty() ? "top level" : path_, ": ", std::forward<Args>(args)...);
  }

  JsonField operator[](const char* key) const;          // a member that must be there (it may be null)
  std::optional<JsonField> get(const char* key) const;  // a member that may be missing
  JsonField at(size_t i) const;                         // an element of an array
  size_t size_of_array() const;                         // Error if not an array
  void expect_object() const;

  const std::string& string() const;
  bool boolean() const;
  bool boolean_or(const char* key, bool fallback) const;                // a member that is true/false, or missing/null
  int32_t id() const;                                                   // a token id in [0, kMaxTokens)
  const std::string& type() const { return (*this)["type"].string(); }  // a component's "type", e.g. "BPE"

  static std::string kind(const json& v);      // "a string", "an object", ... for "expected X, got Y"
  static std::string describe(const json& v);  // the value itself when short (a string or a number), else its kind
  static bool is_id(const json& v);

 private:
  const json& v_;
  std::string path_;
  const std::string& label_;
};

}  // namespace bamba
