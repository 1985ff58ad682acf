#include "eval/langdetect.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "eval/py_random.h"
#include "eval/py_re.h"
#include "eval/py_str.h"

namespace bamba::eval {
namespace {

namespace fs = std::filesystem;

constexpr int kTrials = 7;
constexpr double kAlpha = 0.5, kAlphaWidth = 0.05;
constexpr int kIterationLimit = 1000;
constexpr double kProbThreshold = 0.1, kConvThreshold = 0.99999, kBaseFreq = 10000;
constexpr size_t kMaxTextLength = 10000;

// A 1-3-gram as one integer: each code point + 1 takes 21 bits.
uint64_t pack(const char32_t* g, size_t n) {
  uint64_t key = 0;
  for (size_t i = 0; i < n; ++i) key = (key << 21) | uint64_t(g[i] + 1);
  return key;
}

std::u32string decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(py::next_code_point(s, i));
  return out;
}

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f)
    fail("langdetect data: cannot open ", p.string(),
         " (install Debian's python3-langdetect, or point $BAMBA_LANGDETECT_DIR at a folder with profiles/ and "
         "utils/messages.properties)");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// messages.properties: key=value lines whose values spell characters as \uXXXX (Python reads them with
// unicode_escape).
std::unordered_map<std::string, std::u32string> read_messages(const fs::path& p) {
  std::unordered_map<std::string, std::u32string> out;
  std::istringstream in(read_file(p));
  std::string line;
  while (std::getline(in, line)) {
    std::string_view l = py::strip(line);
    size_t eq = l.find('=');
    if (eq == std::string_view::npos) continue;
    std::u32string value;
    for (size_t i = eq + 1; i < l.size();) {
      if (l[i] == '\\' && i + 6 <= l.size() && l[i + 1] == 'u') {
        value.push_back(char32_t(std::stoul(std::string(l.substr(i + 2, 4)), nullptr, 16)));
        i += 6;
      } else {
        value.push_back(py::next_code_point(l, i));
      }
    }
    out.emplace(std::string(l.substr(0, eq)), std::move(value));
  }
  return out;
}

bool char_is_upper(char32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z';
  std::string s;
  py::append_utf8(s, c);
  return py::is_upper(s);
}

}  // namespace

