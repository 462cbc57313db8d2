#include "tape_pool.h"

#include <algorithm>
#include <mutex>
#include <vector>

namespace obd_fast {

namespace {

// Idle buffers; a lease takes one out, so concurrent calls never share memory. Never destroyed
// (no tensor destructors at process exit).
struct Pool {
  std::mutex mutex;
  std::vector<at::Tensor> idle;
};
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

// More idle buffers than this means more concurrent callers than a CPU run has; keep the largest.
constexpr size_t kMaxIdle = 4;

}  // namespace

TapeLease::TapeLease(int64_t numel, const at::TensorOptions& opts) {
  TORCH_CHECK(opts.device().is_cpu(), "obd_fast: the tape pool holds host memory only");
  const int64_t item = static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  const int64_t need = numel * item;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    // The smallest idle buffer that fits; the ones too small are dropped (a bigger one replaces them).
    auto best = p.idle.end();
    for (auto it = p.idle.begin(); it != p.idle.end(); ++it) {
      if (it->numel() >= need && (best == p.idle.end() || it->numel() < best->numel())) best = it;
    }
    if (best != p.idle.end()) {
      bytes_ = std::move(*best);
      p.idle.erase(best);
    } else {
      p.idle.erase(std::remove_if(p.idle.begin(), p.idle.end(), [&](const at::Tensor& t) { return t.numel() < need; }),
                   p.idle.end());
    }
  }
  if (!bytes_.defined()) bytes_ = at::empty({need}, opts.dtype(at::kByte));
  buffer_ = bytes_.narrow(0, 0, need).view(c10::typeMetaToScalarType(opts.dtype()));
}

TapeLease::~TapeLease() {
  buffer_ = at::Tensor();
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  p.idle.push_back(std::move(bytes_));
  if (p.idle.size() > kMaxIdle) {
    std::sort(p.idle.begin(), p.idle.end(), [](const at::Tensor& a, const at::Tensor& b) { return a.numel() > b.numel(); });
    p.idle.resize(kMaxIdle);
  }
}

int64_t tape_pool_bytes() {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mutex);
  int64_t total = 0;
  for (const auto& t : p.idle) total += t.numel();
  return total;
}

void release_tape_pool() {
  std::vector<at::Tensor> dropped;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    dropped.swap(p.idle);
  }
}  // freed here, outside the lock

}  // namespace obd_fast
