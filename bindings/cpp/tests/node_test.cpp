// The node transport through keel.hpp (keel::NodeOptions, keel::Node) over
// real loopback sockets: two nodes sharing a secret connect and each sees
// the other ready through its event handler; a wrong secret is refused
// (Status::Refused) and counted on both sides; options are checked; empty,
// moved-from and released nodes; the handler's heap state is freed once,
// never while the node's threads may call it, and close() refuses to run
// inside it. Waits are on the handler (a condition variable), never on time.
#include "test_util.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

using keel::Node;
using keel::NodeOptions;
using keel::NodeStats;
using keel::Status;
using namespace std::chrono_literals;

static_assert(!std::is_copy_constructible_v<Node> && !std::is_copy_assignable_v<Node>);
static_assert(std::is_nothrow_move_constructible_v<Node> && std::is_nothrow_move_assignable_v<Node>);
static_assert(std::is_copy_constructible_v<NodeOptions>);

namespace {

const std::string kSecret = "cluster secret 0123456789";
const std::string kWrong = "not the cluster secret 42";

// What a node's event handler saw.
struct NodeEvent {
  uint64_t peer;
  Status status;
  std::string message;
  std::thread::id thread;
};

// Collects handler calls; must outlive the Node whose handler it made.
class Events {
 public:
  keel::NodeEventHandler handler() {
    return [this](uint64_t peer, Status st, std::string_view msg) {
      std::lock_guard<std::mutex> lock(mu_);
      events_.push_back(NodeEvent{peer, st, std::string(msg), std::this_thread::get_id()});
      cv_.notify_all();
    };
  }
  // Blocks until an event with `status` (from `peer`, unless 0) arrived
  // and returns it. The bound only turns a hang into a failure; no
  // assertion depends on how long it takes.
  NodeEvent wait_for(Status status, uint64_t peer = 0) {
    std::unique_lock<std::mutex> lock(mu_);
    NodeEvent found{0, Status::Ok, "", {}};
    const bool seen = cv_.wait_for(lock, 60s, [&] {
      for (const auto& e : events_) {
        if (e.status == status && (peer == 0 || e.peer == peer)) {
          found = e;
          return true;
        }
      }
      return false;
    });
    EXPECT_TRUE(seen) << "no " << keel::to_string(status) << " event from peer " << peer;
    return found;
  }
  size_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<NodeEvent> events_;
};

template <class R>
void expect_error(const R& r, Status code) {
  ASSERT_FALSE(r.ok()) << "expected " << keel::to_string(code);
  EXPECT_EQ(r.err().code(), code) << r.err().to_string();
  EXPECT_FALSE(r.err().message().empty());
}

NodeOptions options(uint64_t id, const std::string& secret, Events* events) {
  NodeOptions o;
  o.node_id(id).listen_addr("127.0.0.1:0").secret(secret).handshake_timeout(2000ms).close_timeout(1000ms);
  if (events) o.on_event(events->handler());
  return o;
}

void open_node(const keel::Engine& engine, const NodeOptions& opts, Node& out) {
  auto r = Node::open(engine, opts);
  ASSERT_TRUE(r.ok()) << "Node::open: " << r.err().to_string();
  out = std::move(r).value();
}

// The node's address, checked to be loopback with a picked (non-zero) port.
void addr_of(const Node& node, std::string& out) {
  auto a = node.addr();
  KEEL_ASSERT_OK(a);
  out = *a;
  ASSERT_EQ(out.rfind("127.0.0.1:", 0), 0u) << out;
  const unsigned long port = std::stoul(out.substr(out.find(':') + 1));
  EXPECT_GT(port, 0u) << out;
  EXPECT_LE(port, 65535u) << out;
}

NodeStats stats_of(const Node& node) {
  auto s = node.stats();
  EXPECT_TRUE(s.ok()) << s.err().to_string();
  return s.ok() ? *s : NodeStats{};
}

class NodeTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), keel::EngineOptions(), engine)); }
  TempDir tmp;
  keel::Engine engine;
};

}  // namespace

