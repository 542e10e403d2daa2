// The WAL through keel.hpp: append, batch, read back, recovery, threads,
// readers, truncation. Every test uses a real temporary directory.
#include "test_util.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

using keel::Durability;
using keel::ReadUpto;
using keel::Record;
using keel::Status;
using keel::Wal;
using keel::WalOptions;

TEST(Version, HeaderMatchesLoadedLibrary) {
  KEEL_ASSERT_OK(keel::check_abi());
  EXPECT_EQ(keel::version(), KEEL_VERSION_STRING);
}

TEST(Wal, AppendAndReadBackByteExact) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));

  // Binary bytes (NUL, 0xFF), an empty record, and one far larger than the
  // reader's first buffer so that next() must grow it on BUFFER_TOO_SMALL.
  const std::string with_nul("a\0b\xff", 4);
  const std::vector<uint8_t> big = pattern(300 * 1024, 7);
  const char raw[] = {'r', 'a', 'w'};
  const std::vector<std::vector<uint8_t>> expected = {bytes("hello"), bytes(with_nul), {}, big, bytes("raw")};

  auto s1 = wal.append("hello");
  auto s2 = wal.append(std::string_view(with_nul));
  auto s3 = wal.append(std::string());
  auto s4 = wal.append(big);
  auto s5 = wal.append(raw, sizeof raw);
  for (const auto* r : {&s1, &s2, &s3, &s4, &s5}) KEEL_ASSERT_OK(*r);
  EXPECT_EQ(s1.value(), 1u);  // sequence numbers start at 1 and are dense
  EXPECT_EQ(s5.value(), 5u);

  EXPECT_EQ(wal.last_seq().value(), 5u);
  EXPECT_EQ(wal.first_seq().value(), 1u);
  EXPECT_EQ(wal.durable_seq().value(), 5u);  // Durability::Sync is the default

  auto reader = wal.reader();
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, i + 1);
    EXPECT_EQ(got[i].data, expected[i]) << "record " << i + 1;
  }
  EXPECT_EQ(got[1].view(), with_nul);

  KEEL_ASSERT_OK(wal.close());
}

// keel_wal_reader_open(): "The reader follows the log: records appended
// after it reached the end are returned by later calls to _next."
TEST(Wal, ReaderFollowsTheLogAfterCatchingUp) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  KEEL_ASSERT_OK(wal.append("first"));
  auto reader = wal.reader();
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));  // caught up: next() gave nullopt
  ASSERT_EQ(got.size(), 1u);

  KEEL_ASSERT_OK(wal.append("later"));
  auto next = reader->next_view();
  KEEL_ASSERT_OK(next);
  ASSERT_TRUE(next->has_value());
  EXPECT_EQ((*next)->seq, 2u);
  EXPECT_EQ((*next)->view(), "later");
}

// A range whose elements are made on the fly (each a temporary) is packed
// while each element lives: every record keeps its own bytes (the views
// kept to the temporaries once wrote freed memory into the log).
TEST(Wal, BatchOfGeneratedRecordsKeepsEachRecord) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().durability(Durability::None), wal));
  auto first = wal.append_batch(GeneratedStrings("record", 4));
  KEEL_ASSERT_OK(first);
  EXPECT_EQ(first.value(), 1u);
  auto reader = wal.reader(0, keel::ReadUpto::Appended);
  KEEL_ASSERT_OK(reader);
  std::vector<keel::Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].str(), GeneratedStrings::make("record", i));
}

TEST(Wal, BatchesArePackedInOrderWithConsecutiveSeqs) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().durability(Durability::None), wal));

  KEEL_ASSERT_OK(wal.append("single"));
  const std::vector<std::string_view> views = {"alpha", "", "gamma"};
  auto b1 = wal.append_batch(views);
  KEEL_ASSERT_OK(b1);
  EXPECT_EQ(b1.value(), 2u);
  auto b2 = wal.append_batch({"x", "yy"});
  KEEL_ASSERT_OK(b2);
  EXPECT_EQ(b2.value(), 5u);  // 3 records of the first batch took 2..4
  const std::vector<std::vector<uint8_t>> vectors = {pattern(10, 1), pattern(70000, 2)};
  auto b3 = wal.append_batch(vectors);
  KEEL_ASSERT_OK(b3);
  EXPECT_EQ(b3.value(), 7u);
  const keel::ByteView one[] = {keel::ByteView("only", 4)};
  auto b4 = wal.append_batch(one, 1);
  KEEL_ASSERT_OK(b4);
  EXPECT_EQ(b4.value(), 9u);
  EXPECT_EQ(wal.last_seq().value(), 9u);

  // An empty batch is refused and consumes no sequence number.
  auto empty = wal.append_batch(std::vector<std::string_view>{});
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.err().code(), Status::InvalidArgument);
  EXPECT_EQ(wal.last_seq().value(), 9u);

  auto reader = wal.reader(0, ReadUpto::Appended);
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  const std::vector<std::vector<uint8_t>> expected = {
      bytes("single"), bytes("alpha"), {}, bytes("gamma"), bytes("x"), bytes("yy"), vectors[0], vectors[1], bytes("only")};
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, i + 1);
    EXPECT_EQ(got[i].data, expected[i]) << "record " << i + 1;
  }
}

