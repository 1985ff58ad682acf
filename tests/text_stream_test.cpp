// TextStream: stop strings cut the output just before them, text that might start one is held back, and
// multi-byte characters split across tokens come out whole.
#include <gtest/gtest.h>

#include "engine/text_stream.h"

namespace bamba {
namespace {

// With byte_level_default, token id = byte value: feed a string byte by byte.
std::vector<std::string> feed(TextStream& ts, const std::string& s) {
  std::vector<std::string> pieces;
  for (unsigned char c : s) pieces.push_back(ts.push(c));
  return pieces;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& p : v) s += p;
  return s;
}

TEST(TextStream, StopsBeforeTheStopStringAndHoldsBackPartialMatches) {
  Tokenizer tok = Tokenizer::byte_level_default();
  TextStream ts(tok, {"END", "\n\n"});
  auto pieces = feed(ts, "abc EN");
  EXPECT_EQ(join(pieces), "abc ");  // "EN" might begin "END": held back
  EXPECT_FALSE(ts.stopped());
  pieces = feed(ts, "D tail");
  EXPECT_TRUE(ts.stopped());
  EXPECT_EQ(join(pieces), "");
  EXPECT_EQ(ts.flush(), "");
}

TEST(TextStream, ReleasesHeldTextWhenItIsNotAStop) {
  Tokenizer tok = Tokenizer::byte_level_default();
  TextStream ts(tok, {"END"});
  std::string out = join(feed(ts, "x EN y E"));
  out += ts.flush();
  EXPECT_EQ(out, "x EN y E");
  EXPECT_FALSE(ts.stopped());
}

TEST(TextStream, NeverSplitsAUtf8Character) {
  Tokenizer tok = Tokenizer::byte_level_default();
  TextStream ts(tok, {});
  auto pieces = feed(ts, "h\xC3\xA9\xF0\x9F\x98\x80!");  // "hé😀!"
  EXPECT_EQ(pieces, (std::vector<std::string>{"h", "", "\xC3\xA9", "", "", "", "\xF0\x9F\x98\x80", "!"}));
}

TEST(TextStream, StopStringAcrossAMultiByteCharacter) {
  Tokenizer tok = Tokenizer::byte_level_default();
  TextStream ts(tok, {"\xC3\xA9t\xC3\xA9"});  // "été"
  std::string out = join(feed(ts, "un \xC3\xA9t\xC3\xA9 chaud"));
  EXPECT_TRUE(ts.stopped());
  EXPECT_EQ(out, "un ");
}

}  // namespace
}  // namespace bamba
