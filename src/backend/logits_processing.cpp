// The plain definition of Backend::process_logits for one row (backend.h): the CPU backend's implementation
// and the reference the CUDA kernel (backend/cuda/logits_processing.cu) is tested against.
#include <cmath>
#include <limits>

#include "backend/backend.h"

namespace bamba {

void process_logits_row(float* x, int64_t V, const LogitsRow& r, const LogitEdit* edits, const uint32_t* mask) {
  const float ninf = -std::numeric_limits<float>::infinity();
  if (mask)
    for (int64_t j = 0; j < V; ++j)
      if (!((mask[j >> 5] >> (j & 31)) & 1u)) x[j] = ninf;
  for (int32_t e = 0; e < r.edit_count; ++e) {
    const LogitEdit& d = edits[e];
    float v = x[d.id] + d.bias;
    if (d.repeat) v = v > 0.f ? v / r.repetition_penalty : v * r.repetition_penalty;
    x[d.id] = v - d.sub;
  }
  if (r.min_p_shift > ninf) {
    float m = ninf;
    for (int64_t j = 0; j < V; ++j) m = std::fmax(m, x[j]);
    const float thr = m + r.min_p_shift;
    for (int64_t j = 0; j < V; ++j)
      if (x[j] < thr) x[j] = ninf;
  }
}

}  // namespace bamba
