#include "train/data_parallel.h"

#include <vector>

#include "core/error.h"

namespace bamba {

DataParallel::DataParallel(Communicator& comm, size_t bucket_bytes) : comm_(comm), bucket_bytes_(bucket_bytes) {}

void DataParallel::all_reduce_gradients(const std::vector<ParamRef>& params) {
  // Buckets from the last parameter back: on a GPU the first bucket's reduction could start while the backward
  // still works on the earlier layers (here the backward is one call, so they follow it; docs/multi-gpu.md).
  size_t i = params.size();
  while (i > 0) {
    size_t bytes = 0, first = i;
    while (first > 0 && (bytes == 0 || bytes + params[first - 1].size * 4 <= bucket_bytes_)) bytes += params[--first].size * 4;
    comm_.group_start();
    for (size_t k = i; k-- > first;) comm_.all_reduce_sum(params[k].grad, params[k].size, DType::F32);
    comm_.group_end();
    i = first;
  }
}

int DataParallel::owner(const std::vector<ParamRef>& params, size_t i) const {
  // Parameter i goes to the rank whose equal share of all elements its first element falls in: contiguous runs,
  // balanced to within one parameter.
  size_t total = 0, before = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    if (k < i) before += params[k].size;
    total += params[k].size;
  }
  return total == 0 ? 0 : int(std::min<size_t>(before * size_t(size()) / total, size_t(size() - 1)));
}

std::pair<size_t, size_t> DataParallel::owned(const std::vector<ParamRef>& params) const {
  size_t first = params.size(), last = params.size();
  for (size_t i = 0; i < params.size(); ++i) {
    const int o = owner(params, i);
    if (o == rank() && first == params.size()) first = i;
    if (o > rank()) {
      last = i;
      break;
    }
  }
  if (first > last) first = last;
  return {first, last};
}

void DataParallel::broadcast_parameters(const std::vector<ParamRef>& params, ParamDevice* dev) {
  size_t i = 0;
  while (i < params.size()) {
    size_t bytes = 0, end = i;
    while (end < params.size() && (bytes == 0 || bytes + params[end].size * 4 <= bucket_bytes_)) bytes += params[end++].size * 4;
    comm_.group_start();
    for (size_t k = i; k < end; ++k) {
      const ParamRef& p = params[k];
      if (p.value) comm_.broadcast(p.value, p.size, DType::F32, owner(params, k));
      else {  // a split master: its two halves (the model's weight among them)
        comm_.broadcast(p.split_hi, p.size, DType::BF16, owner(params, k));
        comm_.broadcast(p.split_lo, p.size, DType::BF16, owner(params, k));  // I16 bits: a broadcast moves bytes
      }
    }
    comm_.group_end();
    i = end;
  }
  if (dev) dev->sync_model(params);  // the model's own (bf16) copies of the new masters
}

std::unique_ptr<AdamW> DataParallel::gather_optimizer(const std::vector<ParamRef>& params, AdamW& shard,
                                                      AdamWOptions opt, ParamDevice* dev) {
  const auto [first, last] = owned(params);
  std::unique_ptr<AdamW> full;
  opt.first_param_index = 0;
  if (rank() == 0) {
    full = std::make_unique<AdamW>(params, opt, dev);
    full->set_steps_taken(shard.steps_taken());
  }
  const DType mdt = opt.bf16_moments ? DType::BF16 : DType::F32;
  std::vector<unsigned char> host;
  for (size_t i = 0; i < params.size(); ++i) {
    const int from = owner(params, i);
    for (bool sq : {false, true}) {
      const size_t bytes = params[i].size * dtype_size(mdt);
      // The owner sends from its shard; rank 0 receives into the full optimizer; the others need a buffer of
      // their own for the broadcast (a host or device scratch).
      void* buf = nullptr;
      void* scratch = nullptr;
      if (rank() == from) buf = shard.moment_data(i - first, sq);
      else if (rank() == 0) buf = full->moment_data(i, sq);
      else if (dev) buf = scratch = dev->alloc(mdt, params[i].size);
      else {
        host.resize(bytes);
        buf = host.data();
      }
      comm_.broadcast(buf, params[i].size, mdt, from);
      if (rank() == 0 && from == 0) {  // rank 0 owns it: its shard's moment into the full optimizer
        std::vector<unsigned char> tmp(bytes);
        shard.moment_to_host(i - first, sq, tmp.data());
        full->moment_from_host(i, sq, tmp.data());
      }
      if (scratch) dev->release(scratch);
    }
  }
  (void)last;
  return full;
}

void DataParallel::scatter_optimizer(const std::vector<ParamRef>& params, const AdamW& full, AdamW& shard) {
  const auto [first, last] = owned(params);
  std::vector<unsigned char> tmp;
  for (size_t i = first; i < last; ++i)
    for (bool sq : {false, true}) {
      tmp.resize(full.moment_bytes(i));
      full.moment_to_host(i, sq, tmp.data());
      shard.moment_from_host(i - first, sq, tmp.data());
    }
  shard.set_steps_taken(full.steps_taken());
}

}  // namespace bamba
