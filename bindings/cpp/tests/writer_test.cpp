// Batched socket writers through keel.hpp (keel::Net, keel::Writer,
// keel::Publisher) over real loopback TCP sockets, on both backends
// (io_uring cases are skipped where keel falls back to sendmsg):
// byte-exact round trips of sends, `more` runs + flush and batches;
// publisher fan-out to three subscribers; the event handler firing exactly
// once, on the reactor thread, when the peer resets mid-stream; counters;
// misuse, moved-from objects and the handler's heap state being released.
#include "test_util.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

using keel::Backend;
using keel::Net;
using keel::NetOptions;
using keel::Publisher;
using keel::Status;
using keel::Writer;
using keel::WriterOptions;
using keel::WriterStats;
using namespace std::chrono_literals;

static_assert(!std::is_copy_constructible_v<Net> && !std::is_copy_assignable_v<Net>);
static_assert(!std::is_copy_constructible_v<Writer> && !std::is_copy_assignable_v<Writer>);
static_assert(!std::is_copy_constructible_v<Publisher> && !std::is_copy_assignable_v<Publisher>);
static_assert(std::is_nothrow_move_constructible_v<Net> && std::is_nothrow_move_assignable_v<Net>);
static_assert(std::is_nothrow_move_constructible_v<Writer> && std::is_nothrow_move_assignable_v<Writer>);
static_assert(std::is_nothrow_move_constructible_v<Publisher> && std::is_nothrow_move_assignable_v<Publisher>);

