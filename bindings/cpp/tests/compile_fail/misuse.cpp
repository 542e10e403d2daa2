// Misuses of keel.hpp that must be rejected at compile time. Without any
// KEEL_MISUSE_* macro this file compiles cleanly (compile_fail.control);
// each macro adds one misuse, which must fail with the diagnostic the
// CMakeLists names. Never linked or run.
#include "keel.hpp"

#include <cstdint>

void misuse(keel::Wal& w, keel::WalReader& r, keel::Engine& e, keel::Shard& s, keel::Net& net,
            keel::Writer& writer, keel::Publisher& pub, keel::Node& node) {
  // Correct use, which must keep compiling.
  auto appended = w.append("x");
  if (!appended) return;
  const uint64_t seq = appended.value();
  (void)seq;
  (void)r;
  auto put = s.put("k", "v");
  if (!put) return;
  keel::Shard moved = std::move(s);
  (void)e;
  (void)net;
  (void)pub;
  auto connected = node.connect(2, "127.0.0.1:1");
  if (!connected) return;
  auto sent = writer.send("x");
  if (!sent) return;

#ifdef KEEL_MISUSE_IGNORED_RESULT
  w.append("dropped");  // a failed append would go unnoticed
#endif
#ifdef KEEL_MISUSE_IGNORED_OPEN
  keel::Wal::open("/tmp/never");  // the WAL would be opened and closed at once, its error lost
#endif
#ifdef KEEL_MISUSE_IGNORED_RELEASE
  w.release();  // leaks the handle
#endif
#ifdef KEEL_MISUSE_IMPLICIT_VALUE
  uint64_t last = w.last_seq();  // the error case must be handled first
  (void)last;
#endif
#ifdef KEEL_MISUSE_IMPLICIT_BOOL
  bool synced = w.sync();  // only explicit tests (if, !, ok()) are allowed
  (void)synced;
#endif
#ifdef KEEL_MISUSE_COPY_WAL
  keel::Wal copy = w;  // two owners of one handle would close it twice
  (void)copy;
#endif
#ifdef KEEL_MISUSE_COPY_READER
  keel::WalReader copy = r;
  (void)copy;
#endif
#ifdef KEEL_MISUSE_COPY_ENGINE
  keel::Engine copy = e;  // two owners would close the engine (and its shards) twice
  (void)copy;
#endif
#ifdef KEEL_MISUSE_COPY_SHARD
  keel::Shard copy = moved;  // two owners of one shard handle
  (void)copy;
#endif
#ifdef KEEL_MISUSE_IGNORED_PUT
  moved.put("k", "dropped");  // a WRONG_KIND or I/O failure would go unnoticed
#endif
#ifdef KEEL_MISUSE_COPY_NET
  keel::Net copy = net;  // two owners would close the reactor twice
  (void)copy;
#endif
#ifdef KEEL_MISUSE_COPY_WRITER
  keel::Writer copy = writer;  // two owners would close (and free) one socket twice
  (void)copy;
#endif
#ifdef KEEL_MISUSE_COPY_PUBLISHER
  keel::Publisher copy = pub;
  (void)copy;
#endif
#ifdef KEEL_MISUSE_IGNORED_SEND
  writer.send("dropped");  // a reset peer (Io) or a cut-off connection would go unnoticed
#endif
#ifdef KEEL_MISUSE_COPY_NODE
  keel::Node copy = node;  // two owners would close the node, and free its handler, twice
  (void)copy;
#endif
#ifdef KEEL_MISUSE_IGNORED_CONNECT
  node.connect(2, "127.0.0.1:1");  // a refused peer (wrong secret) would go unnoticed
#endif
#ifdef KEEL_MISUSE_TEMPORARY_ITEM_VIEWS
  // Views into a Value destroyed at the end of the statement.
  auto views = s.get("tags").value().value().item_views();
  (void)views;
#endif
#ifdef KEEL_MISUSE_TEMPORARY_POSTING_LIST
  // Views into a string destroyed at the end of the statement.
  auto views = keel::posting_item_views(std::string("\x01\x00\x00\x00x", 5));
  (void)views;
#endif
#ifdef KEEL_MISUSE_VALUE_OF_VOID
  int nothing = w.sync().value();  // Result<void> carries no value
  (void)nothing;
#endif
}
