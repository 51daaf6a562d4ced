// What the ATen implementation (generic.cpp) derives from an entry matrix E, computed once per indices tensor and
// kept while that tensor lives: the dense route's scatter and gather positions and the spectral route's sparse
// patterns. They depend only on E, out_features and in_features, so recomputing them per call is pure overhead on a
// GPU (each position is a handful of tiny kernels over n values, and a sparse pattern needs host synchronisations
// for its size).
//
// The cache is keyed by the identity of the indices tensor (its TensorImpl, storage and version counter) and holds
// it weakly: a plan dies with its tensor, and a new tensor at a recycled address is never mistaken for the old one.
// It cannot see writes that bypass the version counter (`indices.data.copy_(...)`): nothing in fourierft or PEFT
// writes indices after drawing them (they are regenerated from random_loc_seed, never trained or loaded).
#include "internal.h"
#include "../tensor_version.h"

#include <ATen/ATen.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <cstddef>
#include <functional>
#include <mutex>
#include <unordered_map>

namespace fourierft::detail {
namespace {

struct PlanKey {
  const c10::TensorImpl* impl;
  int64_t out_features, in_features;
  bool operator==(const PlanKey& other) const {
    return impl == other.impl && out_features == other.out_features && in_features == other.in_features;
  }
};
struct PlanKeyHash {
  std::size_t operator()(const PlanKey& key) const {
    return std::hash<const void*>()(key.impl) ^ (std::hash<int64_t>()(key.out_features) * 31) ^
           (std::hash<int64_t>()(key.in_features) * 1009);
  }
};

struct Entry {
  c10::weak_intrusive_ptr<c10::TensorImpl> owner;
  const c10::StorageImpl* storage = nullptr;
  int64_t storage_offset = 0;
  uint32_t version = 0;
  std::shared_ptr<IndexPlan> plan;
};

class PlanCache {
 public:
  std::shared_ptr<IndexPlan> get(const at::Tensor& indices, int64_t out_features, int64_t in_features) {
    const PlanKey key{indices.unsafeGetTensorImpl(), out_features, in_features};
    const auto* storage = indices.storage().unsafeGetStorageImpl();
    const uint32_t version = version_of(indices);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = entries_.find(key);
      if (it != entries_.end()) {
        const auto& e = it->second;
        const auto alive = e.owner.lock();
        if (alive.get() == key.impl && e.storage == storage && e.storage_offset == indices.storage_offset() &&
            e.version == version) {
          return e.plan;
        }
      }
    }
    auto plan = std::make_shared<IndexPlan>(indices, out_features, in_features);
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= prune_at_) prune();
    entries_.insert_or_assign(key, Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(indices.getIntrusivePtr()), storage,
                                         indices.storage_offset(), version, plan});
    return plan;
  }

  std::size_t size() {
    std::lock_guard<std::mutex> lock(mutex_);
    prune();
    return entries_.size();
  }

 private:
  // Drops the plans of indices tensors that no longer exist; called as the table grows, so it stays about the size
  // of the live adapters.
  void prune() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      it = it->second.owner.expired() ? entries_.erase(it) : std::next(it);
    }
    prune_at_ = std::max<std::size_t>(64, 2 * entries_.size());
  }

  std::mutex mutex_;
  std::unordered_map<PlanKey, Entry, PlanKeyHash> entries_;
  std::size_t prune_at_ = 64;
};

PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache();  // never destroyed: plans may be looked up during static destruction
  return *cache;
}

}  // namespace

IndexPlan::IndexPlan(const at::Tensor& indices, int64_t out_features, int64_t in_features)
    : out_features(out_features), in_features(in_features) {
  // Built below autograd: the positions are integer data, never differentiated.
  at::AutoDispatchBelowADInplaceOrView guard;
  const int64_t d1 = out_features, d2 = in_features, half = d2 / 2 + 1;
  rows = indices.select(0, 0).clone();
  cols = indices.select(0, 1).clone();
  const auto& u = rows;
  const auto& v = cols;
  // delta_W = Re(ifft2(F)) is the irfft2 of F's Hermitian part, whose doubled half spectrum holds c_k at (u, v) and
  // at the mirror (-u mod d1, -v mod d2), each where its column lies in 0..d2/2. A placement outside the half goes
  // to the spare row d1 of a [d1 + 1, half] buffer, which the transform never reads (no mask per call).
  const auto mu = (d1 - u).remainder(d1), mv = (d2 - v).remainder(d2);
  const auto keep = v.lt(half), keep_mirror = mv.lt(half);
  const auto spare = at::full({}, d1, indices.options());
  const auto zero = at::zeros({}, indices.options());
  scatter_rows = at::stack({at::where(keep, u, spare), at::where(keep_mirror, mu, spare)});
  scatter_cols = at::stack({at::where(keep, v, zero), at::where(keep_mirror, mv, zero)});
  // Re(fft2(G)[u, v]) = Re(fft2(G)[-u, -v]) for a real G: read the mirror where v lies outside the half spectrum.
  gather_rows = at::where(keep, u, mu);
  gather_cols = at::where(keep, v, mv);
}

const SparsePattern& IndexPlan::pattern(SparseUse use, at::ScalarType real) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = patterns_[static_cast<int>(use)][real == at::kDouble ? 1 : 0];
  if (!slot) slot = std::make_unique<SparsePattern>(build_sparse_pattern(*this, use, real));
  return *slot;
}

std::shared_ptr<IndexPlan> index_plan(const at::Tensor& indices, int64_t out_features, int64_t in_features) {
  return plan_cache().get(indices, out_features, in_features);
}

std::size_t index_plan_cache_size() { return plan_cache().size(); }

}  // namespace fourierft::detail
