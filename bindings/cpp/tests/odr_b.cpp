// The second translation unit including keel.hpp (see odr_test.cpp).
#include "keel.hpp"

namespace odr {
keel::Result<void> (*check_abi_in_b())() { return &keel::check_abi; }
keel::Result<uint64_t> append_in_b(const keel::Wal& wal) { return wal.append_batch({"from b", "also b"}); }
}  // namespace odr