TEST_F(NodeTest, TwoNodesWithASecretConnectAndSeeEachOther) {
  Events ea, eb;  // declared before the nodes: they outlive them
  Node a, b;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(1, kSecret, &ea), a));
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(2, kSecret, &eb), b));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));

  KEEL_ASSERT_OK(b.connect(1, addr));
  NodeStats s = stats_of(b);
  EXPECT_EQ(s.peers, 1u);
  EXPECT_EQ(s.dialed, 1u);
  EXPECT_EQ(s.handshakes, 1u);
  EXPECT_FALSE(eb.wait_for(Status::Ok, 1).message.empty());
  const NodeEvent ready = ea.wait_for(Status::Ok, 2);  // the acceptor's side of the handshake
  EXPECT_NE(ready.thread, std::this_thread::get_id()) << "the acceptor's event runs on a keel thread";
  s = stats_of(a);
  EXPECT_EQ(s.accepted, 1u);
  EXPECT_EQ(s.handshakes, 1u);
  EXPECT_EQ(s.peers, 1u);
  auto none = a.last_error();
  KEEL_ASSERT_OK(none);
  EXPECT_EQ(*none, "");

  auto fin = b.close();
  KEEL_ASSERT_OK(fin);
  EXPECT_FALSE(b);
  EXPECT_EQ(fin->closed_by_shutdown, 1u);
  EXPECT_EQ(fin->cancelled_frames, 0u);
  EXPECT_EQ(fin->handshakes, 1u);
  ea.wait_for(Status::Closed, 2);  // a sees b go
  const size_t seen_by_b = eb.count();
  auto fa = a.close();
  KEEL_ASSERT_OK(fa);
  EXPECT_EQ(fa->closed_by_peer, 1u);
  EXPECT_EQ(fa->peers, 0u);
  EXPECT_EQ(eb.count(), seen_by_b) << "no handler call after close() returned";
}

TEST_F(NodeTest, AWrongSecretIsRefusedAndCounted) {
  Events ea, ec;
  Node a, c;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(1, kSecret, &ea), a));
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(3, kWrong, &ec), c));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));

  auto refused = c.connect(1, addr);
  expect_error(refused, Status::Refused);
  EXPECT_NE(refused.err().message().find("MAC"), std::string::npos) << refused.err().message();
  NodeStats s = stats_of(c);
  EXPECT_EQ(s.refused_bad_mac, 1u);
  EXPECT_EQ(s.peers, 0u);
  EXPECT_EQ(s.handshakes, 0u);
  // Longer than the first buffer last_error() tries (64 bytes): the
  // BUFFER_TOO_SMALL retry returns the whole text.
  auto text = c.last_error();
  KEEL_ASSERT_OK(text);
  EXPECT_NE(text->find("MAC"), std::string::npos) << *text;
  EXPECT_GT(text->size(), 64u) << *text;
  EXPECT_EQ(text->find('\0'), std::string::npos);
  ec.wait_for(Status::Refused);

  const NodeEvent ev = ea.wait_for(Status::Refused);  // the acceptor refused c as well
  EXPECT_NE(ev.message.find("MAC"), std::string::npos) << ev.message;
  s = stats_of(a);
  EXPECT_EQ(s.refused_bad_mac, 1u);
  EXPECT_EQ(s.handshakes, 0u);
  EXPECT_EQ(s.peers, 0u);

  // Mid-rotation the two agree: a2 sends with kSecret and accepts kWrong
  // too, c2 sends with kWrong and accepts kSecret too (secret2 reaches keel).
  Node a2, c2;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(4, kSecret, nullptr).secret2(kWrong), a2));
  ASSERT_NO_FATAL_FAILURE(open_node(engine, options(5, kWrong, nullptr).secret2(kSecret), c2));
  std::string addr2;
  ASSERT_NO_FATAL_FAILURE(addr_of(a2, addr2));
  KEEL_ASSERT_OK(c2.connect(4, addr2));
  EXPECT_EQ(stats_of(c2).handshakes, 1u);
  KEEL_ASSERT_OK(c2.close());
  KEEL_ASSERT_OK(c.close());
  KEEL_ASSERT_OK(a2.close());
  KEEL_ASSERT_OK(a.close());
}