LangDetector::LangDetector(std::string dir) {
  if (dir.empty()) {
    const char* env = std::getenv("BAMBA_LANGDETECT_DIR");
    dir = env && *env ? env : "/usr/lib/python3/dist-packages/langdetect";
  }
  dir_ = dir;
  fs::path profiles = fs::path(dir) / "profiles";
  std::error_code ec;
  if (!fs::is_directory(profiles, ec))
    fail("langdetect data: no profiles folder at ", profiles.string(),
         " (install Debian's python3-langdetect, or set $BAMBA_LANGDETECT_DIR to a folder holding profiles/ and "
         "utils/messages.properties)");

  auto messages = read_messages(fs::path(dir) / "utils" / "messages.properties");
  auto message = [&](const std::string& key) -> const std::u32string& {
    auto it = messages.find(key);
    if (it == messages.end()) fail("langdetect data: ", dir, "/utils/messages.properties has no key ", key);
    return it->second;
  };
  latin1_excluded_ = message("NGram.LATIN1_EXCLUDE");
  vi_letters_ = message("TO_NORMALIZE_VI_CHARS");
  vi_marks_ = message("DMARK_CLASS");
  for (const char* k : {"0300", "0301", "0303", "0309", "0323"}) {
    vi_composed_.push_back(message(cat("NORMALIZED_VI_CHARS_", k)));
    if (vi_composed_.back().size() != vi_letters_.size())
      fail("langdetect data: NORMALIZED_VI_CHARS_", k, " has ", vi_composed_.back().size(), " characters, expected ",
           vi_letters_.size());
  }
  // Every NGram.KANJI_* class maps its characters to its first one (the classes are disjoint).
  for (const auto& [key, chars] : messages)
    if (key.rfind("NGram.KANJI_", 0) == 0 && !chars.empty())
      for (char32_t c : chars) cjk_map_[c] = chars[0];

  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(profiles))
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
  // Python takes os.listdir's order, which depends on the file system; sorted is the reproducible choice (the order
  // only breaks exact ties and changes the summation order of the normalization).
  std::sort(files.begin(), files.end());
  if (files.size() < 2) fail("langdetect data: ", profiles.string(), " holds ", files.size(), " profiles, need 2+");

  struct Profile {
    std::string name;
    double n_words[3];
    std::vector<std::pair<std::u32string, double>> freq;
  };
  std::vector<Profile> loaded;
  for (const auto& f : files) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file(f));
    } catch (const nlohmann::json::exception& e) {
      fail("langdetect profile ", f.string(), ": invalid JSON: ", e.what());
    }
    Profile p;
    if (!j.is_object() || !j.contains("name") || !j["name"].is_string() || !j.contains("n_words") ||
        !j["n_words"].is_array() || j["n_words"].size() != 3 || !j.contains("freq") || !j["freq"].is_object())
      fail("langdetect profile ", f.string(), ": expected an object with name, n_words[3] and freq");
    p.name = j["name"].get<std::string>();
    for (int n = 0; n < 3; ++n) {
      if (!j["n_words"][n].is_number()) fail("langdetect profile ", f.string(), ": n_words[", n, "] is not a number");
      p.n_words[n] = j["n_words"][n].get<double>();
    }
    for (const auto& [gram, count] : j["freq"].items()) {
      if (!count.is_number()) fail("langdetect profile ", f.string(), ": freq[\"", gram, "\"] is not a number");
      p.freq.emplace_back(decode(gram), count.get<double>());
    }
    if (std::find(langs_.begin(), langs_.end(), p.name) != langs_.end())
      fail("langdetect profile ", f.string(), ": language ", p.name, " is loaded twice");
    langs_.push_back(p.name);
    loaded.push_back(std::move(p));
  }

  const size_t L = langs_.size();
  for (size_t l = 0; l < L; ++l) {
    for (const auto& [gram, count] : loaded[l].freq) {
      if (gram.empty() || gram.size() > 3) continue;  // only 1-3-grams are ever looked up
      uint64_t key = pack(gram.data(), gram.size());
      auto [it, inserted] = gram_index_.emplace(key, uint32_t(gram_index_.size()));
      if (inserted) probs_.resize(probs_.size() + L, 0.0);
      probs_[size_t(it->second) * L + l] = count / loaded[l].n_words[gram.size() - 1];
    }
  }
}

char32_t LangDetector::normalize(char32_t c) const {
  if (c <= 0x7F) return (c < 'A' || (c > 'Z' && c < 'a') || c > 'z') ? U' ' : c;
  if (c <= 0xFF) return latin1_excluded_.find(c) != std::u32string::npos ? U' ' : c;
  if (c >= 0x180 && c <= 0x24F) {  // Latin Extended-B: Romanian comma-below letters to cedilla ones
    if (c == 0x219) return 0x15F;
    if (c == 0x21B) return 0x163;
    return c;
  }
  if (c >= 0x600 && c <= 0x6FF) return c == 0x6CC ? 0x64A : c;  // Farsi yeh to Arabic yeh
  if (c >= 0x1E00 && c <= 0x1EFF) return c >= 0x1EA0 ? 0x1EC3 : c;
  if (c >= 0x2000 && c <= 0x206F) return U' ';                                   // General Punctuation
  if (c >= 0x3040 && c <= 0x309F) return 0x3042;                                 // Hiragana
  if (c >= 0x30A0 && c <= 0x30FF) return 0x30A2;                                 // Katakana
  if ((c >= 0x3100 && c <= 0x312F) || (c >= 0x31A0 && c <= 0x31BF)) return 0x3105;  // Bopomofo
  if (c >= 0x4E00 && c <= 0x9FFF) {
    auto it = cjk_map_.find(c);
    return it == cjk_map_.end() ? c : it->second;
  }
  if (c >= 0xAC00 && c <= 0xD7AF) return 0xAC00;  // Hangul syllables
  return c;
}

