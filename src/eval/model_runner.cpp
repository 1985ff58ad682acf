#include "eval/model_runner.h"

#include <algorithm>
#include <map>

#include "core/error.h"

namespace bamba::eval {

// Logits after tokens[pos] of a node predict `target`; they belong to request `req`.
struct ModelRunner::Want {
  int32_t pos, target, req;
};

struct ModelRunner::Node {
  enum State : uint8_t { Waiting, Running, Done, Freed };
  int32_t parent = -1;
  int32_t depth = 0;
  std::vector<int32_t> tokens;  // fed after the parent's tokens
  std::vector<Want> wants;      // by pos
  std::vector<int32_t> kids;
  int32_t kids_left = 0;        // children not started yet (they still need this node's state)
  State state = Waiting;
  SeqCache seq;
  int32_t fed = 0;
  size_t next_want = 0;
  // generate_until: the request this node generates for, and what it has generated.
  int32_t gen = -1;
  std::vector<int32_t> out;
  bool gen_done = false;
  int32_t last_greedy = -1;  // argmax of the last token's logits (what a generating child starts with)
};

namespace {

Workspace make_workspace(const HybridModel& m, const RunnerOptions& o) {
  return Workspace(m.config(), m.backend(), o.max_tokens_per_step, o.max_logit_rows);
}

CacheSizes cache_sizes(const ModelConfig& c, const RunnerOptions& o) {
  BAMBA_CHECK(o.max_seqs >= 2 && o.max_tokens_per_step >= 1 && o.max_logit_rows >= 1 && o.max_model_len >= 2,
              "eval: invalid runner options");
  // Forks share full KV pages and copy at most one, so any max_seqs live sequences fit in max_seqs full ones.
  return HybridCache::sizes_for(c, o.max_seqs, o.max_model_len);
}

constexpr int32_t kRecordGreedy = -1;  // Want::req: keep the argmax in Node::last_greedy
constexpr int32_t kNextToken = -2;     // Want::req: the argmax is a generating node's next token

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

}  // namespace

ModelRunner::ModelRunner(const HybridModel& model, const Tokenizer& tok, RunnerOptions opt)
    : model_(model), tok_(tok), opt_(std::move(opt)), cache_(model.config(), model.backend(), cache_sizes(model.config(), opt_)),
      ws_(make_workspace(model, opt_)) {}

ModelRunner::~ModelRunner() = default;

std::vector<int32_t> ModelRunner::add_context_nodes(std::vector<Node>& nodes,
                                                    const std::vector<const std::vector<int32_t>*>& ctx) {
  std::vector<int32_t> node_of(ctx.size(), -1);
  if (!opt_.share) {  // one node per request: nothing shared
    for (size_t r = 0; r < ctx.size(); ++r) {
      node_of[r] = int32_t(nodes.size());
      nodes.push_back(Node{});
      nodes.back().tokens = *ctx[r];
    }
    return node_of;
  }
  // Distinct contexts in sorted order: neighbours share the longest prefixes.
  std::map<std::vector<int32_t>, std::vector<size_t>> groups;
  for (size_t r = 0; r < ctx.size(); ++r) groups[*ctx[r]].push_back(r);
  std::vector<const std::vector<int32_t>*> keys;
  std::vector<const std::vector<size_t>*> members;
  for (auto& [k, v] : groups) keys.push_back(&k), members.push_back(&v);

  // Runs of neighbours sharing >= min_shared_prefix tokens get one prefix node. The prefix stops one token short
  // of the shortest context, so every context node feeds at least its last token (whose logits it needs).
  size_t i = 0;
  while (i < keys.size()) {
    size_t j = i + 1, lcp = keys[i]->size() - 1;
    while (j < keys.size()) {
      size_t l = std::min({lcp, common_prefix(*keys[i], *keys[j]), keys[j]->size() - 1});
      if (l < size_t(opt_.min_shared_prefix)) break;
      lcp = l, ++j;
    }
    int32_t prefix = -1;
    if (j - i >= 2) {
      prefix = int32_t(nodes.size());
      nodes.push_back(Node{});
      nodes.back().tokens.assign(keys[i]->begin(), keys[i]->begin() + int64_t(lcp));
    } else {
      lcp = 0;
    }
    for (size_t g = i; g < j; ++g) {
      const int32_t id = int32_t(nodes.size());
      nodes.push_back(Node{});
      Node& n = nodes.back();
      n.tokens.assign(keys[g]->begin() + int64_t(lcp), keys[g]->end());
      if (prefix >= 0) {
        n.parent = prefix;
        n.depth = 1;
        nodes[size_t(prefix)].kids.push_back(id);
      }
      for (size_t r : *members[g]) node_of[r] = id;
    }
    i = j;
  }
  return node_of;
}

std::vector<LoglikelihoodResult> ModelRunner::loglikelihood(std::span<const LoglikelihoodRequest> reqs,
                                                            const RunnerProgress& progress) {
  std::vector<const std::vector<int32_t>*> ctx;
  for (size_t r = 0; r < reqs.size(); ++r) {
    const LoglikelihoodRequest& q = reqs[r];
    BAMBA_CHECK(!q.context.empty() && !q.continuation.empty(), "eval: request ", r, " has an empty context or continuation");
    BAMBA_CHECK(int64_t(q.context.size() + q.continuation.size()) - 1 <= opt_.max_model_len, "eval: request ", r,
                " needs ", q.context.size() + q.continuation.size() - 1, " tokens, more than --max-model-len ",
                opt_.max_model_len);
    ctx.push_back(&q.context);
    stats_.tokens_requested += int64_t(q.context.size() + q.continuation.size() - 1);
  }
  std::vector<Node> nodes;
  std::vector<int32_t> ctx_node = add_context_nodes(nodes, ctx);
  for (size_t r = 0; r < reqs.size(); ++r) {
    const auto& cont = reqs[r].continuation;
    Node& c = nodes[size_t(ctx_node[r])];
    c.wants.push_back({int32_t(c.tokens.size()) - 1, cont[0], int32_t(r)});
    if (cont.size() == 1) continue;
    // The continuation but its last token; row j predicts cont[j + 1].
    const int32_t id = int32_t(nodes.size());
    nodes.push_back(Node{});
    Node& n = nodes.back();
    n.parent = ctx_node[r];
    n.depth = nodes[size_t(ctx_node[r])].depth + 1;
    n.tokens.assign(cont.begin(), cont.end() - 1);
    for (size_t j = 0; j + 1 < cont.size(); ++j) n.wants.push_back({int32_t(j), cont[j + 1], int32_t(r)});
    nodes[size_t(ctx_node[r])].kids.push_back(id);
  }
  for (Node& n : nodes) std::sort(n.wants.begin(), n.wants.end(), [](const Want& a, const Want& b) { return a.pos < b.pos; });

  results_.assign(reqs.size(), LoglikelihoodResult{});
  wants_left_.assign(reqs.size(), 0);
  for (const Node& n : nodes)
    for (const Want& w : n.wants) ++wants_left_[size_t(w.req)];
  gen_texts_.clear();
  run(nodes, reqs.size(), progress);
  return std::move(results_);
}

std::vector<std::string> ModelRunner::generate(std::span<const GenerateRequest> reqs, const RunnerProgress& progress) {
  std::vector<const std::vector<int32_t>*> ctx;
  for (size_t r = 0; r < reqs.size(); ++r) {
    BAMBA_CHECK(!reqs[r].context.empty(), "eval: generation request ", r, " has an empty context");
    BAMBA_CHECK(reqs[r].max_gen_toks >= 1, "eval: generation request ", r, " asks for no tokens");
    BAMBA_CHECK(int64_t(reqs[r].context.size()) + reqs[r].max_gen_toks <= opt_.max_model_len, "eval: generation request ",
                r, " needs ", reqs[r].context.size() + size_t(reqs[r].max_gen_toks), " tokens, more than --max-model-len ",
                opt_.max_model_len);
    ctx.push_back(&reqs[r].context);
    stats_.tokens_requested += int64_t(reqs[r].context.size());
  }
  std::vector<Node> nodes;
  std::vector<int32_t> ctx_node = add_context_nodes(nodes, ctx);
  // Identical prompts share a context node; each request then generates in its own child (starting from the
  // context's state, its first token from the context's last logits: a child with no tokens of its own yet).
  for (size_t r = 0; r < reqs.size(); ++r) {
    const int32_t id = int32_t(nodes.size());
    nodes.push_back(Node{});
    Node& g = nodes.back();
    Node& c = nodes[size_t(ctx_node[r])];
    g.parent = ctx_node[r];
    g.depth = c.depth + 1;
    g.gen = int32_t(r);
    c.kids.push_back(id);
    if (c.wants.empty()) c.wants.push_back({int32_t(c.tokens.size()) - 1, 0, kRecordGreedy});
  }
  gen_reqs_ = reqs;
  gen_texts_.assign(reqs.size(), std::string());
  results_.clear();
  wants_left_.clear();
  run(nodes, reqs.size(), progress);
  gen_reqs_ = {};
  return std::move(gen_texts_);
}

// Gives node `id` its cache: a child forks its parent's (or takes it over when it is the last child to start); a
// generating child first takes the token its parent's logits chose. False if the cache has no room now.
bool ModelRunner::start(std::vector<Node>& nodes, int32_t id) {
  Node& n = nodes[size_t(id)];
  if (n.parent >= 0) {
    Node& p = nodes[size_t(n.parent)];
    if (n.gen >= 0 && n.tokens.empty() && n.out.empty()) {
      finish_gen_token(n, p.last_greedy);
      if (n.gen_done) {  // stopped at once: it never needs a cache
        n.state = Node::Freed;
        if (--p.kids_left == 0) cache_.release(p.seq), p.state = Node::Freed;
        return true;
      }
    }
    if (p.kids_left == 1) {
      n.seq = p.seq;
      p.seq = SeqCache{};
      p.state = Node::Freed;
    } else {
      if (!cache_.fork(p.seq, n.seq)) {
        if (n.gen >= 0 && n.tokens.size() == 1 && n.out.size() == 1) n.tokens.clear(), n.out.clear(), n.wants.clear();
        return false;
      }
      ++stats_.forks;
    }
    --p.kids_left;
  }
  n.state = Node::Running;
  return true;
}

void ModelRunner::finish_gen_token(Node& n, int32_t token) {
  const GenerateRequest& q = gen_reqs_[size_t(n.gen)];
  if (std::find(opt_.eos.begin(), opt_.eos.end(), token) != opt_.eos.end()) {
    n.gen_done = true;
  } else {
    n.out.push_back(token);
    if (int32_t(n.out.size()) >= q.max_gen_toks) n.gen_done = true;
    if (!n.gen_done && !q.until.empty()) {
      const std::string text = tok_.decode(n.out, /*skip_special=*/true);
      for (const std::string& u : q.until)
        if (!u.empty() && text.find(u) != std::string::npos) n.gen_done = true;
    }
    if (!n.gen_done) {  // the token is fed next step, its logits give the one after
      n.tokens.push_back(token);
      n.wants.push_back({int32_t(n.tokens.size()) - 1, 0, kNextToken});
    }
  }
  if (!n.gen_done) return;
  std::string text = tok_.decode(n.out, /*skip_special=*/true);
  for (const std::string& u : q.until)
    if (!u.empty()) text = text.substr(0, text.find(u));
  gen_texts_[size_t(n.gen)] = std::move(text);
  ++done_;
}

// No node can run: every free state slot is gone to finished parents still waiting to be forked. The deepest of
// them gives its state up; its waiting children become roots that recompute its whole path (correct, slower).
void ModelRunner::evict(std::vector<Node>& nodes) {
  int32_t victim = -1;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].state == Node::Done && nodes[i].kids_left > 0 && (victim < 0 || nodes[i].depth > nodes[size_t(victim)].depth))
      victim = int32_t(i);
  BAMBA_CHECK(victim >= 0, "eval: the cache (", opt_.max_seqs, " sequences) cannot run any request: raise --max-seqs");
  std::vector<int32_t> path;
  for (int32_t a = victim; a >= 0; a = nodes[size_t(a)].parent) {
    const auto& t = nodes[size_t(a)].tokens;
    path.insert(path.begin(), t.begin(), t.end());
  }
  Node& v = nodes[size_t(victim)];
  for (int32_t k : v.kids) {
    Node& kid = nodes[size_t(k)];
    if (kid.state != Node::Waiting) continue;
    const int32_t shift = int32_t(path.size());
    if (kid.gen >= 0 && kid.tokens.empty()) kid.wants.push_back({-1, 0, kNextToken});  // its first token
    for (Want& w : kid.wants) w.pos += shift;
    kid.tokens.insert(kid.tokens.begin(), path.begin(), path.end());
    kid.parent = -1;
  }
  v.kids_left = 0;
  cache_.release(v.seq);
  v.state = Node::Freed;
}

