// keel.hpp is included by odr_a.cpp, odr_b.cpp and every test TU, all
// linked into one binary: a non-inline definition in the header would fail
// to link (duplicate symbol). An inline function has one address program-
// wide; a `static` one would get one copy per TU, which this detects.
#include "test_util.hpp"

namespace odr {
keel::Result<void> (*check_abi_in_a())();
keel::Result<void> (*check_abi_in_b())();
keel::Result<uint64_t> append_in_a(const keel::Wal& wal);
keel::Result<uint64_t> append_in_b(const keel::Wal& wal);
}  // namespace odr

TEST(Odr, InlineFunctionsAreSharedAcrossTranslationUnits) {
  EXPECT_EQ(odr::check_abi_in_a(), odr::check_abi_in_b());
  EXPECT_EQ(odr::check_abi_in_a(), &keel::check_abi);
}

TEST(Odr, BothTranslationUnitsDriveTheSameWal) {
  TempDir tmp;
  keel::Wal wal;
  ASSERT_NO_FATAL_FAILURE(open_wal(tmp.wal(), keel::WalOptions(), wal));
  auto a = odr::append_in_a(wal);
  auto b = odr::append_in_b(wal);
  KEEL_ASSERT_OK(a);
  KEEL_ASSERT_OK(b);
  EXPECT_EQ(a.value(), 1u);
  EXPECT_EQ(b.value(), 2u);
  EXPECT_EQ(wal.last_seq().value(), 3u);
}
