#include "backend/cuda/nccl_communicator.h"

#include <arpa/inet.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "core/error.h"

namespace bamba {

namespace {

using Clock = std::chrono::steady_clock;

std::chrono::seconds nccl_timeout() {
  const char* v = std::getenv("BAMBA_NCCL_TIMEOUT");
  if (!v || !*v) return std::chrono::seconds(600);
  char* end = nullptr;
  const long s = std::strtol(v, &end, 10);
  if (*end != '\0' || s < 1) fail("BAMBA_NCCL_TIMEOUT=\"", v, "\": expected a number of seconds >= 1");
  return std::chrono::seconds(s);
}

#define NCCL_CALL(expr)                                                                          \
  do {                                                                                           \
    ncclResult_t r_ = (expr);                                                                    \
    if (r_ != ncclSuccess && r_ != ncclInProgress)                                               \
      fail("NCCL: ", #expr, " failed: ", ncclGetErrorString(r_), " (", ncclGetLastError(nullptr), ")"); \
  } while (0)
#define CUDA_CALL(expr)                                                                           \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) fail("CUDA: ", #expr, " failed: ", cudaGetErrorString(e_));            \
  } while (0)

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    default: fail("NCCL: no collective for dtype ", dtype_name(t));
  }
}

// ---- the unique id over TCP (multi-process groups)

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

void send_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
    if (k <= 0) fail("NCCL bootstrap: sending the unique id failed (", std::strerror(errno), ")");
    c += k, n -= size_t(k);
  }
}

void recv_all(int fd, void* p, size_t n, Clock::time_point deadline, const std::string& peer) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    pollfd pf{fd, POLLIN, 0};
    const int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0 || poll(&pf, 1, left) <= 0) fail("NCCL bootstrap: no unique id from ", peer, " in time");
    const ssize_t k = recv(fd, c, n, 0);
    if (k <= 0) fail("NCCL bootstrap: ", peer, " closed the connection before sending the unique id");
    c += k, n -= size_t(k);
  }
}

