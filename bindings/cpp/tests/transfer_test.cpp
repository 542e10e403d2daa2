// Shard transfer through keel.hpp (keel::Transfer) between two engines
// and two nodes in one process over real loopback sockets: a shard moves
// while a writer thread writes, the host hands it over, the digests agree
// and the source answers Status::Moved; a cancelled transfer settles
// Cancelled and a restart finishes; the handle is move-only and empty
// handles answer Status::Closed, as do expect() and start() from the
// node's handler while its node closes; the progress bridge reads only
// what struct_size covers. Waits are on wait() or the progress handler (a
// condition variable), never on time.
#include "test_util.hpp"

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

using keel::FinishMode;
using keel::Status;
using keel::Transfer;
using keel::TransferOptions;
using keel::TransferProgress;
using keel::TransferStage;

static_assert(!std::is_copy_constructible_v<Transfer> && !std::is_copy_assignable_v<Transfer>);
static_assert(std::is_nothrow_move_constructible_v<Transfer> && std::is_nothrow_move_assignable_v<Transfer>);

namespace {

constexpr uint64_t kSrc = 1, kDst = 2;

// One side: an engine and its node.
struct Side {
  TempDir dir;
  keel::Engine engine;
  keel::Node node;
};

void open_side(Side& s, uint64_t id) {
  // No background flush: the WAL keeps what a restart resumes from.
  open_engine(s.dir.engine(), keel::EngineOptions().flush_interval(std::chrono::milliseconds(0)), s.engine);
  auto n = keel::Node::open(s.engine, keel::NodeOptions().node_id(id));
  ASSERT_TRUE(n.ok()) << n.err().to_string();
  s.node = std::move(n).value();
}

void connect(Side& a, Side& b) {
  auto addr = b.node.addr();
  ASSERT_TRUE(addr.ok());
  KEEL_ASSERT_OK(a.node.connect(kDst, *addr));
}

void fill(const keel::Shard& shard, int n) {
  for (int i = 0; i < n; i++) {
    ASSERT_TRUE(shard.put("k" + std::to_string(i % 700), std::to_string(i)).ok());
  }
}

// The stages the progress handler saw.
struct Seen {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<TransferStage> stages;
  // When set, the handler holds the transfer's thread at its first
  // WaitingFinish report until release(): calls the test makes meanwhile
  // meet a transfer that cannot act on them yet.
  bool hold = false, holding = false, released = false;
  keel::TransferProgressHandler handler() {
    return [this](const TransferProgress& p) {
      std::unique_lock<std::mutex> lock(mu);
      if (stages.empty() || stages.back() != p.stage) stages.push_back(p.stage);
      cv.notify_all();
      if (hold && !holding && p.stage == TransferStage::WaitingFinish) {
        holding = true;
        cv.wait(lock, [&] { return released; });
      }
    };
  }
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
    cv.notify_all();
  }
  void wait_for(TransferStage s) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return !stages.empty() && stages.back() == s; });
  }
};

TransferStage stage_of(const Transfer& t) {
  auto s = t.status();
  EXPECT_TRUE(s.ok());
  return s.ok() ? s->stage : TransferStage::Failed;
}

