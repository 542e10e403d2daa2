// Lease reads through keel.hpp on a manual clock the test sets: a
// follower's NotLeader with the leader hint, a fresh lease with no
// read-index, the strict boundary, a transfer, the read-index waiting for
// the applied index or timing out, a session costing one read-index for
// several reads, the counters, refused configurations, the callback
// released at close, and a CLOCK_BOOTTIME shard's own clock.
#include "test_util.hpp"

#include <atomic>
#include <memory>
#include <thread>

using keel::Engine;
using keel::EngineOptions;
using keel::LeaseOptions;
using keel::ReadLevel;
using keel::ReadOptions;
using keel::Role;
using keel::Shard;
using keel::Status;

namespace {

constexpr uint64_t kMs = 1000000;

struct Host {
  std::atomic<uint64_t> index{10};
  std::atomic<unsigned> calls{0};
  std::atomic<keel_status_t> fail{KEEL_STATUS_OK};
};

LeaseOptions lease_options(const std::shared_ptr<Host>& host) {
  LeaseOptions o;
  o.self_id = 1;
  o.lease = std::chrono::milliseconds(700);
  o.election_timeout_min = std::chrono::milliseconds(1000);
  o.max_clock_drift = std::chrono::milliseconds(100);
  o.max_round_trip = std::chrono::milliseconds(100);
  o.manual_clock = true;
  o.read_index = [host]() -> keel::Result<uint64_t> {
    host->calls++;
    if (host->fail != KEEL_STATUS_OK) return keel::Error(static_cast<Status>(host->fail.load()), "host says no");
    return host->index.load();
  };
  return o;
}

class LeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto e = Engine::open(dir_.engine(), EngineOptions().wal_segment_size(1 << 20).flush_interval(std::chrono::milliseconds(0)));
    ASSERT_TRUE(e.ok()) << e.err().to_string();
    engine_ = e.unwrap();
    auto s = engine_.open_shard(1);
    ASSERT_TRUE(s.ok()) << s.err().to_string();
    shard_ = s.unwrap();
    ASSERT_TRUE(shard_.put("k", "v").ok());
    ASSERT_TRUE(shard_.put("k2", "w").ok());
  }

  // Leader of term 5 over {1,2,3}, own-term entry applied at 10, fresh ack at t0.
  void lead(const std::shared_ptr<Host>& host) {
    ASSERT_TRUE(shard_.configure_consensus(lease_options(host)).ok());
    ASSERT_TRUE(shard_.consensus_set_voters({1, 2, 3}).ok());
    ASSERT_TRUE(shard_.consensus_set_role(Role::Leader, 5).ok());
    ASSERT_TRUE(shard_.consensus_set_applied(10).ok());
    ASSERT_TRUE(*shard_.consensus_term_applied(5));
    ASSERT_TRUE(shard_.consensus_set_clock(t0).ok());
    ASSERT_TRUE(shard_.consensus_ack(2, 5, t0).ok());
  }

  static constexpr uint64_t t0 = 1000 * kMs;
  TempDir dir_;
  Engine engine_;
  Shard shard_;
};

TEST_F(LeaseTest, FollowerAnswersNotLeaderWithTheHint) {
  auto host = std::make_shared<Host>();
  EXPECT_EQ(shard_.get("k", ReadLevel::Lease).err().code(), Status::InvalidArgument) << "not configured";
  ASSERT_TRUE(shard_.configure_consensus(lease_options(host)).ok());
  ASSERT_TRUE(shard_.consensus_set_role(Role::Follower, 3, 2).ok());
  auto r = shard_.get("k", ReadLevel::Linearizable);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), Status::NotLeader);
  EXPECT_EQ(r.err().leader_hint(), 2u);
  ASSERT_TRUE(shard_.get("k", ReadLevel::Stale).ok());
  ASSERT_TRUE(shard_.get("k").ok()) << "the default level is stale";
  EXPECT_EQ(host->calls, 0u);
  EXPECT_EQ(shard_.configure_consensus(lease_options(host)).err().code(), Status::InvalidArgument) << "configured twice";
  EXPECT_EQ(shard_.get("k", ReadOptions(static_cast<ReadLevel>(9))).err().code(), Status::InvalidArgument);
}

