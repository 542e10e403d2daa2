// Engines and shards through keel.hpp: round trip and recovery, the shard
// registry, kinds meeting, atomic batches, multi_get, scans, posting-list
// items, flush, sealing and merging, threads, misuse and move semantics.
// Every test uses a real temporary directory.
#include "test_util.hpp"

#include <cstdio>
#include <fstream>

#include <algorithm>
#include <map>
#include <set>
#include <thread>
#include <type_traits>

using keel::Batch;
using keel::Durability;
using keel::Engine;
using keel::EngineOptions;
using keel::Iterator;
using keel::Kind;
using keel::Shard;
using keel::Status;
using keel::Value;

namespace {

// Small WAL segments (each shard preallocates one) and no background
// flush, so a test decides when data is persisted.
EngineOptions small(Durability d = Durability::None) {
  return EngineOptions().durability(d).wal_segment_size(1 << 20).flush_interval(std::chrono::milliseconds(0));
}

template <class R>
void expect_error(const R& r, Status code) {
  ASSERT_FALSE(r.ok()) << "expected " << keel::to_string(code);
  EXPECT_EQ(r.err().code(), code) << r.err().to_string();
  EXPECT_FALSE(r.err().message().empty());
}

// What `key` holds (std::nullopt when absent or on error, which fails the test).
std::optional<Value> lookup(const Shard& s, std::string_view key) {
  auto r = s.get(key);
  if (!r) {
    ADD_FAILURE() << "get '" << key << "': " << r.err().to_string();
    return std::nullopt;
  }
  return std::move(r).value();
}

// `key` holds the value `want` (at `version` unless it is 0).
void expect_value(const Shard& s, std::string_view key, std::string_view want, uint64_t version = 0) {
  auto v = lookup(s, key);
  ASSERT_TRUE(v.has_value()) << "'" << key << "' is absent";
  EXPECT_EQ(v->kind, Kind::Value) << key;
  EXPECT_EQ(v->view(), want) << key;
  if (version) {
    EXPECT_EQ(v->version, version) << key;
  }
}

// `key` holds a posting list with exactly `want` (at `version` unless 0).
void expect_list(const Shard& s, std::string_view key, const std::vector<std::string>& want, uint64_t version = 0) {
  auto v = lookup(s, key);
  ASSERT_TRUE(v.has_value()) << "'" << key << "' is absent";
  EXPECT_EQ(v->kind, Kind::Posting) << key;
  auto items = v->items();
  KEEL_ASSERT_OK(items);
  EXPECT_EQ(*items, want) << key;
  if (version) {
    EXPECT_EQ(v->version, version) << key;
  }
}

void expect_absent(const Shard& s, std::string_view key) {
  auto r = s.get(key);
  KEEL_ASSERT_OK(r);
  EXPECT_FALSE(r->has_value()) << "'" << key << "' is present";
}

uint64_t last_version(const Shard& s) { return s.last_version().value_or(~0ull); }

// Every key of a scan, in order.
std::vector<std::string> keys_of(keel::Result<Iterator> scan) {
  std::vector<std::string> keys;
  if (!scan) {
    ADD_FAILURE() << scan.err().to_string();
    return keys;
  }
  for (const auto& e : *scan) {
    if (!e) {
      ADD_FAILURE() << e.err().to_string();
      break;
    }
    keys.emplace_back(e->key_view());
  }
  return keys;
}

}  // namespace

// ---- engine ----------------------------------------------------------------

TEST(Engine, RoundTripCloseAndReopen) {
  TempDir tmp;
  {
    Engine engine;
    Shard shard;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), EngineOptions().wal_segment_size(1 << 20), engine));
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, shard));
    EXPECT_EQ(last_version(shard), 0u);

    // Versions are WAL sequence numbers: one per operation, from 1.
    const std::string binary("k\0\xff", 3);
    std::vector<keel::Result<uint64_t>> v;
    v.push_back(shard.put("a", "alpha"));
    v.push_back(shard.append("p", "x1"));
    v.push_back(shard.append("p", "x2"));
    v.push_back(shard.put("c", "soon gone"));
    v.push_back(shard.del("c"));
    v.push_back(shard.del("never"));  // absent: still a version
    v.push_back(shard.put("e", ""));
    v.push_back(shard.put("", "under the empty key"));
    v.push_back(shard.put(binary, binary));
    for (size_t i = 0; i < v.size(); ++i) {
      KEEL_ASSERT_OK(v[i]);
      EXPECT_EQ(v[i].value(), i + 1);
    }
    EXPECT_EQ(last_version(shard), 9u);
    expect_value(shard, "a", "alpha", 1);
    expect_list(shard, "p", {"x1", "x2"}, 3);
    expect_absent(shard, "c");
    expect_absent(shard, "never");
    expect_value(shard, "e", "", 7);
    expect_value(shard, "", "under the empty key", 8);
    expect_value(shard, binary, binary, 9);

    KEEL_ASSERT_OK(shard.close());
    EXPECT_FALSE(shard);
    KEEL_ASSERT_OK(engine.close());
    EXPECT_FALSE(engine);
  }
  {
    // Other options on reopen; everything recovered with its version.
    Engine engine;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
    auto ids = engine.list_shards();
    KEEL_ASSERT_OK(ids);
    EXPECT_EQ(*ids, std::vector<uint32_t>{1});
    auto shard = engine.open_shard(1, false);
    KEEL_ASSERT_OK(shard);
    expect_value(*shard, "a", "alpha", 1);
    expect_list(*shard, "p", {"x1", "x2"}, 3);
    expect_absent(*shard, "c");
    EXPECT_EQ(last_version(*shard), 9u);
    auto next = shard->append("p", "x3");
    KEEL_ASSERT_OK(next);
    EXPECT_EQ(next.value(), 10u);
    // No close(): destroying the Shard, then the Engine, must close them
    // (Durability::None: the final flush and WAL close are what persist).
  }
  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  Shard shard;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, shard));
  expect_list(shard, "p", {"x1", "x2", "x3"}, 10);
}

