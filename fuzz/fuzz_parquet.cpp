// libFuzzer target: arbitrary bytes -> parse_parquet. A bamba::Error is the expected answer to bad input; anything
// else (a crash, a sanitizer report, an out-of-memory, another exception) is a finding. Every row read is dumped,
// which throws if a string that reached the rows is not valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/parquet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    size_t total = 0;
    for (const nlohmann::ordered_json& row : bamba::parse_parquet(data, size, "fuzz.parquet")) total += row.dump().size();
    volatile size_t sink = total;
    (void)sink;
  } catch (const bamba::Error&) {
  }
  return 0;
}