TEST_F(LeaseTest, AFreshLeaseServesWithoutReadIndexAndTheBoundaryIsStrict) {
  auto host = std::make_shared<Host>();
  lead(host);
  ASSERT_TRUE(shard_.consensus_set_clock(t0 + 700 * kMs - 1).ok());
  auto v = shard_.get("k", ReadLevel::Lease);
  ASSERT_TRUE(v.ok()) << v.err().to_string();
  EXPECT_EQ((*v)->view(), "v");
  EXPECT_EQ(host->calls, 0u);
  ASSERT_TRUE(shard_.consensus_set_clock(t0 + 700 * kMs).ok());
  ASSERT_TRUE(shard_.get("k", ReadLevel::Lease).ok());
  EXPECT_EQ(host->calls, 1u) << "now - ack == lease misses";
  ASSERT_TRUE(shard_.consensus_ack(3, 5, t0 + 700 * kMs).ok());
  ASSERT_TRUE(shard_.consensus_set_transfer(true).ok());
  ASSERT_TRUE(shard_.get("k", ReadLevel::Lease).ok());
  EXPECT_EQ(host->calls, 2u) << "a transfer suspends the lease";
  auto st = shard_.lease_stats();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->role, Role::Leader);
  EXPECT_EQ(st->leader_id, 1u);
  EXPECT_EQ(st->lease_hits, 1u);
  EXPECT_EQ(st->miss_ack_stale, 1u);
  EXPECT_EQ(st->miss_transfer, 1u);
  EXPECT_EQ(st->read_index_calls, 2u);
}

TEST_F(LeaseTest, ReadIndexWaitsForTheAppliedIndexOrTimesOut) {
  auto host = std::make_shared<Host>();
  lead(host);
  host->index = 12;
  EXPECT_EQ(shard_.get("k", ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(1))).err().code(), Status::Timeout);
  std::thread reader([&] {
    auto r = shard_.get("k", ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(60000)));
    EXPECT_TRUE(r.ok()) << r.err().to_string();
  });
  while (host->calls < 2) std::this_thread::yield();
  ASSERT_TRUE(shard_.consensus_set_applied(12).ok());
  reader.join();
  host->fail = KEEL_STATUS_IO;
  EXPECT_EQ(shard_.get("k", ReadLevel::Linearizable).err().code(), Status::Io);
  auto st = shard_.lease_stats();
  EXPECT_EQ(st->read_index_timeouts, 1u);
  EXPECT_EQ(st->read_index_errors, 1u);
}

// A negative timeout is a budget already spent: the shortest bound, not
// the shard's default (it became 0, which keel reads as "the shard's
// read_timeout"; here 10 minutes, so the reads below would have hung).
TEST_F(LeaseTest, ANegativeTimeoutIsTheShortestNotTheDefault) {
  EXPECT_EQ(ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(-1)).to_c().timeout_ms, 1u);
  EXPECT_EQ(ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(0)).to_c().timeout_ms, 0u);
  EXPECT_EQ(ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(7)).to_c().timeout_ms, 7u);
  auto host = std::make_shared<Host>();
  LeaseOptions o = lease_options(host);
  o.read_timeout = std::chrono::minutes(10);
  ASSERT_TRUE(shard_.configure_consensus(o).ok());
  ASSERT_TRUE(shard_.consensus_set_role(Role::Leader, 5).ok());
  ASSERT_TRUE(shard_.consensus_set_applied(10).ok());
  host->index = 12;  // never applied: the read waits until its bound
  EXPECT_EQ(shard_.get("k", ReadOptions(ReadLevel::Linearizable, std::chrono::milliseconds(-1))).err().code(), Status::Timeout);
  EXPECT_EQ(shard_.read_begin(ReadLevel::Linearizable, std::chrono::milliseconds(-1)).err().code(), Status::Timeout);
}

TEST_F(LeaseTest, ASessionCostsOneReadIndex) {
  auto host = std::make_shared<Host>();
  lead(host);
  auto session = shard_.read_begin(ReadLevel::Linearizable);
  ASSERT_TRUE(session.ok()) << session.err().to_string();
  EXPECT_EQ(session->index(), 10u);
  EXPECT_EQ(host->calls, 1u);
  ASSERT_TRUE(shard_.get("k", *session).ok());
  auto many = shard_.multi_get({"k", "k2", "nope"}, *session);
  ASSERT_TRUE(many.ok());
  EXPECT_EQ((*many)[1]->view(), "w");
  EXPECT_FALSE((*many)[2].has_value());
  ASSERT_TRUE(shard_.scan("", std::nullopt, *session).ok());
  ASSERT_TRUE(shard_.scan_prefix("k", *session).ok());
  EXPECT_EQ(host->calls, 1u);
  // A moved-from session is refused, never read as "no session" (which
  // would quietly fall back to the shard's default level).
  keel::ReadSession taken = std::move(*session);
  EXPECT_EQ(taken.index(), 10u);
  EXPECT_EQ(session->index(), 0u);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(shard_.get("k", *session).err().code(), Status::Closed);
  EXPECT_EQ(shard_.multi_get({"k"}, *session).err().code(), Status::Closed);
  EXPECT_EQ(shard_.scan("", std::nullopt, *session).err().code(), Status::Closed);
  EXPECT_EQ(shard_.scan_prefix("k", *session).err().code(), Status::Closed);
  ASSERT_TRUE(shard_.get("k", taken).ok());
  keel::ReadSession assigned;
  assigned = std::move(taken);
  EXPECT_EQ(assigned.index(), 10u);
  EXPECT_EQ(taken.index(), 0u);  // NOLINT(bugprone-use-after-move)
  ASSERT_TRUE(shard_.get("k", assigned).ok());
  EXPECT_EQ(host->calls, 1u);
}

