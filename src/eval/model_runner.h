// ModelRunner: the model side of evaluation — lm-eval's LM interface (loglikelihood, greedy generate_until) run
// directly on a HybridModel, without the server's engine thread.
//
// Why not one sequence per request (what lm-eval does with any model): a hybrid model's per-sequence state is
// fixed-size, so a computed context can be forked for free compared with recomputing it. Requests become a tree
// of nodes, each a run of tokens that starts from its parent's final state:
//   shared prefix (e.g. MMLU's description + 5 fixed shots, common to all documents of a subject)
//     └─ context (the document's prompt; its last logits score every continuation's first token)
//          └─ continuation (only when it has more than one token: its tokens but the last)
// A child starts as a fork of its parent's cache (HybridCache::fork: state slot copied, full KV pages shared);
// the last child to start takes the parent's cache over instead. Prefixes are found on token ids (the longest
// common prefix of neighbouring contexts in sorted order), so sharing never changes what is computed: every
// logit is the one a single full sequence would give, up to the batch's floating-point order.
// Nodes of many documents run together in one varlen step (chunked to the token budget), deepest first, so
// finished leaves free their slots before new contexts start.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/hybrid.h"
#include "tokenizer/tokenizer.h"

namespace bamba::eval {

struct LoglikelihoodRequest {
  std::vector<int32_t> context;       // not empty (lm-eval puts the prefix token there for an empty context)
  std::vector<int32_t> continuation;  // not empty
};
struct LoglikelihoodResult {
  double logprob = 0;      // sum over the continuation's tokens of log p(token | everything before)
  bool is_greedy = true;   // every continuation token is the argmax of its row
};

struct GenerateRequest {
  std::vector<int32_t> context;     // not empty
  std::vector<std::string> until;   // stop strings (on the decoded text; the text is cut before the first one)
  int32_t max_gen_toks = 256;
};

struct RunnerOptions {
  int32_t max_tokens_per_step = 2048;  // tokens fed per forward step (all nodes together)
  int32_t max_seqs = 32;               // sequences in the cache at once (state slots)
  int32_t max_logit_rows = 256;        // logits rows per step
  int32_t max_model_len = 8192;        // longest sequence (context + continuation)
  bool share = true;                   // false: the naive path, every request its own full sequence
  int32_t min_shared_prefix = 16;      // tokens a prefix must have to become its own node
  std::vector<int32_t> eos;            // generation stops at these ids
};

struct RunnerStats {
  int64_t tokens_fed = 0;       // tokens run through the model
  int64_t tokens_requested = 0; // tokens the requests hold (context + continuation), the naive path's cost
  int64_t steps = 0, forks = 0;
};

// (done, total) after each step, in requests.
using RunnerProgress = std::function<void(size_t done, size_t total)>;

class ModelRunner {
 public:
  ModelRunner(const HybridModel& model, const Tokenizer& tok, RunnerOptions opt);
  ~ModelRunner();
  ModelRunner(const ModelRunner&) = delete;
  ModelRunner& operator=(const ModelRunner&) = delete;

  std::vector<LoglikelihoodResult> loglikelihood(std::span<const LoglikelihoodRequest> reqs,
                                                 const RunnerProgress& progress = {});
  // Greedy continuations, decoded with special tokens skipped and cut before the first stop string (lm-eval's
  // `s.split(term)[0]` for each term).
  std::vector<std::string> generate(std::span<const GenerateRequest> reqs, const RunnerProgress& progress = {});

  const RunnerStats& stats() const { return stats_; }
  const RunnerOptions& options() const { return opt_; }

 private:
  struct Node;
  struct Want;
  void run(std::vector<Node>& nodes, size_t n_requests, const RunnerProgress& progress);
  // Adds one node per distinct context (and shared-prefix nodes above them); returns each request's context node.
  std::vector<int32_t> add_context_nodes(std::vector<Node>& nodes, const std::vector<const std::vector<int32_t>*>& ctx);

  bool start(std::vector<Node>& nodes, int32_t id);
  void finish_gen_token(Node& n, int32_t token);
  void evict(std::vector<Node>& nodes);

  const HybridModel& model_;
  const Tokenizer& tok_;
  RunnerOptions opt_;
  HybridCache cache_;
  Workspace ws_;
  RunnerStats stats_;
  // The call in progress.
  std::vector<LoglikelihoodResult> results_;
  std::vector<int32_t> wants_left_;  // per loglikelihood request
  std::span<const GenerateRequest> gen_reqs_;
  std::vector<std::string> gen_texts_;
  size_t done_ = 0;
};

}  // namespace bamba::eval
