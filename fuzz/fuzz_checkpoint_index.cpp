// libFuzzer target: arbitrary bytes as model.safetensors.index.json -> Checkpoint, in a temp folder that also
// holds one valid shard "a.safetensors" (tensors "x" and "y"). A bamba::Error is the expected answer to bad
// input; anything else is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "io/checkpoint.h"

namespace {

std::string make_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "bamba-fuzz-index-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) std::abort();
  const float x[2] = {1, 2};
  const uint16_t y[3] = {1, 2, 3};
  bamba::write_safetensors(tmpl + "/a.safetensors",
                           {{"x", bamba::DType::F32, {2}, x}, {"y", bamba::DType::BF16, {3}, y}});
  return tmpl;
}

// The folder, made on first use and removed at exit. Never freed: the atexit handler runs after static
// destructors registered later, so a static std::string would already be gone.
const std::string& dir() {
  static const std::string* d = [] {
    auto* made = new std::string(make_dir());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(dir(), ec);
    });
    return made;
  }();
  return *d;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::ofstream(dir() + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), std::streamsize(size));
  try {
    bamba::Checkpoint ck(dir());
    for (const std::string& n : ck.names()) (void)ck.get(n).nbytes;
  } catch (const bamba::Error&) {
  }
  return 0;
}
