// Ownership: Wal and WalReader are move-only; a moved-from, released or
// closed object is empty, reports Status::Closed and is safe to destroy.
#include "test_util.hpp"

#include <type_traits>

using keel::Status;
using keel::Wal;
using keel::WalOptions;
using keel::WalReader;

static_assert(!std::is_copy_constructible_v<Wal> && !std::is_copy_assignable_v<Wal>);
static_assert(std::is_nothrow_move_constructible_v<Wal> && std::is_nothrow_move_assignable_v<Wal>);
static_assert(!std::is_copy_constructible_v<WalReader> && !std::is_copy_assignable_v<WalReader>);
static_assert(std::is_nothrow_move_constructible_v<WalReader> && std::is_nothrow_move_assignable_v<WalReader>);
// Result<Wal> inherits move-only-ness: a Result cannot duplicate a handle.
static_assert(!std::is_copy_constructible_v<keel::Result<Wal>>);

// Every handle class at once (list a new one here). They share their
// ownership rules through detail::Handle, so an edit of the base, or a
// member added to one class, could otherwise make one copyable (two owners
// closing one C handle twice) or its moves throwing (std::vector then
// copies, or fails to compile, instead of moving) without any test noticing.
// One function per class, so a failure names the class.
template <class H>
constexpr bool is_move_only_handle() {
  static_assert(!std::is_copy_constructible_v<H> && !std::is_copy_assignable_v<H>, "a handle class is copyable");
  static_assert(std::is_nothrow_move_constructible_v<H> && std::is_nothrow_move_assignable_v<H>,
                "a handle class has a move that may throw");
  return true;
}
template <class... H>
constexpr bool are_move_only_handles() {
  return (is_move_only_handle<H>() && ...);
}
static_assert(are_move_only_handles<keel::WalReader, keel::Wal, keel::Iterator, keel::Batch, keel::Shard,
                                    keel::ReadSession, keel::Engine, keel::Net, keel::Writer, keel::Publisher,
                                    keel::Node, keel::Transfer>());

namespace {
void expect_closed(const keel::Result<uint64_t>& r) {
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.err().code(), Status::Closed);
}
void expect_empty_wal(Wal& w) {
  EXPECT_FALSE(w);
  EXPECT_EQ(w.raw(), nullptr);
  expect_closed(w.append("x"));
  expect_closed(w.last_seq());
  expect_closed(w.append_batch({"a"}));
  EXPECT_EQ(w.sync().err().code(), Status::Closed);
  EXPECT_EQ(w.reader().err().code(), Status::Closed);
  KEEL_ASSERT_OK(w.close());  // closing nothing is fine
}
}  // namespace

TEST(Move, MovedFromWalIsEmptyAndTheTargetWorks) {
  TempDir tmp;
  Wal a;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), a));
  KEEL_ASSERT_OK(a.append("before"));
  keel_wal_t* handle = a.raw();

  Wal b(std::move(a));
  EXPECT_EQ(b.raw(), handle);
  expect_empty_wal(a);  // NOLINT(bugprone-use-after-move): that is the point
  auto s = b.append("after");
  KEEL_ASSERT_OK(s);
  EXPECT_EQ(s.value(), 2u);

  Wal c;
  c = std::move(b);
  expect_empty_wal(b);  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.last_seq().value(), 2u);
}

TEST(Move, MoveAssignmentClosesTheWalItReplaces) {
  TempDir tmp;
  Wal first, second;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal("one"), WalOptions(), first));
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal("two"), WalOptions(), second));
  KEEL_ASSERT_OK(first.append("in one"));

  first = std::move(second);
  // "one" was closed, so its lock is free again; "two" is still held.
  auto reopened = Wal::open(tmp.wal("one"));
  KEEL_ASSERT_OK(reopened);
  EXPECT_EQ(reopened->last_seq().value(), 1u);
  auto busy = Wal::open(tmp.wal("two"));
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.err().code(), Status::Busy);
}

TEST(Move, CloseLeavesTheWalEmpty) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  KEEL_ASSERT_OK(wal.close());
  expect_empty_wal(wal);
}

TEST(Move, ReleaseHandsOwnershipToTheCaller) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  keel_wal_t* raw = wal.release();
  ASSERT_NE(raw, nullptr);
  expect_empty_wal(wal);

  // The raw handle still works through the C API, then adopted back.
  uint64_t seq = 0;
  ASSERT_EQ(keel_wal_append(raw, reinterpret_cast<const uint8_t*>("c"), 1, &seq, nullptr), KEEL_STATUS_OK);
  EXPECT_EQ(seq, 1u);
  Wal adopted(raw);
  EXPECT_EQ(adopted.last_seq().value(), 1u);

  auto reader = adopted.reader();
  KEEL_ASSERT_OK(reader);
  keel_wal_reader_t* raw_reader = reader->release();
  EXPECT_FALSE(*reader);
  keel_wal_reader_close(raw_reader);  // the caller's job after release()
}

TEST(Move, MovedReaderKeepsItsPositionAndTheSourceIsEmpty) {
  TempDir tmp;
  Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), WalOptions(), wal));
  for (const char* s : {"one", "two", "three"}) KEEL_ASSERT_OK(wal.append(s));

  auto opened = wal.reader();
  KEEL_ASSERT_OK(opened);
  WalReader first = std::move(opened).value();
  auto one = first.next();
  KEEL_ASSERT_OK(one);
  ASSERT_TRUE(one->has_value());
  EXPECT_EQ((*one)->str(), "one");

  WalReader second(std::move(first));
  EXPECT_FALSE(first);  // NOLINT(bugprone-use-after-move)
  auto from_empty = first.next();
  ASSERT_FALSE(from_empty.ok());
  EXPECT_EQ(from_empty.err().code(), Status::Closed);
  auto two = second.next();
  KEEL_ASSERT_OK(two);
  ASSERT_TRUE(two->has_value());
  EXPECT_EQ((*two)->str(), "two");

  WalReader third;
  third = std::move(second);
  auto three = third.next();
  KEEL_ASSERT_OK(three);
  ASSERT_TRUE(three->has_value());
  EXPECT_EQ((*three)->seq, 3u);
  // first and second are destroyed empty at scope end; third closes its reader.
}

TEST(Move, WalOutOfAResultByUnwrap) {
  TempDir tmp;
  Wal wal = Wal::open(tmp.wal()).unwrap();
  EXPECT_TRUE(wal);
  KEEL_ASSERT_OK(wal.append("x"));
}