namespace {

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// A connected loopback TCP pair: `keel_side` is for keel, `peer` reads.
struct TcpPair {
  Fd keel_side;
  Fd peer;
};

void tcp_pair(TcpPair& out) {
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_GE(listener.get(), 0) << std::strerror(errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  ASSERT_EQ(::listen(listener.get(), 4), 0) << std::strerror(errno);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  out.peer = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_GE(out.peer.get(), 0);
  ASSERT_EQ(::connect(out.peer.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0) << std::strerror(errno);
  out.keel_side = Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_GE(out.keel_side.get(), 0) << std::strerror(errno);
  timeval tv{};
  tv.tv_sec = 5;  // a read never hangs the suite
  ASSERT_EQ(::setsockopt(out.peer.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
}

// Reads until `n` bytes arrived, EOF or an error; returns what arrived.
std::string read_n(int fd, size_t n) {
  std::string got;
  got.reserve(n);
  char buf[65536];
  while (got.size() < n) {
    const ssize_t r = ::read(fd, buf, std::min(sizeof buf, n - got.size()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got.append(buf, static_cast<size_t>(r));
  }
  return got;
}

// True when the peer sees EOF (keel closed its side) within the timeout.
bool sees_eof(int fd, std::chrono::milliseconds timeout = 3s) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char c;
  for (;;) {
    const ssize_t r = ::read(fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    return r == 0;
  }
}

// Message i of a test stream: sizes from 0 B to 64 KiB (some at or above
// the 4 KiB copy threshold, so both the copy and the reference path run),
// contents that differ per message.
std::string message(size_t i) {
  static const size_t sizes[] = {1, 17, 0, 40, 4095, 4096, 100, 65536, 3, 9000, 512, 2};
  const size_t n = sizes[i % (sizeof sizes / sizeof sizes[0])];
  const auto p = pattern(n, static_cast<uint32_t>(i));
  return std::string(p.begin(), p.end());
}

// A thread joined on destruction, so a failed ASSERT cannot leave a
// joinable std::thread behind (reads time out: see tcp_pair).
struct JoiningThread {
  std::thread t;
  template <class F>
  explicit JoiningThread(F&& f) : t(std::forward<F>(f)) {}
  JoiningThread(JoiningThread&&) = default;
  ~JoiningThread() {
    if (t.joinable()) t.join();
  }
  void join() { t.join(); }
};

// What the event handler saw.
struct Event {
  uint64_t conn_id;
  Status status;
  std::string message;
  std::thread::id thread;
};

// Collects handler calls; must outlive the Net whose handler it made.
class Events {
 public:
  keel::EventHandler handler() {
    return [this](uint64_t id, Status st, std::string_view msg) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(Event{id, st, std::string(msg), std::this_thread::get_id()});
      cv_.notify_all();
    };
  }
  // Waits until at least n events arrived; false on timeout.
  bool wait_for(size_t n, std::chrono::milliseconds timeout = 5s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
  }
  std::vector<Event> snapshot() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> events_;
};

template <class R>
void expect_error(const R& r, Status code) {
  ASSERT_FALSE(r.ok()) << "expected " << keel::to_string(code);
  EXPECT_EQ(r.err().code(), code) << r.err().to_string();
  EXPECT_FALSE(r.err().message().empty());
}

void open_net(const NetOptions& opts, Net& out) {
  auto r = Net::open(opts);
  ASSERT_TRUE(r.ok()) << "Net::open: " << r.err().to_string();
  out = std::move(r).value();
}

void adopt(const Net& net, Fd& fd, Writer& out, const WriterOptions& opts = WriterOptions()) {
  auto r = Writer::adopt(net, fd.get(), opts);
  ASSERT_TRUE(r.ok()) << "Writer::adopt: " << r.err().to_string();
  (void)fd.release();  // keel's now
  out = std::move(r).value();
}

// Stats, polled until `done` holds (the io_uring backend counts a send
// when its completion is reaped on the reactor, after the bytes arrived).
WriterStats stats_when(const Writer& w, const std::function<bool(const WriterStats&)>& done) {
  WriterStats s;
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  do {
    auto r = w.stats();
    if (!r) {
      ADD_FAILURE() << "stats: " << r.err().to_string();
      return s;
    }
    s = *r;
    if (done(s)) return s;
    std::this_thread::sleep_for(1ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return s;
}

// A net on the backend under test, or a skip when io_uring was asked for
// and keel fell back to sendmsg.
class WriterBackend : public ::testing::TestWithParam<Backend> {
 protected:
  void open(Net& net, Events* events = nullptr) {
    NetOptions opts;
    opts.backend(GetParam());
    if (events) opts.on_event(events->handler());
    ASSERT_NO_FATAL_FAILURE(open_net(opts, net));
    auto running = net.backend();
    KEEL_ASSERT_OK(running);
    if (GetParam() == Backend::Sendmsg) {
      ASSERT_EQ(*running, Backend::Sendmsg);
    } else if (*running != Backend::IoUring) {
      GTEST_SKIP() << "io_uring unavailable here: keel fell back to " << keel::to_string(*running);
    }
  }
};

}  // namespace

namespace keel {
// Readable parameter names in gtest output.
void PrintTo(Backend b, std::ostream* os) { *os << to_string(b); }
}  // namespace keel

namespace {

std::string backend_name(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::IoUring ? "IoUring" : "Sendmsg";
}

}  // namespace

// Sends, `more` runs + flush and batches (vector, initializer list,
// pointer + count, pre-packed) arrive byte for byte, in order, while a
// reader thread drains the peer.
TEST_P(WriterBackend, RoundTripIsByteExact) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open(net));
  if (IsSkipped()) return;
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  Writer w;
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w));

  std::string want;
  size_t items = 0;
  for (size_t i = 0; i < 240; ++i) want += message(i);
  want += "xyzlast";
  std::string got;
  JoiningThread reader([&] { got = read_n(pair.peer.get(), want.size()); });

  size_t i = 0;
  while (i < 240) {
    switch ((i / 12) % 5) {
      case 0:  // single sends
        KEEL_ASSERT_OK(w.send(message(i)));
        ++i, ++items;
        break;
      case 1: {  // a `more` run of 11, the 12th without
        for (size_t k = 0; k < 11; ++k, ++i, ++items) KEEL_ASSERT_OK(w.send(message(i), true));
        KEEL_ASSERT_OK(w.send(message(i++)));
        ++items;
        break;
      }
      case 2: {  // `more` run then flush()
        for (size_t k = 0; k < 12; ++k, ++i, ++items) KEEL_ASSERT_OK(w.send(message(i), true));
        KEEL_ASSERT_OK(w.flush());
        break;
      }
      case 3: {  // a batch from a vector of strings
        std::vector<std::string> batch;
        for (size_t k = 0; k < 12; ++k) batch.push_back(message(i++));
        items += batch.size();
        KEEL_ASSERT_OK(w.send_batch(batch));
        break;
      }
      default: {  // a batch of views with `more`, then one pre-packed batch
        std::vector<std::string> owned;
        for (size_t k = 0; k < 6; ++k) owned.push_back(message(i++));
        std::vector<std::string_view> views(owned.begin(), owned.end());
        KEEL_ASSERT_OK(w.send_batch(views, true));
        std::vector<keel::ByteView> more_views;
        std::vector<std::string> rest;
        for (size_t k = 0; k < 6; ++k) rest.push_back(message(i++));
        for (const auto& s : rest) more_views.emplace_back(s);
        KEEL_ASSERT_OK(w.send_batch(more_views.data(), more_views.size()));
        items += 12;
        break;
      }
    }
  }
  KEEL_ASSERT_OK(w.send_batch({"xyz", "", "last"}));
  items += 3;
  reader.join();
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want) << "the bytes differ from what was sent";

  // io_uring counts bytes when a completion is reaped, after they arrived.
  const auto s = stats_when(w, [&](const WriterStats& st) { return st.bytes_sent == want.size(); });
  EXPECT_EQ(s.items, items);
  // An empty message sent alone on an idle connection needs no send, so
  // it is not counted in items_sent: 4 such sends (index 2 of each block
  // of single sends) may be missing, unless it queued behind others.
  EXPECT_LE(s.items_sent, items);
  EXPECT_GE(s.items_sent, items - 4);
  EXPECT_EQ(s.bytes_sent, want.size());
  EXPECT_EQ(s.queued_bytes, 0u);
  EXPECT_GE(s.sends, 1u);
  EXPECT_LE(s.sends, s.items);  // batched traffic: never more sends than messages
  EXPECT_GE(s.max_items_per_send, 2u);
  if (GetParam() == Backend::IoUring) {
    EXPECT_GT(s.uring_sends, 0u);
  } else {
    EXPECT_EQ(s.uring_sends, 0u);
  }

  // Closing flushes, half-closes and closes keel's fd: the peer sees EOF.
  KEEL_ASSERT_OK(w.close());
  EXPECT_FALSE(w);
  EXPECT_TRUE(sees_eof(pair.peer.get()));
  // keel drains the peer's input to EOF before it closes its fd, and
  // Net::close() waits for that (up to close_timeout): close the peer first.
  pair.peer.reset();
  KEEL_ASSERT_OK(net.close());
}

// The counters: a lone send is one immediate send (R1); `more` makes no
// syscall; the flush carries the whole run in one send; a batch of 50 is
// one send.
TEST_P(WriterBackend, StatsCountSendsAndBatches) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open(net));
  if (IsSkipped()) return;
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  Writer w;
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w));
  auto id = w.id();
  KEEL_ASSERT_OK(id);
  EXPECT_GT(*id, 0u);

  KEEL_ASSERT_OK(w.send("PING"));
  auto s = w.stats();
  KEEL_ASSERT_OK(s);
  EXPECT_EQ(s->sends, 1u);
  EXPECT_EQ(s->immediate_sends, 1u);
  EXPECT_EQ(s->items, 1u);
  EXPECT_EQ(read_n(pair.peer.get(), 4), "PING");

  for (int i = 0; i < 10; ++i) KEEL_ASSERT_OK(w.send("0123456789", true));
  s = w.stats();
  KEEL_ASSERT_OK(s);
  EXPECT_EQ(s->items, 11u);
  EXPECT_EQ(s->sends, 1u) << "`more` must not send";
  EXPECT_EQ(s->queued_bytes, 100u);
  KEEL_ASSERT_OK(w.flush());
  std::string run;
  for (int i = 0; i < 10; ++i) run += "0123456789";
  EXPECT_EQ(read_n(pair.peer.get(), 100), run);
  auto after = stats_when(w, [](const WriterStats& st) { return st.bytes_sent == 104; });
  EXPECT_EQ(after.items_sent, 11u);
  EXPECT_EQ(after.sends, 2u) << "the run of 10 leaves in one send";
  EXPECT_EQ(after.max_items_per_send, 10u);
  EXPECT_GE(after.batched_passes, 1u);
  EXPECT_GE(after.flush_idle, 1u);
  EXPECT_DOUBLE_EQ(after.items_per_send(), 5.5);

  std::vector<std::string> batch(50, "m");
  KEEL_ASSERT_OK(w.send_batch(batch));
  EXPECT_EQ(read_n(pair.peer.get(), 50), std::string(50, 'm'));
  after = stats_when(w, [](const WriterStats& st) { return st.bytes_sent == 154; });
  EXPECT_EQ(after.items, 61u);
  EXPECT_EQ(after.items_sent, 61u);
  EXPECT_EQ(after.sends, 3u) << "a batch of 50 (< quota) is one send";
  EXPECT_EQ(after.max_items_per_send, 50u);
  EXPECT_EQ(after.bytes_sent, 154u);
  EXPECT_LE(after.sends, after.items);
}

