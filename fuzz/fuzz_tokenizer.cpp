// libFuzzer target for the tokenizer. The input bytes are used three ways:
//  1. as a tokenizer.json: from_json must load it or throw bamba::Error, never crash;
//  2. as text for byte_level_default(): valid UTF-8 must round-trip through encode/decode and the streaming decoder,
//     anything else must be refused with an Error;
//  3. as a sequence of ids (one per byte) for byte_level_default(): streaming must equal decode().
// With BAMBA_FUZZ_TOKENIZER=/path/to/tokenizer.json, (2) runs on that tokenizer too (e.g. the Llama-3 fixture).
// Build: CXX=clang++ CC=clang cmake -S . -B build-fuzz -G Ninja -DBAMBA_FUZZ=ON -DBAMBA_TESTS=OFF
//        cmake --build build-fuzz --target fuzz_tokenizer && build-fuzz/fuzz_tokenizer -max_total_time=60
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "tokenizer/stream_decoder.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
    std::abort();
  }
}

std::string stream(const bamba::Tokenizer& tok, const std::vector<int32_t>& ids) {
  bamba::StreamDecoder dec(tok);
  std::string out;
  for (int32_t id : ids) out += dec.push(id);
  return out + dec.flush();
}

void round_trip(const bamba::Tokenizer& tok, std::string_view text) {
  bool valid = true;
  try {
    bamba::utf8::check_valid(text, "text");
  } catch (const bamba::Error&) {
    valid = false;
  }
  try {
    std::vector<int32_t> ids = tok.encode(text, true);
    check(valid, "encode accepted ill-formed UTF-8");
    std::vector<int32_t> body(ids.begin() + (tok.bos_id() ? 1 : 0), ids.end());
    check(tok.decode(body) == text, "decode(encode(text)) != text");
    check(stream(tok, body) == text, "streamed decode != text");
  } catch (const bamba::Error&) {
    check(!valid, "encode refused valid UTF-8");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);

  try {
    // Whatever loads must encode and decode some text (exact round trips are not promised: the file may add a
    // prefix space, give an added token a byte's id, ...).
    bamba::Tokenizer tok = bamba::Tokenizer::from_json(bytes, "fuzz.json");
    tok.decode(tok.encode(bytes, true));
  } catch (const bamba::Error&) {
  }

  static const bamba::Tokenizer byte_level = bamba::Tokenizer::byte_level_default();
  round_trip(byte_level, bytes);

  std::vector<int32_t> ids;
  for (size_t i = 0; i < size; ++i) ids.push_back(data[i] == 0xFF && i + 1 < size ? 256 + data[++i] % 2 : data[i]);
  check(stream(byte_level, ids) == byte_level.decode(ids), "streamed decode != decode");

  static const std::unique_ptr<bamba::Tokenizer> extra = [] {
    const char* path = std::getenv("BAMBA_FUZZ_TOKENIZER");
    return path ? std::make_unique<bamba::Tokenizer>(bamba::Tokenizer::from_file(path)) : nullptr;
  }();
  if (extra) round_trip(*extra, bytes);
  return 0;
}
