// Reading goes column chunk by column chunk: the pages of one leaf column are decompressed and decoded into
// (repetition level, definition level, value) triplets, which are placed into the rows following the physical
// schema (groups → objects, repeated fields → arrays); once every leaf of a row group is in, the LIST and MAP
// annotations turn their wrapper groups into plain arrays and objects (Dremel record assembly, in two passes
// because that keeps each pass simple).
#include "io/parquet.h"

#include <lz4.h>
#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/progress.h"
#include "io/parquet_encoding.h"
#include "io/parquet_metadata.h"
#include "tokenizer/utf8.h"

namespace bamba {

namespace {

using Json = nlohmann::ordered_json;
using namespace parquet;

// How a leaf's physical values become JSON.
enum class Kind { Bool, Int, UInt, Float, Double, String, Binary, Decimal, Float16 };

struct Node {
  const SchemaElement* e = nullptr;
  std::vector<int> children;
  bool leaf = false;
  bool is_list = false, is_map = false;
  bool needs_convert = false;  // a LIST or MAP somewhere at or below
};

struct Leaf {
  int node = 0;
  std::string path;        // "choices.list.element"
  std::vector<int> nodes;  // from the top-level field down to the leaf
  int max_def = 0, max_rep = 0;
  Kind kind = Kind::Binary;
};

struct Schema {
  std::vector<Node> nodes;  // nodes[0] is the root
  std::vector<Leaf> leaves;  // depth-first, the order of a row group's column chunks
};

// Values past this many per byte of file are taken as a corrupt (or hostile) file rather than allocated: it is far
// above what any real compression ratio or run of nulls gives, and keeps a tiny bad file from asking for gigabytes.
constexpr size_t kMaxExpansion = 1024;

// ---- schema -------------------------------------------------------------------------------------------------

Kind leaf_kind(const SchemaElement& e, const std::string& what) {
  const int32_t ct = e.converted_type, lt = e.logical_type;
  const bool decimal = ct == CT_DECIMAL || lt == LT_DECIMAL;
  switch (e.type) {
    case BOOLEAN: return Kind::Bool;
    case INT32:
    case INT64:
      if (decimal) return Kind::Decimal;
      if ((lt == LT_INTEGER && !e.int_signed) || (ct >= CT_UINT_8 && ct <= CT_UINT_64)) return Kind::UInt;
      return Kind::Int;
    case INT96: fail(what, ": physical type INT96 (legacy timestamps) is not supported");
    case FLOAT: return Kind::Float;
    case DOUBLE: return Kind::Double;
    case BYTE_ARRAY:
    case FIXED_LEN_BYTE_ARRAY:
      if (decimal) return Kind::Decimal;
      if (e.type == FIXED_LEN_BYTE_ARRAY && lt == LT_FLOAT16) {
        if (e.type_length != 2) fail(what, ": FLOAT16 with type_length ", e.type_length, ", expected 2");
        return Kind::Float16;
      }
      if (ct == CT_UTF8 || ct == CT_ENUM || ct == CT_JSON || lt == LT_STRING || lt == LT_ENUM || lt == LT_JSON)
        return Kind::String;
      return Kind::Binary;
    default: fail(what, ": unknown physical type ", e.type);
  }
}

Schema build_schema(const FileMetaData& m, const std::string& file) {
  Schema s;
  if (m.schema.empty()) fail(file, ": footer has an empty schema");
  s.nodes.resize(m.schema.size());
  size_t next = 0;
  // Depth-first: element i with num_children n is followed by its n subtrees.
  auto build = [&](auto&& self, int depth) -> int {
    if (next >= m.schema.size()) fail(file, ": schema lists fewer elements than its num_children promise");
    if (depth > 64) fail(file, ": schema nested deeper than 64 levels");
    int id = int(next++);
    Node& n = s.nodes[size_t(id)];
    n.e = &m.schema[size_t(id)];
    const SchemaElement& e = *n.e;
    if (e.num_children < 0) fail(file, ": schema element '", e.name, "' has num_children ", e.num_children);
    if (e.num_children == 0 && id != 0) {
      if (e.type < 0) fail(file, ": schema element '", e.name, "' has neither a type nor children");
      n.leaf = true;
      return id;
    }
    if (size_t(e.num_children) > m.schema.size() - next)
      fail(file, ": schema element '", e.name, "' has more children than the schema has elements");
    for (int32_t i = 0; i < e.num_children; ++i) {
      int c = self(self, depth + 1);
      s.nodes[size_t(id)].children.push_back(c);
    }
    Node& g = s.nodes[size_t(id)];
    g.is_list = e.converted_type == CT_LIST || e.logical_type == LT_LIST;
    g.is_map = e.converted_type == CT_MAP || e.logical_type == LT_MAP ||
               (e.converted_type == CT_MAP_KEY_VALUE && e.repetition != REPEATED);
    g.needs_convert = g.is_list || g.is_map;
    for (int c : g.children) g.needs_convert |= s.nodes[size_t(c)].needs_convert;
    return id;
  };
  build(build, 0);
  if (next != m.schema.size()) fail(file, ": schema has ", m.schema.size() - next, " elements outside the root");

  // Leaves with their levels: each OPTIONAL or REPEATED ancestor adds a definition level, each REPEATED one a
  // repetition level.
  std::vector<int> path;
  auto walk = [&](auto&& self, int id, int def, int rep, const std::string& prefix) -> void {
    const Node& n = s.nodes[size_t(id)];
    if (n.e->repetition == OPTIONAL) ++def;
    if (n.e->repetition == REPEATED) ++def, ++rep;
    std::string name = prefix.empty() ? n.e->name : prefix + "." + n.e->name;
    path.push_back(id);
    if (n.leaf) {
      Leaf l;
      l.node = id;
      l.path = name;
      l.nodes = path;
      l.max_def = def;
      l.max_rep = rep;
      l.kind = leaf_kind(*n.e, cat(file, ": column '", name, "'"));
      if (n.e->type == FIXED_LEN_BYTE_ARRAY && n.e->type_length <= 0)
        fail(file, ": column '", name, "' is FIXED_LEN_BYTE_ARRAY with type_length ", n.e->type_length);
      s.leaves.push_back(std::move(l));
    } else {
      for (int c : n.children) self(self, c, def, rep, name);
    }
    path.pop_back();
  };
  for (int c : s.nodes[0].children) walk(walk, c, 0, 0, "");
  if (s.leaves.empty()) fail(file, ": schema has no columns");
  return s;
}

// ---- pages --------------------------------------------------------------------------------------------------

void decompress(int32_t codec, const unsigned char* src, size_t n, unsigned char* dst, size_t dst_n,
                const std::string& what) {
  if (n == 0 && dst_n == 0) return;  // an empty values section (a v2 page of nulls) may be stored as no bytes at all
  switch (codec) {
    case UNCOMPRESSED:
      if (n != dst_n) fail(what, ": uncompressed page of ", n, " bytes, header says ", dst_n);
      if (n) std::memcpy(dst, src, n);
      return;
    case SNAPPY: {
      size_t len = 0;
      if (snappy_uncompressed_length(reinterpret_cast<const char*>(src), n, &len) != SNAPPY_OK || len != dst_n)
        fail(what, ": corrupt SNAPPY page (or not ", dst_n, " bytes uncompressed)");
      if (snappy_uncompress(reinterpret_cast<const char*>(src), n, reinterpret_cast<char*>(dst), &len) !=
              SNAPPY_OK ||
          len != dst_n)
        fail(what, ": corrupt SNAPPY page");
      return;
    }
    case GZIP: {
      z_stream z{};
      if (inflateInit2(&z, 15 + 32) != Z_OK) fail(what, ": zlib could not start");  // 15 + 32: gzip or zlib header
      z.next_in = const_cast<unsigned char*>(src);
      z.avail_in = uInt(n);
      z.next_out = dst;
      z.avail_out = uInt(dst_n);
      int rc = inflate(&z, Z_FINISH);
      size_t got = z.total_out;
      inflateEnd(&z);
      if (rc != Z_STREAM_END || got != dst_n) fail(what, ": corrupt GZIP page (or not ", dst_n, " bytes uncompressed)");
      return;
    }
    case ZSTD: {
      size_t got = ZSTD_decompress(dst, dst_n, src, n);
      if (ZSTD_isError(got)) fail(what, ": corrupt ZSTD page (", ZSTD_getErrorName(got), ")");
      if (got != dst_n) fail(what, ": ZSTD page gave ", got, " bytes, header says ", dst_n);
      return;
    }
    case LZ4_RAW: {
      if (n > size_t(INT32_MAX) || dst_n > size_t(INT32_MAX)) fail(what, ": LZ4_RAW page too large");
      int got = LZ4_decompress_safe(reinterpret_cast<const char*>(src), reinterpret_cast<char*>(dst), int(n),
                                    int(dst_n));
      if (got < 0 || size_t(got) != dst_n) fail(what, ": corrupt LZ4_RAW page (or not ", dst_n, " bytes uncompressed)");
      return;
    }
    default: fail(what, ": compression codec ", codec_name(codec), " is not supported");
  }
}

float half_to_float(uint16_t h) {
  int exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v = exp == 0 ? std::ldexp(float(mant), -24)
            : exp == 31 ? (mant ? NAN : INFINITY)
                        : std::ldexp(float(mant | 0x400), exp - 25);
  return (h & 0x8000) ? -v : v;
}

// Values of one column chunk, decoded page by page.
class ColumnReader {
 public:
  ColumnReader(const Leaf& leaf, const SchemaElement& e, const std::string& what, size_t max_values)
      : leaf_(leaf), e_(e), what_(what), max_values_(max_values) {}