TEST(NodeOptionsTest, DefaultsAndSetters) {
  NodeOptions o;
  EXPECT_EQ(o.raw().struct_size, sizeof(keel_node_options_t));
  EXPECT_EQ(o.node_id(), 0u);
  EXPECT_EQ(o.listen_addr(), "");
  EXPECT_TRUE(o.secret().empty());
  EXPECT_TRUE(o.secret2().empty());
  EXPECT_FALSE(o.allow_remote_without_secret());
  EXPECT_EQ(o.max_frame_bytes(), 16u << 20);
  EXPECT_EQ(o.handshake_timeout(), 5000ms);
  EXPECT_EQ(o.conn_memory_bytes(), uint64_t{64} << 20);
  EXPECT_EQ(o.heartbeat_interval(), 1000ms);
  EXPECT_EQ(o.heartbeat_misses(), 5u);
  EXPECT_EQ(o.close_timeout(), 2000ms);
  EXPECT_EQ(o.max_concurrent_transfers(), 4u);
  EXPECT_EQ(o.transfer_bandwidth_bytes_per_sec(), 0u);
  EXPECT_EQ(o.max_handshakes(), 0u);  // the library's default (64)
  EXPECT_FALSE(o.on_event());

  std::string secret = "a secret of some length";
  o.node_id(9).listen_addr("127.0.0.1:0").secret(secret).secret2(std::vector<uint8_t>(16, 7));
  o.allow_remote_without_secret(true).max_frame_bytes(8192).handshake_timeout(-3ms);
  o.conn_memory_bytes(1 << 20).heartbeat_interval(std::chrono::hours(24 * 365 * 100)).heartbeat_misses(2);
  o.close_timeout(0ms).max_concurrent_transfers(8).transfer_bandwidth_bytes_per_sec(1000).max_handshakes(3);
  secret.assign(secret.size(), 'x');  // the options hold their own copy
  EXPECT_EQ(o.node_id(), 9u);
  EXPECT_EQ(o.listen_addr(), "127.0.0.1:0");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(o.secret().data()), o.secret().size()),
            "a secret of some length");
  EXPECT_EQ(o.secret2().size(), 16u);
  EXPECT_TRUE(o.allow_remote_without_secret());
  EXPECT_EQ(o.max_frame_bytes(), 8192u);
  EXPECT_EQ(o.raw().handshake_timeout_ms, UINT32_MAX);   // negative: clamped, then rejected by keel
  EXPECT_EQ(o.raw().heartbeat_interval_ms, UINT32_MAX);  // likewise
  EXPECT_EQ(o.heartbeat_misses(), 2u);
  EXPECT_EQ(o.close_timeout(), 0ms);
  EXPECT_EQ(o.max_concurrent_transfers(), 8u);
  EXPECT_EQ(o.transfer_bandwidth_bytes_per_sec(), 1000u);
  EXPECT_EQ(o.max_handshakes(), 3u);
  // The setters never point the raw struct at their copies: open() does,
  // on its own copy, so copies of the options never dangle.
  EXPECT_EQ(o.raw().secret, nullptr);
  EXPECT_EQ(o.raw().listen_addr, nullptr);
}

TEST_F(NodeTest, OptionsAreValidatedByOpen) {
  expect_error(Node::open(engine, NodeOptions()), Status::InvalidArgument);  // node_id 0
  const NodeOptions good = NodeOptions().node_id(5);
  expect_error(Node::open(engine, NodeOptions(good).secret("short")), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).secret(std::string(1025, 's'))), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).secret2(kSecret)), Status::InvalidArgument);  // without secret
  expect_error(Node::open(engine, NodeOptions(good).secret(static_cast<const char*>(nullptr))), Status::NullArgument);
  // A null secret replaced by a valid one is forgotten (each field keeps
  // its own), while a null secret2 is still reported.
  {
    NodeOptions replaced = NodeOptions(good).listen_addr("127.0.0.1:0");
    replaced.secret(static_cast<const char*>(nullptr)).secret(kSecret);
    auto n = Node::open(engine, replaced);
    ASSERT_TRUE(n.ok()) << n.err().to_string();
    KEEL_ASSERT_OK(n->close());
    replaced.secret2(static_cast<const char*>(nullptr));
    expect_error(Node::open(engine, replaced), Status::NullArgument);
  }
  expect_error(Node::open(engine, NodeOptions(good).max_frame_bytes(100)), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).heartbeat_misses(0)), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).handshake_timeout(0ms)), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).close_timeout(std::chrono::hours(1))), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).close_timeout(-5ms)), Status::InvalidArgument);  // not 0
  expect_error(Node::open(engine, NodeOptions(good).listen_addr("not an address")), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).max_concurrent_transfers(0)), Status::InvalidArgument);
  expect_error(Node::open(engine, NodeOptions(good).listen_addr(std::string("127.0.0.1:0\0x", 13))),
               Status::InvalidArgument);
  // TEST-NET-1: a valid address no local interface has (no DNS involved).
  auto unbindable = Node::open(engine, NodeOptions(good).listen_addr("192.0.2.1:0"));
  ASSERT_FALSE(unbindable.ok());
  EXPECT_EQ(unbindable.err().code(), Status::Io) << unbindable.err().to_string();
  NodeOptions small = good;
  small.raw().struct_size = 8;
  expect_error(Node::open(engine, small), Status::InvalidArgument);
  expect_error(Node::open(keel::Engine(), good), Status::Closed);

  Node node;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, good, node));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(node, addr));
  expect_error(node.connect(5, addr), Status::InvalidArgument);  // its own id
  expect_error(node.connect(0, addr), Status::InvalidArgument);
  expect_error(node.connect(2, std::string("127.0.0.1:1\0", 12)), Status::InvalidArgument);
  expect_error(node.connect(2, "not an address"), Status::InvalidArgument);
  auto fin = node.close();
  KEEL_ASSERT_OK(fin);
  EXPECT_EQ(fin->accepted, 0u);
}

