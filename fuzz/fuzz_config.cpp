// libFuzzer target: arbitrary bytes -> parse_config. A bamba::Error is the expected answer to bad input; anything
// else (a crash, a sanitizer report, another exception) is a finding. On success the derived sizes are computed,
// so UBSan checks that a config the parser accepts cannot overflow them.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    bamba::ModelConfig c = bamba::parse_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    volatile int64_t sink = c.conv_dim() + c.in_proj_dim() + c.qkv_dim() + c.parameter_count() +
                            c.n_attention_layers() + c.kind_index(c.num_hidden_layers - 1);
    (void)sink;
  } catch (const bamba::Error&) {
  }
  return 0;
}