  std::vector<uint16_t> defs, reps;
  std::vector<Json> values;

  void read_chunk(const unsigned char* file, size_t file_size, const ColumnChunk& c) {
    if (c.external) fail(what_, ": column data in another file (file_path) is not supported");
    if (c.type != e_.type)
      fail(what_, ": column chunk has type ", physical_type_name(c.type), ", the schema says ",
           physical_type_name(e_.type));
    int64_t start = c.data_page_offset;
    if (c.dictionary_page_offset > 0 && c.dictionary_page_offset < start) start = c.dictionary_page_offset;
    if (start < 4 || c.total_compressed_size < 0 || uint64_t(start) > file_size ||
        uint64_t(c.total_compressed_size) > file_size - uint64_t(start))
      fail(what_, ": column chunk at offset ", start, " of ", c.total_compressed_size, " bytes lies outside the ",
           file_size, "-byte file");
    if (c.num_values < 0 || uint64_t(c.num_values) > max_values_)
      fail(what_, ": column chunk claims ", c.num_values, " values");
    size_t pos = size_t(start), end = pos + size_t(c.total_compressed_size);
    const size_t want = size_t(c.num_values);
    while (defs_count() < want) {
      if (pos >= end) fail(what_, ": pages hold ", defs_count(), " values, the column chunk says ", want);
      PageHeader h = decode_page_header(file + pos, end - pos, what_ + ": page header");
      pos += h.header_size;
      if (size_t(h.compressed_size) > end - pos)
        fail(what_, ": page of ", h.compressed_size, " bytes runs past the end of its column chunk");
      const unsigned char* body = file + pos;
      pos += size_t(h.compressed_size);
      if (size_t(h.uncompressed_size) > max_values_)
        fail(what_, ": page claims ", h.uncompressed_size, " uncompressed bytes");
      switch (h.type) {
        case DICTIONARY_PAGE: read_dictionary(h, body, c.codec); break;
        case DATA_PAGE: read_data_page_v1(h, body, c.codec); break;
        case DATA_PAGE_V2: read_data_page_v2(h, body, c.codec); break;
        case INDEX_PAGE: break;
        default: fail(what_, ": unknown page type ", h.type);
      }
    }
    if (defs_count() != want) fail(what_, ": pages hold ", defs_count(), " values, the column chunk says ", want);
  }

