#include "core/dtype.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace bamba {

namespace {
struct DTypeInfo {
  DType t;
  std::string_view name;
  size_t size;
};
constexpr DTypeInfo kTypes[] = {
    {DType::F32, "F32", 4}, {DType::BF16, "BF16", 2}, {DType::F16, "F16", 2}, {DType::F64, "F64", 8},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4},   {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1}, {DType::F8_E4M3, "F8_E4M3", 1},
};
}  // namespace

size_t dtype_size(DType t) { return kTypes[size_t(t)].size; }
std::string_view dtype_name(DType t) { return kTypes[size_t(t)].name; }

bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& d : kTypes)
    if (d.name == s) {
      *out = d.t;
      return true;
    }
  return false;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (man & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | man << 13;
  } else {
    u = sign | (exp + 127 - 15) << 23 | man << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = uint16_t((u >> 16) & 0x8000);
  if (std::isnan(f)) return sign | 0x7e00;
  float a = std::fabs(f);
  if (a >= 65520.0f) return sign | 0x7c00;                   // overflow to inf (round-to-nearest)
  if (a < 6.103515625e-05f) {                                 // subnormal or zero: multiples of 2^-24
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));  // default rounding mode: nearest even
  }
  uint32_t exp = ((u >> 23) & 0xff) - 127 + 15, man = u & 0x7fffff;
  uint32_t h = exp << 10 | man >> 13, rest = man & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;  // carries into the exponent correctly
  return sign | uint16_t(h);
}

namespace {
float e4m3_value(int b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xf, man = b & 7;
  float a;
  if (exp == 0xf && man == 7) a = NAN;
  else if (exp == 0) a = std::ldexp(float(man), -9);  // subnormal: m/8 · 2^(1-7)
  else a = std::ldexp(float(8 + man), exp - 10);      // (1 + m/8) · 2^(exp-7)
  return sign ? -a : a;
}
// All 256 values once: the CPU matmul widens every weight of an FP8 matrix on each call.
struct E4M3Table {
  float v[256];
  E4M3Table() {
    for (int b = 0; b < 256; ++b) v[b] = e4m3_value(b);
  }
};
const E4M3Table kE4M3;
}  // namespace

float e4m3_to_f32(uint8_t b) { return kE4M3.v[b]; }

uint8_t f32_to_e4m3(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint8_t sign = uint8_t((u >> 24) & 0x80);
  if (std::isnan(f)) return sign | 0x7f;
  const float a = std::fabs(f);
  if (a >= kE4M3Max) return sign | 0x7e;  // saturate (inf included)
  if (a < 0.015625f) {                     // below 2^-6: multiples of 2^-9; 8·2^-9 rounds up into the first normal
    return sign | uint8_t(std::nearbyint(a * 512.f));  // default rounding mode: nearest even
  }
  const uint32_t exp = ((u >> 23) & 0xff) - 127 + 7, man = u & 0x7fffff;
  uint32_t h = exp << 3 | man >> 20, rest = man & 0xfffff;
  if (rest > 0x80000 || (rest == 0x80000 && (h & 1))) ++h;  // a carry moves into the exponent correctly
  return sign | uint8_t(h);                                 // a < 448 rounds to at most 0x7e
}

void convert_to_f32(const void* src, DType t, size_t n, float* dst) {
  if (n == 0) return;  // an empty tensor may have no data pointer, and memcpy's arguments must not be null
  const auto* b = static_cast<const unsigned char*>(src);
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    case DType::F64:
      for (size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, b + 8 * i, 8);
        dst[i] = float(d);
      }
      return;
    case DType::F8_E4M3:
      for (size_t i = 0; i < n; ++i) dst[i] = e4m3_to_f32(b[i]);
      return;
    case DType::I16:  // exact (a split master's low halves, core/bf16_split.h, travel so)
      for (size_t i = 0; i < n; ++i) {
        int16_t h;
        std::memcpy(&h, b + 2 * i, 2);
        dst[i] = float(h);
      }
      return;
    default:
      fail("cannot convert ", dtype_name(t), " to F32 (expected F32, BF16, F16, F64, F8_E4M3 or I16)");
  }
}

void convert_from_f32(const float* src, size_t n, DType t, void* dst) {
  auto* b = static_cast<unsigned char*>(dst);
  switch (t) {
    case DType::F32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(b + 2 * i, &h, 2);
      }
      return;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h = f32_to_f16(src[i]);
        std::memcpy(b + 2 * i, &h, 2);
      }
      return;
    case DType::I16:  // rounded to the nearest integer and saturated: exact for what convert_to_f32 gave
      for (size_t i = 0; i < n; ++i) {
        const float x = std::isnan(src[i]) ? 0.f : std::clamp(src[i], -32768.f, 32767.f);
        const int16_t h = int16_t(std::lrint(x));
        std::memcpy(b + 2 * i, &h, 2);
      }
      return;
    default:
      fail("cannot convert F32 to ", dtype_name(t), " (expected F32, BF16, F16 or I16)");
  }
}

}  // namespace bamba
