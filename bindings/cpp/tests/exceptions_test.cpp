// keel.hpp with KEEL_CPP_EXCEPTIONS (set by CMake for this binary):
// unwrap()/value() throw keel::Exception carrying the keel::Error.
#include "test_util.hpp"

#ifndef KEEL_CPP_EXCEPTIONS
#error "this file tests the KEEL_CPP_EXCEPTIONS configuration"
#endif

using keel::Status;
using keel::Wal;

TEST(Exceptions, UnwrapReturnsTheValueOnSuccess) {
  TempDir tmp;
  Wal wal = Wal::open(tmp.wal()).unwrap();
  EXPECT_EQ(wal.append("x").unwrap(), 1u);
  EXPECT_NO_THROW(wal.sync().unwrap());
}

TEST(Exceptions, UnwrapThrowsTheError) {
  TempDir tmp;
  Wal wal = Wal::open(tmp.wal()).unwrap();
  try {
    Wal second = Wal::open(tmp.wal()).unwrap();
    FAIL() << "second open of a locked directory did not throw";
  } catch (const keel::Exception& e) {
    EXPECT_EQ(e.code(), Status::Busy);
    EXPECT_EQ(e.error().code(), Status::Busy);
    EXPECT_NE(std::string(e.what()).find("BUSY: "), std::string::npos) << e.what();
  }
  // Result<void>::value() and Result<T>::value() throw as well.
  EXPECT_THROW(wal.ack(99).value(), keel::Exception);
  EXPECT_THROW((void)wal.reader(50).value(), keel::Exception);
  // std::runtime_error is the base, so generic handlers see it.
  EXPECT_THROW(wal.ack(99).unwrap(), std::runtime_error);
}

TEST(Exceptions, ErrOfASuccessIsALogicError) {
  keel::Result<uint64_t> good = uint64_t{1};
  EXPECT_THROW((void)good.err(), std::logic_error);
}
