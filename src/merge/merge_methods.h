// Merge methods: the per-tensor arithmetic of each MergeKit method over fp32 spans, free of any I/O so that the
// tests can check every formula alone. Each tensor is treated as one flat vector. The formulas, and which MergeKit
// function each one corresponds to, are written down in docs/merge.md.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

namespace bamba {

// linear: out = Σ w_i x_i, then divided by Σ w_i when `normalize`. Normalizing weights that sum to 0 is an Error.
void merge_linear(const std::vector<std::span<const float>>& xs, std::span<const double> weights, bool normalize,
                  std::span<float> out);

// slerp: spherical interpolation from a (t = 0) to b (t = 1) along the great circle through their directions,
// scaled like the inputs. When the directions are (anti)parallel to within |cos| > 0.9995 it is plain
// lerp, out = (1 - t) a + t b, where the spherical formula loses precision.
void merge_slerp(double t, std::span<const float> a, std::span<const float> b, std::span<float> out);

// TIES trim: keeps the int(density · n) entries of largest magnitude (ties broken by position) and zeroes the
// rest; with `rescale`, scales the survivors so that the L1 norm is unchanged. density >= 1 leaves the tensor
// as it is; a density that keeps no entry is an Error, as in MergeKit. `scratch`, when given, is delta.size()
// floats of working space (else it is allocated).
void sparsify_magnitude(std::span<float> delta, double density, bool rescale, std::span<float> scratch = {});

// DARE drop: keeps each entry independently with probability `density` (std::mt19937_64 seeded with `seed`, so
// the same seed gives the same mask), zeroes the rest; `rescale` restores the L1 norm as above. density >= 1
// leaves the tensor as it is.
void sparsify_random(std::span<float> delta, double density, bool rescale, uint64_t seed);

struct TaskVectorOptions {
  bool sign_consensus = false;  // TIES: only deltas agreeing with the elected sign count, entry by entry
  bool normalize = false;       // divide by the sum of the weights that took part
  double lambda = 1.0;          // final scale of the mixed delta
};

// task arithmetic / TIES / DARE combine step: out = base + λ · mix(w_i · δ_i), where the δ_i are the task
// vectors (model - base), already sparsified.
void merge_task_vectors(std::span<const float> base, const std::vector<std::span<const float>>& deltas,
                        std::span<const double> weights, const TaskVectorOptions& opt, std::span<float> out);

}  // namespace bamba
