#include "train/validation.h"

#include <algorithm>

#include "core/error.h"
#include "train/mixture_source.h"

namespace bamba {

namespace {

MixtureOptions in_file_order(const TrainConfig& cfg) {
  MixtureOptions o;
  o.shuffle = false;
  o.packing = cfg.packing;
  return o;
}

}  // namespace

Validation::Validation(const TrainConfig& cfg, Trainable& model, int64_t vocab_size)
    : cfg_(cfg), model_(model), vocab_(vocab_size) {
  for (const DatasetSpec& d : cfg.validation) MixtureSource({d}, vocab_, in_file_order(cfg));
}

nlohmann::ordered_json Validation::run() {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  const int64_t micro_tokens = cfg_.micro_batch_size * cfg_.seq_len;
  for (const DatasetSpec& d : cfg_.validation) {
    MixtureSource src({d}, vocab_, in_file_order(cfg_));  // from the start, every time
    // eval_tokens, or the whole dataset when it is smaller (its last micro-batch wraps round to its start)
    const int64_t tokens = std::min(cfg_.eval_tokens, src.total_tokens());
    const int64_t n_micro = (tokens + micro_tokens - 1) / micro_tokens;
    std::vector<TokenBatch> batches;
    int64_t labeled = 0;
    for (int64_t k = 0; k < n_micro; ++k) {
      batches.push_back(src.next(cfg_.micro_batch_size, cfg_.seq_len));
      labeled += batches.back().labeled();
    }
    if (labeled == 0)
      fail("validation dataset ", d.name, ": its first ", n_micro * micro_tokens, " tokens hold no scored label");
    const LossDivisors div{labeled, n_micro * micro_tokens};
    double loss = 0;
    for (const TokenBatch& b : batches) loss += model_.loss(b, div).loss;
    out[d.name] = loss;
  }
  return out;
}

}  // namespace bamba
