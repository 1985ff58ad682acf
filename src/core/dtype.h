// DType: element types of tensors on disk and in memory, with the bf16/f16 <-> f32 conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace bamba {

enum class DType : uint8_t { F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
std::string_view dtype_name(DType t);           // safetensors spelling: "F32", "BF16", ...
bool parse_dtype(std::string_view s, DType* out);  // false for an unknown name

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

// Converts n elements of a float type (F32, BF16, F16, F64) to f32. src may be unaligned (mmap'd file data).
void convert_to_f32(const void* src, DType t, size_t n, float* dst);
// Converts n f32 values to a float type (F32, BF16, F16).
void convert_from_f32(const float* src, size_t n, DType t, void* dst);

}  // namespace bamba