// Empty, moved-from and closed Nodes answer Status::Closed; a move assigned
// over a live Node closes it; release() hands the C handle over.
TEST_F(NodeTest, EmptyMovedAndReleasedNodes) {
  Node empty;
  EXPECT_FALSE(empty);
  EXPECT_EQ(empty.raw(), nullptr);
  expect_error(empty.addr(), Status::Closed);
  expect_error(empty.connect(1, "127.0.0.1:1"), Status::Closed);
  expect_error(empty.stats(), Status::Closed);
  expect_error(empty.last_error(), Status::Closed);
  expect_error(empty.close(), Status::Closed);

  Node a;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(1), a));
  keel_node_t* handle = a.raw();
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));
  Node b(std::move(a));
  EXPECT_FALSE(a);  // NOLINT(bugprone-use-after-move): that is the point
  expect_error(a.addr(), Status::Closed);
  expect_error(a.stats(), Status::Closed);
  EXPECT_EQ(b.raw(), handle);
  EXPECT_EQ(b.addr().value(), addr);

  // A move assigned over a Node closes the node it held, then frees its handler.
  auto token = std::make_shared<int>(0);
  Node held;
  ASSERT_NO_FATAL_FAILURE(
      open_node(engine, NodeOptions().node_id(4).on_event([token](uint64_t, Status, std::string_view) {}), held));
  EXPECT_EQ(token.use_count(), 2);
  Node other;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(2), other));
  held = std::move(other);
  EXPECT_FALSE(other);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(token.use_count(), 1) << "the replaced node's handler is freed";
  Node dialer;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(3), dialer));
  std::string held_addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(held, held_addr));
  KEEL_ASSERT_OK(dialer.connect(2, held_addr));  // loopback without secrets on both sides

  keel_node_t* raw = dialer.release();
  ASSERT_NE(raw, nullptr);
  EXPECT_FALSE(dialer);
  keel_node_stats_t s{};
  s.struct_size = sizeof s;
  ASSERT_EQ(keel_node_stats(raw, &s), KEEL_STATUS_OK);
  EXPECT_EQ(s.peers, 1u);
  Node back(raw);
  EXPECT_EQ(stats_of(back).dialed, 1u);
  auto fin = back.close();
  KEEL_ASSERT_OK(fin);
  EXPECT_EQ(fin->closed_by_shutdown, 1u);
  expect_error(back.close(), Status::Closed);
}

// The handler's heap state is freed exactly once: when close() returns,
// when open fails, and when the destructor closes the node.
TEST_F(NodeTest, HandlerStateIsFreedOnCloseFailedOpenAndDestruction) {
  auto token = std::make_shared<int>(0);
  NodeOptions opts = NodeOptions().node_id(1);
  opts.on_event([token](uint64_t, Status, std::string_view) {});
  EXPECT_EQ(token.use_count(), 2);
  {
    Node node;
    ASSERT_NO_FATAL_FAILURE(open_node(engine, opts, node));
    EXPECT_EQ(token.use_count(), 3);  // opts + the node's copy
    KEEL_ASSERT_OK(node.close());
    EXPECT_EQ(token.use_count(), 2);

    expect_error(Node::open(engine, NodeOptions(opts).max_frame_bytes(1)), Status::InvalidArgument);
    EXPECT_EQ(token.use_count(), 2);

    auto r = Node::open(engine, opts);
    KEEL_ASSERT_OK(r);
    EXPECT_EQ(token.use_count(), 3);
  }  // the Result's Node is destroyed: its destructor closes it
  EXPECT_EQ(token.use_count(), 2);
}

