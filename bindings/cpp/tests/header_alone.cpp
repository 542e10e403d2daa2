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
template class keel::Result<keel::Engine>;
template class keel::Result<keel::Shard>;
template class keel::Result<keel::Iterator>;
template class keel::Result<keel::EntryView>;
template class keel::Result<std::optional<keel::Value>>;
template class keel::Result<std::optional<keel::Entry>>;
template class keel::Result<std::optional<keel::EntryView>>;
template class keel::Result<std::vector<std::optional<keel::Value>>>;
template class keel::Result<std::pair<uint64_t, uint64_t>>;
template class keel::Result<std::vector<uint32_t>>;
template class keel::Result<std::vector<std::string>>;
template class keel::Result<std::vector<std::string_view>>;

// The member templates and the range-for protocol, which explicit
// instantiation of the Result classes does not reach.
void keel_header_alone_templates(const keel::Shard& shard, keel::Iterator& it, keel::Batch& batch) {
  const std::vector<std::string> keys = {"a", "b"};
  (void)shard.multi_get(keys);
  (void)shard.multi_get({"a", "b"});
  (void)shard.scan("a", "b");
  batch.put("k", "v").append("l", "i").del("k");
  for (const auto& e : it) {
    if (!e) break;
    (void)e->key_view();
  }
}
