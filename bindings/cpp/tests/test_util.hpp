// Helpers shared by the keel.hpp tests.
#ifndef KEEL_CPP_TESTS_TEST_UTIL_HPP
#define KEEL_CPP_TESTS_TEST_UTIL_HPP

#include "keel.hpp"
#include "temp_dir.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

// ASSERT that a Result is ok, printing the keel error when it is not.
#define KEEL_ASSERT_OK(expr)                                                   \
  do {                                                                         \
    const auto& keel_r_ = (expr);                                              \
    ASSERT_TRUE(keel_r_.ok()) << #expr << " failed: " << keel_r_.err().to_string(); \
  } while (0)

// In the child process of a death test (where gtest's failures do not
// reach the parent): says why on stderr and exits with 2, "the set-up
// failed or nothing happened in time", which the death tests tell apart
// from the outcomes they check (0 and 1).
[[noreturn]] inline void child_fail(const char* why) {
  std::fprintf(stderr, "%s\n", why);
  std::_Exit(2);
}

// Opens a WAL or fails the test (fatal failures need a void function).
inline void open_wal(const std::string& dir, const keel::WalOptions& opts, keel::Wal& out) {
  auto r = keel::Wal::open(dir, opts);
  ASSERT_TRUE(r.ok()) << "open " << dir << ": " << r.err().to_string();
  out = std::move(r).value();
}

// Opens an engine, or a shard of it, or fails the test.
inline void open_engine(const std::string& dir, const keel::EngineOptions& opts, keel::Engine& out) {
  auto r = keel::Engine::open(dir, opts);
  ASSERT_TRUE(r.ok()) << "open engine " << dir << ": " << r.err().to_string();
  out = std::move(r).value();
}
inline void open_shard(const keel::Engine& engine, uint32_t id, keel::Shard& out) {
  auto r = engine.open_shard(id);
  ASSERT_TRUE(r.ok()) << "open shard " << id << ": " << r.err().to_string();
  out = std::move(r).value();
}

// Reads until the reader has caught up (next() gives nullopt).
inline void read_all(keel::WalReader& reader, std::vector<keel::Record>& out) {
  for (;;) {
    auto r = reader.next();
    ASSERT_TRUE(r.ok()) << r.err().to_string();
    if (!r->has_value()) return;
    out.push_back(std::move(**r));
  }
}

inline std::vector<uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

// A payload that differs per index and has every byte value in it.
inline std::vector<uint8_t> pattern(size_t size, uint32_t seed) {
  std::vector<uint8_t> v(size);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

// A range whose elements are made on the fly: its iterator yields each
// std::string by value (as a transform view or a generator does), so an
// element lives only until the end of the expression that read it. Each is
// longer than the small-string buffer, so it lives on the heap.
class GeneratedStrings {
 public:
  GeneratedStrings(std::string prefix, size_t count) : prefix_(std::move(prefix)), count_(count) {}
  static std::string make(const std::string& prefix, size_t i) {
    return prefix + " number " + std::to_string(i) + ", long enough to be on the heap";
  }
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = std::string;
    iterator(const GeneratedStrings* range, size_t i) : range_(range), i_(i) {}
    std::string operator*() const { return make(range_->prefix_, i_); }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    bool operator==(const iterator& o) const { return i_ == o.i_; }
    bool operator!=(const iterator& o) const { return i_ != o.i_; }

   private:
    const GeneratedStrings* range_;
    size_t i_;
  };
  iterator begin() const { return iterator(this, 0); }
  iterator end() const { return iterator(this, count_); }

 private:
  std::string prefix_;
  size_t count_;
};

#endif
