#include "tokenizer/tokenizer.h"

#include "core/error.h"
#include "core/mapped_file.h"
#include "tokenizer/added_vocabulary.h"
#include "tokenizer/bpe.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_json.h"
#include "tokenizer/utf8.h"

namespace bamba {

using json = nlohmann::json;

// Reads tokenizer.json into a Tokenizer, one top-level field at a time.
class Tokenizer::Loader {
 public:
  Loader(Tokenizer& t, const std::string& label) : t_(t), label_(label) {}

  void load(TokenizerJson& doc) {
    JsonField root(doc.root, "", label_);
    root.expect_object();
    normalizer(root.get("normalizer"));
    model(root["model"], doc);
    added_tokens(root.get("added_tokens"));
    pre_tokenizer(root["pre_tokenizer"]);
    if (auto pp = root.get("post_processor"); pp && !pp->is_null()) post_processor(*pp);
    decoder(root["decoder"]);
    // "truncation" and "padding" only shape batches of fixed length; the engine manages lengths itself.
  }

 private:
  void normalizer(const std::optional<JsonField>& f) {
    if (f && !f->is_null())
      f->fail("type ", JsonField::describe((*f)["type"].value()),
              " is not supported (expected null: byte-level BPE tokenizers need no normalizer)");
  }

  void model(const JsonField& m, TokenizerJson& doc) {
    // Old files may leave "type" out; the vocab and merges that BPE needs are required below anyway.
    if (auto type = m.get("type"); type && type->string() != "BPE")
      type->fail("model type \"", type->string(), "\" is not supported (expected \"BPE\", byte-level)");
    auto null_or = [&](const char* key, auto&& ok) {
      auto f = m.get(key);
      if (f && !f->is_null() && !ok(*f))
        f->fail("unsupported value ", JsonField::describe(f->value()), " (expected null)");
    };
    null_or("dropout", [](const JsonField& f) { return f.value().is_number() && f.value().get<double>() == 0.0; });
    null_or("continuing_subword_prefix", [](const JsonField& f) { return f.string().empty(); });
    null_or("end_of_word_suffix", [](const JsonField& f) { return f.string().empty(); });
    if (m.boolean_or("byte_fallback", false))
      m["byte_fallback"].fail("true is not supported (expected false: byte-level BPE spells every byte already)");
    if (auto unk = m.get("unk_token"); unk && !unk->is_null()) unk->string();  // never used: no byte is unknown
    bool ignore_merges = m.boolean_or("ignore_merges", false);

    // The entries themselves were streamed out of the DOM (and checked) by TokenizerJson.
    m["vocab"].expect_object();
    m["merges"].size_of_array();
    for (const auto& [text, id] : doc.vocab) {
      grow(id);
      if (t_.kinds_[id] != kNone)
        fail(label_, ": model.vocab[\"", text, "\"]: id ", id, " is already used by \"", t_.tokens_[id],
             "\" (expected unique ids)");
      t_.kinds_[id] = kModel;
      t_.tokens_[id] = text;
      auto bytes = byte_level::token_text_to_bytes(text);
      t_.bytes_[id] = bytes ? std::move(*bytes) : text;  // HF's ByteLevel decoder writes such tokens verbatim
    }
    t_.bpe_ = std::make_unique<Bpe>(std::move(doc.vocab), doc.merges, ignore_merges, label_ + ": model");
  }

  void added_tokens(const std::optional<JsonField>& f) {
    std::vector<AddedToken> tokens;
    if (f && !f->is_null()) {
      for (size_t i = 0, n = f->size_of_array(); i < n; ++i) {
        JsonField e = f->at(i);
        AddedToken t;
        t.id = e["id"].id();
        t.content = e["content"].string();
        t.single_word = e.boolean_or("single_word", false);
        t.lstrip = e.boolean_or("lstrip", false);
        t.rstrip = e.boolean_or("rstrip", false);
        t.normalized = e.boolean_or("normalized", !e.boolean_or("special", false));
        t.special = e.boolean_or("special", false);
        grow(t.id);
        t_.kinds_[t.id] = t.special ? kSpecial : kAdded;
        t_.tokens_[t.id] = t.content;
        t_.bytes_[t.id] = t.content;  // added tokens decode to their text
        t_.added_ids_[t.content] = t.id;
        tokens.push_back(std::move(t));
      }
    }
    t_.added_ = std::make_unique<AddedVocabulary>(tokens);
  }

