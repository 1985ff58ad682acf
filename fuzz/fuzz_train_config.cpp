// libFuzzer target: bytes -> parse_train_config. A bamba::Error is the expected answer to bad input; anything else
// (a crash, a sanitizer report, a yaml-cpp exception that escaped) is a finding. On success the derived values
// (accumulation steps, the schedule at a few steps) are computed, so UBSan checks that an accepted config cannot
// overflow them.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "train/lr_schedule.h"
#include "train/train_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const bamba::TrainConfig c = bamba::parse_train_config(text, "fuzz.yml");
    const bamba::LrSchedule s = c.lr_schedule();
    volatile double sink = double(c.accumulation_steps()) + bamba::lr_multiplier(s, 0) +
                           bamba::lr_multiplier(s, c.steps / 2) + bamba::lr_multiplier(s, c.steps);
    (void)sink;
  } catch (const bamba::Error&) {
  }
  return 0;
}
