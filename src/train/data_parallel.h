// DataParallel: what a Trainer (train/trainer.h) does when it is one of several ranks, each a whole replica of the
// model reading its own rows of every global micro-batch (MixtureSource's rank of world). The ranks stay one run:
//   - the loss divisors are the global step's (scored tokens and sequences summed over the ranks), so the ranks'
//     gradients add up to the gradient one rank would compute for the whole global batch;
//   - after the backward every gradient is summed over the ranks in buckets of about bucket_bytes, the
//     parameters in reverse order (the order a backward completes them in), each bucket one NCCL group;
//   - ZeRO-1: the optimizer state is sharded. Rank r owns a contiguous run of parameters (balanced by size),
//     keeps AdamW moments for those only, updates them, and broadcasts them to the others.
// Every rank holds the same summed gradients, hence the same clipping norm and the same updated weights.
// Checkpoints gather the moments on rank 0, which alone writes files.
#pragma once
#include <cstddef>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "backend/communicator.h"
#include "train/adamw.h"
#include "train/trainable.h"

namespace bamba {

class DataParallel {
 public:
  explicit DataParallel(Communicator& comm, size_t bucket_bytes = size_t(25) << 20);
  Communicator& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }

  void sum(std::span<double> v) { comm_.all_reduce_host(v); }  // host scalars, the same on every rank
  // grad ← Σ over ranks of grad, for every parameter (F32 buffers where the parameters live).
  void all_reduce_gradients(const std::vector<ParamRef>& params);
  // The parameters [first, last) this rank owns (ZeRO-1), and the owner of parameter i.
  std::pair<size_t, size_t> owned(const std::vector<ParamRef>& params) const;
  int owner(const std::vector<ParamRef>& params, size_t i) const;
  // Each parameter's value copied from its owner to every rank (after the owners' optimizer step).
  void broadcast_parameters(const std::vector<ParamRef>& params, ParamDevice* dev);
  // Rank 0: an optimizer over all of `params` holding every rank's moments (`shard` is this rank's, over owned());
  // other ranks: null. A collective: every rank calls it. For checkpoints.
  std::unique_ptr<AdamW> gather_optimizer(const std::vector<ParamRef>& params, AdamW& shard, AdamWOptions opt,
                                          ParamDevice* dev);
  // The inverse after a resume: this rank's moments and step count taken from `full` (every rank loaded it).
  void scatter_optimizer(const std::vector<ParamRef>& params, const AdamW& full, AdamW& shard);

 private:
  Communicator& comm_;
  size_t bucket_bytes_;
};

}  // namespace bamba