  void pre_tokenizer(const JsonField& f) {
    if (f.is_null()) f.fail("null is not supported (expected ByteLevel, or a Sequence of Split steps and ByteLevel)");
    std::vector<JsonField> steps;
    if (f.type() == "Sequence") {
      JsonField list = f["pretokenizers"];
      for (size_t i = 0, n = list.size_of_array(); i < n; ++i) steps.push_back(list.at(i));
    } else {
      steps.push_back(f);
    }
    if (steps.empty() || steps.back().type() != "ByteLevel")
      f.fail("pre-tokenizer \"", steps.empty() ? "Sequence" : steps.back().type(), "\" is not supported (expected ",
             "ByteLevel, or a Sequence of Split steps ending with ByteLevel: the model is byte-level BPE)");
    std::vector<Regex> splits;
    for (size_t i = 0; i + 1 < steps.size(); ++i) {
      const JsonField& s = steps[i];
      if (s.type() != "Split")
        s["type"].fail("pre-tokenizer \"", s.type(), "\" is not supported (expected Split or ByteLevel)");
      if (s["behavior"].string() != "Isolated")
        s["behavior"].fail("\"", s["behavior"].string(), "\" is not supported (expected \"Isolated\")");
      if (s.boolean_or("invert", false)) s["invert"].fail("true is not supported (expected false)");
      JsonField pattern = s["pattern"];
      if (auto re = pattern.get("Regex")) {
        splits.emplace_back(re->string(), label_ + ": " + re->path());
      } else if (auto lit = pattern.get("String")) {
        splits.emplace_back(lit->string(), label_ + ": " + lit->path(), /*literal=*/true);
      } else {
        pattern.fail("expected {\"Regex\": ...} or {\"String\": ...}");
      }
    }
    const JsonField& byte_level = steps.back();
    // Both default to true in HF when left out of the file.
    t_.pre_tokenizer_ = std::make_unique<PreTokenizer>(
        std::move(splits), byte_level.boolean_or("add_prefix_space", true), byte_level.boolean_or("use_regex", true));
  }

  void post_processor(const JsonField& f) {
    const std::string& type = f.type();
    if (type == "ByteLevel") return;  // it only trims offsets, which we do not report
    if (type == "Sequence") {
      JsonField list = f["processors"];
      for (size_t i = 0, n = list.size_of_array(); i < n; ++i) post_processor(list.at(i));
      return;
    }
    if (type != "TemplateProcessing")
      f["type"].fail("post-processor \"", type, "\" is not supported (expected TemplateProcessing, ByteLevel, ",
                     "Sequence or null)");
    if (seen_template_) f.fail("a second TemplateProcessing is not supported");
    seen_template_ = true;
    // Only the "single" template matters: we never encode pairs of texts.
    JsonField single = f["single"];
    bool seen_a = false;
    for (size_t i = 0, n = single.size_of_array(); i < n; ++i) {
      JsonField item = single.at(i);
      if (auto seq = item.get("Sequence")) {
        if ((*seq)["id"].string() != "A" || seen_a)
          (*seq)["id"].fail("expected one {\"Sequence\": {\"id\": \"A\"}} in the single template");
        seen_a = true;
      } else if (auto sp = item.get("SpecialToken")) {
        const std::string& name = (*sp)["id"].string();
        auto entry = f["special_tokens"].get(name.c_str());
        if (!entry) (*sp)["id"].fail("\"", name, "\" is not in the post-processor's special_tokens");
        JsonField ids = (*entry)["ids"];
        for (size_t k = 0, m = ids.size_of_array(); k < m; ++k) {
          int32_t id = ids.at(k).id();
          if (id >= t_.vocab_size() || t_.kinds_[id] == kNone)
            ids.at(k).fail("token id ", id, " is not in the vocabulary");
          (seen_a ? t_.suffix_ : t_.prefix_).push_back(id);
        }
      } else {
        item.fail("expected {\"SpecialToken\": ...} or {\"Sequence\": ...}");
      }
    }
    if (!seen_a) single.fail("expected the single template to contain {\"Sequence\": {\"id\": \"A\"}}");
  }