TEST(Engine, FencedLeaseTable) {
  TempDir tmp;
  using std::chrono::hours;
  uint64_t first = 0, second = 0;
  {
    Engine engine;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
    auto t1 = engine.fence_try_acquire("bucket", hours(1));
    KEEL_ASSERT_OK(t1);
    first = *t1;
    expect_error(engine.fence_try_acquire("bucket", hours(1)), Status::Busy);
    expect_error(engine.fence_try_acquire("bucket", std::chrono::milliseconds(-5)), Status::InvalidArgument);
    EXPECT_EQ(*engine.fence_validate("bucket", first), true);
    EXPECT_EQ(*engine.fence_validate("bucket", first + 1), false);
    EXPECT_EQ(*engine.fence_validate("other", first), false);
    EXPECT_EQ(*engine.fence_release("bucket", first), true);
    EXPECT_EQ(*engine.fence_release("bucket", first), false);  // already released
    auto t2 = engine.fence_try_acquire("bucket", hours(1));
    KEEL_ASSERT_OK(t2);
    second = *t2;
    EXPECT_GT(second, first);
    // The storage-side check: the newest token passes, an older one is fenced.
    KEEL_ASSERT_OK(engine.fence_check("bucket", second));
    expect_error(engine.fence_check("bucket", first), Status::Fenced);
    KEEL_ASSERT_OK(engine.fence_check("bucket", second));
  }
  // After a reopen every lease has expired and tokens keep growing.
  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  EXPECT_EQ(*engine.fence_validate("bucket", second), false);
  auto t3 = engine.fence_try_acquire("bucket", hours(1));
  KEEL_ASSERT_OK(t3);
  EXPECT_GT(*t3, second);
  Engine empty;
  expect_error(empty.fence_try_acquire("bucket", hours(1)), Status::Closed);
  expect_error(empty.fence_validate("bucket", 1), Status::Closed);
}

TEST(Engine, ShardRegistry) {
  TempDir tmp;
  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  EXPECT_EQ(engine.list_shards().value(), std::vector<uint32_t>{});
  expect_error(engine.open_shard(7, false), Status::NotFound);

  // More shards than list_shards() first makes room for (it must grow).
  std::vector<uint32_t> want;
  for (uint32_t id = 40; id > 0; id -= 2) {
    auto s = engine.open_shard(id);
    KEEL_ASSERT_OK(s);
    KEEL_ASSERT_OK(s->put("id", std::to_string(id)));  // shards are independent
    want.insert(want.begin(), id);
  }
  auto ids = engine.list_shards();
  KEEL_ASSERT_OK(ids);
  EXPECT_EQ(*ids, want);  // ascending

  Shard four;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 4, four));
  expect_value(four, "id", "4", 1);
  expect_error(engine.open_shard(4), Status::Busy);
  expect_error(engine.drop_shard(4), Status::Busy);
  expect_error(engine.drop_shard(5), Status::NotFound);
  KEEL_ASSERT_OK(engine.drop_shard(6));
  expect_error(engine.drop_shard(6), Status::NotFound);
  expect_error(engine.open_shard(6, false), Status::NotFound);
  KEEL_ASSERT_OK(four.close());
  KEEL_ASSERT_OK(engine.drop_shard(4));
  want.erase(std::remove_if(want.begin(), want.end(), [](uint32_t id) { return id == 4 || id == 6; }), want.end());
  EXPECT_EQ(engine.list_shards().value(), want);

  // A dropped id starts afresh.
  Shard six;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 6, six));
  expect_absent(six, "id");
  EXPECT_EQ(last_version(six), 0u);
}

// A missing segment file is Status::Corruption; a salvage open opens the
// shard and salvage_report() names the file.
TEST(Engine, MissingSegmentFileIsCorruptionAndSalvageReportsIt) {
  TempDir tmp;
  EXPECT_FALSE(small().salvage());  // never the default
  {
    Engine engine;
    Shard shard;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, shard));
    KEEL_ASSERT_OK(shard.put("k", "v"));
    auto clean = shard.salvage_report();
    KEEL_ASSERT_OK(clean);
    EXPECT_EQ(clean.value(), "");
    KEEL_ASSERT_OK(shard.close());
    KEEL_ASSERT_OK(engine.close());
  }
  const std::string state = "seg-0000000000000001.state";
  ASSERT_TRUE(std::filesystem::remove(std::filesystem::path(tmp.engine()) / "shards" / "1" / "segments" / state));
  {
    Engine engine;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
    expect_error(engine.open_shard(1, false), Status::Corruption);
    KEEL_ASSERT_OK(engine.close());
  }
  Engine engine;
  Shard shard;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small().salvage(true), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, shard));
  expect_value(shard, "k", "v");  // the WAL still held it
  auto report = shard.salvage_report();
  KEEL_ASSERT_OK(report);
  EXPECT_NE(report.value().find(state), std::string::npos) << report.value();
}

TEST(Engine, OneEnginePerDirectoryAndBadOptions) {
  TempDir tmp;
  Engine first;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), first));
  expect_error(Engine::open(tmp.engine(), small()), Status::Busy);
  KEEL_ASSERT_OK(first.close());
  KEEL_ASSERT_OK(Engine::open(tmp.engine(), small()));

  auto expect_invalid = [&](const EngineOptions& o, const std::string& needle) {
    auto r = Engine::open(tmp.engine("bad"), o);
    ASSERT_NO_FATAL_FAILURE(expect_error(r, Status::InvalidArgument));
    EXPECT_NE(r.err().message().find(needle), std::string::npos) << r.err().message();
  };
  EngineOptions bad_enum;
  bad_enum.raw().durability = 3;
  expect_invalid(bad_enum, "durability");
  EngineOptions no_size;
  no_size.raw().struct_size = 0;  // as if keel_engine_options_init() was skipped
  expect_invalid(no_size, "struct_size");
  expect_invalid(EngineOptions().seal_bytes(4095), "seal_bytes");
  expect_invalid(EngineOptions().max_sealed_segments(0), "max_sealed");
  expect_invalid(EngineOptions().flush_threads(257), "flush_threads");
  expect_invalid(EngineOptions().max_unflushed_wal_bytes(4096), "max_unflushed_wal_bytes");
  expect_invalid(EngineOptions().write_stall_timeout(std::chrono::hours(2)), "write_stall_timeout");
  expect_invalid(EngineOptions().max_open_files(15), "max_open_files");
  expect_invalid(EngineOptions().wal_segment_size(4096), "segment_size");
  expect_invalid(EngineOptions().durability(Durability::Periodic).sync_interval(std::chrono::hours(24 * 365)),
                 "sync_interval_ms");
  expect_error(Engine::open(tmp.engine() + std::string("\0x", 2)), Status::InvalidArgument);
  expect_error(Engine::open(""), Status::InvalidArgument);
}

