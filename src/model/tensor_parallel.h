// Tensor parallelism (Megatron-LM's split, as vLLM applies it to Mamba2): one model over N ranks, each holding a
// shard of every layer, the residual stream whole on every rank.
//   - attention: the query heads split over the ranks and the KV heads with them (N > nkv: each KV head
//     replicated on the N / nkv ranks whose query heads use it); o_proj split by its input columns;
//   - Mamba2 mixer: the heads split (z, x, dt rows of in_proj, A_log, D, dt_bias, the conv channels of x, the
//     out_proj columns); the B/C groups split with them when n_groups >= N, else each rank keeps the one group
//     its heads read; the gated norm local when its groups fall inside a rank's channels, else (Bamba: one group
//     over the whole inner size) its inputs are gathered and every rank normalises the whole width;
//   - MLP: gate/up split by rows (column-parallel), down by columns (row-parallel);
//   - mixture of experts (as vLLM): the router replicated, so every rank routes a token alike; each routed expert
//     split like an MLP (its width over the ranks), the shared MLP / shared expert too; routed + shared summed on
//     the rank, then the block's one all-reduce;
//   - Zamba2's shared attention + MLP blocks split like any attention and MLP, the LoRA adapters' A replicated
//     and B split with the weight it adds to; their outputs all-reduced inside the hybrid layer (each feeds a
//     norm), the layer's own `linear` replicated;
//   - one all-reduce (sum) of the block output after each mixer and each MLP, before the residual add;
//   - lm_head split over the vocabulary, the logits gathered; the embedding and norms replicated.
// The hybrid cache is split the same way (each rank's cache holds its heads' states and KV pages). The math stays
// in model/hybrid.cpp: a rank's HybridModel is an ordinary model of its shard's config (ModelConfig::tp_*), with
// the collectives at those points.
//
// In one process (threads: the CPU backend, or one GPU per thread over NCCL) rank 0's model is the one the
// engine sees: its forward() runs the step on every rank, and the caches and workspaces made for it carry the
// other ranks' (HybridCache::mirrors, Workspace::mirrors), so the engine, the generator and the server need no
// change.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "backend/communicator.h"
#include "model/hybrid.h"

namespace bamba {

// Rank `rank`'s config of `size`; an Error naming the field when the model does not split that way (heads,
// groups, MLP / expert widths or the vocabulary not divisible).
ModelConfig shard_config(const ModelConfig& full, int rank, int size);
// Rank local.tp_rank's shard of `full` (weights of `full_cfg` on full_be, any backend) as weights of `dst`,
// converted as a checkpoint would be loaded there.
ModelWeights shard_weights(const ModelConfig& full_cfg, const ModelWeights& full, Backend& full_be,
                           const ModelConfig& local, Backend& dst);

// One-process tensor parallelism: rank r computes on backends[r] and talks over comms[r] (comms.size() ranks).
// Returns rank 0's model, which runs all of them (one thread per other rank); it references backends[0] and owns
// the rest, and the comms. `full` (on full_be) is only read here.
std::unique_ptr<HybridModel> make_tensor_parallel_model(const ModelConfig& cfg, const ModelWeights& full, Backend& full_be,
                                                        Backend& rank0, std::vector<std::unique_ptr<Backend>> others,
                                                        std::vector<std::unique_ptr<Communicator>> comms);

// The other ranks of a one-process group, their models and worker threads (model/tensor_parallel.cpp).
class TensorParallelPeers;

}  // namespace bamba