 private:
  size_t defs_count() const { return count_; }

  void read_dictionary(const PageHeader& h, const unsigned char* body, int32_t codec) {
    if (h.encoding != PLAIN && h.encoding != PLAIN_DICTIONARY)
      fail(what_, ": dictionary page encoded as ", encoding_name(h.encoding), ", expected PLAIN");
    if (have_dict_) fail(what_, ": a second dictionary page");
    std::vector<unsigned char> buf(size_t(h.uncompressed_size));
    decompress(codec, body, size_t(h.compressed_size), buf.data(), buf.size(), what_);
    decode_plain(buf.data(), buf.size(), size_t(h.num_values), dict_);
    have_dict_ = true;
  }

  void read_data_page_v1(const PageHeader& h, const unsigned char* body, int32_t codec) {
    std::vector<unsigned char> buf(size_t(h.uncompressed_size));
    decompress(codec, body, size_t(h.compressed_size), buf.data(), buf.size(), what_);
    const unsigned char* p = buf.data();
    size_t left = buf.size(), n = size_t(h.num_values);
    check_count(n);
    auto levels = [&](std::vector<uint16_t>& out, int max_level, int32_t encoding, const char* which) {
      size_t old = out.size();
      out.resize(old + n);
      if (max_level == 0) return;
      if (encoding != RLE)
        fail(what_, ": ", which, " levels encoded as ", encoding_name(encoding), ", only RLE is supported");
      if (left < 4) fail(what_, ": ", which, " levels run past the end of the page");
      uint32_t len = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
      p += 4, left -= 4;
      if (len > left) fail(what_, ": ", which, " levels of ", len, " bytes run past the end of the page");
      decode_levels(p, len, max_level, n, out.data() + old, which);
      p += len, left -= len;
    };
    levels(reps, leaf_.max_rep, h.rep_encoding, "repetition");
    levels(defs, leaf_.max_def, h.def_encoding, "definition");
    finish_page(h, p, left, n);
  }