TEST(Transfer, MovesAShardWhileAWriterWritesAndHandsItOver) {
  Side a, b;
  open_side(a, kSrc);
  open_side(b, kDst);
  connect(a, b);
  keel::Shard shard;
  open_shard(a.engine, 7, shard);
  fill(shard, 1000);
  KEEL_ASSERT_OK(Transfer::expect(b.node, 7, kSrc));
  Seen seen;
  seen.hold = true;  // so that the second finish below is BUSY, not "over"
  auto t = Transfer::start(a.node, shard, 7, kDst,
                           TransferOptions()
                               .max_batch_records(16)
                               .max_batch_bytes(4096)
                               .max_retries(3)
                               .backoff(std::chrono::milliseconds(10), std::chrono::milliseconds(40))
                               .on_progress(seen.handler()));
  ASSERT_TRUE(t.ok()) << t.err().to_string();
  // Lets the handler go on every way out, before `t` waits for its thread.
  auto release = [](Seen* s) { s->release(); };
  std::unique_ptr<Seen, decltype(release)> release_on_exit(&seen, release);

  // The writer pauses after 2000 writes until the test saw the transfer
  // catch up: a writer faster than the link keeps it catching up, so the
  // test, not the scheduler, decides when it can.
  std::atomic<uint64_t> last_version{0};
  std::promise<void> resume;
  std::thread writer([&, resumed = resume.get_future()] {
    for (uint64_t i = 0;; i++) {
      if (i == 2000) resumed.wait();
      auto v = shard.put("w" + std::to_string(i % 500), std::to_string(i));
      if (!v.ok()) {
        EXPECT_EQ(v.err().code(), Status::Moved);
        return;
      }
      last_version = *v;
    }
  });
  seen.wait_for(TransferStage::WaitingFinish);
  EXPECT_EQ(t->wait(std::chrono::milliseconds(0)).err().code(), Status::Timeout);
  EXPECT_EQ(t->confirm_hand_over().err().code(), Status::InvalidArgument);
  resume.set_value();
  KEEL_ASSERT_OK(t->finish(FinishMode::HandOver));
  EXPECT_EQ(t->finish(FinishMode::Copy).err().code(), Status::Busy);
  release_on_exit.reset();
  KEEL_ASSERT_OK(t->wait());
  writer.join();
  EXPECT_EQ(stage_of(*t), TransferStage::Done);
  auto p = t->progress();
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->handed_over);
  EXPECT_EQ(p->ops_sent, p->ops_total);
  EXPECT_LE(p->max_batches_in_memory, 2u);
  EXPECT_GE(p->last_version, last_version.load());
  {
    std::lock_guard<std::mutex> lock(seen.mu);
    EXPECT_EQ(seen.stages.back(), TransferStage::Done);
  }
  EXPECT_EQ(shard.put("late", "x").err().code(), Status::Moved);

  keel::Shard got;
  open_shard(b.engine, 7, got);
  auto da = keel::shard_digest(shard), db = keel::shard_digest(got);
  ASSERT_TRUE(da.ok() && db.ok());
  EXPECT_EQ(*da, *db);

  // The host confirms the hand-over: the source's shard goes.
  KEEL_ASSERT_OK(t->confirm_hand_over());
  EXPECT_EQ(shard.put("late", "x").err().code(), Status::Closed);
  EXPECT_EQ(t->confirm_hand_over().err().code(), Status::NotFound);
  EXPECT_EQ(a.engine.open_shard(7, false).err().code(), Status::NotFound);
}

TEST(Transfer, ACancelSettlesCancelledAndARestartFinishes) {
  Side a, b;
  open_side(a, kSrc);
  open_side(b, kDst);
  connect(a, b);
  keel::Shard shard;
  open_shard(a.engine, 8, shard);
  fill(shard, 500);
  KEEL_ASSERT_OK(Transfer::expect(b.node, 8, kSrc));
  Seen seen;
  auto t = Transfer::start(a.node, shard, 8, kDst, TransferOptions().on_progress(seen.handler()));
  ASSERT_TRUE(t.ok());
  seen.wait_for(TransferStage::WaitingFinish);
  KEEL_ASSERT_OK(t->cancel());
  KEEL_ASSERT_OK(t->wait());
  auto s = t->status();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->stage, TransferStage::Cancelled);
  EXPECT_FALSE(s->error.has_value());
  EXPECT_EQ(b.engine.open_shard(8, false).err().code(), Status::Busy);  // still incoming

  // Sequential (the benchmark's baseline) resumes the shard as well.
  auto again = Transfer::start(
      a.node, shard, 8, kDst,
      TransferOptions().method(keel::TransferMethod::WalDelta).auto_finish(FinishMode::Copy).sequential());
  ASSERT_TRUE(again.ok());
  KEEL_ASSERT_OK(again->wait());
  EXPECT_EQ(stage_of(*again), TransferStage::Done);
  auto p = again->progress();
  ASSERT_TRUE(p.ok());
  EXPECT_FALSE(p->snapshot);  // resumed from what the receiver had
  keel::Shard got;
  open_shard(b.engine, 8, got);
  EXPECT_EQ(*keel::shard_digest(shard), *keel::shard_digest(got));
}

