// keel.hpp on its own: it must include everything it uses and compile
// without warnings under -Wall -Wextra -Werror -pedantic (see CMakeLists).
// The explicit instantiations compile every member of the Result templates
// the API returns, so warnings inside them are caught too.
#include "keel.hpp"

template class keel::Result<uint64_t>;
template class keel::Result<keel::Wal>;
template class keel::Result<keel::WalReader>;
template class keel::Result<std::optional<keel::Record>>;
template class keel::Result<std::optional<keel::RecordView>>;