TEST(Engine, StatsCountResourcesNotThreadsPerShard) {
  TempDir tmp;
  Engine engine;
  const auto opts = small(Durability::Periodic).sync_interval(std::chrono::milliseconds(10)).flush_threads(2);
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), opts, engine));
  auto idle = engine.stats();
  KEEL_ASSERT_OK(idle);
  EXPECT_GT(idle->threads, 2u) << "flush workers and WAL workers";
  EXPECT_EQ(idle->open_shards, 0u);
  EXPECT_GE(idle->open_files, 1u) << "the engine's LOCK";

  std::vector<Shard> shards(20);
  for (uint32_t id = 0; id < shards.size(); id++) {
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, id, shards[id]));
    KEEL_ASSERT_OK(shards[id].put("k", "v"));
  }
  auto busy = engine.stats();
  KEEL_ASSERT_OK(busy);
  EXPECT_EQ(busy->threads, idle->threads) << "shards add no thread";
  EXPECT_EQ(busy->open_shards, shards.size());
  EXPECT_GE(busy->open_files, idle->open_files + shards.size());
  EXPECT_GE(busy->stalled.count(), 0);
  EXPECT_EQ(busy->write_stalls, 0u) << "far below max_unflushed_wal_bytes";
  EXPECT_EQ(busy->write_stall_time.count(), 0);

  for (auto& s : shards) KEEL_ASSERT_OK(s.close());
  auto after = engine.stats();
  KEEL_ASSERT_OK(after);
  EXPECT_EQ(after->open_shards, 0u);
  EXPECT_EQ(after->open_files, idle->open_files);

  expect_error(Engine().stats(), Status::Closed);
}

TEST(Engine, CommitLogMakesSyncWritesDurable) {
  for (bool on : {true, false}) {
    TempDir tmp;
    Engine engine;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(Durability::Sync).commit_log(on), engine));
    std::vector<Shard> shards(3);
    for (uint32_t id = 0; id < shards.size(); id++) {
      ASSERT_NO_FATAL_FAILURE(open_shard(engine, id, shards[id]));
      KEEL_ASSERT_OK(shards[id].put("k", "v"));
    }
    auto st = engine.stats();
    KEEL_ASSERT_OK(st);
    EXPECT_EQ(st->commit_log_commits, on ? 3u : 0u) << "a SYNC write's group is copied to the commit log when it is on";
    EXPECT_EQ(st->commit_log_restored_frames, 0u);
  }
  EXPECT_TRUE(EngineOptions().commit_log());
  EXPECT_FALSE(EngineOptions().commit_log(false).commit_log());
}

TEST(Engine, DescriptorCacheBoundsOpenFiles) {
  TempDir tmp;
  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small().max_open_files(16), engine));
  std::vector<Shard> shards(20);
  for (uint32_t id = 0; id < shards.size(); id++) {
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, id, shards[id]));
    KEEL_ASSERT_OK(shards[id].put("k", std::to_string(id)));
  }
  for (uint32_t id = 0; id < shards.size(); id++) {
    KEEL_ASSERT_OK(shards[id].put("k2", std::to_string(id)));  // files closed meanwhile are opened again
    expect_value(shards[id], "k", std::to_string(id));
  }
  auto st = engine.stats();
  KEEL_ASSERT_OK(st);
  EXPECT_EQ(st->max_open_files, 16u);
  EXPECT_GT(st->file_cache_evictions, 0u) << "20 shards hold more than 16 files";
  EXPECT_GT(st->file_cache_misses, 0u);
  EXPECT_GT(st->file_cache_hits, 0u);
  // Beyond the cache's files: the engine's LOCK, and for each of its
  // workers a file it may have pinned (a spare being prepared) and a
  // folder it may be syncing at this moment.
  EXPECT_LE(st->open_files, 16u + 1u + 2 * st->threads) << "the cache's files, the LOCK and what its workers hold";
}

TEST(EngineOptions, BuilderRoundTripsAndDefaultsAreTheLibrarys) {
  const auto o = EngineOptions()
                     .durability(Durability::Periodic)
                     .sync_interval(std::chrono::milliseconds(20))
                     .max_sealed_segments(3)
                     .wal_segment_size(1 << 20)
                     .flush_interval(std::chrono::milliseconds(250))
                     .seal_bytes(8192)
                     .flush_threads(3)
                     .max_unflushed_wal_bytes(8 << 20)
                     .write_stall_timeout(std::chrono::milliseconds(1500))
                     .max_open_files(100);
  EXPECT_EQ(o.durability(), Durability::Periodic);
  EXPECT_EQ(o.max_unflushed_wal_bytes(), 8u << 20);
  EXPECT_EQ(o.write_stall_timeout(), std::chrono::milliseconds(1500));
  EXPECT_EQ(o.max_open_files(), 100u);
  EXPECT_EQ(o.flush_threads(), 3u);
  EXPECT_EQ(o.sync_interval(), std::chrono::milliseconds(20));
  EXPECT_EQ(o.max_sealed_segments(), 3u);
  EXPECT_EQ(o.wal_segment_size(), 1u << 20);
  EXPECT_EQ(o.flush_interval(), std::chrono::milliseconds(250));
  EXPECT_EQ(o.seal_bytes(), 8192u);
  EXPECT_EQ(EngineOptions().flush_interval(std::chrono::milliseconds(-5)).flush_interval().count(), 0);
  keel_engine_options_t c;
  ASSERT_EQ(keel_engine_options_init(&c), KEEL_STATUS_OK);
  const EngineOptions d;
  EXPECT_EQ(d.raw().struct_size, sizeof(keel_engine_options_t));
  EXPECT_EQ(d.durability(), Durability::Sync);
  EXPECT_EQ(d.seal_bytes(), c.seal_bytes);
  EXPECT_EQ(d.wal_segment_size(), c.wal_segment_size);
  EXPECT_EQ(d.flush_interval(), std::chrono::milliseconds(c.flush_interval_ms));
  EXPECT_EQ(d.max_sealed_segments(), c.max_sealed_segments);
  EXPECT_EQ(d.flush_threads(), 0u);  // the library picks
  EXPECT_EQ(d.max_unflushed_wal_bytes(), 0u);  // 64 MiB
  EXPECT_EQ(d.write_stall_timeout().count(), 0);  // 5 s
  EXPECT_EQ(d.max_open_files(), 0u);  // half the descriptor limit
  TempDir tmp;
  KEEL_ASSERT_OK(Engine::open(tmp.engine(), small().flush_threads(1)));
}

