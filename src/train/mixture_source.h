// MixtureSource: training rows drawn from token shards (data/token_shard.h) of several named datasets with target
// weights, the way fms-fsdp mixes Bamba's data: each row comes whole from the dataset that is furthest behind its
// share of the tokens drawn so far (ties: the first listed), so the achieved proportions follow the weights
// exactly and deterministically.
//
// Phases: a run may change its mixture at fixed points of the global stream (pretraining, then annealing). Each
// phase lists its datasets and weights and lasts a number of tokens; the deficit rule applies within the phase,
// over the tokens drawn in that phase. A dataset named in several phases is one stream: its position and epoch
// carry over from one phase to the next. The last phase has no end (it goes on if drawn past its length). A
// `data:` list is one phase without a name, and its saved state is exactly that of a loader without phases.
//
// Within a dataset the documents (over all its shards, in name order) are visited in a shuffled order, a fresh
// one every epoch: a seeded bijection of the document indices (data/doc_permutation.h), computed as it goes, so
// no index of the documents is built or saved. The documents, each behind its separator, form one stream that is
// cut into rows; a document longer than the rest of a row continues at the start of that dataset's next row.
// Packing decides what a row boundary inside that stream means to the model:
//   continuous    documents run across each other within a row, as in Bamba's pretraining (one sequence per row);
//   per-document  every document (or the part of it in this row) is its own sequence (TokenBatch::seq_start):
//                 a fresh Mamba state and conv window, attention within the document, positions from 0.
// Both see the same tokens in the same rows. A third mode changes the rows:
//   whole-documents  per-document, and a document that does not fit in the rest of a row (but would fit in a
//                 row) starts the next row instead; the rest of the row is padding (the separator, or token 0,
//                 with label -100) in a sequence of its own. Only documents longer than a row are split.
// The tokens drawn count every position of a row, padding included.
//
// Data parallelism: the rows form one global stream. With `world` ranks, every call to next(rows, ...) is one
// global micro-batch of rows × world rows, and rank r gets rows [r·rows, (r+1)·rows) of it; every rank walks the
// whole global stream (skipping the others' tokens), so all ranks hold the same state. The state saved with a
// checkpoint is therefore global — each dataset's epoch, document ordinal, offset in that document and tokens
// drawn — and a run resumed with another number of ranks continues the same global stream.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "data/doc_permutation.h"
#include "data/token_shard.h"
#include "train/batch_source.h"
#include "train/train_config.h"  // DatasetSpec: name, path (a shard or a folder of *.bin shards), weight; Packing

namespace bamba {

struct MixtureOptions {
  uint64_t seed = 0;     // of the document order (with the dataset's name and the epoch)
  bool shuffle = true;   // false: documents in shard order (validation data)
  Packing packing = Packing::Continuous;
  int64_t rank = 0, world = 1;  // this data-parallel rank of `world`
};

// One phase of the mixture: `tokens` tokens of the global stream (0: no end) drawn from `data` by weight.
struct MixturePhase {
  std::string name;  // "": the one implicit phase of a `data:` list
  int64_t tokens = 0;
  std::vector<DatasetSpec> data;
};

class MixtureSource final : public BatchSource {
 public:
  // Error naming the dataset when a path has no shards, a shard is invalid, or vocab sizes differ from `vocab`.
  MixtureSource(const std::vector<DatasetSpec>& datasets, int64_t vocab_size, MixtureOptions options = {});
  // A mixture per phase, in order; also an error when a dataset name stands for two paths.
  MixtureSource(const std::vector<MixturePhase>& phases, int64_t vocab_size, MixtureOptions options = {});
  TokenBatch next(int64_t rows, int64_t seq_len) override;
  nlohmann::json state() const override;
  void restore(const nlohmann::json& state) override;
  // Tokens drawn per dataset so far (the achieved mixture, over all ranks).
  std::vector<std::pair<std::string, int64_t>> drawn() const;
  // The phase of the last row drawn (the first before any), "" without phases.
  const std::string& phase() const { return phases_[phase_].name; }
  // Tokens drawn per dataset in each phase so far: {phase, [(dataset, tokens)]}.
  std::vector<std::pair<std::string, std::vector<std::pair<std::string, int64_t>>>> drawn_per_phase() const;
  // Tokens over all datasets' shards (one epoch of each).
  int64_t total_tokens() const;

 private:
  struct Stream {
    DatasetSpec d;
    std::vector<std::unique_ptr<TokenShard>> shards;
    std::vector<uint64_t> doc_base;  // [shards + 1] the first document of each shard, over the dataset
    uint64_t n_docs = 0, n_tokens = 0;
    uint64_t name_hash = 0;
    // position: document `ordinal` of epoch `epoch`'s order, `offset` tokens into it
    int64_t epoch = 0;
    uint64_t ordinal = 0, offset = 0;
    int64_t drawn = 0;  // over all phases
    DocPermutation order{1, 0};  // epoch's order (when shuffling)
  };
  Stream open_stream(const DatasetSpec& d, int64_t vocab_size) const;
  void restore_phases(const nlohmann::json& state);
  void start_epoch(Stream& s) const;
  void next_document(Stream& s) const;
  std::span<const uint32_t> current_document(const Stream& s, const uint8_t** mask) const;
  // The next n tokens of s into tokens/labels (null: skip them, another rank's row); the offsets (from `base`)
  // where a document starts go to doc_starts.
  void read(Stream& s, int32_t* tokens, int32_t* labels, std::vector<int32_t>* doc_starts, int32_t base, int64_t n);
  // whole-documents: where the row's padding begins (n: none), reading the documents that fit.
  int64_t read_whole(Stream& s, int32_t* tokens, int32_t* labels, std::vector<int32_t>* doc_starts, int32_t base,
                     int64_t n);

  struct Phase {
    std::string name;
    int64_t tokens = 0;               // length; 0: no end
    std::vector<size_t> stream;       // [datasets] index into streams_
    std::vector<double> weight;       // [datasets]
    double weight_sum = 0;
    std::vector<int64_t> drawn;       // [datasets] tokens drawn in this phase
    int64_t total = 0;                // their sum
  };

  std::vector<Stream> streams_;  // every dataset once, in order of first appearance
  std::vector<Phase> phases_;
  size_t phase_ = 0;
  bool phased_ = false;  // saved state names the phases (false: one implicit phase, the state of old checkpoints)
  MixtureOptions opt_;
};

}  // namespace bamba
