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
  std::string shape_str() const {
    std::string s = "[";
    for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

}  // namespace bamba