// Fan-out: three subscribers each receive every published byte, in order;
// the drain points bound the sends; unsubscribe and close give EOF.
TEST_P(WriterBackend, PublisherFansOutToThreeSubscribers) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open(net));
  if (IsSkipped()) return;
  auto created = Publisher::create(net);
  KEEL_ASSERT_OK(created);
  Publisher pub = std::move(created).value();

  TcpPair pairs[3];
  uint64_t ids[3] = {};
  for (int k = 0; k < 3; ++k) {
    ASSERT_NO_FATAL_FAILURE(tcp_pair(pairs[k]));
    auto id = pub.subscribe(pairs[k].keel_side.get());
    KEEL_ASSERT_OK(id);
    (void)pairs[k].keel_side.release();
    ids[k] = *id;
  }
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_NE(ids[1], ids[2]);

  constexpr size_t kMessages = 300;
  constexpr size_t kEvery = 10;  // a drain point every 10 messages
  std::string want;
  for (size_t i = 0; i < kMessages; ++i) want += message(i);
  std::string got[3];
  std::vector<JoiningThread> readers;
  for (int k = 0; k < 3; ++k) {
    readers.emplace_back([&, k] { got[k] = read_n(pairs[k].peer.get(), want.size()); });
  }
  for (size_t i = 0; i < kMessages; ++i) {
    const bool flush = i % kEvery == kEvery - 1;
    KEEL_ASSERT_OK(pub.publish(message(i), flush));
  }
  KEEL_ASSERT_OK(pub.flush());
  for (auto& t : readers) t.join();
  for (int k = 0; k < 3; ++k) {
    ASSERT_EQ(got[k].size(), want.size()) << "subscriber " << k;
    EXPECT_TRUE(got[k] == want) << "subscriber " << k << " got other bytes";
  }

  for (int k = 0; k < 3; ++k) {
    WriterStats s;
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    for (;;) {
      auto r = pub.subscriber_stats(ids[k]);
      KEEL_ASSERT_OK(r);
      s = *r;
      if (s.bytes_sent >= want.size() || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(1ms);
    }
    EXPECT_EQ(s.items, kMessages);
    EXPECT_EQ(s.items_sent, kMessages);
    EXPECT_EQ(s.bytes_sent, want.size());
    EXPECT_LE(s.sends, s.items);
  }
  auto ps = pub.stats();  // settled: every subscriber's counters are final now
  KEEL_ASSERT_OK(ps);
  EXPECT_EQ(ps->published, kMessages);
  EXPECT_EQ(ps->subscribers, 3u);
  EXPECT_EQ(ps->cut_off, 0u);
  EXPECT_EQ(ps->flushes, kMessages / kEvery + 1);
  EXPECT_EQ(ps->items_sent, 3 * kMessages);
  EXPECT_EQ(ps->bytes_sent, 3 * want.size());
  EXPECT_LE(ps->sends, ps->items_sent);

  expect_error(pub.unsubscribe(ids[0] + ids[1] + ids[2] + 1000), Status::NotFound);
  expect_error(pub.subscriber_stats(987654321), Status::NotFound);
  KEEL_ASSERT_OK(pub.unsubscribe(ids[0]));
  EXPECT_TRUE(sees_eof(pairs[0].peer.get()));
  expect_error(pub.unsubscribe(ids[0]), Status::NotFound);
  KEEL_ASSERT_OK(pub.close());
  EXPECT_FALSE(pub);
  EXPECT_TRUE(sees_eof(pairs[1].peer.get()));
  EXPECT_TRUE(sees_eof(pairs[2].peer.get()));
  for (auto& p : pairs) p.peer.reset();  // lets the lingering closes end before the net's
}

