// Parquet: the rows of a Parquet file (what the Hugging Face hub serves every dataset as) as JSON objects.
// Written by hand because Debian 12 packages no C++ Parquet library (no Arrow, no parquet-cpp); only the
// decompressors come from Debian (snappy, zstd, zlib, lz4).
//
// Supported, i.e. what pyarrow, DuckDB and the JS writers produce:
//   physical types BOOLEAN, INT32, INT64, FLOAT, DOUBLE, BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY (not INT96);
//   STRING / UTF8 / ENUM / JSON → JSON strings (checked to be UTF-8), other byte arrays → JSON binary,
//   INT(8..64, signed or not) → integers, DECIMAL → a double, FLOAT16 → a number, DATE / TIME / TIMESTAMP → their
//   stored integers (days, or units since the epoch or midnight); nested LIST (3-level and the
//   legacy 2-level forms), bare repeated fields → arrays, STRUCT → objects, MAP → objects (keys as strings);
//   nulls at any level; encodings PLAIN, PLAIN_DICTIONARY / RLE_DICTIONARY, RLE, DELTA_BINARY_PACKED,
//   DELTA_LENGTH_BYTE_ARRAY, DELTA_BYTE_ARRAY, BYTE_STREAM_SPLIT; data pages v1 and v2, dictionary pages, any
//   number of row groups and pages; codecs UNCOMPRESSED, SNAPPY, GZIP, ZSTD, LZ4_RAW.
// Anything else, and anything inconsistent, is an Error naming the file, column and row group.
#pragma once
#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace bamba {

// Every row, in file order, as an object keyed by the top-level fields in schema order.
std::vector<nlohmann::ordered_json> read_parquet(const std::string& path);

// The same over a whole file held in memory; `label` names it in errors.
std::vector<nlohmann::ordered_json> parse_parquet(const unsigned char* data, size_t size, const std::string& label);

}  // namespace bamba
