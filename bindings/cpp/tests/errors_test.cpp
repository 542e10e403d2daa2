// Errors reach C++ as keel::Error with the right Status and the library's
// message, never as a crash or a silently ignored failure.
#include "test_util.hpp"

#include <chrono>
#include <filesystem>
#include <fstream>

using keel::Durability;
using keel::Status;
using keel::Wal;
using keel::WalOptions;

namespace {
// Expects open() to fail with `code` and a message containing `needle`.
void expect_open_error(const std::string& dir, const WalOptions& opts, Status code, const std::string& needle) {
  auto r = Wal::open(dir, opts);
  ASSERT_FALSE(r.ok()) << "open unexpectedly succeeded";
  EXPECT_EQ(r.err().code(), code) << r.err().to_string();
  EXPECT_NE(r.err().message().find(needle), std::string::npos) << r.err().message();
}
}  // namespace

TEST(Errors, BadOptionsAreInvalidArgumentWithAMessage) {
  TempDir tmp;
  expect_open_error(tmp.wal(), WalOptions().segment_size(1024), Status::InvalidArgument, "segment_size");
  expect_open_error(tmp.wal(), WalOptions().segment_size(64 * 1024).max_record_size(64 * 1024),
                    Status::InvalidArgument, "max_record_size");
  expect_open_error(tmp.wal(), WalOptions().durability(Durability::Periodic).sync_interval(std::chrono::milliseconds(0)),
                    Status::InvalidArgument, "sync_interval_ms");
  // Too large for uint32_t: must be rejected, not wrapped to a valid value.
  expect_open_error(tmp.wal(),
                    WalOptions().durability(Durability::Periodic).sync_interval(std::chrono::hours(24 * 365 * 1000)),
                    Status::InvalidArgument, "sync_interval_ms");
  expect_open_error(tmp.wal(), WalOptions().durability(Durability::Periodic).sync_interval(std::chrono::milliseconds(-5)),
                    Status::InvalidArgument, "sync_interval_ms");

  WalOptions bad_enum;
  bad_enum.raw().durability = 7;  // not a KEEL_DURABILITY_* value
  expect_open_error(tmp.wal(), bad_enum, Status::InvalidArgument, "durability");
  WalOptions bad_recovery;
  bad_recovery.raw().recovery_mode = 99;
  expect_open_error(tmp.wal(), bad_recovery, Status::InvalidArgument, "recovery_mode");
  WalOptions no_size;
  no_size.raw().struct_size = 0;  // as if keel_wal_options_init() was skipped
  expect_open_error(tmp.wal(), no_size, Status::InvalidArgument, "struct_size");

  // A valid periodic configuration opens.
  auto ok = Wal::open(tmp.wal(), WalOptions().durability(Durability::Periodic).sync_interval(std::chrono::milliseconds(5)));
  KEEL_ASSERT_OK(ok);
}

TEST(Errors, OptionsRoundTripThroughTheBuilder) {
  const auto o = WalOptions()
                     .durability(Durability::Periodic)
                     .sync_interval(std::chrono::milliseconds(250))
                     .recovery(keel::RecoveryMode::PointInTime)
                     .segment_size(1 << 20)
                     .max_record_size(4096);
  EXPECT_EQ(o.durability(), Durability::Periodic);
  EXPECT_EQ(o.sync_interval(), std::chrono::milliseconds(250));
  EXPECT_EQ(o.recovery(), keel::RecoveryMode::PointInTime);
  EXPECT_EQ(o.segment_size(), 1u << 20);
  EXPECT_EQ(o.max_record_size(), 4096u);
  EXPECT_EQ(o.raw().struct_size, sizeof(keel_wal_options_t));
  // The defaults are the library's (keel_wal_options_init_sized).
  keel_wal_options_t c;
  ASSERT_EQ(keel_wal_options_init_sized(&c, sizeof c), KEEL_STATUS_OK);
  const WalOptions d;
  EXPECT_EQ(d.durability(), Durability::Sync);
  EXPECT_EQ(d.raw().segment_size, c.segment_size);
  EXPECT_EQ(d.raw().sync_interval_ms, c.sync_interval_ms);
  EXPECT_FALSE(d.allow_foreign_files());
}

TEST(Errors, AForeignDirectoryIsRefusedUnlessAllowed) {
  TempDir tmp;
  std::filesystem::create_directories(tmp.wal());
  std::ofstream(tmp.wal() + "/notes.txt") << "not keel";
  expect_open_error(tmp.wal(), WalOptions(), Status::InvalidArgument, "holds no keel WAL segment");
  auto w = Wal::open(tmp.wal(), WalOptions().allow_foreign_files(true));
  KEEL_ASSERT_OK(w);
}

TEST(Errors, SecondOpenOfTheSameDirectoryIsBusy) {
  TempDir tmp;
  Wal first;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), first));
  auto second = Wal::open(tmp.wal());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.err().code(), Status::Busy);
  EXPECT_NE(second.err().message().find("already open"), std::string::npos) << second.err().message();
  EXPECT_EQ(second.err().to_string().rfind("BUSY: ", 0), 0u) << second.err().to_string();

  KEEL_ASSERT_OK(first.close());  // releases the lock
  auto third = Wal::open(tmp.wal());
  KEEL_ASSERT_OK(third);
}