// Rank 0 listens on MASTER_PORT and sends the id to each of the world_size - 1 others as they connect.
void serve_id(const LaunchEnv& env, const ncclUniqueId& id, Clock::time_point deadline) {
  Fd s;
  s.fd = socket(AF_INET, SOCK_STREAM, 0);
  if (s.fd < 0) fail("NCCL bootstrap: socket() failed (", std::strerror(errno), ")");
  int one = 1;
  setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(uint16_t(env.master_port));
  if (bind(s.fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    fail("NCCL bootstrap: rank 0 cannot listen on port ", env.master_port, " (MASTER_PORT): ", std::strerror(errno));
  listen(s.fd, 128);
  for (int served = 1; served < env.world_size; ++served) {
    pollfd pf{s.fd, POLLIN, 0};
    const int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0 || poll(&pf, 1, left) <= 0)
      fail("NCCL bootstrap: only ", served - 1, " of the ", env.world_size - 1,
           " other ranks connected to rank 0 on port ", env.master_port, " in time");
    Fd c;
    c.fd = accept(s.fd, nullptr, nullptr);
    if (c.fd < 0) fail("NCCL bootstrap: accept() failed (", std::strerror(errno), ")");
    send_all(c.fd, &id, sizeof id);
  }
}

ncclUniqueId fetch_id(const LaunchEnv& env, Clock::time_point deadline) {
  const std::string peer = cat("rank 0 at ", env.master_addr, ":", env.master_port, " (MASTER_ADDR:MASTER_PORT)");
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(env.master_addr.c_str(), std::to_string(env.master_port).c_str(), &hints, &res) != 0 || !res)
    fail("NCCL bootstrap: cannot resolve MASTER_ADDR \"", env.master_addr, "\"");
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
  while (true) {  // rank 0 may not be listening yet: retry until the deadline
    Fd c;
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c.fd >= 0 && connect(c.fd, res->ai_addr, res->ai_addrlen) == 0) {
      ncclUniqueId id;
      recv_all(c.fd, &id, sizeof id, deadline, peer);
      return id;
    }
    if (Clock::now() > deadline) fail("NCCL bootstrap: could not connect to ", peer, " in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// ---- the communicator

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size, int device, void* stream)
      : comm_(comm), rank_(rank), size_(size), device_(device), stream_(static_cast<cudaStream_t>(stream)),
        timeout_(nccl_timeout()) {
    CUDA_CALL(cudaSetDevice(device_));
    CUDA_CALL(cudaMalloc(&scratch_, 64 * sizeof(double)));
    watchdog_ = std::thread([this] { watch(); });
  }
  ~NcclCommunicator() override {
    stop_ = true;
    watchdog_.join();
    cudaSetDevice(device_);
    if (!aborted_) cudaStreamSynchronize(stream_);
    for (auto& p : pending_) cudaEventDestroy(p.event);
    cudaFree(scratch_);
    cudaFree(gather_);
    if (!aborted_) ncclCommDestroy(comm_);  // (an aborted one was freed by ncclCommAbort)
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl"; }

  void all_reduce_sum(void* data, size_t count, DType dtype) override {
    issue([&] { return ncclAllReduce(data, data, count, nccl_type(dtype), ncclSum, comm_, stream_); }, "all_reduce");
  }
  void all_gather(void* out, const void* in, size_t count, DType dtype) override {
    issue([&] { return ncclAllGather(in, out, count, nccl_type(dtype), comm_, stream_); }, "all_gather");
  }
  // NCCL gathers contiguous buffers: in is packed into a scratch buffer, gathered rank-major, and each rank's
  // block copied into its columns of out (cudaMemcpy2DAsync handles the row strides).
  void all_gather_cols(Tensor out, Tensor in) override {
    BAMBA_CHECK(in.ndim == 2 && out.ndim == 2 && in.dtype == out.dtype && out.rows() == in.rows() &&
                    out.shape[1] == in.shape[1] * size_,
                "all_gather_cols: out ", out.shape_str(), " is not ", size_, " tensors like ", in.shape_str(), " side by side");
    const size_t es = dtype_size(in.dtype), rows = size_t(in.rows()), cols = size_t(in.shape[1]), n = rows * cols;
    const size_t need = n * es * size_t(size_ + 1);
    if (gather_bytes_ < need) {
      CUDA_CALL(cudaSetDevice(device_));
      CUDA_CALL(cudaStreamSynchronize(stream_));  // the old buffer may still be read by queued copies
      cudaFree(gather_);
      CUDA_CALL(cudaMalloc(&gather_, need));
      gather_bytes_ = need;
    }
    char* packed = static_cast<char*>(gather_);
    char* all = packed + n * es;
    CUDA_CALL(cudaMemcpy2DAsync(packed, cols * es, in.data, size_t(in.ld) * es, cols * es, rows, cudaMemcpyDeviceToDevice, stream_));
    all_gather(all, packed, n, in.dtype);
    for (int r = 0; r < size_; ++r)
      CUDA_CALL(cudaMemcpy2DAsync(static_cast<char*>(out.data) + size_t(r) * cols * es, size_t(out.ld) * es,
                                  all + size_t(r) * n * es, cols * es, cols * es, rows, cudaMemcpyDeviceToDevice, stream_));
  }

  void broadcast(void* data, size_t count, DType dtype, int root) override {
    BAMBA_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of ", size_);
    issue([&] { return ncclBroadcast(data, data, count, nccl_type(dtype), root, comm_, stream_); }, "broadcast");
  }
  void barrier() override {
    double one = 1;
    std::span<double> v(&one, 1);
    all_reduce_host(v);
  }
  void all_reduce_host(std::span<double> v) override {
    for (size_t off = 0; off < v.size(); off += 64) {
      const size_t n = std::min<size_t>(64, v.size() - off);
      CUDA_CALL(cudaMemcpyAsync(scratch_, v.data() + off, n * sizeof(double), cudaMemcpyHostToDevice, stream_));
      all_reduce_sum(scratch_, n, DType::F64);
      CUDA_CALL(cudaMemcpyAsync(v.data() + off, scratch_, n * sizeof(double), cudaMemcpyDeviceToHost, stream_));
      wait_stream();
    }
  }
  void group_start() override {
    check_alive();
    NCCL_CALL(ncclGroupStart());
    ++group_depth_;
  }
  void group_end() override {
    BAMBA_CHECK(group_depth_ > 0, "NCCL: group_end without group_start");
    --group_depth_;
    ncclResult_t r = ncclGroupEnd();
    const auto t0 = Clock::now();
    while (r == ncclInProgress) {
      check_alive();
      if (Clock::now() - t0 > timeout_) give_up("a group of collectives could not be launched within the timeout");
      ncclCommGetAsyncError(comm_, &r);
    }
    if (r != ncclSuccess) give_up(cat("ncclGroupEnd: ", ncclGetErrorString(r), " (", ncclGetLastError(comm_), ")"));
    check_alive();
    if (group_depth_ == 0) watch_event("group of collectives");
  }
  void abort(const std::string& why) override { give_up(cat("rank ", rank_, " of ", size_, " failed: ", why)); }

 private:
  struct Pending {
    cudaEvent_t event;
    Clock::time_point start;
    const char* what;
  };

  void check_alive() {
    if (aborted_) {
      std::lock_guard lk(mu_);
      fail("NCCL communicator aborted: ", reason_);
    }
  }

  // Enqueues one collective (non-blocking communicator: the call may return ncclInProgress; NCCL's rule is to
  // poll ncclCommGetAsyncError until it is not) and hands it to the watchdog.
  template <typename F>
  void issue(F&& call, const char* what) {
    check_alive();
    CUDA_CALL(cudaSetDevice(device_));
    ncclResult_t r = call();
    const auto t0 = Clock::now();
    while (r == ncclInProgress) {
      check_alive();
      if (Clock::now() - t0 > timeout_) give_up(cat(what, " could not be enqueued within the timeout"));
      ncclCommGetAsyncError(comm_, &r);
    }
    if (r != ncclSuccess) {
      give_up(cat(what, ": ", ncclGetErrorString(r), " (", ncclGetLastError(comm_), ")"));
      check_alive();
    }
    if (group_depth_ == 0) watch_event(what);  // inside a group nothing is launched before group_end
  }

  // Hands the work queued so far on the stream to the watchdog.
  void watch_event(const char* what) {
    cudaEvent_t e;
    CUDA_CALL(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    CUDA_CALL(cudaEventRecord(e, stream_));
    std::lock_guard lk(mu_);
    pending_.push_back({e, Clock::now(), what});
  }

  // Host waits go through here: polls, so that an abort by the watchdog ends the wait with an Error.
  void wait_stream() {
    while (cudaStreamQuery(stream_) == cudaErrorNotReady) {
      check_alive();
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    check_alive();
  }

  void give_up(const std::string& why) {
    {
      std::lock_guard lk(mu_);
      if (aborted_) return;
      reason_ = why;
      aborted_ = true;
    }
    ncclCommAbort(comm_);  // ends this rank's kernels that wait for peers which will never come; frees comm_
  }

  void watch() {
    cudaSetDevice(device_);
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (aborted_) continue;
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        give_up(cat("rank ", rank_, ": NCCL reported ", ncclGetErrorString(async),
                    " (a peer died or its connection dropped)"));
        continue;
      }
      std::string why;
      {
        std::lock_guard lk(mu_);
        while (!pending_.empty() && cudaEventQuery(pending_.front().event) == cudaSuccess) {
          cudaEventDestroy(pending_.front().event);
          pending_.pop_front();
        }
        if (!pending_.empty() && Clock::now() - pending_.front().start > timeout_)
          why = cat("rank ", rank_, " of ", size_, ": an NCCL ", pending_.front().what, " did not finish in ",
                    timeout_.count(), " s (BAMBA_NCCL_TIMEOUT): a rank died or stopped calling collectives");
      }
      if (!why.empty()) give_up(why);
    }
  }

  ncclComm_t comm_;
  int rank_, size_, device_;
  cudaStream_t stream_;
  std::chrono::seconds timeout_;
  void* scratch_ = nullptr;
  void* gather_ = nullptr;  // all_gather_cols' packed input and gathered blocks
  size_t gather_bytes_ = 0;
  int group_depth_ = 0;
  std::mutex mu_;
  std::deque<Pending> pending_;
  std::string reason_;
  std::atomic<bool> aborted_{false}, stop_{false};
  std::thread watchdog_;
};

// Waits for a non-blocking communicator's initialisation, aborting it after the timeout.
void wait_init(ncclComm_t comm, const std::string& what) {
  const auto deadline = Clock::now() + nccl_timeout();
  ncclResult_t r = ncclInProgress;
  while (r == ncclInProgress) {
    ncclCommGetAsyncError(comm, &r);
    if (r == ncclInProgress && Clock::now() > deadline) {
      ncclCommAbort(comm);
      fail("NCCL: ", what, " did not complete within BAMBA_NCCL_TIMEOUT (did every rank start?)");
    }
    if (r == ncclInProgress) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (r != ncclSuccess) {
    ncclCommAbort(comm);
    fail("NCCL: ", what, " failed: ", ncclGetErrorString(r), " (", ncclGetLastError(comm), ")");
  }
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const LaunchEnv& env, int device, void* stream) {
  CUDA_CALL(cudaSetDevice(device));
  const auto deadline = Clock::now() + nccl_timeout();
  ncclUniqueId id;
  if (env.rank == 0) {
    NCCL_CALL(ncclGetUniqueId(&id));
    if (env.world_size > 1) serve_id(env, id, deadline);
  } else {
    id = fetch_id(env, deadline);
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm;
  NCCL_CALL(ncclCommInitRankConfig(&comm, env.world_size, id, env.rank, &config));
  wait_init(comm, cat("ncclCommInitRankConfig (rank ", env.rank, " of ", env.world_size, ")"));
  return std::make_unique<NcclCommunicator>(comm, env.rank, env.world_size, device, stream);
}

std::vector<std::unique_ptr<Communicator>> make_nccl_communicators(const std::vector<int>& devices,
                                                                   const std::vector<void*>& streams) {
  BAMBA_CHECK(!devices.empty() && devices.size() == streams.size(), "make_nccl_communicators: one stream per device");
  const int n = int(devices.size());
  std::vector<ncclComm_t> comms(static_cast<size_t>(n));
  // ncclCommInitAll is blocking and has no config; it creates every rank's communicator from this thread.
  NCCL_CALL(ncclCommInitAll(comms.data(), n, devices.data()));
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < n; ++r)
    out.push_back(std::make_unique<NcclCommunicator>(comms[size_t(r)], r, n, devices[size_t(r)], streams[size_t(r)]));
  return out;
}

}  // namespace bamba
