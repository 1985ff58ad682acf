#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace bamba {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000 && u < 4) b /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

ProgressBar::ProgressBar(std::string label, size_t total, bool enabled, ProgressUnit unit)
    : label_(std::move(label)), total_(total), enabled_(enabled), tty_(::isatty(2)), unit_(unit),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(size_t done, const std::string& note) {
  if (!enabled_ || finished_ || total_ == 0) return;
  const double frac = double(done) / double(total_);
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - start_).count();
  if (first_done_ == SIZE_MAX) first_done_ = done;
  std::string amount = human_bytes(double(done)) + " / " + human_bytes(double(total_));
  if (unit_ == ProgressUnit::Count) {
    char buf[96];
    const double rate = secs > 0 ? double(done - std::min(done, first_done_)) / secs : 0;
    if (rate > 0 && done < total_)
      std::snprintf(buf, sizeof buf, "%zu/%zu ETA %.0fs", done, total_, double(total_ - done) / rate);
    else
      std::snprintf(buf, sizeof buf, "%zu/%zu", done, total_);
    amount = buf;
  }
  if (tty_) {
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const int width = 30, fill = int(frac * width);
    std::fprintf(stderr, "\r%s [%.*s%*s] %3.0f%% %s %s %.1fs\x1b[K", label_.c_str(), fill,
                 "##############################", width - fill, "", frac * 100, amount.c_str(), note.c_str(), secs);
  } else {
    const int decile = int(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %3d%% (%s %s, %.1fs)\n", label_.c_str(), decile * 10, amount.c_str(), note.c_str(), secs);
  }
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  update(total_);
  if (tty_) std::fputc('\n', stderr);
  finished_ = true;
}

void ProgressBar::abandon() {
  if (!enabled_ || finished_) return;
  if (tty_) std::fputc('\n', stderr);
  finished_ = true;
}

}  // namespace bamba
