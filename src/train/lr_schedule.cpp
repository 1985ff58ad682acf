#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace bamba {

double lr_multiplier(const LrSchedule& s, int64_t step) {
  using K = LrSchedule::Kind;
  const int64_t W = std::max<int64_t>(s.warmup_steps, 0), N = std::max<int64_t>(s.total_steps, 1);
  if (step < W) {
    const double x = double(step + 1) / double(W);
    return s.warmup == LrSchedule::Warmup::Linear ? x : 1 - (1 - x) * (1 - x);
  }
  const double f = s.final_ratio;
  switch (s.kind) {
    case K::Constant:
      return 1;
    case K::Cosine:
    case K::Linear: {
      if (step >= N || N <= W) return f;
      const double p = double(step - W) / double(N - W);
      return s.kind == K::Linear ? 1 - (1 - f) * p : f + (1 - f) * 0.5 * (1 + std::cos(std::numbers::pi * p));
    }
    case K::Wsd: {
      const int64_t D = std::clamp<int64_t>(s.decay_steps, 0, N), start = N - D;
      if (step < start) return 1;
      if (step >= N) return f;
      const double q = double(step - start) / double(D);
      switch (s.decay_shape) {
        case LrSchedule::DecayShape::Linear:
          return 1 - (1 - f) * q;
        case LrSchedule::DecayShape::Sqrt:
          return 1 - (1 - f) * std::sqrt(q);
        case LrSchedule::DecayShape::Cosine:
          return f + (1 - f) * 0.5 * (1 + std::cos(std::numbers::pi * q));
      }
    }
  }
  return 1;
}

std::string schedule_kind_name(LrSchedule::Kind k) {
  switch (k) {
    case LrSchedule::Kind::Constant:
      return "constant";
    case LrSchedule::Kind::Cosine:
      return "cosine";
    case LrSchedule::Kind::Linear:
      return "linear";
    case LrSchedule::Kind::Wsd:
      return "wsd";
  }
  return "?";
}

}  // namespace bamba