// ---- shard -------------------------------------------------------------------

TEST(Shard, KindsMeet) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));

  const uint64_t v = s.put("kv", "a value").value();
  expect_error(s.append("kv", "item"), Status::WrongKind);
  EXPECT_EQ(last_version(s), v);  // nothing written
  expect_value(s, "kv", "a value", v);
  auto as_value = lookup(s, "kv");
  ASSERT_TRUE(as_value);
  expect_error(as_value->items(), Status::WrongKind);
  expect_error(as_value->item_views(), Status::WrongKind);

  KEEL_ASSERT_OK(s.append("kl", "i1"));
  KEEL_ASSERT_OK(s.append("kl", "i2"));
  expect_list(s, "kl", {"i1", "i2"});
  KEEL_ASSERT_OK(s.put("kl", "replaced"));  // put replaces a list
  expect_value(s, "kl", "replaced");
  expect_error(s.append("kl", "i3"), Status::WrongKind);
  KEEL_ASSERT_OK(s.del("kl"));
  expect_absent(s, "kl");
  const uint64_t fresh = s.append("kl", "fresh").value();
  expect_list(s, "kl", {"fresh"}, fresh);  // a new list, nothing of the old one
  KEEL_ASSERT_OK(s.put("empty", ""));
  expect_error(s.append("empty", "i"), Status::WrongKind);  // an empty value is a value
}

TEST(Shard, BatchesAreAtomicWithConsecutiveVersions) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  KEEL_ASSERT_OK(s.put("value", "old"));
  KEEL_ASSERT_OK(s.put("doomed", "x"));

  Batch b;
  EXPECT_EQ(b.count().value(), 0u);
  expect_error(s.write(b), Status::InvalidArgument);  // empty

  b.put("a", "A").append("list", "l1").del("doomed").append("list", "l2").put("value", "new");
  EXPECT_EQ(b.count().value(), 5u);
  KEEL_ASSERT_OK(b.status());
  const uint64_t before = last_version(s);
  auto w = s.write(b);
  KEEL_ASSERT_OK(w);
  EXPECT_EQ(w->first, before + 1);
  EXPECT_EQ(w->second, before + 5);
  expect_value(s, "a", "A", w->first);
  expect_list(s, "list", {"l1", "l2"}, w->first + 3);
  expect_absent(s, "doomed");
  expect_value(s, "value", "new", w->second);
  EXPECT_EQ(b.count().value(), 5u);  // left as it was

  // A WRONG_KIND in the last operation fails the whole batch.
  KEEL_ASSERT_OK(b.clear());
  EXPECT_EQ(b.count().value(), 0u);
  b.put("n1", "never").append("n2", "never").del("a").append("value", "onto a value");
  const uint64_t at = last_version(s);
  expect_error(s.write(b), Status::WrongKind);
  EXPECT_EQ(last_version(s), at);
  expect_absent(s, "n1");
  expect_absent(s, "n2");
  expect_value(s, "a", "A");

  // Earlier operations of a batch count.
  KEEL_ASSERT_OK(b.clear());
  expect_error(s.write(b.put("k", "v").append("k", "i")), Status::WrongKind);
  expect_absent(s, "k");
  KEEL_ASSERT_OK(b.clear());
  b.del("value").append("value", "i").append("m", "i").put("m", "value wins");
  auto ok = s.write(b);
  KEEL_ASSERT_OK(ok);
  EXPECT_EQ(ok->second - ok->first, 3u);
  expect_list(s, "value", {"i"}, ok->first + 1);
  expect_value(s, "m", "value wins", ok->second);

  // An operation that cannot be added is kept as the batch's error: later
  // ones are not added, write() refuses it and writes nothing.
  KEEL_ASSERT_OK(b.clear());
  const std::string too_long(keel::max_key_size + 1, 'k');
  b.put("fine", "v").put(too_long, "v").put("after", "v");
  EXPECT_EQ(b.count().value(), 1u);
  expect_error(b.status(), Status::InvalidArgument);
  const uint64_t at2 = last_version(s);
  expect_error(s.write(b), Status::InvalidArgument);
  EXPECT_EQ(last_version(s), at2);
  expect_absent(s, "fine");
  KEEL_ASSERT_OK(b.clear());  // forgets the error
  KEEL_ASSERT_OK(b.status());
  KEEL_ASSERT_OK(s.write(b.put("fine", "v")));
  expect_value(s, "fine", "v");
}