// close() from the node's own handler is Status::Busy and leaves the node
// open; the handler sees a live node.
TEST_F(NodeTest, CloseFromItsOwnHandlerIsBusy) {
  std::mutex mu;
  std::condition_variable cv;
  std::optional<keel::Result<NodeStats>> from_handler;
  std::atomic<Node*> self{nullptr};  // set before any event can arrive (connect() below)
  NodeOptions opts = NodeOptions().node_id(1);
  opts.on_event([&](uint64_t, Status st, std::string_view) {
    if (st != Status::Ok) return;
    auto r = self.load()->close();
    std::lock_guard<std::mutex> lock(mu);
    if (!from_handler) from_handler.emplace(std::move(r));
    cv.notify_all();
  });
  Node a, b;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, opts, a));
  self.store(&a);
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(2), b));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));
  KEEL_ASSERT_OK(b.connect(1, addr));
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return from_handler.has_value(); }));
    expect_error(*from_handler, Status::Busy);
  }
  EXPECT_TRUE(a);
  EXPECT_EQ(stats_of(a).handshakes, 1u);
  KEEL_ASSERT_OK(b.close());
  KEEL_ASSERT_OK(a.close());
}

namespace {
// A C event callback that closes the keel::Node holding its node.
struct ClosingCallback {
  std::atomic<Node*> self{nullptr};
  std::mutex mu;
  std::condition_variable cv;
  std::optional<keel::Result<NodeStats>> from_handler;

  static void on_event(void* user, uint64_t, keel_status_t st, const char*) {
    auto* c = static_cast<ClosingCallback*>(user);
    if (st != KEEL_STATUS_OK) return;
    auto r = c->self.load()->close();
    std::lock_guard<std::mutex> lock(c->mu);
    if (!c->from_handler) c->from_handler.emplace(std::move(r));
    c->cv.notify_all();
  }
};
}  // namespace

// The same for a Node holding a handle opened through the C API with a C
// event callback, which the wrapper cannot recognise as the node's own:
// keel answers BUSY, and the Node keeps the node it could not close (an
// empty one could never close it).
TEST_F(NodeTest, CloseFromTheCCallbackOfAnAdoptedHandleIsBusy) {
  ClosingCallback callback;  // outlives the node
  keel_node_options_t o;
  ASSERT_EQ(keel_node_options_init_sized(&o, sizeof o), KEEL_STATUS_OK);
  o.node_id = 1;
  o.on_event = &ClosingCallback::on_event;
  o.user_data = &callback;
  keel_node_t* raw = nullptr;
  ASSERT_EQ(keel_node_open(engine.raw(), &o, &raw, nullptr), KEEL_STATUS_OK);
  Node a(raw), b;
  callback.self.store(&a);
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(2), b));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));
  KEEL_ASSERT_OK(b.connect(1, addr));
  {
    std::unique_lock<std::mutex> lock(callback.mu);
    ASSERT_TRUE(callback.cv.wait_for(lock, 60s, [&] { return callback.from_handler.has_value(); }));
    expect_error(*callback.from_handler, Status::Busy);
  }
  EXPECT_EQ(a.raw(), raw) << "the Node let go of a node that is still open";
  KEEL_ASSERT_OK(b.close());
  KEEL_ASSERT_OK(a.close());
}