// The peer resets (SO_LINGER 0 close) mid-stream: the handler runs exactly
// once, on the reactor thread, with Status::Io and this writer's id; the
// send that meets the error returns Io (or Closed once keel noticed
// first) and later sends Closed. Closing the net from the handler is
// Status::Busy and leaves the net open.
TEST_P(WriterBackend, PeerResetFiresTheHandlerOnce) {
  Events events;
  Net net;
  ASSERT_NO_FATAL_FAILURE(open(net, &events));
  if (IsSkipped()) return;
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  Writer w;
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w));
  const uint64_t id = w.id().value();

  KEEL_ASSERT_OK(w.send("hello"));
  EXPECT_EQ(read_n(pair.peer.get(), 5), "hello");
  linger lg{};
  lg.l_onoff = 1;
  lg.l_linger = 0;
  ASSERT_EQ(::setsockopt(pair.peer.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  pair.peer.reset();  // RST

  const std::string chunk(8192, 'x');
  keel::Result<void> sent;
  for (int i = 0; i < 5000 && sent.ok(); ++i) {
    sent = w.send(chunk);
    if (sent.ok()) std::this_thread::sleep_for(1ms);
  }
  ASSERT_FALSE(sent.ok()) << "sends kept succeeding after the reset";
  EXPECT_TRUE(sent.err().code() == Status::Io || sent.err().code() == Status::Closed) << sent.err().to_string();

  ASSERT_TRUE(events.wait_for(1)) << "no event after the reset";
  expect_error(w.send("after"), Status::Closed);
  std::this_thread::sleep_for(50ms);  // a second report would arrive meanwhile
  const auto seen = events.snapshot();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].conn_id, id);
  EXPECT_EQ(seen[0].status, Status::Io);
  EXPECT_FALSE(seen[0].message.empty());
  EXPECT_NE(seen[0].thread, std::this_thread::get_id()) << "the handler must run on the reactor thread";
  auto s = w.stats();  // counters stay readable on a connection keel closed
  KEEL_ASSERT_OK(s);
  EXPECT_GE(s->items, 1u);  // 1: keel may see the reset on the idle socket before a send
  EXPECT_GE(s->bytes_sent, 5u);
  KEEL_ASSERT_OK(w.close());
  KEEL_ASSERT_OK(net.close());
  EXPECT_EQ(events.snapshot().size(), 1u);
}

