#include "backend/thread_communicator.h"

#include <condition_variable>
#include <cstring>
#include <mutex>

#include "core/error.h"

namespace bamba {

struct ThreadGroup {
  int n;
  std::chrono::milliseconds timeout;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;  // barriers passed
  bool aborted = false;
  std::string abort_reason;
  std::vector<const void*> in;  // each rank's published buffer for the collective under way
  std::vector<void*> out;
  std::vector<size_t> count;  // each rank's element count (checked equal: a mismatch is a caller's bug)
};

namespace {

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> g, int rank) : g_(std::move(g)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_->n; }
  std::string name() const override { return "threads"; }

  void barrier() override {
    std::unique_lock lk(g_->mu);
    wait_all(lk);
  }

  void abort(const std::string& why) override {
    std::lock_guard lk(g_->mu);
    if (!g_->aborted) {  // the first failure is the one worth reporting
      g_->aborted = true;
      g_->abort_reason = cat("rank ", rank_, " of ", g_->n, " failed: ", why);
    }
    g_->cv.notify_all();
  }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    BAMBA_CHECK(dtype == DType::F32 || dtype == DType::F64, "all_reduce_sum (threads): dtype ", dtype_name(dtype),
                " (host buffers are F32 or F64)");
    publish(data, data, count);
    // Rank r sums the elements of its share [lo, hi) over every rank in rank order and writes the sum into all
    // buffers: each element is read and written by one thread only, so no scratch is needed.
    const size_t lo = count * size_t(rank_) / size_t(g_->n), hi = count * size_t(rank_ + 1) / size_t(g_->n);
    if (dtype == DType::F32) reduce<float>(lo, hi);
    else reduce<double>(lo, hi);
    done();
  }

  void all_gather(void* out, const void* in, size_t count, DType dtype) override {
    publish(in, out, count);
    const size_t bytes = count * dtype_size(dtype);
    for (int r = 0; r < g_->n; ++r) std::memcpy(static_cast<char*>(out) + size_t(r) * bytes, g_->in[size_t(r)], bytes);
    done();
  }

  void all_gather_cols(Tensor out, Tensor in) override {
    BAMBA_CHECK(in.ndim == 2 && out.ndim == 2 && in.dtype == out.dtype && out.rows() == in.rows() &&
                    out.shape[1] == in.shape[1] * g_->n && in.device == Device::CPU && out.device == Device::CPU,
                "all_gather_cols: out ", out.shape_str(), " is not ", g_->n, " host tensors like ", in.shape_str(), " side by side");
    publish(&in, &out, size_t(in.numel()));  // the views themselves are published: rows may be strided
    // Each rank copies every rank's columns into its own out, row by row.
    const size_t row_bytes = size_t(in.shape[1]) * dtype_size(in.dtype);
    for (int r = 0; r < g_->n; ++r) {
      const Tensor& src = *static_cast<const Tensor*>(g_->in[size_t(r)]);
      for (int64_t i = 0; i < in.rows(); ++i)
        std::memcpy(static_cast<char*>(out.data) + (size_t(i * out.ld) + size_t(r) * size_t(in.shape[1])) * dtype_size(in.dtype),
                    static_cast<const char*>(src.data) + size_t(i * src.ld) * dtype_size(in.dtype), row_bytes);
    }
    done();
  }

  void broadcast(void* data, size_t count, DType dtype, int root) override {
    BAMBA_CHECK(root >= 0 && root < g_->n, "broadcast: root ", root, " is not a rank of ", g_->n);
    publish(data, data, count);
    if (rank_ != root) std::memcpy(data, g_->in[size_t(root)], count * dtype_size(dtype));
    done();
  }

  void all_reduce_host(std::span<double> v) override { all_reduce_sum(v.data(), v.size(), DType::F64); }

 private:
  // Waits until every rank has arrived (a generation-counting barrier), throwing when the group was aborted or
  // the wait timed out (which aborts it, so that the others stop too).
  void wait_all(std::unique_lock<std::mutex>& lk) {
    if (g_->aborted) fail(g_->abort_reason);
    const uint64_t gen = g_->generation;
    if (++g_->arrived == g_->n) {
      g_->arrived = 0;
      ++g_->generation;
      g_->cv.notify_all();
      return;
    }
    const bool ok = g_->cv.wait_for(lk, g_->timeout, [&] { return g_->generation != gen || g_->aborted; });
    if (g_->aborted) fail(g_->abort_reason);
    if (!ok) {
      g_->aborted = true;
      g_->abort_reason = cat("rank ", rank_, " of ", g_->n, " waited ", g_->timeout.count(),
                             " ms in a collective for ranks that never came (a rank died or took another path)");
      g_->cv.notify_all();
      fail(g_->abort_reason);
    }
  }

  void publish(const void* in, void* out, size_t count) {
    std::unique_lock lk(g_->mu);
    g_->in[size_t(rank_)] = in;
    g_->out[size_t(rank_)] = out;
    g_->count[size_t(rank_)] = count;
    wait_all(lk);
    for (int r = 0; r < g_->n; ++r)
      if (g_->count[size_t(r)] != count) {
        const std::string why = cat("collective with ", count, " elements on rank ", rank_, " but ", g_->count[size_t(r)],
                                    " on rank ", r);
        g_->aborted = true;
        g_->abort_reason = why;
        g_->cv.notify_all();
        fail(why);
      }
  }
  void done() {  // nobody leaves before everyone has read the others' buffers
    std::unique_lock lk(g_->mu);
    wait_all(lk);
  }

  template <typename T>
  void reduce(size_t lo, size_t hi) {
    const int n = g_->n;
    for (size_t i = lo; i < hi; ++i) {
      T s = static_cast<const T*>(g_->in[0])[i];
      for (int r = 1; r < n; ++r) s += static_cast<const T*>(g_->in[size_t(r)])[i];
      for (int r = 0; r < n; ++r) static_cast<T*>(g_->out[size_t(r)])[i] = s;
    }
  }

  std::shared_ptr<ThreadGroup> g_;
  int rank_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> make_thread_communicators(int n, std::chrono::milliseconds timeout) {
  BAMBA_CHECK(n >= 1, "a thread group needs at least one rank, not ", n);
  auto g = std::make_shared<ThreadGroup>();
  g->n = n;
  g->timeout = timeout;
  g->in.assign(size_t(n), nullptr);
  g->out.assign(size_t(n), nullptr);
  g->count.assign(size_t(n), 0);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r) out.push_back(std::make_unique<ThreadCommunicator>(g, r));
  return out;
}

}  // namespace bamba