  void decoder(const JsonField& f) {
    if (f.is_null() || f.type() != "ByteLevel")
      f.fail("decoder ", f.is_null() ? std::string("null") : cat('"', f.type(), '"'),
             " is not supported (expected ByteLevel)");
  }

  // Makes room in the id tables for `id`.
  void grow(int32_t id) {
    if (id < t_.vocab_size()) return;
    size_t n = size_t(id) + 1;
    t_.tokens_.resize(n);
    t_.bytes_.resize(n);
    t_.kinds_.resize(n, kNone);
  }

  Tokenizer& t_;
  const std::string& label_;
  bool seen_template_ = false;
};

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::string& path) { return from_json(read_text_file(path), path); }

Tokenizer Tokenizer::from_json(std::string_view json_text, const std::string& label) {
  TokenizerJson doc = TokenizerJson::parse(json_text, label);
  Tokenizer t;
  Loader(t, label).load(doc);
  return t;
}

Tokenizer Tokenizer::byte_level_default() { return from_json(byte_level_default_json(), "byte_level_default"); }

std::string Tokenizer::byte_level_default_json() {
  json root = json::parse(R"({
    "added_tokens": [
      {"id": 256, "content": "<|begin_of_text|>", "special": true, "normalized": false},
      {"id": 257, "content": "<|end_of_text|>", "special": true, "normalized": false}
    ],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false},
    "post_processor": {
      "type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [256], "tokens": ["<|begin_of_text|>"]}}
    },
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {}, "merges": []}
  })");
  json& vocab = root["model"]["vocab"];
  for (int b = 0; b < 256; ++b) {
    std::string text;
    byte_level::append_token_text(std::string(1, char(b)), text);
    vocab[text] = b;
  }
  return root.dump(2) + "\n";
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  utf8::check_valid(text, "encode: the input text");
  // Positions inside a word are int32_t; no prompt comes near this.
  if (text.size() > size_t(INT32_MAX)) fail("encode: the input text is ", text.size(), " bytes long (at most 2 GiB)");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + prefix_.size() + suffix_.size() + 4);
  if (add_special) ids = prefix_;
  for (const AddedVocabulary::Piece& piece : added_->split(text)) {
    if (piece.id >= 0) {
      ids.push_back(piece.id);
    } else {
      pre_tokenizer_->pre_tokenize(piece.text, [&](std::string_view word) { bpe_->encode_word(word, ids); });
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    std::string_view b = id_to_bytes(id);
    if (!(skip_special && kinds_[id] == kSpecial)) bytes.append(b);
  }
  std::string text;
  utf8::append_lossy(bytes, /*final=*/true, text);
  return text;
}

void Tokenizer::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) fail("token id ", id, " is out of range (expected 0 <= id < ", vocab_size(), ")");
  if (kinds_[id] == kNone) fail("token id ", id, " has no token in this vocabulary");
}

std::string_view Tokenizer::id_to_bytes(int32_t id) const {
  check_id(id);
  return bytes_[id];
}

std::string_view Tokenizer::id_to_token(int32_t id) const {
  check_id(id);
  return tokens_[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
  return bpe_->token_to_id(token);
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && kinds_[id] == kSpecial; }

std::optional<int32_t> Tokenizer::bos_id() const {
  if (prefix_.empty()) return std::nullopt;
  return prefix_.front();
}

}  // namespace bamba