// The handler may close the writer it reports but not its own net (Busy;
// the net stays usable).
TEST_P(WriterBackend, HandlerMayCloseTheWriterButNotTheNet) {
  std::mutex mu;
  std::condition_variable cv;
  Writer w;
  Net net, other;  // nor another net: its close would wait for a reactor
  bool done = false;
  keel::Result<void> writer_close = keel::Error(Status::Timeout, "not run");
  keel::Result<void> net_close = keel::Error(Status::Timeout, "not run");
  keel::Result<void> other_close = keel::Error(Status::Timeout, "not run");
  NetOptions opts;
  opts.backend(GetParam()).on_event([&](uint64_t, Status, std::string_view) {
    std::lock_guard<std::mutex> lock(mu);
    writer_close = w.close();
    net_close = net.close();
    other_close = other.close();
    done = true;
    cv.notify_all();
  });
  ASSERT_NO_FATAL_FAILURE(open_net(opts, net));
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions(), other));
  if (GetParam() == Backend::IoUring && net.backend().value() != Backend::IoUring) {
    GTEST_SKIP() << "io_uring unavailable here";
  }
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  {
    std::lock_guard<std::mutex> lock(mu);  // the handler touches w only after this
    ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w));
  }
  // The peer never reads: fill its socket until keel queues, then reset,
  // so the reactor (not this thread) finds the error.
  const std::string chunk(65536, 'y');
  keel_writer_t* raw = w.raw();
  for (int i = 0; i < 512; ++i) {
    // Through the C handle: the Writer object belongs to the handler from
    // the reset on, and this loop ends before it.
    ASSERT_EQ(keel_writer_send(raw, reinterpret_cast<const uint8_t*>(chunk.data()), chunk.size(), 0, nullptr),
              KEEL_STATUS_OK);
    keel_writer_stats_t s{};
    s.struct_size = sizeof s;
    ASSERT_EQ(keel_writer_stats(raw, &s), KEEL_STATUS_OK);
    if (s.queued_bytes > 0) break;
  }
  linger lg{};
  lg.l_onoff = 1;
  lg.l_linger = 0;
  ASSERT_EQ(::setsockopt(pair.peer.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  pair.peer.reset();
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 5s, [&] { return done; })) << "no event after the reset";
    KEEL_ASSERT_OK(writer_close);
    EXPECT_FALSE(w);
    expect_error(net_close, Status::Busy);
    expect_error(other_close, Status::Busy);
  }
  EXPECT_TRUE(net) << "a Busy close must leave the net open";
  EXPECT_TRUE(other) << "a Busy close must leave the net open";
  KEEL_ASSERT_OK(net.backend());
  KEEL_ASSERT_OK(net.close());
  EXPECT_FALSE(net);
  KEEL_ASSERT_OK(other.close());
}