TEST(Transfer, FailuresAndEmptyHandlesAreReported) {
  Side a, b;
  open_side(a, kSrc);
  open_side(b, kDst);
  connect(a, b);
  keel::Shard shard;
  open_shard(a.engine, 9, shard);
  fill(shard, 10);
  // Not announced: the transfer fails with Refused.
  auto t = Transfer::start(a.node, shard, 9, kDst, TransferOptions().auto_finish(FinishMode::Copy));
  ASSERT_TRUE(t.ok());
  KEEL_ASSERT_OK(t->wait());
  auto s = t->status();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->stage, TransferStage::Failed);
  ASSERT_TRUE(s->error.has_value());
  EXPECT_EQ(s->error->code(), Status::Refused);
  EXPECT_EQ(t->finish(FinishMode::None).err().code(), Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst, TransferOptions().max_batch_bytes(1)).err().code(),
            Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst, TransferOptions().max_retries(1001)).err().code(),
            Status::InvalidArgument);
  // A first backoff above the longest one.
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst,
                            TransferOptions().backoff(std::chrono::milliseconds(50), std::chrono::milliseconds(10)))
                .err()
                .code(),
            Status::InvalidArgument);
  // Negative or absurd waits are refused, never turned into 0 (the default).
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst, TransferOptions().ack_timeout(std::chrono::milliseconds(-1))).err().code(),
            Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst,
                            TransferOptions().backoff(std::chrono::milliseconds(-1), std::chrono::milliseconds(-1)))
                .err()
                .code(),
            Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst, TransferOptions().ack_timeout(std::chrono::hours(25))).err().code(),
            Status::InvalidArgument);
  // raw(): the C struct keel_transfer_options_init_sized() filled, which
  // the setters write and start() reads.
  TransferOptions raw_opts;
  const TransferOptions& const_opts = raw_opts;
  EXPECT_EQ(const_opts.raw().struct_size, sizeof(keel_transfer_options_t));
  EXPECT_EQ(const_opts.raw().max_batch_records, 1024u);
  EXPECT_EQ(raw_opts.max_retries(7).raw().max_retries, 7u);
  raw_opts.raw().max_batch_bytes = 1;  // below the 4096 minimum
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kDst, raw_opts).err().code(), Status::InvalidArgument);
  // Peer 0, this node, another shard id.
  EXPECT_EQ(Transfer::start(a.node, shard, 9, 0).err().code(), Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 9, kSrc).err().code(), Status::InvalidArgument);
  EXPECT_EQ(Transfer::start(a.node, shard, 10, kDst).err().code(), Status::InvalidArgument);
  EXPECT_EQ(Transfer::expect(b.node, 9, 0).err().code(), Status::InvalidArgument);

  Transfer moved = std::move(*t);
  EXPECT_FALSE(*t);  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  EXPECT_EQ(t->status().err().code(), Status::Closed);
  EXPECT_EQ(t->wait().err().code(), Status::Closed);
  EXPECT_EQ(stage_of(moved), TransferStage::Failed);
  EXPECT_EQ(Transfer::start(keel::Node(), shard, 9, kDst).err().code(), Status::Closed);
  EXPECT_EQ(keel::shard_digest(keel::Shard()).err().code(), Status::Closed);
}

