// The Result API: value access, errors, and the compile-time guards.
// Compile-time misuse (ignored results, implicit conversions) is covered
// by the compile_fail.* ctest cases; the type-level part is asserted here.
#include "test_util.hpp"

#include <type_traits>

using keel::Error;
using keel::Result;
using keel::Status;

// No implicit way from a Result to its value or to bool ...
static_assert(!std::is_convertible_v<Result<uint64_t>, uint64_t>);
static_assert(!std::is_convertible_v<Result<uint64_t>, bool>);
static_assert(!std::is_convertible_v<Result<void>, bool>);
// ... but `if (r)` works (explicit operator bool).
static_assert(std::is_constructible_v<bool, Result<void>>);
// A temporary Result hands its value out by value, never as a reference
// into itself: `for (auto e : shard.scan().value())` must iterate an
// Iterator that outlives the Result (a T&& dangled once the loop began).
static_assert(std::is_same_v<decltype(std::declval<Result<uint64_t>>().value()), uint64_t>);
static_assert(std::is_same_v<decltype(*std::declval<Result<uint64_t>>()), uint64_t>);
static_assert(std::is_same_v<decltype(std::declval<Result<uint64_t>&>().value()), uint64_t&>);
// Results are built implicitly from a value or an Error (how the wrapper returns).
static_assert(std::is_convertible_v<uint64_t, Result<uint64_t>>);
static_assert(std::is_convertible_v<Error, Result<uint64_t>>);
static_assert(std::is_convertible_v<Error, Result<void>>);

TEST(Result, ValueAndError) {
  Result<uint64_t> good = uint64_t{42};
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(static_cast<bool>(good));
  EXPECT_EQ(good.value(), 42u);
  EXPECT_EQ(*good, 42u);
  EXPECT_EQ(good.value_or(7), 42u);
  EXPECT_EQ(good.unwrap(), 42u);

  Result<uint64_t> bad = Error(Status::Busy, "locked");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.err().code(), Status::Busy);
  EXPECT_EQ(bad.err().message(), "locked");
  EXPECT_EQ(bad.err().to_string(), "BUSY: locked");
  EXPECT_EQ(bad.value_or(7), 7u);

  Result<void> done;
  EXPECT_TRUE(done.ok());
  done.unwrap();
  Result<void> failed = Error(Status::Io, "disk");
  EXPECT_FALSE(failed);
  EXPECT_EQ(failed.err().code(), Status::Io);
}

TEST(Result, MoveOnlyValuesMoveOut) {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(5);
  std::unique_ptr<int> p = std::move(r).value();
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 5);
}

#ifndef KEEL_CPP_EXCEPTIONS
// Without KEEL_CPP_EXCEPTIONS, taking the value of a failed Result (or the
// error of a good one) is a bug that aborts with the error, not UB.
TEST(ResultDeathTest, UnwrapOfAnErrorAbortsWithTheMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Result<uint64_t> bad = Error(Status::Truncated, "sequence 1 is gone");
  EXPECT_DEATH((void)bad.unwrap(), "TRUNCATED: sequence 1 is gone");
  EXPECT_DEATH((void)bad.value(), "TRUNCATED");
  Result<void> failed = Error(Status::Io, "disk");
  EXPECT_DEATH(failed.unwrap(), "IO: disk");
  Result<uint64_t> good = uint64_t{1};
  EXPECT_DEATH((void)good.err(), "successful result");
}
#endif