std::u32string LangDetector::clean(std::string_view text) const {
  static const PyRegex url("https?://[-_.?&~;+=/#0-9A-Za-z]{1,2076}", PyRegex::kNone, "langdetect URL pattern");
  static const PyRegex mail("[-_.0-9A-Za-z]{1,64}@[-_0-9A-Za-z]{1,255}[-_.0-9A-Za-z]{1,255}", PyRegex::kNone,
                            "langdetect e-mail pattern");
  std::u32string raw = decode(mail.sub(url.sub(text, " "), " "));

  // Vietnamese: a letter followed by a combining tone mark becomes the precomposed letter.
  std::u32string vi;
  vi.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    size_t letter = vi_letters_.find(raw[i]);
    size_t mark = i + 1 < raw.size() ? vi_marks_.find(raw[i + 1]) : std::u32string::npos;
    if (letter != std::u32string::npos && mark != std::u32string::npos) {
      vi.push_back(vi_composed_[mark][letter]);
      ++i;
    } else {
      vi.push_back(raw[i]);
    }
  }

  std::u32string out;
  char32_t prev = 0;
  for (size_t i = 0; i < std::min(vi.size(), kMaxTextLength); ++i) {
    if (vi[i] != U' ' || prev != U' ') out.push_back(vi[i]);
    prev = vi[i];
  }

  // Mostly non-Latin text loses its Latin letters. Python's block test here compares a block number with a block
  // name and is therefore always true, so every character from U+0300 up counts as non-Latin.
  size_t latin = 0, non_latin = 0;
  for (char32_t c : out) {
    if (c >= U'A' && c <= U'z') ++latin;
    else if (c >= 0x300) ++non_latin;
  }
  if (latin * 2 < non_latin) {
    std::u32string kept;
    for (char32_t c : out)
      if (c < U'A' || c > U'z') kept.push_back(c);
    out = std::move(kept);
  }
  return out;
}

std::vector<uint32_t> LangDetector::ngrams(const std::u32string& text) const {
  std::vector<uint32_t> out;
  std::u32string grams = U" ";  // the last up to 3 normalized characters; a space starts a word
  bool capital_word = false;
  for (char32_t raw : text) {
    char32_t c = normalize(raw);
    char32_t last = grams.back();
    if (last == U' ') {
      grams = U" ";
      capital_word = false;
      if (c == U' ') continue;
    } else if (grams.size() >= 3) {
      grams.erase(0, 1);
    }
    grams.push_back(c);
    if (char_is_upper(c)) {
      if (char_is_upper(last)) capital_word = true;
    } else {
      capital_word = false;
    }
    if (capital_word) continue;  // all-capital words (acronyms) say little about the language
    for (size_t n = 1; n <= 3 && n <= grams.size(); ++n) {
      const char32_t* g = grams.data() + grams.size() - n;
      if (n == 1 && g[0] == U' ') continue;
      auto it = gram_index_.find(pack(g, n));
      if (it != gram_index_.end()) out.push_back(it->second);
    }
  }
  return out;
}

std::optional<std::vector<std::pair<std::string, double>>> LangDetector::probabilities(std::string_view text,
                                                                                       uint64_t seed) const {
  std::vector<uint32_t> grams = ngrams(clean(text));
  if (grams.empty()) return std::nullopt;
  const size_t L = langs_.size();
  std::vector<double> mean(L, 0.0), prob(L);
  PyRandom rng(seed);
  for (int t = 0; t < kTrials; ++t) {
    std::fill(prob.begin(), prob.end(), 1.0 / double(L));
    double alpha = kAlpha + rng.gauss() * kAlphaWidth;
    double weight = alpha / kBaseFreq;
    for (int i = 0;; ++i) {
      const double* p = &probs_[size_t(grams[rng.below(uint32_t(grams.size()))]) * L];
      for (size_t l = 0; l < L; ++l) prob[l] *= weight + p[l];
      if (i % 5 == 0) {
        double sum = 0, max_p = 0;
        for (double v : prob) sum += v;
        for (double& v : prob) {
          v /= sum;
          max_p = std::max(max_p, v);
        }
        if (max_p > kConvThreshold || i >= kIterationLimit) break;
      }
    }
    for (size_t l = 0; l < L; ++l) mean[l] += prob[l] / kTrials;
  }
  std::vector<std::pair<std::string, double>> out;
  for (size_t l = 0; l < L; ++l)
    if (mean[l] > kProbThreshold) out.emplace_back(langs_[l], mean[l]);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}

std::optional<std::string> LangDetector::detect(std::string_view text, uint64_t seed) const {
  auto probs = probabilities(text, seed);
  if (!probs) return std::nullopt;
  return probs->empty() ? std::string("unknown") : probs->front().first;
}

const LangDetector& default_lang_detector() {
  static const LangDetector detector;
  return detector;
}

}  // namespace bamba::eval