TEST(Shard, MultiGetReadsPresentAndAbsentKeys) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  const uint64_t vv = s.put("v", "value").value();
  KEEL_ASSERT_OK(s.append("l", "1"));
  const uint64_t vl = s.append("l", "2").value();
  const uint64_t ve = s.put("", "empty key").value();

  auto got = s.multi_get({"v", "missing", "l", "v", ""});
  KEEL_ASSERT_OK(got);
  ASSERT_EQ(got->size(), 5u);
  ASSERT_TRUE((*got)[0]);
  EXPECT_EQ((*got)[0]->kind, Kind::Value);
  EXPECT_EQ((*got)[0]->version, vv);
  EXPECT_EQ((*got)[0]->str(), "value");
  EXPECT_FALSE((*got)[1]);
  ASSERT_TRUE((*got)[2]);
  EXPECT_EQ((*got)[2]->version, vl);
  EXPECT_EQ((*got)[2]->items().value(), (std::vector<std::string>{"1", "2"}));
  ASSERT_TRUE((*got)[3]);
  EXPECT_EQ((*got)[3]->str(), "value");
  ASSERT_TRUE((*got)[4]);
  EXPECT_EQ((*got)[4]->version, ve);

  const std::vector<std::string> keys = {"missing", "v"};
  auto two = s.multi_get(keys);
  KEEL_ASSERT_OK(two);
  ASSERT_EQ(two->size(), 2u);
  EXPECT_FALSE((*two)[0]);
  EXPECT_TRUE((*two)[1]);
  auto none = s.multi_get(std::vector<std::string_view>{});
  KEEL_ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
  expect_error(s.multi_get({"v", std::string(keel::max_key_size + 1, 'k')}), Status::InvalidArgument);
}

// Keys made on the fly (each a temporary) are each read under their own
// bytes (the views kept to the temporaries once read freed memory).
TEST(Shard, MultiGetOfGeneratedKeysReadsEachKey) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  for (size_t i = 0; i < 4; ++i) KEEL_ASSERT_OK(s.put(GeneratedStrings::make("key", i), "value " + std::to_string(i)));
  auto got = s.multi_get(GeneratedStrings("key", 4));
  KEEL_ASSERT_OK(got);
  ASSERT_EQ(got->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE((*got)[i]) << "key " << i << " read as absent";
    EXPECT_EQ((*got)[i]->str(), "value " + std::to_string(i));
  }
}

TEST(Shard, ScansAreOrderedBoundedAndConsistent) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  // Byte order, unsigned: 0xff sorts last; "" is the empty key.
  const std::vector<std::string> all = {"", "a", "ab", "abc", "b", "ba", "c", "user/1", "user/2", "user0", "\xff", "\xff\xff"};
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    if (*it == "abc") {
      KEEL_ASSERT_OK(s.append(*it, "item"));
    } else {
      KEEL_ASSERT_OK(s.put(*it, "v:" + *it));
    }
  }
  KEEL_ASSERT_OK(s.put("bb", "deleted"));
  KEEL_ASSERT_OK(s.del("bb"));
  using V = std::vector<std::string>;

  EXPECT_EQ(keys_of(s.scan()), all);
  EXPECT_EQ(keys_of(s.scan("ab", "b")), (V{"ab", "abc"}));
  EXPECT_EQ(keys_of(s.scan("abd", std::string("c"))), (V{"b", "ba"}));
  EXPECT_EQ(keys_of(s.scan("b", "b")), V{});
  EXPECT_EQ(keys_of(s.scan("", std::string_view())), V{});  // an empty end is a bound, not "none"
  EXPECT_EQ(keys_of(s.scan("", "a")), V{""});
  EXPECT_EQ(keys_of(s.scan("user")), (V{"user/1", "user/2", "user0", "\xff", "\xff\xff"}));
  EXPECT_EQ(keys_of(s.scan_prefix("user/")), (V{"user/1", "user/2"}));
  EXPECT_EQ(keys_of(s.scan_prefix("a")), (V{"a", "ab", "abc"}));
  EXPECT_EQ(keys_of(s.scan_prefix("\xff")), (V{"\xff", "\xff\xff"}));
  EXPECT_EQ(keys_of(s.scan_prefix("")), all);
  EXPECT_EQ(keys_of(s.scan_prefix("zzz")), V{});
  // Straight from the temporary Result: the Iterator lives through the loop.
  V direct;
  for (const auto& e : s.scan_prefix("a").value()) {
    ASSERT_TRUE(e) << e.err().to_string();
    direct.emplace_back(e->key_view());
  }
  EXPECT_EQ(direct, (V{"a", "ab", "abc"}));

  // Values, kinds and versions come with the keys; next() copies out.
  auto it = s.scan_prefix("ab");
  KEEL_ASSERT_OK(it);
  auto first = it->next();
  KEEL_ASSERT_OK(first);
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->key_str(), "ab");
  EXPECT_EQ((*first)->value.kind, Kind::Value);
  EXPECT_EQ((*first)->value.str(), "v:ab");
  expect_value(s, "ab", "v:ab", (*first)->value.version);
  auto second = it->next_view();
  KEEL_ASSERT_OK(second);
  ASSERT_TRUE(second->has_value());
  EXPECT_EQ((*second)->key_view(), "abc");
  EXPECT_EQ((*second)->kind, Kind::Posting);
  EXPECT_EQ((*second)->item_views().value(), std::vector<std::string_view>{"item"});
  const keel::Entry owned = (*second)->to_owned();
  auto end = it->next();
  KEEL_ASSERT_OK(end);
  EXPECT_FALSE(end->has_value());
  EXPECT_FALSE(it->next().value().has_value());  // the end stays the end
  EXPECT_EQ(owned.key_str(), "abc");
  EXPECT_EQ(owned.value.items().value(), std::vector<std::string>{"item"});

  // A scan copies its range when it opens: later writes do not show.
  auto snapshot = s.scan("a", "b");
  KEEL_ASSERT_OK(snapshot);
  KEEL_ASSERT_OK(s.put("aa", "new"));
  KEEL_ASSERT_OK(s.del("ab"));
  KEEL_ASSERT_OK(s.put("a", "replaced"));
  KEEL_ASSERT_OK(s.append("abc", "more"));
  std::map<std::string, std::string> seen;
  for (const auto& e : *snapshot) {
    KEEL_ASSERT_OK(e);
    seen[std::string(e->key_view())] = std::string(e->view());
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen["a"], "v:a");
  EXPECT_EQ(seen.count("aa"), 0u);
  EXPECT_EQ(keel::posting_items(seen["abc"]).value(), std::vector<std::string>{"item"});
  EXPECT_EQ(keys_of(s.scan("a", "b")), (V{"a", "aa", "abc"}));
}