// A node's handler that calls Transfer::expect() or Transfer::start() on
// its own Node while that node closes gets Status::Closed, as the Node's
// own members answer: the transfer calls take the Node's handler-call
// guard (detail::NodeCall). Without it they read the Node's handle beside
// the close: a data race with close() on another thread (not testable
// without timing), and, here deterministically, a move assigned over the
// Node closes the old node while the Node already holds the new one's
// handle, so the old node's handler announced and started transfers on a
// node it never belonged to (both calls answered Ok).
TEST(Transfer, HandlerCallsOnItsClosingNodeAnswerClosed) {
  Side b;
  open_side(b, kDst);
  TempDir dir;
  keel::Engine engine;
  open_engine(dir.engine(), keel::EngineOptions().flush_interval(std::chrono::milliseconds(0)), engine);
  keel::Shard shard;
  open_shard(engine, 7, shard);
  keel::Node a;  // declared before `started`, so a transfer started in error goes before the node it runs on

  std::mutex mu;
  std::optional<keel::Result<void>> expected;
  std::optional<keel::Result<Transfer>> started;
  std::atomic<keel::Node*> self{nullptr};  // set before any event can arrive (connect() below)
  auto opts = keel::NodeOptions().node_id(kSrc).on_event([&](uint64_t, Status st, std::string_view) {
    if (st != Status::Closed) return;
    auto e = Transfer::expect(*self.load(), 7, kDst);
    auto t = Transfer::start(*self.load(), shard, 7, kDst, TransferOptions().no_retries());
    std::lock_guard<std::mutex> lock(mu);
    if (!expected) expected.emplace(std::move(e));
    if (!started) started.emplace(std::move(t));  // destroyed by the test, not on the node's thread
  });
  auto opened = keel::Node::open(engine, opts);
  ASSERT_TRUE(opened.ok()) << opened.err().to_string();
  a = std::move(opened).value();
  self.store(&a);
  auto addr = a.addr();
  ASSERT_TRUE(addr.ok());
  KEEL_ASSERT_OK(b.node.connect(kSrc, *addr));

  auto other = keel::Node::open(engine, keel::NodeOptions().node_id(3));
  ASSERT_TRUE(other.ok()) << other.err().to_string();
  a = std::move(other).value();  // closes node kSrc: Status::Closed (b's connection) to its handler, during the close

  std::lock_guard<std::mutex> lock(mu);
  ASSERT_TRUE(expected.has_value() && started.has_value()) << "the handler saw no Status::Closed";
  ASSERT_FALSE(expected->ok()) << "Transfer::expect() reached the node that replaced the closing one";
  EXPECT_EQ(expected->err().code(), Status::Closed);
  ASSERT_FALSE(started->ok()) << "Transfer::start() reached the node that replaced the closing one";
  EXPECT_EQ(started->err().code(), Status::Closed);
}

bool is_over(TransferStage s) {
  return s == TransferStage::Done || s == TransferStage::Failed || s == TransferStage::Cancelled;
}

// The body of the death test below, in its own process: what the misuse
// leaks stays there. Exits 0 once keel's thread made its last progress
// call after the handler destroyed its own Transfer, 1 when that
// destruction freed the handler while keel's thread was running it, 2
// when the set-up failed or nothing happened in time.
[[noreturn]] void destroy_transfer_in_its_own_handler() {
  Side a, b;
  open_side(a, kSrc);
  open_side(b, kDst);
  connect(a, b);
  keel::Shard shard;
  open_shard(a.engine, 11, shard);
  fill(shard, 100);
  if (!a.node || !b.node || !shard || !Transfer::expect(b.node, 11, kSrc).ok()) child_fail("set-up failed");

  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Transfer> transfer;
    std::atomic<bool> handler_gone{false};  // the handler's captures were destroyed
    bool destroyed = false, gone_in_handler = false, over = false;
  } slot;
  // Destroyed with the last copy of the handler (the Transfer's).
  std::shared_ptr<void> canary(nullptr, [&slot](void*) { slot.handler_gone = true; });
  auto handler = [s = &slot, canary](const TransferProgress& p) {
    Slot* const slot = s;  // the captures may be gone once the Transfer is
    std::unique_lock<std::mutex> lock(slot->mu);
    if (!slot->destroyed) {
      slot->cv.wait(lock, [&] { return slot->transfer.has_value(); });
      slot->transfer.reset();  // the misuse: keel's thread is running this very handler
      slot->destroyed = true;
      slot->gone_in_handler = slot->handler_gone;
    }
    if (is_over(p.stage)) slot->over = true;
    slot->cv.notify_all();
  };
  canary.reset();
  auto t = Transfer::start(a.node, shard, 11, kDst,
                           TransferOptions().auto_finish(FinishMode::Copy).on_progress(std::move(handler)));
  if (!t.ok()) child_fail("start failed");
  std::unique_lock<std::mutex> lock(slot.mu);
  slot.transfer.emplace(std::move(t).value());
  slot.cv.notify_all();
  // The bound only turns a hang into a failure.
  if (!slot.cv.wait_for(lock, std::chrono::seconds(60), [&] { return slot.gone_in_handler || slot.over; })) {
    child_fail("the transfer did not end");
  }
  if (slot.gone_in_handler) {
    std::fprintf(stderr, "the handler was freed while keel's thread ran it\n");
    std::_Exit(1);
  }
  std::_Exit(0);
}

