// libFuzzer target: arbitrary bytes -> parse_safetensors. A bamba::Error is the expected answer to bad input;
// anything else (a crash, a sanitizer report, another exception) is a finding. On success every tensor's bytes
// are read, so ASan checks that the parsed views stay inside the input.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    bamba::SafetensorsHeader h = bamba::parse_safetensors(data, size, "fuzz.safetensors");
    unsigned sum = 0;
    for (const bamba::TensorInfo& t : h.tensors) {
      for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];
      if (t.dtype == bamba::DType::F32 || t.dtype == bamba::DType::BF16 || t.dtype == bamba::DType::F16) {
        std::vector<float> f(size_t(t.numel()));  // numel * dtype size == nbytes <= size: a small allocation
        bamba::convert_to_f32(t.data, t.dtype, f.size(), f.data());
      }
    }
    volatile unsigned sink = sum;  // keep the reads
    (void)sink;
  } catch (const bamba::Error&) {
  }
  return 0;
}
