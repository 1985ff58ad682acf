// Tokenizer: text <-> token ids for a Hugging Face tokenizer.json with a byte-level BPE model (GPT-2, Llama-3,
// Bamba, ...), matching HF tokenizers' output id for id. encode() runs the pipeline of the file:
//   added tokens (found first, anywhere in the text) -> pre-tokenizer (Split regexes, ByteLevel) -> BPE per word
//   -> post-processor template (BOS) when add_special;
// decode() joins the tokens' bytes and repairs ill-formed UTF-8 as HF does. What the file asks for and we do not
// implement (a normalizer, another model type, ...) is an Error at load time naming the field, never ignored.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace bamba {

class AddedVocabulary;
class PreTokenizer;
class Bpe;

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);  // errors name the path
  static Tokenizer from_json(std::string_view json_text, const std::string& label);
  // A byte-level tokenizer with no merges: ids 0..255 are the 256 bytes (token text = the GPT-2 character of the
  // byte), 256 = "<|begin_of_text|>" (BOS, special), 257 = "<|end_of_text|>" (special); the post-processor adds
  // BOS. Used by the built-in dummy model so `bamba generate` works with no download.
  static Tokenizer byte_level_default();
  static std::string byte_level_default_json();  // its tokenizer.json text (`bamba init` writes it)

  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Error on ill-formed UTF-8, naming the byte offset. Added tokens written in the text are always recognised.
  std::vector<int32_t> encode(std::string_view text, bool add_special) const;
  // Error on an id that has no token. Ill-formed UTF-8 (a character cut between tokens) becomes U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  int32_t vocab_size() const { return int32_t(tokens_.size()); }  // max id + 1 over vocab and added tokens
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string_view id_to_token(int32_t id) const;  // the spelling in tokenizer.json ("Ġhello"); Error if no token
  bool is_special(int32_t id) const;               // false for ids with no token
  std::optional<int32_t> bos_id() const;           // the special token the post-processor prepends, if any
  // The bytes decode() writes for `id`: possibly part of a UTF-8 character. Error if no token has this id.
  std::string_view id_to_bytes(int32_t id) const;

 private:
  class Loader;
  Tokenizer();
  void check_id(int32_t id) const;

  enum Kind : uint8_t { kNone, kModel, kAdded, kSpecial };
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Bpe> bpe_;
  std::vector<std::string> tokens_;  // id -> spelling; added tokens take precedence over the model's, as in HF
  std::vector<std::string> bytes_;   // id -> decoded bytes
  std::vector<Kind> kinds_;          // id -> where the token comes from
  std::unordered_map<std::string, int32_t> added_ids_;
  std::vector<int32_t> prefix_, suffix_;  // what the post-processor template puts around the text's ids
};

}  // namespace bamba
