#include "io/parquet_metadata.h"

#include "core/error.h"
#include "io/thrift_compact.h"

namespace bamba::parquet {

namespace {

using T = ThriftCompactReader;

int32_t expect_i32(T& r, const T::Field& f, const char* name) {
  if (f.type != T::I32) fail("field ", name, " is not an i32");
  return r.read_i32();
}

int64_t expect_i64(T& r, const T::Field& f, const char* name) {
  if (f.type != T::I64 && f.type != T::I32) fail("field ", name, " is not an integer");
  return r.read_i64();
}

// Reads a list<string>.
std::vector<std::string> read_string_list(T& r) {
  auto [n, et] = r.read_list_header();
  if (et != T::BINARY) fail("expected a list of strings");
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.emplace_back(r.read_binary());
  return out;
}

// LogicalType is a union of (mostly empty) structs: the member's field id names the type.
void read_logical_type(T& r, SchemaElement& e) {
  r.begin_struct();
  for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
    if (f.type != T::STRUCT) {
      r.skip(f.type);
      continue;
    }
    e.logical_type = f.id;
    if (f.id == LT_INTEGER) {
      r.begin_struct();
      for (T::Field g = r.next_field(); g.type != T::STOP; g = r.next_field()) {
        if (g.id == 1 && g.type == T::BYTE) e.int_bit_width = int8_t(r.read_i64());
        else if (g.id == 2 && (g.type == T::BOOL_TRUE || g.type == T::BOOL_FALSE)) e.int_signed = T::field_bool(g);
        else r.skip(g.type);
      }
      r.end_struct();
    } else if (f.id == LT_DECIMAL) {
      r.begin_struct();
      for (T::Field g = r.next_field(); g.type != T::STOP; g = r.next_field()) {
        if (g.id == 1 && g.type == T::I32) e.scale = r.read_i32();
        else if (g.id == 2 && g.type == T::I32) e.precision = r.read_i32();
        else r.skip(g.type);
      }
      r.end_struct();
    } else {
      r.skip(f.type);
    }
  }
  r.end_struct();
}

SchemaElement read_schema_element(T& r) {
  SchemaElement e;
  r.begin_struct();
  for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
    switch (f.id) {
      case 1: e.type = expect_i32(r, f, "SchemaElement.type"); break;
      case 2: e.type_length = expect_i32(r, f, "SchemaElement.type_length"); break;
      case 3: e.repetition = expect_i32(r, f, "SchemaElement.repetition_type"); break;
      case 4:
        if (f.type != T::BINARY) fail("SchemaElement.name is not a string");
        e.name = r.read_binary();
        break;
      case 5: e.num_children = expect_i32(r, f, "SchemaElement.num_children"); break;
      case 6: e.converted_type = expect_i32(r, f, "SchemaElement.converted_type"); break;
      case 7: e.scale = expect_i32(r, f, "SchemaElement.scale"); break;
      case 8: e.precision = expect_i32(r, f, "SchemaElement.precision"); break;
      case 10:
        if (f.type != T::STRUCT) fail("SchemaElement.logicalType is not a struct");
        read_logical_type(r, e);
        break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  return e;
}

ColumnChunk read_column_meta(T& r, ColumnChunk c) {
  r.begin_struct();
  for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
    switch (f.id) {
      case 1: c.type = expect_i32(r, f, "ColumnMetaData.type"); break;
      case 3:
        if (f.type != T::LIST) fail("ColumnMetaData.path_in_schema is not a list");
        c.path = read_string_list(r);
        break;
      case 4: c.codec = expect_i32(r, f, "ColumnMetaData.codec"); break;
      case 5: c.num_values = expect_i64(r, f, "ColumnMetaData.num_values"); break;
      case 7: c.total_compressed_size = expect_i64(r, f, "ColumnMetaData.total_compressed_size"); break;
      case 9: c.data_page_offset = expect_i64(r, f, "ColumnMetaData.data_page_offset"); break;
      case 11: c.dictionary_page_offset = expect_i64(r, f, "ColumnMetaData.dictionary_page_offset"); break;
      default: r.skip(f.type);
    }
  }
  r.end_struct();
  return c;
}

ColumnChunk read_column_chunk(T& r) {
  ColumnChunk c;
  bool have_meta = false;
  r.begin_struct();
  for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
    if (f.id == 1 && f.type == T::BINARY) {
      c.external = !r.read_binary().empty();
    } else if (f.id == 3 && f.type == T::STRUCT) {
      c = read_column_meta(r, c);
      have_meta = true;
    } else {
      r.skip(f.type);
    }
  }
  r.end_struct();
  if (!have_meta) fail("a ColumnChunk has no meta_data (encrypted files are not supported)");
  return c;
}

RowGroup read_row_group(T& r) {
  RowGroup g;
  r.begin_struct();
  for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
    if (f.id == 1 && f.type == T::LIST) {
      auto [n, et] = r.read_list_header();
      if (et != T::STRUCT) fail("RowGroup.columns is not a list of structs");
      for (size_t i = 0; i < n; ++i) g.columns.push_back(read_column_chunk(r));
    } else if (f.id == 3 && f.type == T::I64) {
      g.num_rows = r.read_i64();
    } else {
      r.skip(f.type);
    }
  }
  r.end_struct();
  return g;
}

}  // namespace