INSTANTIATE_TEST_SUITE_P(Backends, WriterBackend, ::testing::Values(Backend::Sendmsg, Backend::IoUring), backend_name);

// The handler's heap state is released exactly once: when the net closes,
// when open fails early (a bad backend) and when the destructor closes it.
TEST(Net, HandlerStateIsReleasedOnCloseAndOnFailedOpen) {
  auto token = std::make_shared<int>(0);
  {
    NetOptions opts;
    opts.on_event([token](uint64_t, Status, std::string_view) {});
    EXPECT_EQ(token.use_count(), 2);
    Net net;
    ASSERT_NO_FATAL_FAILURE(open_net(opts, net));
    EXPECT_EQ(token.use_count(), 3);  // opts + the net's copy
    KEEL_ASSERT_OK(net.close());
    EXPECT_EQ(token.use_count(), 2);
    KEEL_ASSERT_OK(net.close());  // closing an empty net is fine

    opts.backend(static_cast<Backend>(7));
    expect_error(Net::open(opts), Status::InvalidArgument);
    EXPECT_EQ(token.use_count(), 2);

    opts.backend(Backend::Default);
    auto r = Net::open(opts);
    KEEL_ASSERT_OK(r);
    EXPECT_EQ(token.use_count(), 3);
  }  // the Result's Net is destroyed: its destructor closes it
  EXPECT_EQ(token.use_count(), 1);

  // raw() struct_size too small: rejected before keel looks at the callback.
  NetOptions bad;
  bad.on_event([token](uint64_t, Status, std::string_view) {});
  bad.raw().struct_size = 4;
  expect_error(Net::open(bad), Status::InvalidArgument);
  EXPECT_EQ(token.use_count(), 2);
}

namespace {
// The body of the death test below, in its own process: what the misuse
// leaks stays there. Exits 0 once the handler destroyed its own Net, 2
// when the set-up failed or nothing happened in time.
[[noreturn]] void destroy_net_in_its_own_handler() {
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Net> net;
    bool destroyed = false;
  } slot;
  auto opened = Net::open(NetOptions().on_event([&slot](uint64_t, Status, std::string_view) {
    std::lock_guard<std::mutex> lock(slot.mu);
    slot.net.reset();  // the misuse: the net's reactor thread is running this very handler
    slot.destroyed = true;
    slot.cv.notify_all();
  }));
  if (!opened.ok()) child_fail("open failed");
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) child_fail("socketpair failed");
  Fd keel_side(fds[0]), peer(fds[1]);
  auto w = Writer::adopt(*opened, keel_side.get());
  if (!w.ok()) child_fail("adopt failed");
  (void)keel_side.release();  // keel's now
  {
    std::lock_guard<std::mutex> lock(slot.mu);
    slot.net.emplace(std::move(opened).value());
  }
  peer.reset();
  (void)w->send("x");  // fails (the peer is gone): the connection is closed and reported to the handler
  std::unique_lock<std::mutex> lock(slot.mu);
  // The bound only turns a hang into a failure.
  if (!slot.cv.wait_for(lock, 60s, [&] { return slot.destroyed; })) child_fail("no event");
  std::_Exit(0);
}
}  // namespace

// A Net destroyed in its own event handler (forbidden: keel cannot close a
// net from an event handler, and answers BUSY) is left open, leaked with
// its reactor thread; the destructor used to leak it silently, and now
// says so on stderr.
TEST(NetDeathTest, DestroyedInItsOwnHandlerLeaksAndSaysSo) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(destroy_net_in_its_own_handler(), ::testing::ExitedWithCode(0),
              "keel::Net destroyed in a net's event handler");
}