TEST(Shard, PostingListItems) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  std::vector<std::string> items;
  for (uint32_t i = 0; i < 60; ++i) {
    const auto p = pattern(i == 9 ? 0 : (i * 37) % 500, i);  // binary bytes, one empty item
    items.emplace_back(p.begin(), p.end());
    KEEL_ASSERT_OK(s.append("list", items.back()));
  }
  auto v = lookup(s, "list");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->items().value(), items);
  auto views = v->item_views();
  KEEL_ASSERT_OK(views);
  ASSERT_EQ(views->size(), items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ((*views)[i], items[i]);
    // Views point into the Value's own bytes.
    EXPECT_TRUE((*views)[i].empty() || ((*views)[i].data() >= v->view().data() &&
                                        (*views)[i].data() < v->view().data() + v->view().size()));
  }

  // The encoding is [u32 LE length][bytes]; damage is Status::Corruption.
  const std::string one("\x01\x00\x00\x00x", 5);
  EXPECT_EQ(keel::posting_items(one).value(), std::vector<std::string>{"x"});
  EXPECT_TRUE(keel::posting_items(keel::ByteView()).value().empty());
  expect_error(keel::posting_items(one.substr(0, 4)), Status::Corruption);
  expect_error(keel::posting_items(std::string("\xff\xff\xff\xffxy", 6)), Status::Corruption);
  expect_error(keel::posting_items(one + "\x02"), Status::Corruption);
  expect_error(keel::posting_item_views(v->view().substr(0, v->view().size() - 1)), Status::Corruption);
}

TEST(Shard, FlushMakesPersistedReachLast) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  for (int i = 0; i < 40; ++i) KEEL_ASSERT_OK(s.put("f" + std::to_string(i), "x"));
  const uint64_t last = last_version(s);
  EXPECT_EQ(last, 40u);
  EXPECT_LT(s.persisted_version().value(), last);  // no background flush
  auto persisted = s.flush();
  KEEL_ASSERT_OK(persisted);
  EXPECT_EQ(persisted.value(), last);
  EXPECT_EQ(s.persisted_version().value(), last);
  KEEL_ASSERT_OK(s.put("late", "x"));
  auto quick = s.flush(false);
  KEEL_ASSERT_OK(quick);
  EXPECT_GE(quick.value(), last);
  EXPECT_LE(quick.value(), last + 1);
  EXPECT_EQ(s.flush().value(), last + 1);
  KEEL_ASSERT_OK(s.set_keep_from(last + 1));
  KEEL_ASSERT_OK(s.set_keep_from(Shard::keep_none));
}

// A null `const char*` key, value or item is NullArgument from every shard
// call and from a batch (kept as its error); nothing is written.
TEST(ShardMisuse, NullCStringIsNullArgumentNotACrash) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  const char* none = nullptr;
  expect_error(s.put(none, "v"), Status::NullArgument);
  expect_error(s.put("k", none), Status::NullArgument);
  expect_error(s.del(none), Status::NullArgument);
  expect_error(s.append("k", none), Status::NullArgument);
  expect_error(s.get(none), Status::NullArgument);
  expect_error(s.multi_get(std::vector<keel::ByteView>{"k", none}), Status::NullArgument);
  expect_error(s.scan(none), Status::NullArgument);
  expect_error(s.scan_prefix(none), Status::NullArgument);
  keel::Batch b;
  b.put("k", "v").append("l", none);
  expect_error(b.status(), Status::NullArgument);
  expect_error(s.write(b), Status::NullArgument);
  EXPECT_EQ(last_version(s), 0u);
}

// stats() and health(): healthy, then a flush pass that fails for real
// (the segments directory replaced by a file: its state file cannot be
// created), then healthy again once it is back. health() has a pass's
// outcome by the time the flush() that waited for it returns.
TEST(Shard, StatsAndHealthFollowTheBackgroundWork) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 3, s));
  KEEL_ASSERT_OK(s.health());
  KEEL_ASSERT_OK(s.put("a", "1"));
  KEEL_ASSERT_OK(s.put("b", "22"));
  auto st = s.stats();
  KEEL_ASSERT_OK(st);
  EXPECT_EQ(st->last_version, 2u);
  EXPECT_EQ(st->appendable_keys, 2u);
  EXPECT_EQ(st->persisted_version, s.persisted_version().value());
  EXPECT_EQ(st->wal_first_version, 1u);

  const std::string seg = tmp.engine() + "/shards/3/segments";
  ASSERT_EQ(std::rename(seg.c_str(), (seg + ".moved").c_str()), 0);
  { std::ofstream(seg).put('x'); }
  expect_error(s.flush(), Status::Io);
  auto bad = s.health();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), Status::Io);
  EXPECT_NE(bad.err().message().find("segments"), std::string::npos) << bad.err().message();
  EXPECT_LT(s.stats()->persisted_version, 2u);
  EXPECT_GT(s.stats()->unflushed_wal_bytes, 0u) << "a and b wait for a flush that fails";
  EXPECT_EQ(s.stats()->write_stalls, 0u);

  ASSERT_EQ(std::remove(seg.c_str()), 0);
  ASSERT_EQ(std::rename((seg + ".moved").c_str(), seg.c_str()), 0);
  KEEL_ASSERT_OK(s.flush());
  KEEL_ASSERT_OK(s.health());
  EXPECT_EQ(s.stats()->persisted_version, 2u);
  EXPECT_EQ(s.stats()->unflushed_wal_bytes, 0u);
  KEEL_ASSERT_OK(s.close());
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 3, s));
  EXPECT_EQ(s.stats()->replayed_records, 0u) << "the close persisted everything";

  expect_error(Shard().stats(), Status::Closed);
  expect_error(Shard().health(), Status::Closed);
}

