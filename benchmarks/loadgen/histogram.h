// A log-linear latency histogram in microseconds, HdrHistogram-style: exact below 256 µs,
// then 128 sub-buckets per power of two, so any recorded value is reported within 1/128
// (0.8 %) of its true value. Recording is one relaxed atomic increment, safe from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace loadgen {

class Histogram {
 public:
  static constexpr int kSubBits = 7;                         // 128 sub-buckets
  static constexpr uint64_t kSub = uint64_t{1} << kSubBits;  // per power of two
  static constexpr uint64_t kExact = kSub * 2;               // values below are exact
  static constexpr int kMaxMagnitude = 40;                   // 2^40 µs ≈ 12.7 days
  static constexpr size_t kBuckets = kExact + (kMaxMagnitude - kSubBits) * kSub;

  Histogram() {
    for (auto& c : counts_) c.store(0, std::memory_order_relaxed);
  }

  static size_t index_of(uint64_t us) {
    if (us < kExact) return static_cast<size_t>(us);
    int msb = 63 - __builtin_clzll(us);
    if (msb >= kMaxMagnitude) return kBuckets - 1;
    int shift = msb - kSubBits;
    uint64_t top = us >> shift;  // in [kSub, 2*kSub)
    return static_cast<size_t>(kExact + static_cast<uint64_t>(msb - kSubBits - 1) * kSub +
                               (top - kSub));
  }

  // The lowest value that maps to bucket i.
  static uint64_t lower_of(size_t i) {
    if (i < kExact) return i;
    uint64_t rel = i - kExact;
    int msb = static_cast<int>(rel / kSub) + kSubBits + 1;
    uint64_t top = kSub + rel % kSub;
    return top << (msb - kSubBits);
  }

  // The highest value that maps to bucket i (what percentiles report: never optimistic).
  static uint64_t upper_of(size_t i) {
    if (i < kExact) return i;
    uint64_t rel = i - kExact;
    int msb = static_cast<int>(rel / kSub) + kSubBits + 1;
    return lower_of(i) + (uint64_t{1} << (msb - kSubBits)) - 1;
  }

  void record(uint64_t us) {
    counts_[index_of(us)].fetch_add(1, std::memory_order_relaxed);
    uint64_t prev = max_.load(std::memory_order_relaxed);
    while (us > prev && !max_.compare_exchange_weak(prev, us, std::memory_order_relaxed)) {
    }
  }

  uint64_t total() const {
    uint64_t n = 0;
    for (const auto& c : counts_) n += c.load(std::memory_order_relaxed);
    return n;
  }

  uint64_t max() const { return max_.load(std::memory_order_relaxed); }

  // The value at quantile q (0..1): the upper bound of the bucket holding that rank.
  uint64_t quantile(double q) const {
    uint64_t n = total();
    if (n == 0) return 0;
    uint64_t rank = static_cast<uint64_t>(q * static_cast<double>(n) + 0.5);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    uint64_t seen = 0;
    for (size_t i = 0; i < kBuckets; ++i) {
      seen += counts_[i].load(std::memory_order_relaxed);
      if (seen >= rank) {
        uint64_t v = upper_of(i);
        return v < max() ? v : max();
      }
    }
    return max();
  }

  // Non-empty buckets as a JSON array of [lower_us, upper_us, count].
  std::string buckets_json() const {
    std::string out = "[";
    bool first = true;
    for (size_t i = 0; i < kBuckets; ++i) {
      uint64_t c = counts_[i].load(std::memory_order_relaxed);
      if (c == 0) continue;
      if (!first) out += ",";
      first = false;
      out += "[" + std::to_string(lower_of(i)) + "," + std::to_string(upper_of(i)) + "," +
             std::to_string(c) + "]";
    }
    return out + "]";
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> counts_;
  std::atomic<uint64_t> max_{0};
};

}  // namespace loadgen