TEST(Net, DefaultsAndBackendNames) {
  NetOptions opts;
  EXPECT_EQ(opts.backend(), Backend::Default);
  EXPECT_FALSE(opts.on_event());
  // The whole struct this header declares, so a field set through raw() is read.
  EXPECT_EQ(opts.raw().struct_size, sizeof(keel_net_options_t));
  EXPECT_EQ(WriterOptions().raw().struct_size, sizeof(keel_writer_options_t));
  Net net;
  ASSERT_NO_FATAL_FAILURE(open_net(opts, net));
  auto b = net.backend();
  KEEL_ASSERT_OK(b);
  EXPECT_EQ(*b, Backend::Sendmsg);  // the documented default
  EXPECT_STREQ(keel::to_string(Backend::IoUring), "io_uring");
  EXPECT_STREQ(keel::to_string(Backend::Sendmsg), "sendmsg");

  WriterOptions wo;
  EXPECT_EQ(wo.quota(), 100u);
  EXPECT_EQ(wo.max_batch_bytes(), 65536u);
  EXPECT_EQ(wo.copy_threshold(), 4096u);
  EXPECT_EQ(wo.iov_max(), 1024u);
  EXPECT_EQ(wo.close_timeout(), 2000ms);
  EXPECT_EQ(wo.soft_cap_time(), 60000ms);
  wo.quota(7).max_batch_bytes(1000).soft_cap_time(-5ms).close_timeout(std::chrono::hours(24 * 365 * 100));
  EXPECT_EQ(wo.quota(), 7u);
  EXPECT_EQ(wo.raw().max_batch_bytes, 1000u);
  EXPECT_EQ(wo.raw().soft_cap_ms, UINT32_MAX);       // negative: clamped, then rejected by keel
  EXPECT_EQ(wo.raw().close_timeout_ms, UINT32_MAX);  // too long: likewise
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  expect_error(Writer::adopt(net, pair.keel_side.get(), wo), Status::InvalidArgument);
  // Each alone is refused: a negative time never becomes a valid 0.
  expect_error(Writer::adopt(net, pair.keel_side.get(), WriterOptions().soft_cap_time(-5ms)), Status::InvalidArgument);
  expect_error(Writer::adopt(net, pair.keel_side.get(), WriterOptions().close_timeout(-5ms)), Status::InvalidArgument);
}

// fallback(): nothing fell back for a sendmsg net; a net that asked for
// io_uring either runs it or says why not (c-tests/test_net.c forces a
// fallback with a seccomp filter in a child process).
TEST(Net, FallbackSaysWhyIoUringIsNotUsed) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions().backend(Backend::Sendmsg), net));
  auto none = net.fallback();
  KEEL_ASSERT_OK(none);
  EXPECT_EQ(none->code, uint32_t{KEEL_NET_FALLBACK_NONE});
  EXPECT_EQ(none->message, "");
  Net uring;
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions().backend(Backend::IoUring), uring));
  auto why = uring.fallback();
  KEEL_ASSERT_OK(why);
  if (uring.backend().value() == Backend::IoUring) {
    EXPECT_EQ(why->code, uint32_t{KEEL_NET_FALLBACK_NONE});
    EXPECT_EQ(why->message, "");
  } else {
    EXPECT_NE(why->code, uint32_t{KEEL_NET_FALLBACK_NONE});
    EXPECT_FALSE(why->message.empty());
  }
  expect_error(Net().fallback(), Status::Closed);
}

// Bad fds and options are refused and the fd stays the caller's; empty
// batches, calls after the net closed and on moved-from or closed objects
// give a status, never a crash.
// Messages made on the fly (each a temporary) are packed while each lives:
// the peer gets every message's own bytes (the second packing pass once
// copied from freed memory).
TEST(Writer, BatchOfGeneratedMessagesArrivesByteExact) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions(), net));
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  Writer w;
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w));
  std::string want;
  for (const std::string& m : GeneratedStrings("message", 4)) want += m;
  KEEL_ASSERT_OK(w.send_batch(GeneratedStrings("message", 4)));
  EXPECT_TRUE(read_n(pair.peer.get(), want.size()) == want) << "the bytes differ from what was sent";
}

