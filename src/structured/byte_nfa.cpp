#include "structured/byte_nfa.h"

#include <algorithm>
#include <array>

#include "core/error.h"

namespace bamba {

namespace {

int utf8_len(uint32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }

std::array<uint8_t, 4> utf8(uint32_t c, int n) {
  std::array<uint8_t, 4> b{};
  if (n == 1) b[0] = uint8_t(c);
  else if (n == 2) b = {uint8_t(0xC0 | (c >> 6)), uint8_t(0x80 | (c & 0x3F)), 0, 0};
  else if (n == 3) b = {uint8_t(0xE0 | (c >> 12)), uint8_t(0x80 | ((c >> 6) & 0x3F)), uint8_t(0x80 | (c & 0x3F)), 0};
  else b = {uint8_t(0xF0 | (c >> 18)), uint8_t(0x80 | ((c >> 12) & 0x3F)), uint8_t(0x80 | ((c >> 6) & 0x3F)), uint8_t(0x80 | (c & 0x3F))};
  return b;
}

// Splits [lo, hi] (one encoded length n) until every piece is a product of byte ranges: the encodings of lo
// and hi then differ only where all continuation bytes below run over their whole range.
void byte_sequences(uint32_t lo, uint32_t hi, int n, std::vector<std::vector<std::pair<uint8_t, uint8_t>>>& out) {
  for (int i = 1; i < n; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        byte_sequences(lo, lo | m, n, out);
        byte_sequences((lo | m) + 1, hi, n, out);
        return;
      }
      if ((hi & m) != m) {
        byte_sequences(lo, (hi & ~m) - 1, n, out);
        byte_sequences(hi & ~m, hi, n, out);
        return;
      }
    }
  }
  const auto a = utf8(lo, n), b = utf8(hi, n);
  std::vector<std::pair<uint8_t, uint8_t>> seq;
  for (int k = 0; k < n; ++k) seq.push_back({a[size_t(k)], b[size_t(k)]});
  out.push_back(std::move(seq));
}

}  // namespace

int32_t ByteNfa::state() {
  if (edges_.size() >= max_states_)
    fail("the grammar is too large (more than ", max_states_, " automaton states): simplify the schema or pattern");
  edges_.emplace_back();
  eps_.emplace_back();
  return int32_t(edges_.size()) - 1;
}

ByteNfa::Frag ByteNfa::empty() {
  const int32_t s = state();
  return {s, s};
}

ByteNfa::Frag ByteNfa::bytes(std::string_view s) {
  const int32_t in = state();
  int32_t at = in;
  for (char c : s) {
    const int32_t nx = state();
    edge(at, uint8_t(c), uint8_t(c), nx);
    at = nx;
  }
  return {in, at};
}

ByteNfa::Frag ByteNfa::chars(const CodepointRanges& ranges) {
  const int32_t in = state(), out = state();
  std::vector<std::vector<std::pair<uint8_t, uint8_t>>> seqs;
  for (auto [lo, hi] : ranges) {
    hi = std::min<uint32_t>(hi, 0x10FFFF);
    // Surrogates are not characters: cut them out.
    std::vector<std::pair<uint32_t, uint32_t>> parts;
    if (lo <= 0xDFFF && hi >= 0xD800) {
      if (lo < 0xD800) parts.push_back({lo, 0xD7FF});
      if (hi > 0xDFFF) parts.push_back({0xE000, hi});
    } else if (lo <= hi) {
      parts.push_back({lo, hi});
    }
    for (auto [a, b] : parts)
      for (uint32_t x = a; x <= b;) {  // one encoded length at a time
        const int n = utf8_len(x);
        const uint32_t top = n == 1 ? 0x7F : n == 2 ? 0x7FF : n == 3 ? 0xFFFF : 0x10FFFF;
        const uint32_t y = std::min(b, top);
        byte_sequences(x, y, n, seqs);
        x = y + 1;
      }
  }
  for (const auto& sq : seqs) {
    int32_t at = in;
    for (size_t k = 0; k < sq.size(); ++k) {
      const int32_t nx = k + 1 == sq.size() ? out : state();
      edge(at, sq[k].first, sq[k].second, nx);
      at = nx;
    }
  }
  return {in, out};
}

ByteNfa::Frag ByteNfa::seq(Frag a, Frag b) {
  eps(a.out, b.in);
  return {a.in, b.out};
}

ByteNfa::Frag ByteNfa::alt(const std::vector<Frag>& parts) {
  BAMBA_CHECK(!parts.empty(), "ByteNfa::alt of nothing");
  if (parts.size() == 1) return parts[0];
  const int32_t in = state(), out = state();
  for (const Frag& f : parts) {
    eps(in, f.in);
    eps(f.out, out);
  }
  return {in, out};
}

ByteNfa::Frag ByteNfa::star(Frag a) {
  const int32_t in = state(), out = state();
  eps(in, a.in);
  eps(in, out);
  eps(a.out, a.in);
  eps(a.out, out);
  return {in, out};
}

ByteNfa::Frag ByteNfa::opt(Frag a) {
  const int32_t in = state(), out = state();
  eps(in, a.in);
  eps(in, out);
  eps(a.out, out);
  return {in, out};
}

ByteNfa::Frag ByteNfa::repeat(const std::function<Frag()>& make, int32_t min, int32_t max) {
  Frag f = empty();
  for (int32_t i = 0; i < min; ++i) f = seq(f, make());
  if (max < 0) return seq(f, star(make()));
  // Nested optionals: a(b(c)?)? rather than a?b?c?, so the automaton stays small and unambiguous.
  if (max > min) {
    std::vector<Frag> tail;
    for (int32_t i = min; i < max; ++i) tail.push_back(make());
    Frag t = opt(tail.back());
    for (size_t i = tail.size() - 1; i-- > 0;) t = opt(seq(tail[i], t));
    f = seq(f, t);
  }
  return f;
}

ByteNfa::CodepointRanges ByteNfa::complement(CodepointRanges r) {
  std::sort(r.begin(), r.end());
  CodepointRanges out;
  uint32_t next = 0;
  for (auto [lo, hi] : r) {
    if (lo > next) out.push_back({next, lo - 1});
    next = std::max(next, hi + 1);
  }
  if (next <= 0x10FFFF) out.push_back({next, 0x10FFFF});
  return out;
}

}  // namespace bamba