  void read_data_page_v2(const PageHeader& h, const unsigned char* body, int32_t codec) {
    size_t lv = size_t(h.rep_bytes) + size_t(h.def_bytes), n = size_t(h.num_values);
    check_count(n);
    if (lv > size_t(h.compressed_size) || lv > size_t(h.uncompressed_size))
      fail(what_, ": v2 page levels of ", lv, " bytes are larger than the page");
    size_t old = reps.size();
    reps.resize(old + n), defs.resize(old + n);
    if (leaf_.max_rep) decode_levels(body, size_t(h.rep_bytes), leaf_.max_rep, n, reps.data() + old, "repetition");
    if (leaf_.max_def)
      decode_levels(body + h.rep_bytes, size_t(h.def_bytes), leaf_.max_def, n, defs.data() + old, "definition");
    const unsigned char* vals = body + lv;
    size_t vals_n = size_t(h.compressed_size) - lv, out_n = size_t(h.uncompressed_size) - lv;
    if (h.v2_compressed && codec != UNCOMPRESSED) {
      std::vector<unsigned char> buf(out_n);
      decompress(codec, vals, vals_n, buf.data(), buf.size(), what_);
      finish_page(h, buf.data(), buf.size(), n);
    } else {
      finish_page(h, vals, vals_n, n);
    }
  }

  void check_count(size_t n) {
    if (n > max_values_ - count_) fail(what_, ": pages claim more than ", max_values_, " values");
  }

  void decode_levels(const unsigned char* p, size_t len, int max_level, size_t n, uint16_t* out, const char* which) {
    int width = 0;
    while ((1 << width) <= max_level) ++width;
    decode_rle_hybrid(p, len, width, n, out, cat(what_, ": ", which, " levels"));
    for (size_t i = 0; i < n; ++i)
      if (out[i] > max_level) fail(what_, ": ", which, " level ", out[i], " is over the maximum ", max_level);
  }

  // The values of a data page, after its levels: one per level that reaches the leaf.
  void finish_page(const PageHeader& h, const unsigned char* p, size_t size, size_t n) {
    size_t present = n;
    if (leaf_.max_def > 0) {
      present = 0;
      for (size_t i = count_; i < count_ + n; ++i) present += defs[i] == leaf_.max_def;
    }
    count_ += n;
    decode_values(h.encoding, p, size, present);
  }

