// Tensor: a non-owning view of a 1-4 dimensional array on some device. Backends own memory; everything else
// passes views. `ld` is the stride of dim 0 in elements (rows of a 2-D view may be a column slice of a wider
// matrix, e.g. the z / xBC / dt parts of the in_proj output); the remaining dims are contiguous.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"

namespace bamba {

enum class Device : uint8_t { CPU, CUDA };

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};
  int64_t ld = 0;  // elements between consecutive dim-0 entries
  // An F8_E4M3 weight [N, K] carries its dequantization scales (F32, on the tensor's device; model/quantization.h):
  // W[n, k] = q[n, k] · scale[n] (scale_block == 0: one per output row), or with block scales
  // [ceil(N / B), ceil(K / B)], B = scale_block: W[n, k] = q[n, k] · scale[n / B][k / B].
  float* scale = nullptr;
  int32_t scale_block = 0;

  Tensor() = default;
  Tensor(void* d, DType t, Device dev, std::initializer_list<int64_t> s) : data(d), dtype(t), device(dev) {
    for (int64_t x : s) shape[ndim++] = x;
    ld = inner();
  }

  explicit operator bool() const { return data != nullptr; }
  int64_t rows() const { return ndim ? shape[0] : 1; }
  int64_t inner() const {  // elements per dim-0 entry
    int64_t n = 1;
    for (int i = 1; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t numel() const { return rows() * inner(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
  bool contiguous() const { return ld == inner(); }

  template <typename T>
  T* ptr() const { return static_cast<T*>(data); }

  // Rows [begin, end) of dim 0.
  Tensor slice_rows(int64_t begin, int64_t end) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(begin * ld) * dtype_size(dtype);
    t.shape[0] = end - begin;
    if (scale) t.scale = scale + (scale_block ? begin / scale_block * scale_cols() : begin);  // begin % B == 0
    return t;
  }
  // Columns [begin, end) of a 2-D view; keeps ld.
  Tensor slice_cols(int64_t begin, int64_t end) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + size_t(begin) * dtype_size(dtype);
    t.shape[1] = end - begin;
    return t;
  }
  // Same memory, new shape (contiguous only).
  Tensor view(std::initializer_list<int64_t> s) const {
    Tensor t(data, dtype, device, s);
    return t;
  }
  // Block scales per row of blocks: ceil(K / B).
  int64_t scale_cols() const { return scale_block ? (shape[1] + scale_block - 1) / scale_block : 1; }
  // The scales of an FP8 weight as a tensor of their own: [N] or [ceil(N / B), ceil(K / B)] F32.
  Tensor scales() const {
    if (!scale_block) return Tensor(scale, DType::F32, device, {shape[0]});
    return Tensor(scale, DType::F32, device, {(shape[0] + scale_block - 1) / scale_block, scale_cols()});
  }
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

}  // namespace bamba
