// DType: element types of tensors on disk and in memory, with the bf16/f16 <-> f32 conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace bamba {

// F8_E4M3: OCP FP8 E4M3FN (torch.float8_e4m3fn): 1 sign, 4 exponent bits (bias 7), 3 mantissa bits, no
// infinities, NaN = S.1111.111, largest finite ±448, subnormals m·2⁻⁹. Only FP8 weights use it (model/quantization.h).
enum class DType : uint8_t { F32, BF16, F16, F64, I64, I32, I16, I8, U8, BOOL, F8_E4M3 };

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

// E4M3 <-> f32. The widening is exact. The narrowing rounds to nearest even and saturates: a finite value
// beyond ±448 (and ±inf) becomes ±448, as CUDA's __NV_SATFINITE conversion does; NaN stays NaN.
constexpr float kE4M3Max = 448.f;
float e4m3_to_f32(uint8_t b);
uint8_t f32_to_e4m3(float f);
uint16_t f32_to_f16(float f);

// Converts n elements of a float type (F32, BF16, F16, F64, F8_E4M3) to f32. src may be unaligned (mmap'd file data).
void convert_to_f32(const void* src, DType t, size_t n, float* dst);
// Converts n f32 values to a float type (F32, BF16, F16).
void convert_from_f32(const float* src, size_t n, DType t, void* dst);

}  // namespace bamba
