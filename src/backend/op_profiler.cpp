#include "backend/op_profiler.h"

#include <algorithm>
#include <cstdio>
#include <ostream>
#include <vector>

namespace bamba {

void OpProfiler::print(std::ostream& out, int steps) const {
  std::vector<std::pair<std::string, Row>> v(rows_.begin(), rows_.end());
  std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
  double total = 0;
  for (auto& [op, r] : v) total += r.seconds;
  const double per = 1.0 / std::max(steps, 1);
  char buf[256];
  out << "| op | calls/step | ms/step | % |\n| --- | ---: | ---: | ---: |\n";
  for (auto& [op, r] : v) {
    std::snprintf(buf, sizeof buf, "| %s | %.1f | %.3f | %.1f %% |\n", op.c_str(), double(r.calls) * per,
                  1e3 * r.seconds * per, total > 0 ? 100.0 * r.seconds / total : 0.0);
    out << buf;
  }
  std::snprintf(buf, sizeof buf, "| total | | %.3f | |\n", 1e3 * total * per);
  out << buf;
}

}  // namespace bamba