// A Transfer destroyed in its own progress handler (forbidden: keel cannot
// free a transfer from the thread that runs its handler, and answers
// BUSY) leaves the transfer and its handler running, leaked, and says so
// on stderr; keel's thread goes on calling the handler to the end. The
// destructor used to ignore the BUSY and free the handler: keel's thread
// was still running it and called it again, a use-after-free.
TEST(TransferDeathTest, DestroyedInItsOwnHandlerLeaksAndSaysSo) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(destroy_transfer_in_its_own_handler(), ::testing::ExitedWithCode(0),
              "keel::Transfer destroyed in its own progress handler");
}

// The progress bridge reads only the bytes the producer's struct_size
// covers (docs/FFI.md, "Versioned structs"); the fields past it take
// TransferProgress's defaults. A library built with an older header
// passes a smaller struct, and what lies past it is not the struct's. The
// bridge used to read the whole struct: here it reported the sentinel
// bytes past struct_size as counters.
TEST(Transfer, TheProgressBridgeReadsOnlyStructSize) {
  std::vector<TransferProgress> got;
  keel::detail::TransferEvents events{[&](const TransferProgress& p) { got.push_back(p); }};

  keel_transfer_progress_t p;
  std::memset(&p, 0xab, sizeof p);  // what the producer did not write
  p.struct_size = static_cast<uint32_t>(offsetof(keel_transfer_progress_t, ops_total));
  p.stage = KEEL_TRANSFER_BACKFILL;
  p.snapshot = 1;
  p.handed_over = 0;
  p.ops_sent = 42;
  keel::detail::TransferEvents::on_progress(&events, &p);

  // Only struct_size itself: every field takes its default.
  p.struct_size = static_cast<uint32_t>(sizeof p.struct_size);
  keel::detail::TransferEvents::on_progress(&events, &p);

  // The whole struct: every field is read.
  p.struct_size = static_cast<uint32_t>(sizeof p);
  keel::detail::TransferEvents::on_progress(&events, &p);

  ASSERT_EQ(got.size(), 3u);
  const TransferProgress defaults;
  EXPECT_EQ(got[0].stage, TransferStage::Backfill);
  EXPECT_TRUE(got[0].snapshot);
  EXPECT_FALSE(got[0].handed_over);
  EXPECT_EQ(got[0].ops_sent, 42u);
  EXPECT_EQ(got[0].ops_total, defaults.ops_total);
  EXPECT_EQ(got[0].entries_sent, defaults.entries_sent);
  EXPECT_EQ(got[0].bytes_sent, defaults.bytes_sent);
  EXPECT_EQ(got[0].batches, defaults.batches);
  EXPECT_EQ(got[0].receiver_had, defaults.receiver_had);
  EXPECT_EQ(got[0].last_version, defaults.last_version);
  EXPECT_EQ(got[0].read_time, defaults.read_time);
  EXPECT_EQ(got[0].send_time, defaults.send_time);
  EXPECT_EQ(got[0].final_hold, defaults.final_hold);
  EXPECT_EQ(got[0].max_batches_in_memory, defaults.max_batches_in_memory);

  EXPECT_EQ(got[1].stage, defaults.stage);
  EXPECT_EQ(got[1].snapshot, defaults.snapshot);
  EXPECT_EQ(got[1].ops_sent, defaults.ops_sent);

  const uint64_t sentinel = 0xabababababababab;
  EXPECT_EQ(got[2].ops_sent, 42u);
  EXPECT_EQ(got[2].ops_total, sentinel);
  EXPECT_EQ(got[2].max_batches_in_memory, sentinel);
}

}  // namespace