TEST(Wal, ReopenRecoversEveryRecordAndContinuesTheSequence) {
  TempDir tmp;
  const auto opts = WalOptions().durability(Durability::None).segment_size(64 * 1024);
  {
    Wal wal;
    ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), opts, wal));
    for (uint32_t i = 0; i < 100; ++i) KEEL_ASSERT_OK(wal.append(pattern(1000 + i, i)));  // spans segments
    KEEL_ASSERT_OK(wal.append_batch({"b1", "b2", "b3"}));
    KEEL_ASSERT_OK(wal.close());  // syncs: Durability::None relies on it
    EXPECT_FALSE(wal);
  }
  {
    Wal wal;
    ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), opts, wal));
    EXPECT_EQ(wal.first_seq().value(), 1u);
    EXPECT_EQ(wal.last_seq().value(), 103u);
    EXPECT_EQ(wal.durable_seq().value(), 103u);
    auto reader = wal.reader();
    KEEL_ASSERT_OK(reader);
    std::vector<Record> got;
    ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
    ASSERT_EQ(got.size(), 103u);
    for (uint32_t i = 0; i < 100; ++i) ASSERT_EQ(got[i].data, pattern(1000 + i, i)) << "record " << i + 1;
    EXPECT_EQ(got[102].str(), "b3");
    auto seq = wal.append("after reopen");
    KEEL_ASSERT_OK(seq);
    EXPECT_EQ(seq.value(), 104u);
    // No close(): the destructor must close (and unlock) the directory too.
  }
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), opts, wal));
  EXPECT_EQ(wal.last_seq().value(), 104u);
}

// Appenders on one shared Wal (its members are const and thread-safe) get
// unique, dense sequence numbers, and each number holds what its appender
// wrote. Each round is one append and one batch of two.
namespace {
constexpr int kThreads = 4, kRounds = 100;
constexpr uint64_t kTotal = kThreads * kRounds * 3;

// Runs the appenders; returns seq -> payload over all threads.
void run_appenders(const Wal& wal, std::map<uint64_t, std::string>& all) {
  std::vector<std::map<uint64_t, std::string>> written(kThreads);
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const std::string one = "t" + std::to_string(t) + "-" + std::to_string(i);
        const std::string a = one + "-a", b = one + "-b";
        auto s = wal.append(one);
        auto f = wal.append_batch({a, b});
        if (!s || !f) { failures[t] = (!s ? s.err() : f.err()).to_string(); return; }
        written[t][s.value()] = one;
        written[t][f.value()] = a;
        written[t][f.value() + 1] = b;
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const auto& f : failures) ASSERT_EQ(f, "");
  for (const auto& w : written) {
    for (const auto& [seq, payload] : w) ASSERT_TRUE(all.emplace(seq, payload).second) << "seq " << seq << " given twice";
  }
  ASSERT_EQ(all.size(), kTotal);
  EXPECT_EQ(all.begin()->first, 1u);
  EXPECT_EQ(all.rbegin()->first, kTotal);  // unique + count + range = dense
}

void expect_records(const std::vector<Record>& got, std::map<uint64_t, std::string>& all) {
  ASSERT_EQ(got.size(), kTotal);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].seq, i + 1);
    ASSERT_EQ(got[i].str(), all[i + 1]) << "seq " << i + 1;
  }
}
}  // namespace

TEST(Wal, ConcurrentAppendersGetUniqueDenseSeqs) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));  // Sync: group commit
  std::map<uint64_t, std::string> all;
  ASSERT_NO_FATAL_FAILURE(run_appenders(wal, all));
  EXPECT_EQ(wal.last_seq().value(), kTotal);
  EXPECT_EQ(wal.durable_seq().value(), kTotal);

  auto reader = wal.reader();
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  expect_records(got, all);
}

// A reader on another thread follows the log while the appenders run and
// sees every record once, in order (needs ReaderFollowsTheLogAfterCatchingUp).
TEST(Wal, ReaderThreadFollowsConcurrentAppenders) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  auto opened = wal.reader(0, ReadUpto::Appended);
  KEEL_ASSERT_OK(opened);
  std::vector<Record> followed;
  std::string failure;
  // The WalReader moves into the thread: one user at a time, as required.
  std::thread follower([&, reader = std::move(opened).value()]() mutable {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (followed.size() < kTotal && std::chrono::steady_clock::now() < deadline) {
      auto r = reader.next();
      if (!r) { failure = r.err().to_string(); return; }
      if (r->has_value()) followed.push_back(std::move(**r)); else std::this_thread::yield();
    }
  });
  std::map<uint64_t, std::string> all;
  run_appenders(wal, all);
  follower.join();
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_EQ(failure, "");
  expect_records(followed, all);
}

