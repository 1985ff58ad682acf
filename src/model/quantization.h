// FP8 (E4M3) linear weights: how config.json's quantization_config describes a checkpoint published with them
// (the layouts vLLM loads), and the scales read back from it. The weights themselves are F8_E4M3 tensors that carry
// their F32 scales (Tensor::scale); Backend::matmul runs them.
//
// Layouts (docs/quantization.md):
//   compressed-tensors  quant_method "compressed-tensors", format "float-quantized" (or "naive-quantized"),
//                       config_groups.*.weights {type "float", num_bits 8, strategy channel | tensor | block
//                       (block_structure [B, B])}; tensors <module>.weight F8_E4M3 + <module>.weight_scale
//                       [N, 1] / [1] / [ceil(N/B), ceil(K/B)]; "ignore": modules left unquantized (names, or "re:"
//                       regular expressions matched from the start).
//   FBGEMM FP8          quant_method "fbgemm_fp8": <module>.weight_scale [N, 1]; activation_scale_ub (an upper bound
//                       on the dynamic activation scale); modules_to_not_convert (substrings of module names).
//   fp8                 quant_method "fp8" (DeepSeek-style), fmt "e4m3": weight_block_size [B, B] with
//                       <module>.weight_scale_inv [ceil(N/B), ceil(K/B)], or without it one per-tensor
//                       <module>.weight_scale; modules_to_not_convert as above.
// Static activation scales (<module>.input_scale) are read over: activations are always quantized dynamically
// per token, which is at least as accurate.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace bamba {

enum class Fp8Method : uint8_t { None, CompressedTensors, FbgemmFp8, Fp8 };

struct Fp8Format {
  Fp8Method method = Fp8Method::None;
  std::string source;                          // the config.json it came from (errors)
  std::string scale_name = "weight_scale";     // the tensor beside <module>.weight
  int64_t block = 0;                           // B of B×B weight blocks; 0: per output channel or per tensor
  std::vector<std::string> ignore;             // modules left in bf16
  bool ignore_by_substring = false;            // modules_to_not_convert (else compressed-tensors' names / "re:")
  float activation_scale_ub = 0.f;             // fbgemm_fp8 (0 = none)

  bool ignored(const std::string& module) const;
};

// The FP8 format the config.json at `path` declares (method None when it has no quantization_config, or when the
// file does not exist). Error naming the field for an unknown quant_method or one bamba does not run (int8,
// e5m2, 4-bit, FP8 KV caches, mismatched groups).
Fp8Format read_fp8_format(const std::string& path);

// The dequantization scales of one FP8 weight made of `parts` (checkpoint tensors <module>.weight, F8_E4M3, stacked
// along dim 0 into [N, K]): per output row [N] (channel and tensor scales alike), or block scales
// [ceil(N/B), ceil(K/B)] row-major. Marks the scale tensors (and any static input_scale) in `used`. Error naming
// the tensor for a missing scale, a shape that matches no layout, or a part not aligned to B rows.
std::vector<float> read_fp8_scales(const Fp8Format& f, const Checkpoint& ckpt, const std::vector<const TensorInfo*>& parts,
                                   int64_t K, std::vector<std::string>& used);

// "none" or "fp8" (the --quantization option); Error naming the option otherwise.
bool parse_quantization(const std::string& s, bool fp8_lm_head = false);

}  // namespace bamba
