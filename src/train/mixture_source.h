// MixtureSource: training rows drawn from token shards (data/token_shard.h) of several named datasets with target
// weights, the way fms-fsdp mixes Bamba's data: each row comes whole from the dataset that is furthest behind its
// share of the tokens drawn so far (ties: the first listed), so the achieved proportions follow the weights
// exactly and deterministically. Within a dataset, documents run across row boundaries (Bamba's pretraining
// packing: the separator token between documents), shards in name order, starting over at the end (an epoch).
// The state — each dataset's position and tokens drawn — is saved with every checkpoint; restoring it continues
// the same stream.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/token_shard.h"
#include "train/batch_source.h"
#include "train/train_config.h"  // DatasetSpec: name, path (a shard or a folder of *.bin shards), weight

namespace bamba {

class MixtureSource final : public BatchSource {
 public:
  // Error naming the dataset when a path has no shards, a shard is invalid, or vocab sizes differ from `vocab`.
  MixtureSource(const std::vector<DatasetSpec>& datasets, int64_t vocab_size);
  TokenBatch next(int64_t rows, int64_t seq_len) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  // Tokens drawn per dataset so far (the achieved mixture).
  std::vector<std::pair<std::string, int64_t>> drawn() const;

 private:
  struct Stream {
    DatasetSpec d;
    std::vector<std::unique_ptr<TokenShard>> shards;
    uint64_t total = 0;     // tokens over all shards
    uint64_t position = 0;  // next token, over the concatenated shards
    int64_t drawn = 0, epoch = 0;
  };
  void read(Stream& s, int32_t* out, int64_t n);
  std::vector<Stream> streams_;
  double weight_sum_ = 0;
};

}  // namespace bamba
