#include "io/parquet_encoding.h"

#include <algorithm>

#include "core/error.h"

namespace bamba::parquet {

namespace {

struct Cursor {
  const unsigned char* p;
  const unsigned char* end;
  const std::string& what;

  size_t left() const { return size_t(end - p); }
  uint8_t byte() {
    if (p >= end) fail(what, ": encoded data ends early");
    return *p++;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = byte();
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(what, ": varint longer than 10 bytes");
  }
  int64_t zigzag() {
    uint64_t v = varint();
    return int64_t(v >> 1) ^ -int64_t(v & 1);
  }
};

// Unpacks n values of `width` bits (0..64), least significant bit first, from q (which holds enough bytes).
template <typename T>
void unpack_bits(const unsigned char* q, int width, size_t n, T* out, uint64_t add = 0, uint64_t* running = nullptr) {
  if (width == 0) {
    for (size_t i = 0; i < n; ++i) out[i] = running ? T(*running += add) : T(0);
    return;
  }
  unsigned __int128 buf = 0;  // holds up to width + 7 pending bits (<= 71)
  int bits = 0;
  const uint64_t mask = width == 64 ? ~uint64_t(0) : (uint64_t(1) << width) - 1;
  for (size_t i = 0; i < n; ++i) {
    while (bits < width) {
      buf |= (unsigned __int128)(*q++) << bits;
      bits += 8;
    }
    uint64_t v = uint64_t(buf) & mask;
    buf >>= width;
    bits -= width;
    if (running) {
      *running += add + v;
      out[i] = T(*running);
    } else {
      out[i] = T(v);
    }
  }
}

}  // namespace

template <typename T>
size_t decode_rle_hybrid(const unsigned char* data, size_t size, int bit_width, size_t count, T* out,
                         const std::string& what) {
  if (bit_width < 0 || bit_width > 32) fail(what, ": RLE bit width ", bit_width, " is not in 0..32");
  Cursor c{data, data + size, what};
  const size_t value_bytes = size_t(bit_width + 7) / 8;
  const uint64_t limit = bit_width == 32 ? ~uint64_t(0) : (uint64_t(1) << bit_width) - 1;
  size_t done = 0;
  while (done < count) {
    uint64_t header = c.varint();
    if (header & 1) {  // bit-packed: (header >> 1) groups of 8 values
      uint64_t groups = header >> 1;
      if (groups > c.left() / size_t(bit_width ? bit_width : 1) + 1 || groups * size_t(bit_width) > c.left())
        fail(what, ": bit-packed run of ", groups * 8, " values runs past the end of its data");
      size_t n = std::min<uint64_t>(groups * 8, count - done);
      unpack_bits(c.p, bit_width, n, out + done);
      c.p += groups * size_t(bit_width);
      done += n;
    } else {  // RLE: one value repeated (header >> 1) times
      uint64_t run = header >> 1;
      if (value_bytes > c.left()) fail(what, ": RLE run value runs past the end of its data");
      uint64_t v = 0;
      for (size_t b = 0; b < value_bytes; ++b) v |= uint64_t(c.p[b]) << (8 * b);
      c.p += value_bytes;
      if (v > limit) fail(what, ": RLE run value ", v, " does not fit in ", bit_width, " bits");
      size_t n = std::min<uint64_t>(run, count - done);
      for (size_t i = 0; i < n; ++i) out[done + i] = T(v);
      done += n;
    }
  }
  return size_t(c.p - data);
}

template size_t decode_rle_hybrid<uint16_t>(const unsigned char*, size_t, int, size_t, uint16_t*, const std::string&);
template size_t decode_rle_hybrid<uint32_t>(const unsigned char*, size_t, int, size_t, uint32_t*, const std::string&);

size_t delta_binary_packed_count(const unsigned char* data, size_t size, const std::string& what) {
  Cursor c{data, data + size, what};
  c.varint();  // block size
  c.varint();  // miniblocks per block
  return size_t(c.varint());
}

size_t decode_delta_binary_packed(const unsigned char* data, size_t size, int64_t* out, size_t count,
                                  const std::string& what) {
  Cursor c{data, data + size, what};
  uint64_t block_size = c.varint(), miniblocks = c.varint(), total = c.varint();
  uint64_t value = uint64_t(c.zigzag());
  if (total != count) fail(what, ": DELTA_BINARY_PACKED holds ", total, " values, expected ", count);
  if (block_size == 0 || block_size % 128 != 0 || miniblocks == 0 || block_size % miniblocks != 0 ||
      (block_size / miniblocks) % 32 != 0)
    fail(what, ": DELTA_BINARY_PACKED block of ", block_size, " values in ", miniblocks,
         " miniblocks (expected a multiple of 128 in miniblocks of a multiple of 32)");
  const size_t per_miniblock = size_t(block_size / miniblocks);
  if (count == 0) return size_t(c.p - data);
  out[0] = int64_t(value);
  size_t done = 1;
  while (done < count) {
    uint64_t min_delta = uint64_t(c.zigzag());
    if (miniblocks > c.left()) fail(what, ": DELTA_BINARY_PACKED bit widths run past the end");
    const unsigned char* widths = c.p;
    c.p += miniblocks;
    for (uint64_t m = 0; m < miniblocks && done < count; ++m) {
      int w = widths[m];
      if (w > 64) fail(what, ": DELTA_BINARY_PACKED bit width ", w, " is over 64");
      size_t n = std::min(per_miniblock, count - done);
      size_t need = (n * size_t(w) + 7) / 8, full = per_miniblock * size_t(w) / 8;
      if (need > c.left()) fail(what, ": DELTA_BINARY_PACKED miniblock runs past the end");
      unpack_bits(c.p, w, n, out + done, min_delta, &value);
      c.p += std::min(full, c.left());  // the last miniblock is padded to full size, if the writer did so
      done += n;
    }
  }
  return size_t(c.p - data);
}

}  // namespace bamba::parquet
