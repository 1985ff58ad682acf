// Parquet's integer encodings (Encodings.md): the RLE / bit-packed hybrid that carries repetition and definition
// levels and dictionary indices, and DELTA_BINARY_PACKED, which also underlies the two DELTA byte-array
// encodings. Every read is bounds-checked; `what` names the file, column and row group in errors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace bamba::parquet {

// Decodes exactly `count` values of `bit_width` bits (0..32) into out[0..count). Returns the bytes consumed.
template <typename T>
size_t decode_rle_hybrid(const unsigned char* data, size_t size, int bit_width, size_t count, T* out,
                         const std::string& what);

// DELTA_BINARY_PACKED header: how many values follow, without decoding them.
size_t delta_binary_packed_count(const unsigned char* data, size_t size, const std::string& what);

// Decodes every value of a DELTA_BINARY_PACKED run into out (sized by delta_binary_packed_count). Arithmetic wraps
// modulo 2^64, which truncates to the right INT32 values too. Returns the bytes consumed.
size_t decode_delta_binary_packed(const unsigned char* data, size_t size, int64_t* out, size_t count,
                                  const std::string& what);

}  // namespace bamba::parquet