  void decode_values(int32_t enc, const unsigned char* p, size_t size, size_t n) {
    const int32_t t = e_.type;
    switch (enc) {
      case PLAIN: decode_plain(p, size, n, values); return;
      case PLAIN_DICTIONARY:
      case RLE_DICTIONARY: {
        if (!have_dict_) fail(what_, ": dictionary-encoded page without a dictionary page");
        if (n == 0) return;
        if (size < 1) fail(what_, ": dictionary indices missing");
        std::vector<uint32_t> idx(n);
        decode_rle_hybrid(p + 1, size - 1, p[0], n, idx.data(), what_ + ": dictionary indices");
        values.reserve(values.size() + n);
        for (uint32_t i : idx) {
          if (i >= dict_.size()) fail(what_, ": dictionary index ", i, " is past the ", dict_.size(), "-entry dictionary");
          values.push_back(dict_[i]);
        }
        return;
      }
      case RLE: {
        if (t != BOOLEAN) fail(what_, ": RLE values for a ", physical_type_name(t), " column");
        if (size < 4) fail(what_, ": RLE booleans missing their length");
        uint32_t len = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
        if (len > size - 4) fail(what_, ": RLE booleans run past the end of the page");
        std::vector<uint16_t> b(n);
        decode_rle_hybrid(p + 4, len, 1, n, b.data(), what_ + ": RLE booleans");
        for (uint16_t v : b) values.push_back(Json(v != 0));
        return;
      }
      case DELTA_BINARY_PACKED: {
        if (t != INT32 && t != INT64) fail(what_, ": DELTA_BINARY_PACKED values for a ", physical_type_name(t), " column");
        std::vector<int64_t> v = delta_ints(p, size, n, "values");
        for (int64_t x : v) values.push_back(t == INT32 ? from_int(int32_t(x)) : from_int(x));
        return;
      }
      case DELTA_LENGTH_BYTE_ARRAY: {
        if (t != BYTE_ARRAY) fail(what_, ": DELTA_LENGTH_BYTE_ARRAY values for a ", physical_type_name(t), " column");
        size_t used = 0;
        std::vector<int64_t> len = delta_ints(p, size, n, "lengths", &used);
        p += used, size -= used;
        for (int64_t l : len) {
          if (l < 0 || uint64_t(l) > size) fail(what_, ": byte array of ", l, " bytes runs past the end of the page");
          values.push_back(from_bytes(p, size_t(l)));
          p += l, size -= size_t(l);
        }
        return;
      }
      case DELTA_BYTE_ARRAY: {
        if (t != BYTE_ARRAY && t != FIXED_LEN_BYTE_ARRAY)
          fail(what_, ": DELTA_BYTE_ARRAY values for a ", physical_type_name(t), " column");
        size_t used = 0;
        std::vector<int64_t> prefix = delta_ints(p, size, n, "prefix lengths", &used);
        p += used, size -= used;
        std::vector<int64_t> suffix = delta_ints(p, size, n, "suffix lengths", &used);
        p += used, size -= used;
        std::string prev, cur;
        for (size_t i = 0; i < n; ++i) {
          if (prefix[i] < 0 || uint64_t(prefix[i]) > prev.size())
            fail(what_, ": DELTA_BYTE_ARRAY prefix of ", prefix[i], " bytes is longer than the previous value");
          if (suffix[i] < 0 || uint64_t(suffix[i]) > size)
            fail(what_, ": byte array of ", suffix[i], " bytes runs past the end of the page");
          cur.assign(prev, 0, size_t(prefix[i]));
          cur.append(reinterpret_cast<const char*>(p), size_t(suffix[i]));
          p += suffix[i], size -= size_t(suffix[i]);
          if (t == FIXED_LEN_BYTE_ARRAY && cur.size() != size_t(e_.type_length))
            fail(what_, ": value of ", cur.size(), " bytes in a FIXED_LEN_BYTE_ARRAY(", e_.type_length, ") column");
          values.push_back(from_bytes(reinterpret_cast<const unsigned char*>(cur.data()), cur.size()));
          std::swap(prev, cur);
        }
        return;
      }
      case BYTE_STREAM_SPLIT: {
        size_t w = t == FLOAT || t == INT32 ? 4 : t == DOUBLE || t == INT64 ? 8
                   : t == FIXED_LEN_BYTE_ARRAY                        ? size_t(e_.type_length)
                                                                      : 0;
        if (w == 0) fail(what_, ": BYTE_STREAM_SPLIT values for a ", physical_type_name(t), " column");
        if (n > size / w) fail(what_, ": BYTE_STREAM_SPLIT values run past the end of the page");
        std::vector<unsigned char> v(n * w);
        for (size_t i = 0; i < n; ++i)
          for (size_t b = 0; b < w; ++b) v[i * w + b] = p[b * n + i];
        decode_plain(v.data(), v.size(), n, values);
        return;
      }
      default: fail(what_, ": values encoded as ", encoding_name(enc), " (", enc, ") are not supported");
    }
  }

  std::vector<int64_t> delta_ints(const unsigned char* p, size_t size, size_t n, const char* which,
                                  size_t* used = nullptr) {
    std::string what = cat(what_, ": DELTA_BINARY_PACKED ", which);
    size_t total = delta_binary_packed_count(p, size, what);
    if (total != n) fail(what, ": ", total, " values, expected ", n);
    std::vector<int64_t> v(n);
    size_t u = decode_delta_binary_packed(p, size, v.data(), n, what);
    if (used) *used = u;
    return v;
  }