// Tiny segments: the appendable segment seals every few KiB, tables merge,
// and a reopen recovers every key (checked against a model).
TEST(Shard, SealsMergesAndRecoversEveryKey) {
  TempDir tmp;
  const auto opts = EngineOptions()
                        .durability(Durability::None)
                        .seal_bytes(4096)
                        .wal_segment_size(64 * 1024)
                        .flush_interval(std::chrono::milliseconds(0))
                        .max_sealed_segments(2);
  struct Want {
    Kind kind;
    std::string value;               // Kind::Value
    std::vector<std::string> items;  // Kind::Posting
  };
  std::map<std::string, Want> model;
  auto verify = [&](const Shard& s) {
    for (uint32_t i = 0; i < 300; ++i) {
      const std::string key = "k" + std::to_string(1000 + i);
      auto m = model.find(key);
      if (m == model.end()) {
        ASSERT_NO_FATAL_FAILURE(expect_absent(s, key));
      } else if (m->second.kind == Kind::Value) {
        ASSERT_NO_FATAL_FAILURE(expect_value(s, key, m->second.value));
      } else {
        ASSERT_NO_FATAL_FAILURE(expect_list(s, key, m->second.items));
      }
    }
    std::vector<std::string> want;
    for (const auto& kv : model) want.push_back(kv.first);
    EXPECT_EQ(keys_of(s.scan_prefix("k")), want);
  };
  uint32_t x = 12345;
  auto rnd = [&x] { return (x = x * 1103515245u + 12345u) >> 8; };
  {
    Engine engine;
    Shard s;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), opts, engine));
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
    for (uint32_t op = 0; op < 2500; ++op) {
      const std::string key = "k" + std::to_string(1000 + rnd() % 300);
      const uint32_t what = rnd() % 10;
      if (what < 5) {
        const auto p = pattern(rnd() % 200, op);
        const std::string value(p.begin(), p.end());
        KEEL_ASSERT_OK(s.put(key, value));
        model[key] = Want{Kind::Value, value, {}};
      } else if (what < 8) {
        const std::string item = "i" + std::to_string(op);
        auto r = s.append(key, item);
        auto m = model.find(key);
        if (m != model.end() && m->second.kind == Kind::Value) {
          expect_error(r, Status::WrongKind);
        } else {
          KEEL_ASSERT_OK(r);
          auto& w = model[key];
          w.kind = Kind::Posting;
          w.items.push_back(item);
        }
      } else {
        KEEL_ASSERT_OK(s.del(key));
        model.erase(key);
      }
      if (op % 250 == 249) {
        KEEL_ASSERT_OK(s.flush());
        KEEL_ASSERT_OK(s.flush());
      }
    }
    ASSERT_NO_FATAL_FAILURE(verify(s));
  }
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), opts, engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  ASSERT_NO_FATAL_FAILURE(verify(s));
}

TEST(Shard, ConcurrentWritersGetUniqueDenseVersions) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  constexpr int kThreads = 4, kPer = 200;
  std::vector<std::vector<uint64_t>> versions(kThreads);
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) {
        const std::string key = "t" + std::to_string(t) + "/" + std::to_string(i);
        auto r = i % 2 ? s.put(key, key) : s.append("all", key);  // a shared Shard: const members
        if (!r) { failures[t] = r.err().to_string(); return; }
        versions[t].push_back(r.value());
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<uint64_t> all;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(failures[t], "");
    for (uint64_t v : versions[t]) EXPECT_TRUE(all.insert(v).second) << "version " << v << " given twice";
  }
  ASSERT_EQ(all.size(), static_cast<size_t>(kThreads * kPer));
  EXPECT_EQ(*all.begin(), 1u);
  EXPECT_EQ(*all.rbegin(), static_cast<uint64_t>(kThreads * kPer));
  auto list = lookup(s, "all");
  ASSERT_TRUE(list);
  EXPECT_EQ(list->items().value().size(), static_cast<size_t>(kThreads * kPer / 2));
}

// ---- misuse ---------------------------------------------------------------------

TEST(ShardMisuse, KeysLongerThanTheLimitAreInvalidArgument) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small().wal_segment_size(64 * 1024), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  static_assert(keel::max_key_size == KEEL_SHARD_MAX_KEY_SIZE);
  const std::string longest(keel::max_key_size, 'k'), over(keel::max_key_size + 1, 'k');
  expect_error(s.put(over, "v"), Status::InvalidArgument);
  expect_error(s.del(over), Status::InvalidArgument);
  expect_error(s.append(over, "i"), Status::InvalidArgument);
  expect_error(s.get(over), Status::InvalidArgument);
  // A scan's bounds and prefix are held to the same limit.
  expect_error(s.scan(over), Status::InvalidArgument);
  expect_error(s.scan("", over), Status::InvalidArgument);
  expect_error(s.scan_prefix(over), Status::InvalidArgument);
  EXPECT_EQ(last_version(s), 0u);
  KEEL_ASSERT_OK(s.put(longest, "fine"));
  expect_value(s, longest, "fine");
  EXPECT_EQ(keys_of(s.scan(longest)), std::vector<std::string>{longest});
  EXPECT_EQ(keys_of(s.scan_prefix(longest)), std::vector<std::string>{longest});
  // A value larger than one WAL record (64 KiB segments): nothing written.
  expect_error(s.put("big", std::string(64 * 1024, 'v')), Status::InvalidArgument);
  expect_absent(s, "big");
  EXPECT_EQ(last_version(s), 1u);
}

TEST(ShardMisuse, IteratorAfterItsShardClosedIsClosed) {
  TempDir tmp;
  Engine engine;
  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  for (const char* k : {"a", "b", "c"}) KEEL_ASSERT_OK(s.put(k, k));
  auto it = s.scan();
  KEEL_ASSERT_OK(it);
  auto a = it->next();
  KEEL_ASSERT_OK(a);
  KEEL_ASSERT_OK(s.close());
  expect_error(it->next(), Status::Closed);
  // Range-for yields the error once, then ends.
  int elements = 0;
  for (const auto& e : *it) {
    ++elements;
    EXPECT_FALSE(e.ok());
    EXPECT_EQ(e.err().code(), Status::Closed);
  }
  EXPECT_EQ(elements, 1);
  // Destroying the iterator after its shard is fine (ASan checks it too).
}

