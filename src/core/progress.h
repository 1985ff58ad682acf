// ProgressBar: a one-line progress report on stderr for long jobs (loading a large checkpoint, merging).
// Redraws in place on a terminal; elsewhere prints at most every 10 % so logs stay short.
#pragma once
#include <chrono>
#include <cstddef>
#include <string>

namespace bamba {

class ProgressBar {
 public:
  ProgressBar(std::string label, size_t total, bool enabled = true);
  ~ProgressBar();
  void update(size_t done, const std::string& note = "");  // note: e.g. "12/40 tensors"
  void finish();

 private:
  std::string label_;
  size_t total_;
  bool enabled_, tty_, finished_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string human_bytes(double bytes);  // "1.5 GB"

}  // namespace bamba