  void decode_plain(const unsigned char* p, size_t size, size_t n, std::vector<Json>& out) {
    const int32_t t = e_.type;
    size_t w = t == INT32 || t == FLOAT ? 4 : t == INT64 || t == DOUBLE ? 8 : t == FIXED_LEN_BYTE_ARRAY ? size_t(e_.type_length) : 0;
    if (t == BOOLEAN) {
      if (n > size * 8) fail(what_, ": PLAIN booleans run past the end of the page");
    } else if (w) {
      if (n > size / w) fail(what_, ": ", n, " PLAIN values of ", w, " bytes run past the end of the page");
    } else if (n > size / 4) {  // BYTE_ARRAY: at least the 4-byte length each
      fail(what_, ": ", n, " PLAIN byte arrays run past the end of the page");
    }
    out.reserve(out.size() + n);
    for (size_t i = 0; i < n; ++i) {
      switch (t) {
        case BOOLEAN: out.push_back(Json(bool((p[i / 8] >> (i % 8)) & 1))); break;
        case INT32: {
          int32_t v;
          std::memcpy(&v, p + 4 * i, 4);
          out.push_back(from_int(v));
          break;
        }
        case INT64: {
          int64_t v;
          std::memcpy(&v, p + 8 * i, 8);
          out.push_back(from_int(v));
          break;
        }
        case FLOAT: {
          float v;
          std::memcpy(&v, p + 4 * i, 4);
          out.push_back(Json(v));
          break;
        }
        case DOUBLE: {
          double v;
          std::memcpy(&v, p + 8 * i, 8);
          out.push_back(Json(v));
          break;
        }
        case FIXED_LEN_BYTE_ARRAY: out.push_back(from_bytes(p + w * i, w)); break;
        case BYTE_ARRAY: {
          if (size < 4) fail(what_, ": PLAIN byte array runs past the end of the page");
          uint32_t len = uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
          p += 4, size -= 4;
          if (len > size) fail(what_, ": byte array of ", len, " bytes runs past the end of the page");
          out.push_back(from_bytes(p, len));
          p += len, size -= len;
          break;
        }
        default: fail(what_, ": physical type ", physical_type_name(t), " is not supported");
      }
    }
  }

  // Dividing by an exact power of ten rounds once, so 1234 with scale 2 gives the double nearest 12.34.
  double decimal_divisor() const { return std::pow(10.0, double(e_.scale)); }

  template <typename I>
  Json from_int(I v) const {
    switch (leaf_.kind) {
      case Kind::UInt: return Json(uint64_t(std::make_unsigned_t<I>(v)));
      case Kind::Decimal: return Json(double(v) / decimal_divisor());
      default: return Json(int64_t(v));
    }
  }

  Json from_bytes(const unsigned char* p, size_t n) const {
    switch (leaf_.kind) {
      case Kind::String: {
        std::string_view s(reinterpret_cast<const char*>(p), n);
        bool ascii = true;
        for (unsigned char ch : s) ascii &= ch < 0x80;
        if (!ascii) {
          try {
            utf8::check_valid(s, "string value");
          } catch (const Error& e) {
            fail(what_, ": ", e.what());
          }
        }
        return Json(std::string(s));
      }
      case Kind::Decimal: {  // big-endian two's complement
        // A negative value is -(~x + 1), accumulated from the complemented bytes so that small magnitudes stay
        // exact (2^128 - x in doubles would lose them).
        const bool negative = n && (p[0] & 0x80);
        double v = 0.0;
        for (size_t i = 0; i < n; ++i) v = v * 256.0 + double(negative ? 255 - p[i] : p[i]);
        return Json((negative ? -(v + 1.0) : v) / decimal_divisor());
      }
      case Kind::Float16: return Json(half_to_float(uint16_t(p[0] | p[1] << 8)));
      default: return Json::binary(std::vector<std::uint8_t>(p, p + n));
    }
  }

