// Helpers shared by the keel.hpp tests.
#ifndef KEEL_CPP_TESTS_TEST_UTIL_HPP
#define KEEL_CPP_TESTS_TEST_UTIL_HPP

#include "keel.hpp"
#include "temp_dir.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

// ASSERT that a Result is ok, printing the keel error when it is not.
#define KEEL_ASSERT_OK(expr)                                                   \
  do {                                                                         \
    const auto& keel_r_ = (expr);                                              \
    ASSERT_TRUE(keel_r_.ok()) << #expr << " failed: " << keel_r_.err().to_string(); \
  } while (0)

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

#endif
