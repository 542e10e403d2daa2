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

TEST(Exceptions, ShardErrorsThrowWithTheirStatus) {
  TempDir tmp;
  keel::Engine engine = keel::Engine::open(tmp.engine(), keel::EngineOptions().wal_segment_size(1 << 20)).unwrap();
  keel::Shard shard = engine.open_shard(1).unwrap();
  EXPECT_EQ(shard.put("k", "v").unwrap(), 1u);
  try {
    (void)shard.append("k", "item").unwrap();
    FAIL() << "append to a value did not throw";
  } catch (const keel::Exception& e) {
    EXPECT_EQ(e.code(), Status::WrongKind);
    EXPECT_NE(std::string(e.what()).find("WRONG_KIND: "), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)engine.open_shard(1).value(), keel::Exception);  // already open: BUSY
  EXPECT_THROW(shard.get("k").value()->items().value(), keel::Exception);  // a value has no items
}
