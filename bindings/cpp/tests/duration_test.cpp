// Durations given to the option builders and calls: whatever unit the
// caller uses, a value past what the millisecond field holds saturates to
// one the library rejects (or to "as long as possible"), never wraps
// around to a small valid one, and a negative time is never a default.
#include "test_util.hpp"

#include <chrono>
#include <cstdint>
#include <limits>

using keel::Status;

namespace {
constexpr uint32_t u32_max = std::numeric_limits<uint32_t>::max();
constexpr uint64_t ms_max = static_cast<uint64_t>(std::chrono::milliseconds::max().count());
// 2^61 + 1 seconds is 1000 ms modulo 2^64, 2^57 + 1 hours 3600000 ms:
// converted to milliseconds without a bound they wrap to a valid value.
const std::chrono::seconds wraps_to_1s{(int64_t{1} << 61) + 1};
const std::chrono::hours wraps_to_1h{(int64_t{1} << 57) + 1};
}  // namespace

TEST(Durations, CoarseUnitsPastTheMillisecondRangeDoNotWrap) {
  EXPECT_EQ(keel::WalOptions().sync_interval(wraps_to_1s).raw().sync_interval_ms, u32_max);
  EXPECT_EQ(keel::EngineOptions().sync_interval(wraps_to_1s).raw().sync_interval_ms, u32_max);
  EXPECT_EQ(keel::WriterOptions().soft_cap_time(wraps_to_1h).raw().soft_cap_ms, u32_max);
  EXPECT_EQ(keel::WriterOptions().close_timeout(wraps_to_1s).raw().close_timeout_ms, u32_max);
  EXPECT_EQ(keel::NodeOptions().handshake_timeout(wraps_to_1s).raw().handshake_timeout_ms, u32_max);
  EXPECT_EQ(keel::NodeOptions().heartbeat_interval(wraps_to_1s).raw().heartbeat_interval_ms, u32_max);
  EXPECT_EQ(keel::NodeOptions().close_timeout(wraps_to_1s).raw().close_timeout_ms, u32_max);
  EXPECT_EQ(keel::TransferOptions().ack_timeout(wraps_to_1h).raw().ack_timeout_ms, u32_max);
  const auto backoff = keel::TransferOptions().backoff(wraps_to_1s, wraps_to_1h).raw();
  EXPECT_EQ(backoff.first_backoff_ms, u32_max);
  EXPECT_EQ(backoff.max_backoff_ms, u32_max);

  // The 64-bit fields: "as long as a millisecond count goes", not 0
  // (which would turn the background flush off) or a wrapped count.
  EXPECT_EQ(keel::EngineOptions().flush_interval(std::chrono::hours::max()).raw().flush_interval_ms, ms_max);
  EXPECT_EQ(keel::EngineOptions().flush_interval(wraps_to_1s).raw().flush_interval_ms, ms_max);
  EXPECT_EQ(keel::EngineOptions().write_stall_timeout(std::chrono::seconds::max()).raw().write_stall_timeout_ms,
            ms_max);
  // A read's timeout: a huge one is not the 1 ms of a spent budget.
  EXPECT_EQ(keel::ReadOptions(keel::ReadLevel::Lease, std::chrono::seconds::max()).to_c().timeout_ms, ms_max);
  EXPECT_EQ(keel::ReadOptions(keel::ReadLevel::Lease, wraps_to_1h).to_c().timeout_ms, ms_max);
  // ... and so does one given to its field: no wrap to 1 s, 1 h or 0 (the
  // shard's default). An unsigned count keeps this conversion defined.
  keel::ReadOptions read(keel::ReadLevel::Lease);
  read.timeout = std::chrono::duration<uint64_t>((uint64_t{1} << 61) + 1);
  EXPECT_EQ(read.to_c().timeout_ms, ms_max);
  // Below the bound the units convert exactly.
  EXPECT_EQ(keel::WalOptions().sync_interval(std::chrono::seconds(2)).sync_interval(), std::chrono::milliseconds(2000));
  EXPECT_EQ(keel::EngineOptions().flush_interval(std::chrono::minutes(-1)).raw().flush_interval_ms, 0u);
}

TEST(Durations, AStallTimeoutPastTheBoundOrNegativeIsRefusedNotTheDefault) {
  TempDir tmp;
  for (const auto& opts : {keel::EngineOptions().write_stall_timeout(std::chrono::seconds::max()),
                           keel::EngineOptions().write_stall_timeout(std::chrono::milliseconds(-1))}) {
    auto e = keel::Engine::open(tmp.engine(), opts);
    ASSERT_FALSE(e.ok()) << "opened with write_stall_timeout_ms " << opts.raw().write_stall_timeout_ms;
    EXPECT_EQ(e.err().code(), Status::InvalidArgument);
    EXPECT_NE(e.err().message().find("write_stall_timeout"), std::string::npos) << e.err().message();
  }
}
