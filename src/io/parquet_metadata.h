// Parquet's footer (FileMetaData) and page headers: the fields of parquet.thrift that a reader of whole files
// needs, decoded from the Thrift compact protocol. Enum values are those of parquet.thrift.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace bamba::parquet {

enum PhysicalType : int32_t {
  BOOLEAN = 0, INT32 = 1, INT64 = 2, INT96 = 3, FLOAT = 4, DOUBLE = 5, BYTE_ARRAY = 6, FIXED_LEN_BYTE_ARRAY = 7
};
enum Repetition : int32_t { REQUIRED = 0, OPTIONAL = 1, REPEATED = 2 };
enum ConvertedType : int32_t {
  CT_NONE = -1, CT_UTF8 = 0, CT_MAP = 1, CT_MAP_KEY_VALUE = 2, CT_LIST = 3, CT_ENUM = 4, CT_DECIMAL = 5,
  CT_UINT_8 = 11, CT_UINT_16 = 12, CT_UINT_32 = 13, CT_UINT_64 = 14, CT_INT_8 = 15, CT_INT_16 = 16, CT_INT_32 = 17,
  CT_INT_64 = 18, CT_JSON = 19
};
// The LogicalType union's member ids.
enum LogicalTypeId : int32_t {
  LT_NONE = 0, LT_STRING = 1, LT_MAP = 2, LT_LIST = 3, LT_ENUM = 4, LT_DECIMAL = 5, LT_DATE = 6, LT_TIME = 7,
  LT_TIMESTAMP = 8, LT_INTEGER = 10, LT_UNKNOWN = 11, LT_JSON = 12, LT_BSON = 13, LT_UUID = 14, LT_FLOAT16 = 15
};
enum Encoding : int32_t {
  PLAIN = 0, PLAIN_DICTIONARY = 2, RLE = 3, BIT_PACKED = 4, DELTA_BINARY_PACKED = 5, DELTA_LENGTH_BYTE_ARRAY = 6,
  DELTA_BYTE_ARRAY = 7, RLE_DICTIONARY = 8, BYTE_STREAM_SPLIT = 9
};
enum Codec : int32_t { UNCOMPRESSED = 0, SNAPPY = 1, GZIP = 2, LZO = 3, BROTLI = 4, LZ4 = 5, ZSTD = 6, LZ4_RAW = 7 };
enum PageType : int32_t { DATA_PAGE = 0, INDEX_PAGE = 1, DICTIONARY_PAGE = 2, DATA_PAGE_V2 = 3 };

const char* encoding_name(int32_t e);
const char* codec_name(int32_t c);
const char* physical_type_name(int32_t t);

struct SchemaElement {
  std::string name;
  int32_t type = -1;  // PhysicalType; -1 for a group
  int32_t type_length = 0;
  int32_t repetition = REQUIRED;
  int32_t num_children = 0;
  int32_t converted_type = CT_NONE;
  int32_t scale = 0, precision = 0;
  int32_t logical_type = LT_NONE;
  int32_t int_bit_width = 0;  // LogicalType INTEGER
  bool int_signed = true;
};

struct ColumnChunk {
  int32_t type = -1;
  std::vector<std::string> path;
  int32_t codec = UNCOMPRESSED;
  int64_t num_values = 0;
  int64_t total_compressed_size = 0;
  int64_t data_page_offset = -1;
  int64_t dictionary_page_offset = -1;
  bool external = false;  // file_path set: the data lives in another file
};

struct RowGroup {
  std::vector<ColumnChunk> columns;
  int64_t num_rows = 0;
};

struct FileMetaData {
  std::vector<SchemaElement> schema;  // depth-first, the root first
  int64_t num_rows = 0;
  std::vector<RowGroup> row_groups;
};

struct PageHeader {
  int32_t type = -1;
  int32_t uncompressed_size = 0, compressed_size = 0;
  // DATA_PAGE / DATA_PAGE_V2 / DICTIONARY_PAGE
  int32_t num_values = 0;
  int32_t encoding = PLAIN;
  int32_t def_encoding = RLE, rep_encoding = RLE;  // v1
  int32_t num_rows = 0;                            // v2
  int32_t def_bytes = 0, rep_bytes = 0;            // v2: level sizes, stored uncompressed before the values
  bool v2_compressed = true;
  size_t header_size = 0;  // bytes the header itself took
};

// `what` names the file in errors.
FileMetaData decode_file_metadata(const unsigned char* data, size_t size, const std::string& what);
PageHeader decode_page_header(const unsigned char* data, size_t size, const std::string& what);

}  // namespace bamba::parquet
