// ThriftCompactReader: the Thrift compact protocol, enough of it to read Parquet's footer and page headers.
// Written by hand rather than with libthrift: the protocol is a dozen rules (varints, zigzag, nibble-packed field
// headers) and the reader must treat every byte as hostile input, which generated libthrift code does with
// exceptions of its own and no bound on nesting. Spec: thrift/doc/specs/thrift-compact-protocol.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "core/error.h"

namespace bamba {

class ThriftCompactReader {
 public:
  enum Type : uint8_t {
    STOP = 0, BOOL_TRUE = 1, BOOL_FALSE = 2, BYTE = 3, I16 = 4, I32 = 5, I64 = 6, DOUBLE = 7, BINARY = 8,
    LIST = 9, SET = 10, MAP = 11, STRUCT = 12
  };
  struct Field {
    int16_t id = 0;
    uint8_t type = STOP;  // STOP ends the struct
  };

  // `what` names the structure in errors ("x.parquet: footer").
  ThriftCompactReader(const unsigned char* data, size_t size, std::string what)
      : p_(data), begin_(data), end_(data + size), what_(std::move(what)) {}

  size_t position() const { return size_t(p_ - begin_); }

  // Structs are read as: begin_struct(); while ((f = next_field()).type != STOP) {...; or skip(f.type)} end_struct().
  void begin_struct() {
    if (++depth_ > kMaxDepth) fail(what_, ": structures nested deeper than ", kMaxDepth);
    last_id_.push(0);
  }
  void end_struct() {
    last_id_.pop();
    --depth_;
  }
  Field next_field() {
    uint8_t b = byte();
    Field f;
    f.type = b & 0x0F;
    if (f.type == STOP) return f;
    int delta = b >> 4;
    f.id = delta ? int16_t(last_id_.top() + delta) : int16_t(zigzag(varint()));
    last_id_.top() = f.id;
    if (f.type > STRUCT) fail(what_, ": unknown field type ", int(f.type), " at byte ", position());
    return f;
  }
  // A bool struct field carries its value in the type nibble.
  static bool field_bool(const Field& f) { return f.type == BOOL_TRUE; }

  int64_t read_i64() { return zigzag(varint()); }
  int32_t read_i32() {
    int64_t v = read_i64();
    if (v < INT32_MIN || v > INT32_MAX) fail(what_, ": i32 out of range at byte ", position());
    return int32_t(v);
  }
  std::string_view read_binary() {
    uint64_t n = varint();
    if (n > uint64_t(end_ - p_)) fail(what_, ": string of ", n, " bytes runs past the end");
    std::string_view s(reinterpret_cast<const char*>(p_), size_t(n));
    p_ += n;
    return s;
  }
  // List or set header: element count and element type.
  std::pair<size_t, uint8_t> read_list_header() {
    uint8_t b = byte();
    uint64_t n = b >> 4;
    if (n == 15) n = varint();
    // Every element takes at least one byte, which bounds the count by what is left (no huge reservations).
    if (n > uint64_t(end_ - p_)) fail(what_, ": list of ", n, " elements runs past the end");
    return {size_t(n), uint8_t(b & 0x0F)};
  }

  void skip(uint8_t type) {
    switch (type) {
      case BOOL_TRUE:
      case BOOL_FALSE: return;  // a struct field's bool lives in its header
      case BYTE: byte(); return;
      case I16:
      case I32:
      case I64: varint(); return;
      case DOUBLE: advance(8); return;
      case BINARY: read_binary(); return;
      case LIST:
      case SET: {
        auto [n, et] = read_list_header();
        enter();
        for (size_t i = 0; i < n; ++i) skip_element(et);
        --depth_;
        return;
      }
      case MAP: {
        uint64_t n = varint();
        if (n == 0) return;
        if (n > uint64_t(end_ - p_)) fail(what_, ": map of ", n, " entries runs past the end");
        uint8_t kv = byte();
        enter();
        for (uint64_t i = 0; i < n; ++i) {
          skip_element(kv >> 4);
          skip_element(kv & 0x0F);
        }
        --depth_;
        return;
      }
      case STRUCT: {
        begin_struct();
        for (Field f = next_field(); f.type != STOP; f = next_field()) skip(f.type);
        end_struct();
        return;
      }
      default: fail(what_, ": unknown field type ", int(type), " at byte ", position());
    }
  }

 private:
  static constexpr int kMaxDepth = 64;
  // A tiny stack of the last field id per open struct (field ids are delta-coded within a struct).
  struct IdStack {
    int16_t v[kMaxDepth + 2] = {};
    int n = 0;
    void push(int16_t x) { v[n++] = x; }
    void pop() { --n; }
    int16_t& top() { return v[n - 1]; }
  };

  void enter() {
    if (++depth_ > kMaxDepth) fail(what_, ": structures nested deeper than ", kMaxDepth);
  }
  // Inside lists and maps a bool is a whole byte.
  void skip_element(uint8_t type) {
    if (type == BOOL_TRUE || type == BOOL_FALSE) {
      byte();
      return;
    }
    skip(type);
  }
  uint8_t byte() {
    if (p_ >= end_) fail(what_, ": truncated (needed a byte at offset ", position(), ")");
    return *p_++;
  }
  void advance(size_t n) {
    if (n > size_t(end_ - p_)) fail(what_, ": truncated");
    p_ += n;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b = byte();
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail(what_, ": varint longer than 10 bytes at offset ", position());
  }
  static int64_t zigzag(uint64_t v) { return int64_t(v >> 1) ^ -int64_t(v & 1); }

  const unsigned char* p_;
  const unsigned char* begin_;
  const unsigned char* end_;
  std::string what_;
  int depth_ = 0;
  IdStack last_id_;
};

}  // namespace bamba
