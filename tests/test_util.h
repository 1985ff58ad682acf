// Shared helpers for the test suite: where the fixtures and the bamba binary are, temp folders, running the CLI.
#pragma once
#include <cstdlib>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace bamba {
class Backend;
}

namespace bamba::test {

// $BAMBA_FIXTURES, else ../shared/fixtures next to the source tree.
inline std::string fixtures_dir() {
  const char* e = std::getenv("BAMBA_FIXTURES");
  return e && *e ? e : BAMBA_DEFAULT_FIXTURES;
}
inline std::string model_dir(const std::string& name) { return fixtures_dir() + "/models/" + name; }
// $BAMBA_BIN (to run a copied test binary elsewhere, e.g. on the GPU machine), else the one built beside it.
inline std::string bamba_binary() {
  const char* e = std::getenv("BAMBA_BIN");
  return e && *e ? e : BAMBA_BINARY;
}

// GPU op tolerances (docs/numerics.md), as relative L2 errors against the fp32 CPU oracle: a bf16 output, an fp32
// output (only summation order and __expf differ), the fp32 SSM state.
constexpr double kTolBf16 = 1e-2;
constexpr double kTolF32 = 1e-4;
constexpr double kTolF32State = 2e-3;
// ‖a − ref‖₂ / ‖ref‖₂
double rel_l2(const std::vector<float>& a, const std::vector<float>& ref);
// A contiguous tensor of any float dtype, on any backend, as fp32 on the host.
std::vector<float> host(Backend& be, Tensor t);

// Sets an environment variable while it lives (value nullptr: leaves it as it is), then restores it: the switches
// the CUDA backend reads when made (BAMBA_CUDA_*, BAMBA_SSD_CHUNK) or its launchers per call (BAMBA_SSD_TILES, ...).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* o = std::getenv(name)) old_ = o, had_ = true;
    if (value) setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// A fresh empty folder under $TMPDIR, removed by the caller (or left for inspection).
std::string make_temp_dir(const std::string& tag);

struct RunResult {
  int exit_code;
  std::string out, err;
};
// Runs `bamba <args>` through /bin/sh with optional stdin text; args are passed as written (shell syntax).
RunResult run_bamba(const std::string& args, const std::string& stdin_text = "");

}  // namespace bamba::test