TEST(ShardMisuse, ShardAfterItsEngineClosedIsClosed) {
  TempDir tmp;
  Shard s;
  Batch b;
  b.put("k", "v");
  {
    Engine engine;
    ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
    ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
    KEEL_ASSERT_OK(s.put("before", "close"));
    KEEL_ASSERT_OK(engine.close());  // closes the shard too (with a final flush)
  }
  EXPECT_TRUE(s);  // the handle is still ours to free
  expect_error(s.put("k", "v"), Status::Closed);
  expect_error(s.del("k"), Status::Closed);
  expect_error(s.append("l", "i"), Status::Closed);
  expect_error(s.write(b), Status::Closed);
  expect_error(s.get("before"), Status::Closed);
  expect_error(s.multi_get({"before"}), Status::Closed);
  expect_error(s.scan(), Status::Closed);
  expect_error(s.scan_prefix("b"), Status::Closed);
  expect_error(s.flush(), Status::Closed);
  expect_error(s.set_keep_from(1), Status::Closed);
  KEEL_ASSERT_OK(s.close());  // frees with OK

  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, s));
  expect_value(s, "before", "close");
}

// ---- ownership -------------------------------------------------------------------

static_assert(!std::is_copy_constructible_v<Engine> && !std::is_copy_assignable_v<Engine>);
static_assert(!std::is_copy_constructible_v<Shard> && !std::is_copy_assignable_v<Shard>);
static_assert(!std::is_copy_constructible_v<Batch> && !std::is_copy_assignable_v<Batch>);
static_assert(!std::is_copy_constructible_v<Iterator> && !std::is_copy_assignable_v<Iterator>);
static_assert(std::is_nothrow_move_constructible_v<Engine> && std::is_nothrow_move_assignable_v<Engine>);
static_assert(std::is_nothrow_move_constructible_v<Shard> && std::is_nothrow_move_assignable_v<Shard>);
static_assert(std::is_nothrow_move_constructible_v<Batch> && std::is_nothrow_move_assignable_v<Batch>);
static_assert(std::is_nothrow_move_constructible_v<Iterator> && std::is_nothrow_move_assignable_v<Iterator>);
static_assert(!std::is_copy_constructible_v<keel::Result<Shard>>);
// Values and entries are plain copyable values.
static_assert(std::is_copy_constructible_v<Value> && std::is_copy_constructible_v<keel::Entry>);

namespace {
void expect_empty_shard(Shard& s) {
  EXPECT_FALSE(s);
  EXPECT_EQ(s.raw(), nullptr);
  expect_error(s.put("k", "v"), Status::Closed);
  expect_error(s.get("k"), Status::Closed);
  expect_error(s.multi_get({"k"}), Status::Closed);
  expect_error(s.scan(), Status::Closed);
  expect_error(s.flush(), Status::Closed);
  expect_error(s.last_version(), Status::Closed);
  expect_error(s.write(Batch().put("k", "v")), Status::Closed);
  KEEL_ASSERT_OK(s.close());  // closing nothing is fine
}
}  // namespace

TEST(ShardMove, MovedFromShardIsEmptyAndMoveAssignmentClosesTheReplaced) {
  TempDir tmp;
  Engine engine;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine(), small(), engine));
  Shard a;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, a));
  KEEL_ASSERT_OK(a.put("k", "one"));
  keel_shard_t* handle = a.raw();
  Shard b(std::move(a));
  EXPECT_EQ(b.raw(), handle);
  expect_empty_shard(a);  // NOLINT(bugprone-use-after-move): that is the point
  expect_value(b, "k", "one");

  // Assigning over b closes shard 1: it can be opened again (no BUSY).
  Shard two;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 2, two));
  b = std::move(two);
  expect_empty_shard(two);  // NOLINT(bugprone-use-after-move)
  Shard one_again;
  ASSERT_NO_FATAL_FAILURE(open_shard(engine, 1, one_again));
  expect_value(one_again, "k", "one");
  expect_error(engine.open_shard(2), Status::Busy);  // b holds it

  // release() hands the handle over; the C API closes it or a Shard adopts it.
  keel_shard_t* raw = b.release();
  expect_empty_shard(b);
  Shard adopted(raw);
  KEEL_ASSERT_OK(adopted.put("adopted", "yes"));
  KEEL_ASSERT_OK(adopted.close());
  KEEL_ASSERT_OK(engine.drop_shard(2));
}

TEST(ShardMove, EngineBatchAndIteratorMoves) {
  TempDir tmp;
  Engine first;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine("one"), small(), first));
  Engine moved(std::move(first));
  EXPECT_FALSE(first);  // NOLINT(bugprone-use-after-move)
  expect_error(first.open_shard(1), Status::Closed);
  expect_error(first.list_shards(), Status::Closed);
  expect_error(first.drop_shard(1), Status::Closed);
  KEEL_ASSERT_OK(first.close());
  Engine other;
  ASSERT_NO_FATAL_FAILURE(open_engine(tmp.engine("two"), small(), other));
  moved = std::move(other);  // closes "one": its directory is free again
  KEEL_ASSERT_OK(Engine::open(tmp.engine("one"), small()));
  expect_error(Engine::open(tmp.engine("two"), small()), Status::Busy);

  Shard s;
  ASSERT_NO_FATAL_FAILURE(open_shard(moved, 1, s));
  Batch b;
  b.put("a", "1").put("b", "2");
  Batch b2(std::move(b));
  EXPECT_EQ(b2.count().value(), 2u);
  EXPECT_FALSE(b);  // NOLINT(bugprone-use-after-move)
  expect_error(b.status(), Status::Closed);
  expect_error(b.count(), Status::Closed);
  expect_error(b.put("c", "3").status(), Status::Closed);
  expect_error(s.write(b), Status::Closed);
  KEEL_ASSERT_OK(s.write(b2));
  KEEL_ASSERT_OK(s.put("c", "3"));

  auto opened = s.scan();
  KEEL_ASSERT_OK(opened);
  Iterator it = std::move(opened).value();
  EXPECT_EQ(it.next().value()->key_str(), "a");
  Iterator it2(std::move(it));
  EXPECT_FALSE(it);  // NOLINT(bugprone-use-after-move)
  expect_error(it.next(), Status::Closed);
  EXPECT_EQ(it2.next().value()->key_str(), "b");  // the position moved along
  Iterator it3;
  it3 = std::move(it2);
  EXPECT_EQ(it3.next().value()->key_str(), "c");
  EXPECT_FALSE(it3.next().value().has_value());
  keel_iter_close(it3.release());  // the caller's job after release()
  EXPECT_FALSE(it3);
}