const char* encoding_name(int32_t e) {
  switch (e) {
    case PLAIN: return "PLAIN";
    case 1: return "GROUP_VAR_INT";
    case PLAIN_DICTIONARY: return "PLAIN_DICTIONARY";
    case RLE: return "RLE";
    case BIT_PACKED: return "BIT_PACKED";
    case DELTA_BINARY_PACKED: return "DELTA_BINARY_PACKED";
    case DELTA_LENGTH_BYTE_ARRAY: return "DELTA_LENGTH_BYTE_ARRAY";
    case DELTA_BYTE_ARRAY: return "DELTA_BYTE_ARRAY";
    case RLE_DICTIONARY: return "RLE_DICTIONARY";
    case BYTE_STREAM_SPLIT: return "BYTE_STREAM_SPLIT";
    default: return "an unknown encoding";
  }
}

const char* codec_name(int32_t c) {
  switch (c) {
    case UNCOMPRESSED: return "UNCOMPRESSED";
    case SNAPPY: return "SNAPPY";
    case GZIP: return "GZIP";
    case LZO: return "LZO";
    case BROTLI: return "BROTLI";
    case LZ4: return "LZ4 (Hadoop framing)";
    case ZSTD: return "ZSTD";
    case LZ4_RAW: return "LZ4_RAW";
    default: return "an unknown codec";
  }
}

const char* physical_type_name(int32_t t) {
  static const char* names[] = {"BOOLEAN", "INT32", "INT64", "INT96", "FLOAT", "DOUBLE", "BYTE_ARRAY",
                                "FIXED_LEN_BYTE_ARRAY"};
  return t >= 0 && t < 8 ? names[t] : "an unknown type";
}

FileMetaData decode_file_metadata(const unsigned char* data, size_t size, const std::string& what) {
  T r(data, size, what + ": footer");
  FileMetaData m;
  try {
    r.begin_struct();
    for (T::Field f = r.next_field(); f.type != T::STOP; f = r.next_field()) {
      if (f.id == 2 && f.type == T::LIST) {
        auto [n, et] = r.read_list_header();
        if (et != T::STRUCT) fail("FileMetaData.schema is not a list of structs");
        m.schema.reserve(n);
        for (size_t i = 0; i < n; ++i) m.schema.push_back(read_schema_element(r));
      } else if (f.id == 3 && f.type == T::I64) {
        m.num_rows = r.read_i64();
      } else if (f.id == 4 && f.type == T::LIST) {
        auto [n, et] = r.read_list_header();
        if (et != T::STRUCT) fail("FileMetaData.row_groups is not a list of structs");
        for (size_t i = 0; i < n; ++i) m.row_groups.push_back(read_row_group(r));
      } else {
        r.skip(f.type);
      }
    }
    r.end_struct();
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind(what, 0) == 0) throw;  // already names the file
    fail(what, ": footer: ", msg);
  }
  return m;
}

PageHeader decode_page_header(const unsigned char* data, size_t size, const std::string& what) {
  T r(data, size, what);
  PageHeader h;
  auto sub = [&](auto&& on_field) {
    r.begin_struct();
    for (T::Field g = r.next_field(); g.type != T::STOP; g = r.next_field()) on_field(g);
    r.end_struct();
  };
  auto i32 = [&](const T::Field& g) {
    if (g.type != T::I32) fail(what, ": page header field ", g.id, " is not an i32");
    return r.read_i32();
  };
  sub([&](const T::Field& f) {
    switch (f.id) {
      case 1: h.type = i32(f); break;
      case 2: h.uncompressed_size = i32(f); break;
      case 3: h.compressed_size = i32(f); break;
      case 5:  // DataPageHeader
        if (f.type != T::STRUCT) return r.skip(f.type);
        sub([&](const T::Field& g) {
          if (g.id == 1) h.num_values = i32(g);
          else if (g.id == 2) h.encoding = i32(g);
          else if (g.id == 3) h.def_encoding = i32(g);
          else if (g.id == 4) h.rep_encoding = i32(g);
          else r.skip(g.type);
        });
        break;
      case 7:  // DictionaryPageHeader
        if (f.type != T::STRUCT) return r.skip(f.type);
        sub([&](const T::Field& g) {
          if (g.id == 1) h.num_values = i32(g);
          else if (g.id == 2) h.encoding = i32(g);
          else r.skip(g.type);
        });
        break;
      case 8:  // DataPageHeaderV2
        if (f.type != T::STRUCT) return r.skip(f.type);
        sub([&](const T::Field& g) {
          if (g.id == 1) h.num_values = i32(g);
          else if (g.id == 3) h.num_rows = i32(g);
          else if (g.id == 4) h.encoding = i32(g);
          else if (g.id == 5) h.def_bytes = i32(g);
          else if (g.id == 6) h.rep_bytes = i32(g);
          else if (g.id == 7 && (g.type == T::BOOL_TRUE || g.type == T::BOOL_FALSE)) h.v2_compressed = T::field_bool(g);
          else r.skip(g.type);
        });
        break;
      default: r.skip(f.type);
    }
  });
  h.header_size = r.position();
  if (h.compressed_size < 0 || h.uncompressed_size < 0 || h.num_values < 0 || h.def_bytes < 0 || h.rep_bytes < 0)
    fail(what, ": page header has a negative size or count");
  return h;
}

}  // namespace bamba::parquet