// keel reports Status::Closed to the handler while close() runs: the
// handler's own calls on its Node then answer Status::Closed without
// reaching keel (the wrapper's rule: the Node is being emptied, and its
// handle pointer must not be read beside that), and close() waits for
// those in flight.
TEST_F(NodeTest, HandlerCallsDuringCloseAnswerClosed) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<Status, Status>> seen;  // (event, stats() in it)
  std::atomic<Node*> self{nullptr};
  NodeOptions opts = NodeOptions().node_id(1).close_timeout(1000ms);
  opts.on_event([&](uint64_t, Status st, std::string_view) {
    auto s = self.load()->stats();
    auto e = self.load()->last_error();
    EXPECT_EQ(s.ok(), e.ok());
    std::lock_guard<std::mutex> lock(mu);
    seen.emplace_back(st, s.ok() ? Status::Ok : s.err().code());
    cv.notify_all();
  });
  Node a, b;
  ASSERT_NO_FATAL_FAILURE(open_node(engine, opts, a));
  self.store(&a);
  ASSERT_NO_FATAL_FAILURE(open_node(engine, NodeOptions().node_id(2), b));
  std::string addr;
  ASSERT_NO_FATAL_FAILURE(addr_of(a, addr));
  KEEL_ASSERT_OK(b.connect(1, addr));
  {
    std::unique_lock<std::mutex> lock(mu);  // a's side of the handshake, before the close
    ASSERT_TRUE(cv.wait_for(lock, 60s, [&] { return !seen.empty(); }));
  }
  auto fin = a.close();  // ends b's connection: Status::Closed to a's handler, during the close
  KEEL_ASSERT_OK(fin);
  EXPECT_EQ(fin->closed_by_shutdown, 1u);
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].first, Status::Ok);
  EXPECT_EQ(seen[0].second, Status::Ok);  // a live node answers its handler
  EXPECT_EQ(seen[1].first, Status::Closed);
  EXPECT_EQ(seen[1].second, Status::Closed);
}

namespace {
// The body of the death test below, in its own process: what the misuse
// leaks stays there. Exits 0 once the node's handler, after it destroyed
// its own Node, saw the connection the peer then closed; 1 when that
// destruction freed the handler while the node's thread was running it;
// 2 when the set-up failed or nothing happened in time.
[[noreturn]] void destroy_node_in_its_own_handler(const keel::Engine& engine) {
  struct Slot {
    std::mutex mu;
    std::condition_variable cv;
    std::optional<Node> node;
    std::atomic<bool> handler_gone{false};  // the handler's captures were destroyed
    bool destroyed = false, gone_in_handler = false, closed_after = false;
  } slot;
  // Destroyed with the last copy of the handler (the Node's).
  std::shared_ptr<void> canary(nullptr, [&slot](void*) { slot.handler_gone = true; });
  auto handler = [s = &slot, canary](uint64_t, Status st, std::string_view) {
    Slot* const slot = s;  // the captures may be gone once the Node is
    std::lock_guard<std::mutex> lock(slot->mu);
    if (st == Status::Ok && !slot->destroyed) {
      slot->node.reset();  // the misuse: the node's thread is running this very handler
      slot->destroyed = true;
      slot->gone_in_handler = slot->handler_gone;
    } else if (st == Status::Closed && slot->destroyed) {
      slot->closed_after = true;
    }
    slot->cv.notify_all();
  };
  canary.reset();
  auto a = Node::open(engine, NodeOptions().node_id(1).on_event(std::move(handler)));
  auto b = Node::open(engine, NodeOptions().node_id(2));
  if (!a.ok() || !b.ok()) child_fail("open failed");
  auto addr = a->addr();
  if (!addr.ok()) child_fail("addr failed");
  {
    std::lock_guard<std::mutex> lock(slot.mu);
    slot.node.emplace(std::move(a).value());
  }
  if (!b->connect(1, *addr).ok()) child_fail("connect failed");
  std::unique_lock<std::mutex> lock(slot.mu);
  // The bounds only turn a hang into a failure.
  if (!slot.cv.wait_for(lock, 60s, [&] { return slot.destroyed; })) child_fail("no handshake");
  if (slot.gone_in_handler) {
    std::fprintf(stderr, "the handler was freed while the node's thread ran it\n");
    std::_Exit(1);
  }
  lock.unlock();
  if (!b->close().ok()) child_fail("close failed");  // ends the connection: Status::Closed to the leaked node's handler
  lock.lock();
  if (!slot.cv.wait_for(lock, 60s, [&] { return slot.closed_after; })) child_fail("no Status::Closed after the destruction");
  std::_Exit(0);
}

using NodeDeathTest = NodeTest;
}  // namespace

// A Node destroyed in its own event handler (forbidden: keel cannot close
// a node from its event callback, and answers BUSY) leaves the node and
// its handler running, leaked, and says so on stderr; the node's threads
// go on calling the handler. The destructor used to ignore the BUSY and
// free the handler: the node's thread was still running it and called it
// again at the next event, a use-after-free.
TEST_F(NodeDeathTest, DestroyedInItsOwnHandlerLeaksAndSaysSo) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(destroy_node_in_its_own_handler(engine), ::testing::ExitedWithCode(0),
              "keel::Node destroyed in its own event handler");
}