TEST_F(LeaseTest, RefusedConfigurationsAndTheCallbackReleasedAtClose) {
  auto host = std::make_shared<Host>();
  auto bad = lease_options(host);
  bad.lease = std::chrono::milliseconds(800);
  EXPECT_EQ(shard_.configure_consensus(bad).err().code(), Status::InvalidArgument);
  // A negative margin is refused, not read as 0 (which would pass this lease).
  bad = lease_options(host);
  bad.lease = std::chrono::milliseconds(850);
  bad.max_clock_drift = std::chrono::milliseconds(-100);
  EXPECT_EQ(shard_.configure_consensus(bad).err().code(), Status::InvalidArgument);
  bad = lease_options(host);
  bad.boottime_clock = true;  // and manual_clock: which one?
  EXPECT_EQ(shard_.configure_consensus(bad).err().code(), Status::InvalidArgument);
  bad = lease_options(host);
  bad.read_index = nullptr;
  EXPECT_EQ(shard_.configure_consensus(bad).err().code(), Status::InvalidArgument);
  EXPECT_EQ(host.use_count(), 1) << "refused configurations hold nothing";
  ASSERT_TRUE(shard_.configure_consensus(lease_options(host)).ok());
  EXPECT_EQ(host.use_count(), 2) << "keel holds the callback";
  ASSERT_TRUE(shard_.close().ok());
  EXPECT_EQ(host.use_count(), 1) << "released when the shard closed";
}

// A margin past what milliseconds can count saturates as every other time
// the wrapper takes does: (2^61 + 1) s is 1000 ms modulo 2^64, and read as
// that it would make room for this lease, which must be refused (a drift
// that long leaves none). The unsigned count keeps the test's own
// conversion defined.
TEST_F(LeaseTest, AMarginPastTheMillisecondRangeSaturatesNotWraps) {
  auto host = std::make_shared<Host>();
  auto o = lease_options(host);
  o.election_timeout_min = std::chrono::seconds(10);
  o.lease = std::chrono::seconds(5);
  o.max_clock_drift = std::chrono::duration<uint64_t>((uint64_t{1} << 61) + 1);
  auto r = shard_.configure_consensus(o);
  ASSERT_FALSE(r.ok()) << "a lease of 5 s was accepted beside a drift of 2^61 s";
  EXPECT_EQ(r.err().code(), Status::InvalidArgument);
}

// CLOCK_BOOTTIME: consensus_now() reads it, and an ack stamped with it
// holds a lease (59 minutes long: no scheduling delay ages it out).
TEST_F(LeaseTest, ABoottimeShardStampsAcksWithItsOwnClock) {
  auto host = std::make_shared<Host>();
  auto o = lease_options(host);
  o.manual_clock = false;
  o.boottime_clock = true;
  o.election_timeout_min = std::chrono::hours(1);
  o.lease = std::chrono::minutes(59);
  EXPECT_EQ(shard_.consensus_now().err().code(), Status::InvalidArgument) << "not configured yet";
  ASSERT_TRUE(shard_.configure_consensus(o).ok());
  EXPECT_EQ(shard_.consensus_set_clock(5).err().code(), Status::InvalidArgument);
  timespec ts{};
  ASSERT_EQ(clock_gettime(CLOCK_BOOTTIME, &ts), 0);
  const uint64_t before = static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
  ASSERT_TRUE(shard_.consensus_set_voters({1, 2, 3}).ok());
  // The role first: an ack of a message stamped before this node led its
  // term is ignored.
  ASSERT_TRUE(shard_.consensus_set_role(Role::Leader, 1).ok());
  auto sent = shard_.consensus_now();
  ASSERT_TRUE(sent.ok());
  EXPECT_GE(*sent, before);
  ASSERT_TRUE(shard_.consensus_term_applied(1).ok());
  ASSERT_TRUE(shard_.consensus_ack(2, 1, *sent).ok());
  ASSERT_TRUE(shard_.get("k", ReadLevel::Lease).ok());
  EXPECT_EQ(host->calls, 0u);
  EXPECT_EQ(shard_.lease_stats()->lease_hits, 1u);
}

}  // namespace