TEST(WriterMisuse, BadFdsOptionsAndClosedOrEmptyObjects) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions(), net));

  expect_error(Writer::adopt(net, -1), Status::InvalidArgument);
  expect_error(Writer::adopt(net, 100000), Status::InvalidArgument);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  Fd pr(p[0]), pw(p[1]);
  expect_error(Writer::adopt(net, pw.get()), Status::InvalidArgument);
  EXPECT_EQ(::write(pw.get(), "x", 1), 1) << "keel must not have closed a refused fd";
  Fd unconnected(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  expect_error(Writer::adopt(net, unconnected.get()), Status::InvalidArgument);

  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  expect_error(Writer::adopt(net, pair.keel_side.get(), WriterOptions().quota(0)), Status::InvalidArgument);
  expect_error(Writer::adopt(net, pair.keel_side.get(), WriterOptions().iov_max(1025)), Status::InvalidArgument);
  expect_error(Publisher::create(net, WriterOptions().soft_cap_bytes(10).hard_cap_bytes(5)), Status::InvalidArgument);

  Writer w;
  // A short close_timeout: the net closes below while the peer is open.
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w, WriterOptions().close_timeout(100ms)));
  expect_error(w.send_batch(std::vector<std::string>{}), Status::InvalidArgument);
  const size_t lens[2] = {1, 1};
  expect_error(w.send_packed(keel::ByteView(), lens, 2), Status::NullArgument);
  const size_t empty[2] = {0, 0};  // a null C string is refused even when nothing is sent
  expect_error(w.send_packed(static_cast<const char*>(nullptr), empty, 2), Status::NullArgument);
  KEEL_ASSERT_OK(w.send_batch({"", ""}));  // two empty messages: nothing to copy, still fine

  // Moved from: the source is empty and answers Closed; the target works.
  Writer moved(std::move(w));
  EXPECT_FALSE(w);  // NOLINT(bugprone-use-after-move): that is the point
  EXPECT_EQ(w.raw(), nullptr);
  expect_error(w.send("x"), Status::Closed);
  expect_error(w.send_batch({"a"}), Status::Closed);
  expect_error(w.flush(), Status::Closed);
  expect_error(w.stats(), Status::Closed);
  expect_error(w.id(), Status::Closed);
  KEEL_ASSERT_OK(w.close());
  KEEL_ASSERT_OK(moved.send("x"));
  EXPECT_EQ(read_n(pair.peer.get(), 1), "x");

  auto created = Publisher::create(net);
  KEEL_ASSERT_OK(created);
  Publisher pub = std::move(created).value();
  expect_error(pub.subscribe(-1), Status::InvalidArgument);
  Publisher pub2;
  pub2 = std::move(pub);
  EXPECT_FALSE(pub);  // NOLINT(bugprone-use-after-move)
  expect_error(pub.publish("x"), Status::Closed);
  expect_error(pub.flush(), Status::Closed);
  expect_error(pub.subscribe(0), Status::Closed);
  expect_error(pub.unsubscribe(1), Status::Closed);
  expect_error(pub.stats(), Status::Closed);
  expect_error(pub.subscriber_stats(1), Status::Closed);
  KEEL_ASSERT_OK(pub.close());
  KEEL_ASSERT_OK(pub2.publish("to nobody", true));

  // A moved-from or empty Net: no calls, no adoption.
  Net other(std::move(net));
  EXPECT_FALSE(net);  // NOLINT(bugprone-use-after-move)
  expect_error(net.backend(), Status::Closed);
  expect_error(Writer::adopt(net, 0), Status::Closed);
  expect_error(Publisher::create(net), Status::Closed);
  KEEL_ASSERT_OK(net.close());

  // After the net closed, writers and publishers answer Closed and still close.
  KEEL_ASSERT_OK(other.close());
  EXPECT_FALSE(other);
  expect_error(moved.send("late"), Status::Closed);
  expect_error(pub2.publish("late"), Status::Closed);
  EXPECT_TRUE(sees_eof(pair.peer.get())) << "closing the net closes its writers' sockets";
  KEEL_ASSERT_OK(moved.close());
  KEEL_ASSERT_OK(pub2.close());
}

// release() hands the C handle over; the wrapper can take it back.
TEST(WriterMisuse, ReleaseAndAdoptRawHandles) {
  Net net;
  ASSERT_NO_FATAL_FAILURE(open_net(NetOptions(), net));
  TcpPair pair;
  ASSERT_NO_FATAL_FAILURE(tcp_pair(pair));
  Writer w;
  ASSERT_NO_FATAL_FAILURE(adopt(net, pair.keel_side, w, WriterOptions().close_timeout(100ms)));
  keel_writer_t* raw = w.release();
  ASSERT_NE(raw, nullptr);
  EXPECT_FALSE(w);
  ASSERT_EQ(keel_writer_send(raw, reinterpret_cast<const uint8_t*>("r"), 1, 0, nullptr), KEEL_STATUS_OK);
  Writer back(raw);
  KEEL_ASSERT_OK(back.send("s"));
  EXPECT_EQ(read_n(pair.peer.get(), 2), "rs");
  keel_net_t* raw_net = net.release();
  EXPECT_FALSE(net);
  Net net_back(raw_net);
  KEEL_ASSERT_OK(net_back.backend());
}
