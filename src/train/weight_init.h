// Fresh weights for training from scratch, initialised as mamba_ssm initialises a Mamba2 language model (the code
// fms-fsdp trained Bamba with), not as the serving dummy (model/weights.h: dummy_weights, scaled so that every
// layer of an untrained model matters, far too large to train from).
#pragma once
#include <cstdint>

#include "model/weights.h"

namespace bamba {

// Allocates the model's weights on `be` and fills them (deterministic in `seed`, identical on every backend):
//   linear and embedding weights   uniform with std 0.02 (initializer_range), biases 0, norm weights 1
//   out_proj / o_proj / down_proj   std 0.02 / sqrt(2 L): the two residual adds per layer (GPT-2's rescaling)
//   conv1d weight and bias          PyTorch's Conv1d default, uniform(±1/sqrt(K)) (fan-in of a depthwise kernel)
//   A_log = log(U[1, 16]), D = 1, dt_bias = softplus⁻¹(dt) with dt log-uniform in [0.001, 0.1] (floor 1e-4)
ModelWeights init_weights(const ModelConfig& cfg, Backend& be, uint64_t seed);

}  // namespace bamba
