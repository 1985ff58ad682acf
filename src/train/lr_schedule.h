// Learning-rate schedules as pure functions of the global optimizer step s (0-based: s is the index of the update
// about to be taken), never of micro-batches, so a resumed run gets the same rates. The result multiplies the
// peak lr. Warmup covers steps 0..W−1 and never gives 0 (the first update would be wasted): linear (s+1)/W, or
// quadratic 1 − (1 − (s+1)/W)² (fms-fsdp's Bamba warmup, shifted by one step for the same reason). After warmup,
// with p = (s − W)/(N − W) ∈ [0, 1) the progress through the N total steps:
//   constant  1
//   cosine    f + (1 − f)·½(1 + cos πp)             (fms-fsdp's Bamba run: f = 0.1)
//   linear    1 − (1 − f)·p                         (annealing to the fraction f)
//   wsd       1 until the last D steps, then 1 − (1 − f)·q over them, q = (s − (N − D))/D
//             (warmup-stable-decay; decay_shape "sqrt" gives llm.c's 1 − (1 − f)·√q, "cosine" the cosine form)
// Steps at or past N keep the final value f (1 for constant).
#pragma once
#include <cstdint>
#include <string>

namespace bamba {

struct LrSchedule {
  enum class Kind { Constant, Cosine, Linear, Wsd };
  enum class Warmup { Linear, Quadratic };
  enum class DecayShape { Linear, Sqrt, Cosine };  // wsd's decay
  Kind kind = Kind::Cosine;
  Warmup warmup = Warmup::Linear;
  DecayShape decay_shape = DecayShape::Linear;
  int64_t warmup_steps = 0;  // W
  int64_t total_steps = 1;   // N
  int64_t decay_steps = 0;   // D (wsd)
  double final_ratio = 0.1;  // f: the end value as a fraction of the peak
};

double lr_multiplier(const LrSchedule& s, int64_t step);

std::string schedule_kind_name(LrSchedule::Kind k);

}  // namespace bamba
