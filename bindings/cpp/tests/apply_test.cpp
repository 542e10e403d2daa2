// Applying committed entries and fenced writes through keel.hpp:
// Shard::apply() with its ApplyResult (refusals that move the index,
// duplicates, empty entries), Shard::applied_index() across a reopen,
// Shard::write() with a Fence, and fenced writers racing on threads.
#include "test_util.hpp"

#include <algorithm>
#include <string>
#include <mutex>
#include <thread>

using keel::ApplyResult;
using keel::Batch;
using keel::Engine;
using keel::EngineOptions;
using keel::Fence;
using keel::Shard;
using keel::Status;
using keel::WriteOptions;

namespace {

EngineOptions options() { return EngineOptions().wal_segment_size(1 << 20).flush_interval(std::chrono::milliseconds(0)); }

TEST(ApplyTest, EntriesMoveTheIndexAndSurviveAReopen) {
  TempDir dir;
  Engine engine;
  Shard shard;
  open_engine(dir.engine(), options(), engine);
  open_shard(engine, 1, shard);
  EXPECT_EQ(shard.applied_index().value(), 0u);

  Batch put;
  put.put("k", "v");
  auto r = shard.apply(1, put, Fence{"jobs", 5});
  KEEL_ASSERT_OK(r);
  EXPECT_FALSE(r->refused());
  EXPECT_FALSE(r->duplicate);
  EXPECT_EQ(r->op_count, 1u);
  EXPECT_EQ(r->first_version, r->last_version);
  EXPECT_EQ(r->applied_index, 1u);

  r = shard.apply(2);  // an empty entry
  KEEL_ASSERT_OK(r);
  EXPECT_EQ(r->op_count, 0u);
  EXPECT_EQ(r->applied_index, 2u);

  Batch stale;
  stale.put("x", "stale");
  r = shard.apply(3, stale, Fence{"jobs", 4});
  KEEL_ASSERT_OK(r);
  EXPECT_EQ(r->status, Status::Fenced);
  EXPECT_EQ(r->op_count, 0u);
  EXPECT_EQ(r->applied_index, 3u);

  Batch wrong;
  wrong.append("k", "item");
  r = shard.apply(4, wrong);
  KEEL_ASSERT_OK(r);
  EXPECT_EQ(r->status, Status::WrongKind);
  EXPECT_EQ(r->applied_index, 4u);

  r = shard.apply(2, stale);
  KEEL_ASSERT_OK(r);
  EXPECT_TRUE(r->duplicate);
  EXPECT_FALSE(shard.get("x").value().has_value()) << "a refused or duplicate entry wrote x";

  auto zero = shard.apply(0);
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.err().code(), Status::InvalidArgument);

  // Fenced writes: the entries' token counts, an equal token passes.
  auto w = shard.write(stale, Fence{"jobs", 4});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.err().code(), Status::Fenced);
  KEEL_ASSERT_OK(shard.write(put, Fence{"jobs", 5}));
  KEEL_ASSERT_OK(shard.write(stale, WriteOptions()));  // no fence
  KEEL_ASSERT_OK(shard.write(put, Fence{"", 2}));      // the empty bucket

  KEEL_ASSERT_OK(shard.close());
  KEEL_ASSERT_OK(engine.close());
  open_engine(dir.engine(), options(), engine);
  open_shard(engine, 1, shard);
  EXPECT_EQ(shard.applied_index().value(), 4u);
  w = shard.write(put, Fence{"jobs", 4});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.err().code(), Status::Fenced) << "a reopen lowered the highest token";
  EXPECT_TRUE(shard.apply(4, put)->duplicate);

  Shard empty;
  EXPECT_EQ(empty.applied_index().err().code(), Status::Closed);
  EXPECT_EQ(empty.apply(5).err().code(), Status::Closed);
}

// A Fence keeps its own copy of the bucket: one held in a variable (or in
// WriteOptions) is not changed by what later happens to the string it was
// made from. Before the Fence owned its bytes it viewed them, so the write
// below fenced whatever the string held then (here "xxxx"), and a Fence
// made from a temporary read freed memory (ASan: heap-use-after-free).
TEST(ApplyTest, AFenceOwnsItsBucket) {
  TempDir dir;
  Engine engine;
  Shard shard;
  open_engine(dir.engine(), options(), engine);
  open_shard(engine, 1, shard);
  Batch put;
  put.put("k", "v");

  std::string name = "jobs";
  const WriteOptions held = Fence{name, 5};
  name = "xxxx";  // the same length, so a view would read these bytes
  KEEL_ASSERT_OK(shard.write(put, held));
  auto w = shard.write(put, Fence{"jobs", 4});
  ASSERT_FALSE(w.ok()) << "the held fence did not record its token for \"jobs\"";
  EXPECT_EQ(w.err().code(), Status::Fenced);
  EXPECT_TRUE(shard.write(put, Fence{"xxxx", 1}).ok()) << "the held fence recorded its token for \"xxxx\"";

  // Longer than any small-string buffer, so the bytes are on the heap and
  // freed with the temporary at the end of the line.
  const std::string bucket(64, 'q');
  const Fence from_temporary{std::string(bucket), 9};
  KEEL_ASSERT_OK(shard.write(put, from_temporary));
  w = shard.write(put, Fence{bucket, 8});
  ASSERT_FALSE(w.ok()) << "the fence made from a temporary did not record its token for its bucket";
  EXPECT_EQ(w.err().code(), Status::Fenced);

  // A null const char* is still no bucket at all (not "").
  const char* no_bucket = nullptr;
  w = shard.write(put, Fence{no_bucket, 10});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.err().code(), Status::NullArgument);
}

// Threads race fenced writes: accepted tokens never go down in version
// order, the highest token is never refused, refused ones are below it.
TEST(ApplyTest, ConcurrentFencedWriters) {
  TempDir dir;
  Engine engine;
  Shard shard;
  open_engine(dir.engine(), options().durability(keel::Durability::None), engine);
  open_shard(engine, 1, shard);
  constexpr uint64_t kWriters = 6, kWrites = 100;
  std::mutex mu;
  std::vector<std::pair<uint64_t, uint64_t>> accepted;  // version, token
  std::vector<uint64_t> refused;
  std::vector<std::thread> threads;
  for (uint64_t t = 1; t <= kWriters; t++) {
    threads.emplace_back([&, t] {
      for (uint64_t i = 0; i < kWrites; i++) {
        const uint64_t token = t * (i / 10 + 1);
        Batch b;
        b.put("w/" + std::to_string(t) + "/" + std::to_string(i), "v");
        auto r = shard.write(b, Fence{"b", token});
        std::lock_guard<std::mutex> lock(mu);
        if (r.ok()) {
          accepted.emplace_back(r->first, token);
        } else {
          EXPECT_EQ(r.err().code(), Status::Fenced) << r.err().to_string();
          refused.push_back(token);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::sort(accepted.begin(), accepted.end());
  for (size_t i = 1; i < accepted.size(); i++) {
    ASSERT_LE(accepted[i - 1].second, accepted[i].second) << "at version " << accepted[i].first;
  }
  const uint64_t highest = accepted.back().second;
  EXPECT_EQ(highest, kWriters * ((kWrites - 1) / 10 + 1));
  for (uint64_t tok : refused) EXPECT_LT(tok, highest);
}

}  // namespace
