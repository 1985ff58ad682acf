#include "tokenizer/tokenizer_json.h"

namespace bamba {

using json = nlohmann::json;

namespace {

// Builds the DOM like nlohmann's own parser, except for the members of model.vocab and model.merges, which go to
// TokenizerJson's vectors. Errors in those entries are thrown here, where their key / index is known.
class Reader final : public nlohmann::json_sax<json> {
 public:
  Reader(TokenizerJson& out, const std::string& label) : out_(out), label_(label) {}

  bool null() override { return scalar(json(nullptr)); }
  bool boolean(bool v) override { return scalar(json(v)); }
  bool number_integer(number_integer_t v) override { return scalar(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return scalar(json(v)); }
  bool binary(binary_t&) override { return scalar(json()); }  // only binary formats have these

  bool string(string_t& s) override {
    Mode mode = frames_.empty() ? Mode::dom : frames_.back().mode;
    if (mode == Mode::merges) {  // "a b": tokens never hold a bare space (the byte-level map spells it 'Ġ')
      size_t space = s.find(' ');
      if (space == std::string::npos)
        bad_merge("expected \"left right\" (two tokens separated by a space), got ", JsonField::describe(json(s)));
      out_.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      return true;
    }
    if (mode == Mode::pair) {
      if (pair_.size() == 2) bad_merge("expected a pair [\"left\", \"right\"], got more than two strings");
      pair_.push_back(std::move(s));
      return true;
    }
    return scalar(json(std::move(s)));
  }

  bool start_object(size_t) override { return open(json::object()); }
  bool start_array(size_t) override { return open(json::array()); }
  bool key(string_t& k) override {
    frames_.back().key = std::move(k);
    return true;
  }
  bool end_object() override {
    frames_.pop_back();
    return true;
  }
  bool end_array() override {
    if (frames_.back().mode == Mode::pair) {
      if (pair_.size() != 2) bad_merge("expected a pair [\"left\", \"right\"], got ", pair_.size(), " strings");
      out_.merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
    }
    frames_.pop_back();
    return true;
  }

  bool parse_error(size_t position, const std::string&, const json::exception& e) override {
    fail(label_, ": invalid JSON at byte ", position, ": ", e.what());
  }

 private:
  // dom: an ordinary value. vocab / merges: the streamed containers. pair: a ["left", "right"] merge.
  enum class Mode { dom, vocab, merges, pair };
  struct Frame {
    json* node;  // the DOM container (null for a pair)
    Mode mode;
    std::string key;  // the current key, in an object
  };

  bool scalar(json v) {
    if (frames_.empty()) {
      out_.root = std::move(v);
      return true;
    }
    Frame& f = frames_.back();
    switch (f.mode) {
      case Mode::dom:
        insert(std::move(v));
        return true;
      case Mode::vocab:
        if (!JsonField::is_id(v))
          fail(label_, ": model.vocab[\"", f.key, "\"]: expected a token id (an integer in [0, ", kMaxTokens,
               ")), got ", JsonField::describe(v));
        out_.vocab.emplace_back(std::move(f.key), int32_t(v.get<int64_t>()));
        return true;
      default:
        bad_merge("expected a merge, \"left right\" or [\"left\", \"right\"], got ", JsonField::kind(v));
    }
  }

  bool open(json container) {
    Mode parent = frames_.empty() ? Mode::dom : frames_.back().mode;
    if (parent == Mode::vocab) scalar(std::move(container));  // throws: an id was expected
    if (parent == Mode::pair) bad_merge("expected a pair of strings, got ", JsonField::kind(container), " inside");
    if (parent == Mode::merges) {
      if (!container.is_array()) bad_merge("expected a merge, \"left right\" or [\"left\", \"right\"], got an object");
      pair_.clear();
      frames_.push_back({nullptr, Mode::pair, {}});
      return true;
    }
    json* node = insert(std::move(container));
    Mode mode = Mode::dom;
    // model.vocab (an object) and model.merges (an array) are streamed; the DOM keeps an empty placeholder, so
    // that a missing or mistyped field is still reported by the loader.
    if (frames_.size() == 2 && frames_[0].node->is_object() && frames_[0].key == "model" &&
        frames_[1].node->is_object()) {
      if (frames_[1].key == "vocab" && node->is_object()) mode = Mode::vocab, out_.vocab.clear();
      if (frames_[1].key == "merges" && node->is_array()) mode = Mode::merges, out_.merges.clear();
    }
    frames_.push_back({node, mode, {}});
    return true;
  }

  json* insert(json v) {
    if (frames_.empty()) {
      out_.root = std::move(v);
      return &out_.root;
    }
    Frame& f = frames_.back();
    if (f.node->is_object()) {
      json& slot = (*f.node)[f.key];
      slot = std::move(v);
      return &slot;
    }
    f.node->push_back(std::move(v));
    return &f.node->back();
  }

  template <typename... Args>
  [[noreturn]] void bad_merge(Args&&... args) {
    fail(label_, ": model.merges[", out_.merges.size(), "]: ", std::forward<Args>(args)...);
  }

  TokenizerJson& out_;
  const std::string& label_;
  std::vector<Frame> frames_;  // the open containers, outermost first
  std::vector<std::string> pair_;
};

}  // namespace

TokenizerJson TokenizerJson::parse(std::string_view text, const std::string& label) {
  TokenizerJson out;
  Reader reader(out, label);
  json::sax_parse(text, &reader);
  return out;
}

JsonField JsonField::operator[](const char* key) const {
  auto child = get(key);
  if (!child) fail("missing field \"", key, "\"");
  return *child;
}

std::optional<JsonField> JsonField::get(const char* key) const {
  expect_object();
  auto it = v_.find(key);
  if (it == v_.end()) return std::nullopt;
  return JsonField(*it, path_.empty() ? key : path_ + "." + key, label_);
}

JsonField JsonField::at(size_t i) const {
  if (i >= size_of_array()) fail("expected at least ", i + 1, " elements, got ", v_.size());
  return JsonField(v_[i], cat(path_, "[", i, "]"), label_);
}

size_t JsonField::size_of_array() const {
  if (!v_.is_array()) fail("expected an array, got ", kind(v_));
  return v_.size();
}

void JsonField::expect_object() const {
  if (!v_.is_object()) fail("expected an object, got ", kind(v_));
}

const std::string& JsonField::string() const {
  if (!v_.is_string()) fail("expected a string, got ", kind(v_));
  return v_.get_ref<const std::string&>();
}

bool JsonField::boolean() const {
  if (!v_.is_boolean()) fail("expected true or false, got ", kind(v_));
  return v_.get<bool>();
}

bool JsonField::boolean_or(const char* key, bool fallback) const {
  auto f = get(key);
  return f && !f->is_null() ? f->boolean() : fallback;
}

int32_t JsonField::id() const {
  if (!is_id(v_)) fail("expected a token id (an integer in [0, ", kMaxTokens, ")), got ", describe(v_));
  return int32_t(v_.get<int64_t>());
}

bool JsonField::is_id(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>() < uint64_t(kMaxTokens);
  return v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < kMaxTokens;
}

std::string JsonField::kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::string:
      return "a string";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_float:
      return "a number with a fraction";
    default:
      return "an integer";
  }
}

std::string JsonField::describe(const json& v) {
  if (v.is_string() && v.get_ref<const std::string&>().size() <= 40)
    return cat('"', v.get_ref<const std::string&>(), '"');
  if (v.is_number()) return v.dump();
  return kind(v);
}

}  // namespace bamba
