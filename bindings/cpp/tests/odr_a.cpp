// One of two translation units that include keel.hpp (see odr_test.cpp).
#include "keel.hpp"

namespace odr {
keel::Result<void> (*check_abi_in_a())() { return &keel::check_abi; }
keel::Result<uint64_t> append_in_a(const keel::Wal& wal) { return wal.append("from a"); }
}  // namespace odr