void ModelRunner::run(std::vector<Node>& nodes, size_t n_requests, const RunnerProgress& progress) {
  done_ = 0;
  int32_t max_depth = 0;
  for (Node& n : nodes) {
    n.kids_left = int32_t(n.kids.size());
    max_depth = std::max(max_depth, n.depth);
  }
  std::vector<std::vector<int32_t>> ready(size_t(max_depth) + 1);
  for (size_t i = nodes.size(); i-- > 0;)  // stacks: pop_back takes the earliest node first
    if (nodes[i].parent < 0) ready[size_t(nodes[i].depth)].push_back(int32_t(i));
  std::vector<int32_t> running;
  Backend& be = model_.backend();
  StepBatch b;
  std::vector<int32_t> rows, targets, greedy;
  std::vector<float> lp;
  struct Owner { int32_t node; size_t want; };
  std::vector<Owner> owners;
  struct Part { int32_t node, n; };
  std::vector<Part> parts;

  while (true) {
    b.clear(), rows.clear(), targets.clear(), owners.clear(), parts.clear();
    int32_t budget = opt_.max_tokens_per_step, row_budget = opt_.max_logit_rows;
    // Feeds up to `budget` of node id's remaining tokens, with no more logit rows than row_budget allows (wants
    // at the same position — one context, several continuations — share one row).
    auto feed = [&](int32_t id) -> bool {
      Node& n = nodes[size_t(id)];
      int32_t c = std::min<int32_t>(int32_t(n.tokens.size()) - n.fed, budget);
      const size_t w = n.next_want;
      size_t k = 0;
      int32_t distinct = 0, last_pos = -1;
      for (; w + k < n.wants.size() && n.wants[w + k].pos < n.fed + c; ++k) {
        if (n.wants[w + k].pos == last_pos) continue;
        if (distinct == row_budget) {  // stop before this position
          c = n.wants[w + k].pos - n.fed;
          break;
        }
        ++distinct, last_pos = n.wants[w + k].pos;
      }
      if (c <= 0 || !cache_.reserve(n.seq, n.seq.len + c)) return false;
      const int32_t t0 = b.n_tokens();
      b.add_tokens(std::span(n.tokens).subspan(size_t(n.fed), size_t(c)), n.seq.len, n.seq.slot, n.seq.blocks);
      last_pos = -1;
      for (size_t j = w; j < w + k; ++j) {
        if (n.wants[j].pos != last_pos) {
          last_pos = n.wants[j].pos;
          b.logit_rows.push_back(t0 + last_pos - n.fed);
        }
        owners.push_back({id, j});
        rows.push_back(int32_t(b.logit_rows.size()) - 1);
        targets.push_back(n.wants[j].target);
      }
      budget -= c, row_budget -= distinct;
      parts.push_back({id, c});
      return true;
    };
    for (int32_t id : running)
      if (budget > 0 && row_budget > 0) feed(id);
    // Then new nodes, deepest first: finishing subtrees frees state slots before new documents take them.
    for (int32_t d = max_depth; d >= 0 && budget > 0 && row_budget > 0; --d) {
      auto& q = ready[size_t(d)];
      while (!q.empty() && budget > 0 && row_budget > 0 && b.n_seqs() < opt_.max_seqs) {
        const int32_t id = q.back();
        Node& n = nodes[size_t(id)];
        // A root takes a slot that nothing frees until its subtree is done: keep one for forks.
        if (n.parent < 0 && cache_.free_slots() < 2 && !(running.empty() && parts.empty())) break;
        if (!start(nodes, id)) break;
        q.pop_back();
        if (n.state == Node::Freed) continue;  // a generation that stopped before its first step
        running.push_back(id);
        if (!feed(id)) break;
      }
    }
    if (parts.empty()) {
      bool left = false;
      for (const auto& q : ready) left = left || !q.empty();
      if (!left && running.empty()) break;
      evict(nodes);
      continue;
    }

    model_.forward(b, cache_, ws_);
    ++stats_.steps;
    stats_.tokens_fed += b.n_tokens();
    lp.resize(rows.size());
    greedy.resize(rows.size());
    if (!rows.empty())
      be.token_logprobs(ws_.logits.slice_rows(0, int64_t(b.logit_rows.size())), rows, targets, lp.data(), greedy.data());
    for (size_t i = 0; i < owners.size(); ++i) {
      Node& n = nodes[size_t(owners[i].node)];
      const Want& w = n.wants[owners[i].want];
      if (w.req >= 0) {
        LoglikelihoodResult& r = results_[size_t(w.req)];
        r.logprob += double(lp[i]);
        r.is_greedy = r.is_greedy && greedy[i] == w.target;
        if (--wants_left_[size_t(w.req)] == 0) ++done_;
      } else if (w.req == kRecordGreedy) {
        n.last_greedy = greedy[i];
      }
    }
    for (const Part& p : parts) {
      Node& n = nodes[size_t(p.node)];
      n.fed += p.n;
      n.seq.len += p.n;
      while (n.next_want < n.wants.size() && n.wants[n.next_want].pos < n.fed) ++n.next_want;
    }
    // Generated tokens come after the bookkeeping above (finish_gen_token appends to wants).
    for (size_t i = 0; i < owners.size(); ++i) {
      Node& n = nodes[size_t(owners[i].node)];
      if (n.wants[owners[i].want].req == kNextToken && !n.gen_done) finish_gen_token(n, greedy[i]);
    }
    std::vector<int32_t> still;
    for (int32_t id : running) {
      Node& n = nodes[size_t(id)];
      const bool fed_all = n.fed == int32_t(n.tokens.size());
      if (!fed_all || (n.gen >= 0 && !n.gen_done)) {
        still.push_back(id);
        continue;
      }
      n.state = Node::Done;
      if (n.kids_left == 0) {
        cache_.release(n.seq);
        n.state = Node::Freed;
      }
      for (auto it = n.kids.rbegin(); it != n.kids.rend(); ++it) ready[size_t(nodes[size_t(*it)].depth)].push_back(*it);
    }
    running.swap(still);
    if (progress) progress(done_, n_requests);
  }
  for (Node& n : nodes)
    if (n.seq.slot >= 0) cache_.release(n.seq);
}

}  // namespace bamba::eval