TEST(Errors, BadPathsFailCleanly) {
  TempDir tmp;
  const std::string file = (tmp.path() / "a-file").string();
  std::ofstream(file) << "not a directory";
  auto on_file = Wal::open(file + "/wal");
  ASSERT_FALSE(on_file.ok());
  EXPECT_EQ(on_file.err().code(), Status::Io) << on_file.err().to_string();

  // An embedded NUL would make C open a different (truncated) path.
  auto with_nul = Wal::open(tmp.wal() + std::string("\0x", 2));
  ASSERT_FALSE(with_nul.ok());
  EXPECT_EQ(with_nul.err().code(), Status::InvalidArgument);

  auto empty = Wal::open("");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.err().code(), Status::InvalidArgument);
}

TEST(Errors, RecordLargerThanMaxRecordSizeIsRefused) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions().max_record_size(100), wal));
  auto big = wal.append(std::string(101, 'x'));
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.err().code(), Status::InvalidArgument);
  EXPECT_NE(big.err().message().find("max_record_size"), std::string::npos) << big.err().message();
  // A batch counts its total payload.
  const std::string a(60, 'a'), b(60, 'b');
  auto batch = wal.append_batch({a, b});
  ASSERT_FALSE(batch.ok());
  EXPECT_EQ(batch.err().code(), Status::InvalidArgument);
  EXPECT_EQ(wal.last_seq().value(), 0u);  // nothing consumed a sequence number
  auto fits = wal.append(std::string(100, 'x'));
  KEEL_ASSERT_OK(fits);
  EXPECT_EQ(fits.value(), 1u);
}

TEST(Errors, ReaderOutlivingItsWalReportsClosed) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  KEEL_ASSERT_OK(wal.append("one"));
  auto reader = wal.reader();
  KEEL_ASSERT_OK(reader);
  KEEL_ASSERT_OK(wal.close());
  auto r = reader->next();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), Status::Closed);
  // Destroying the reader after its WAL must be safe (checked by ASan/valgrind runs too).
}

TEST(Errors, StatusNamesMirrorTheCApi) {
  for (keel_status_t s = KEEL_STATUS_OK; s <= static_cast<keel_status_t>(keel::last_status); ++s) {
    EXPECT_STREQ(keel::to_string(static_cast<Status>(s)), keel_status_str(s));
    EXPECT_STRNE(keel_status_str(s), "UNKNOWN") << s;
  }
  // The library knows no status after the last keel::Status: a new code in
  // keel.h must get an enumerator (the static_assert in keel.hpp only pins
  // the last code it knows).
  EXPECT_STREQ(keel_status_str(static_cast<keel_status_t>(keel::last_status) + 1), "UNKNOWN");
  EXPECT_STREQ(keel::to_string(Status::WrongKind), "WRONG_KIND");
  EXPECT_STREQ(keel::to_string(Status::Truncated), "TRUNCATED");
  EXPECT_STREQ(keel::to_string(Status::Busy), "BUSY");
  static_assert(static_cast<keel_status_t>(Status::Truncated) == KEEL_STATUS_TRUNCATED);
  static_assert(static_cast<keel_status_t>(Status::NoSpace) == KEEL_STATUS_NO_SPACE);
  static_assert(static_cast<keel_status_t>(Status::WrongKind) == KEEL_STATUS_WRONG_KIND);
  static_assert(static_cast<uint32_t>(keel::Kind::Posting) == KEEL_KIND_POSTING);
  static_assert(static_cast<uint32_t>(keel::Durability::None) == KEEL_DURABILITY_NONE);
  static_assert(static_cast<uint32_t>(keel::RecoveryMode::Salvage) == KEEL_RECOVERY_SALVAGE);
  static_assert(static_cast<uint32_t>(keel::ReadUpto::Appended) == KEEL_WAL_READ_APPENDED);
}

// A null `const char*` is no string: every call taking bytes returns
// NullArgument (it used to build a std::string_view from nullptr and
// crash), appends nothing, and "" still appends an empty record.
TEST(Errors, NullCStringIsNullArgumentNotACrash) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  const char* none = nullptr;
  auto r = wal.append(none);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), Status::NullArgument) << r.err().to_string();
  EXPECT_NE(r.err().message().find("null const char*"), std::string::npos) << r.err().message();
  auto batch = wal.append_batch(std::vector<keel::ByteView>{"a", none});
  ASSERT_FALSE(batch.ok());
  EXPECT_EQ(batch.err().code(), Status::NullArgument);
  EXPECT_EQ(keel::posting_items(none).err().code(), Status::NullArgument);
  EXPECT_EQ(wal.last_seq().value(), 0u);  // nothing was appended
  KEEL_ASSERT_OK(wal.append(""));
  EXPECT_EQ(wal.last_seq().value(), 1u);
}