  const Leaf& leaf_;
  const SchemaElement& e_;
  const std::string& what_;
  size_t max_values_;
  size_t count_ = 0;  // levels read so far
  bool have_dict_ = false;
  std::vector<Json> dict_;
};

// ---- record assembly ----------------------------------------------------------------------------------------

// Places one column's triplets into the rows, following the physical schema. The first column of a row group
// creates the rows (so a file claiming billions of rows allocates nothing until its levels show them); the others
// must match them.
void assemble(const Schema& s, const Leaf& leaf, ColumnReader& col, std::vector<Json>& rows, bool first,
              const std::string& what) {
  const size_t k = leaf.nodes.size();
  std::vector<int> def_at(k), rep_at(k);  // cumulative levels at each node of the path
  int d = 0, r = 0;
  for (size_t i = 0; i < k; ++i) {
    int rt = s.nodes[size_t(leaf.nodes[i])].e->repetition;
    if (rt != REQUIRED) ++d;
    if (rt == REPEATED) ++r;
    def_at[i] = d, rep_at[i] = r;
  }
  std::vector<size_t> idx(k, 0);  // element index at each repeated node, for the current row
  const size_t n = col.defs.size();
  size_t row = 0, vi = 0;
  bool started = false;
  for (size_t t = 0; t < n; ++t) {
    const int rl = leaf.max_rep ? col.reps[t] : 0;
    const int dl = leaf.max_def ? col.defs[t] : 0;
    if (rl == 0) {
      if (started) ++row;
      started = true;
      if (first && row == rows.size()) rows.push_back(Json::object());
      if (row >= rows.size()) fail(what, ": holds more than the row group's ", rows.size(), " rows");
    } else if (!started) {
      fail(what, ": first repetition level is ", rl, ", expected 0");
    }
    Json* cur = &rows[row];
    for (size_t i = 0; i < k; ++i) {
      const SchemaElement& e = *s.nodes[size_t(leaf.nodes[i])].e;
      const bool last = i + 1 == k;
      if (!cur->is_object()) *cur = Json::object();
      Json& slot = (*cur)[e.name];
      if (e.repetition == REPEATED) {
        if (!slot.is_array()) slot = Json::array();
        if (dl < def_at[i]) break;  // an empty list
        if (rl < rep_at[i]) idx[i] = 0;        // first element of a new list
        else if (rl == rep_at[i]) ++idx[i];    // next element of this list
        if (idx[i] > slot.size()) fail(what, ": repetition levels do not add up in row ", row);
        if (idx[i] == slot.size()) slot.push_back(Json());
        cur = &slot[idx[i]];
      } else {
        if (dl < def_at[i]) {  // null here (levels below it say nothing more)
          if (!slot.is_object()) slot = nullptr;
          break;
        }
        cur = &slot;
      }
      if (last) {
        if (dl != leaf.max_def) fail(what, ": definition levels do not add up in row ", row);
        if (vi >= col.values.size()) fail(what, ": fewer values than non-null levels");
        *cur = std::move(col.values[vi++]);
      }
    }
  }
  if (n == 0 && !rows.empty()) fail(what, ": no values for the row group's ", rows.size(), " rows");
  if (first) return;
  if (n && row + 1 != rows.size()) fail(what, ": holds ", row + 1, " rows, the row group has ", rows.size());
  if (vi != col.values.size()) fail(what, ": ", col.values.size(), " values for ", vi, " non-null levels");
}

Json take(Json& obj, const std::string& key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? Json() : std::move(*it);
}

Json convert_value(const Schema& s, int id, Json&& raw, const std::string& file);

// A field's value: an array of items for a repeated field, else the one value.
Json convert_field(const Schema& s, int id, Json&& raw, const std::string& file) {
  const Node& n = s.nodes[size_t(id)];
  if (n.e->repetition != REPEATED) return convert_value(s, id, std::move(raw), file);
  if (raw.is_null()) return Json::array();
  if (!n.needs_convert) return std::move(raw);
  for (Json& it : raw) it = convert_value(s, id, std::move(it), file);
  return std::move(raw);
}

Json convert_value(const Schema& s, int id, Json&& raw, const std::string& file) {
  const Node& n = s.nodes[size_t(id)];
  if (raw.is_null() || n.leaf || !n.needs_convert) return std::move(raw);
  if (n.is_list || n.is_map) {
    const char* what = n.is_list ? "LIST" : "MAP";
    if (n.children.size() != 1 || s.nodes[size_t(n.children[0])].e->repetition != REPEATED)
      fail(file, ": ", what, " group '", n.e->name, "' must hold exactly one repeated field");
    const int rid = n.children[0];
    const Node& rep = s.nodes[size_t(rid)];
    Json items = take(raw, rep.e->name);
    Json out = n.is_list ? Json::array() : Json::object();
    if (!items.is_array()) return out;
    if (n.is_list) {
      // Backward-compatibility rules of LogicalTypes.md: the repeated field is itself the element unless it is a
      // one-field group not named "array" or "<list>_tuple" (the 3-level form, whose one field is the element).
      const bool three_level = !rep.leaf && rep.children.size() == 1 && rep.e->name != "array" &&
                               rep.e->name != n.e->name + "_tuple";
      for (Json& it : items) {
        if (three_level) {
          int el = rep.children[0];
          out.push_back(convert_field(s, el, take(it, s.nodes[size_t(el)].e->name), file));
        } else {
          out.push_back(convert_value(s, rid, std::move(it), file));
        }
      }
      return out;
    }
    if (rep.leaf || rep.children.empty() || rep.children.size() > 2)
      fail(file, ": MAP group '", n.e->name, "' must hold a repeated group of key and value");
    const Node& key = s.nodes[size_t(rep.children[0])];
    for (Json& it : items) {
      Json k = convert_field(s, rep.children[0], take(it, key.e->name), file);
      Json v;
      if (rep.children.size() == 2)
        v = convert_field(s, rep.children[1], take(it, s.nodes[size_t(rep.children[1])].e->name), file);
      out[k.is_string() ? k.get<std::string>() : k.dump()] = std::move(v);
    }
    return out;
  }
  if (!raw.is_object()) fail(file, ": group '", n.e->name, "' assembled into a non-object");
  for (int c : n.children) {
    const std::string& name = s.nodes[size_t(c)].e->name;
    auto it = raw.find(name);
    if (it != raw.end()) *it = convert_field(s, c, std::move(*it), file);
  }
  return std::move(raw);
}

}  // namespace

std::vector<Json> parse_parquet(const unsigned char* data, size_t size, const std::string& label) {
  if (size < 12 || std::memcmp(data, "PAR1", 4) != 0 || std::memcmp(data + size - 4, "PAR1", 4) != 0) {
    if (size >= 4 && std::memcmp(data + size - 4, "PARE", 4) == 0) fail(label, ": encrypted Parquet is not supported");
    fail(label, ": not a Parquet file (no PAR1 magic at both ends, or shorter than 12 bytes)");
  }
  const unsigned char* tail = data + size - 8;
  uint32_t footer_len = uint32_t(tail[0]) | uint32_t(tail[1]) << 8 | uint32_t(tail[2]) << 16 | uint32_t(tail[3]) << 24;
  if (footer_len > size - 12) fail(label, ": footer length ", footer_len, " is larger than the file");
  FileMetaData m = decode_file_metadata(tail - footer_len, footer_len, label);
  Schema s = build_schema(m, label);

  const size_t data_end = size - 8 - footer_len;
  const size_t max_values = std::max<size_t>(size * kMaxExpansion, size_t(1) << 20);
  int64_t total_rows = 0;
  for (const RowGroup& g : m.row_groups) {
    if (g.num_rows < 0 || uint64_t(g.num_rows) > max_values) fail(label, ": row group claims ", g.num_rows, " rows");
    total_rows += g.num_rows;
  }
  if (total_rows != m.num_rows)
    fail(label, ": row groups hold ", total_rows, " rows, the footer says ", m.num_rows);

  std::vector<Json> out;
  ProgressBar progress(cat("reading ", label), size, size > (size_t(64) << 20));
  size_t bytes_done = 0;
  for (size_t gi = 0; gi < m.row_groups.size(); ++gi) {
    const RowGroup& g = m.row_groups[gi];
    if (g.columns.size() != s.leaves.size())
      fail(label, ": row group ", gi, " has ", g.columns.size(), " column chunks, the schema has ", s.leaves.size(),
           " columns");
    std::vector<Json> rows;
    for (size_t ci = 0; ci < s.leaves.size(); ++ci) {
      const Leaf& leaf = s.leaves[ci];
      const std::string what = cat(label, ": column '", leaf.path, "', row group ", gi);
      const ColumnChunk& c = g.columns[ci];
      if (!c.path.empty()) {
        std::string p;
        for (const std::string& part : c.path) p += (p.empty() ? "" : ".") + part;
        if (p != leaf.path) fail(what, ": column chunk is for '", p, "'");
      }
      ColumnReader col(leaf, *s.nodes[size_t(leaf.node)].e, what, max_values);
      col.read_chunk(data, data_end, c);
      assemble(s, leaf, col, rows, ci == 0, what);
      bytes_done += size_t(c.total_compressed_size);
      progress.update(std::min(bytes_done, size), cat(out.size() + rows.size(), " rows"));
      if (ci == 0 && rows.size() != size_t(g.num_rows))
        fail(what, ": holds ", rows.size(), " rows, the row group says ", g.num_rows);
    }
    for (Json& row : rows) {
      for (int c : s.nodes[0].children) {
        if (!s.nodes[size_t(c)].needs_convert) continue;
        auto it = row.find(s.nodes[size_t(c)].e->name);
        if (it != row.end()) *it = convert_field(s, c, std::move(*it), label);
      }
      out.push_back(std::move(row));
    }
  }
  progress.finish();
  return out;
}

std::vector<Json> read_parquet(const std::string& path) {
  MappedFile f(path);
  return parse_parquet(f.data(), f.size(), path);
}

}  // namespace bamba
