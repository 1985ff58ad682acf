// Stand-in for src/backend/cuda/cp_async.cuh when tests/emu/run.sh compiles kernels for the CPU: each thread's
// copies are held back until a wait retires their group (commit closes a group; wait<N> does every group but the
// N newest), so a kernel that reads a stage before waiting for it reads the NaN fill of unwritten shared memory
// and fails its check, as it would (sometimes) on the GPU.
#pragma once
#include <cstring>
#include <vector>

namespace bamba::cuda::async {

struct Copy {
  void* dst;
  const void* src;
  bool full;
};
inline thread_local std::vector<Copy> open_group;                // issued, not yet committed
inline thread_local std::vector<std::vector<Copy>> committed;  // oldest first

inline void copy16(void* dst, const void* src, bool full) { open_group.push_back({dst, src, full}); }
inline void commit() {
  committed.push_back(std::move(open_group));
  open_group.clear();
}
template <int kPending>
inline void wait() {
  while (committed.size() > size_t(kPending)) {
    for (const Copy& c : committed.front()) {
      if (c.full) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);
    }
    committed.erase(committed.begin());
  }
}

}  // namespace bamba::cuda::async
