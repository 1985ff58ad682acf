// ProgressBar: a one-line progress report on stderr for long jobs (loading a large checkpoint, merging).
// Redraws in place on a terminal; elsewhere prints at most every 10 % so logs stay short.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace bamba {

// What `done` and `total` count: bytes (printed "1.5 GB / 3.0 GB") or items such as training steps ("12/100",
// with an ETA from the rate so far).
enum class ProgressUnit { Bytes, Count };

class ProgressBar {
 public:
  ProgressBar(std::string label, size_t total, bool enabled = true, ProgressUnit unit = ProgressUnit::Bytes);
  ~ProgressBar();
  void update(size_t done, const std::string& note = "");  // note: e.g. "12/40 tensors"
  void finish();
  void abandon();  // ends the line where it stands (work stopped early), without drawing 100 %

 private:
  std::string label_;
  size_t total_;
  bool enabled_, tty_, finished_ = false;
  ProgressUnit unit_;
  size_t first_done_ = SIZE_MAX;  // done at the first update: the ETA counts only work done since
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string human_bytes(double bytes);  // "1.5 GB"

}  // namespace bamba