TEST(Wal, ReaderFromTheMiddle) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  for (int i = 1; i <= 10; ++i) KEEL_ASSERT_OK(wal.append("r" + std::to_string(i)));

  auto reader = wal.reader(6);
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  ASSERT_EQ(got.size(), 5u);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].seq, 6 + i);
    EXPECT_EQ(got[i].str(), "r" + std::to_string(6 + i));
  }

  // last_seq + 1 is a valid start (it waits for the next record) ...
  auto at_end = wal.reader(11);
  KEEL_ASSERT_OK(at_end);
  auto none = at_end->next();
  KEEL_ASSERT_OK(none);
  EXPECT_FALSE(none->has_value());
  KEEL_ASSERT_OK(wal.append("r11"));
  auto r11 = at_end->next();
  KEEL_ASSERT_OK(r11);
  ASSERT_TRUE(r11->has_value());
  EXPECT_EQ((*r11)->seq, 11u);
  EXPECT_EQ((*r11)->str(), "r11");

  // ... but beyond it is an error.
  auto beyond = wal.reader(13);
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.err().code(), Status::InvalidArgument);
}

TEST(Wal, DurableReaderSeesOnlySyncedRecords) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().durability(Durability::None), wal));
  for (int i = 0; i < 3; ++i) KEEL_ASSERT_OK(wal.append("d"));
  EXPECT_EQ(wal.durable_seq().value(), 0u);  // nothing synced yet in mode None

  auto durable = wal.reader(0, ReadUpto::Durable);
  auto appended = wal.reader(0, ReadUpto::Appended);
  KEEL_ASSERT_OK(durable);
  KEEL_ASSERT_OK(appended);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*durable, got));
  EXPECT_EQ(got.size(), 0u);
  ASSERT_NO_FATAL_FAILURE(read_all(*appended, got));
  EXPECT_EQ(got.size(), 3u);

  KEEL_ASSERT_OK(wal.sync());
  EXPECT_EQ(wal.durable_seq().value(), 3u);
  got.clear();
  ASSERT_NO_FATAL_FAILURE(read_all(*durable, got));
  EXPECT_EQ(got.size(), 3u);
}

// Fills ~200 KB into 64 KiB segments so that ack() can delete whole ones.
static void fill_segments(const Wal& wal, uint32_t count) {
  for (uint32_t i = 1; i <= count; ++i) KEEL_ASSERT_OK(wal.append(pattern(1000, i)));
}

TEST(Wal, AckTruncatesAndOldSeqsReportTruncated) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().durability(Durability::None).segment_size(64 * 1024), wal));
  ASSERT_NO_FATAL_FAILURE(fill_segments(wal, 200));

  KEEL_ASSERT_OK(wal.ack(150));
  const uint64_t first = wal.first_seq().value();
  EXPECT_GT(first, 1u) << "ack(150) deleted no segment";
  EXPECT_LE(first, 151u) << "ack(150) deleted records after 150";

  auto old = wal.reader(1);
  ASSERT_FALSE(old.ok());
  EXPECT_EQ(old.err().code(), Status::Truncated);
  EXPECT_NE(old.err().message().find("below the first retained"), std::string::npos) << old.err().message();
  auto keep = wal.set_keep_from(first - 1);
  ASSERT_FALSE(keep.ok());
  EXPECT_EQ(keep.err().code(), Status::Truncated);

  // What is left reads back intact from first_seq.
  auto reader = wal.reader(first, ReadUpto::Appended);
  KEEL_ASSERT_OK(reader);
  std::vector<Record> got;
  ASSERT_NO_FATAL_FAILURE(read_all(*reader, got));
  ASSERT_EQ(got.size(), 200 - first + 1);
  for (const auto& rec : got) ASSERT_EQ(rec.data, pattern(1000, static_cast<uint32_t>(rec.seq)));

  auto too_far = wal.ack(201);
  ASSERT_FALSE(too_far.ok());
  EXPECT_EQ(too_far.err().code(), Status::InvalidArgument);
}

TEST(Wal, KeepFromAndOpenReadersHoldTruncationBack) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().durability(Durability::None).segment_size(64 * 1024), wal));
  ASSERT_NO_FATAL_FAILURE(fill_segments(wal, 200));

  KEEL_ASSERT_OK(wal.set_keep_from(1));
  KEEL_ASSERT_OK(wal.ack(200));
  EXPECT_EQ(wal.first_seq().value(), 1u);  // the hold beats the ack

  {
    // A live reader pins its segments: releasing the hold (which retries
    // truncation) must keep them. Destroying the WalReader must release
    // the pin (the RAII deleter really closes the C reader).
    auto reader = wal.reader(1, ReadUpto::Appended);
    KEEL_ASSERT_OK(reader);
    KEEL_ASSERT_OK(wal.set_keep_from(Wal::keep_none));
    KEEL_ASSERT_OK(wal.ack(200));
    EXPECT_EQ(wal.first_seq().value(), 1u);
  }
  KEEL_ASSERT_OK(wal.ack(200));
  EXPECT_GT(wal.first_seq().value(), 1u);
}
