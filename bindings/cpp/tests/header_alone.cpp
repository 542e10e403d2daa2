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
template class keel::Result<keel::Net>;
template class keel::Result<keel::Writer>;
template class keel::Result<keel::Publisher>;
template class keel::Result<keel::Backend>;
template class keel::Result<keel::WriterStats>;
template class keel::Result<keel::PublisherStats>;
template class keel::Result<keel::Node>;
template class keel::Result<keel::NodeStats>;
template class keel::Result<std::string>;
template class keel::Result<bool>;
template class keel::Result<keel::ShardStats>;
template class keel::Result<keel::EngineStats>;
template class keel::Result<keel::ApplyResult>;
template class keel::Result<keel::LeaseStats>;
template class keel::Result<keel::ReadSession>;
template class keel::Result<keel::Net::Fallback>;
template class keel::Result<keel::Transfer>;
template class keel::Result<keel::TransferStatus>;
template class keel::Result<keel::TransferProgress>;
template class keel::Result<std::array<uint8_t, 32>>;

// The member templates and the range-for protocol, which explicit
// instantiation of the Result classes does not reach.
void keel_header_alone_templates(const keel::Shard& shard, keel::Iterator& it, keel::Batch& batch,
                                 const keel::Writer& writer) {
  const std::vector<std::string> keys = {"a", "b"};
  (void)shard.multi_get(keys);
  (void)shard.multi_get({"a", "b"});
  (void)shard.scan("a", "b");
  batch.put("k", "v").append("l", "i").del("k");
  for (const auto& e : it) {
    if (!e) break;
    (void)e->key_view();
  }
  // The writer's batch templates and the event handler bridge.
  (void)writer.send_batch(keys);
  (void)writer.send_batch({"a", "b"}, true);
  (void)writer.send_batch(std::vector<std::string_view>{"a"});
  auto net = keel::Net::open(keel::NetOptions().backend(keel::Backend::IoUring).on_event(
      [](uint64_t, keel::Status, std::string_view) {}));
  (void)net;
  (void)keel::WriterStats().items_per_send();
  // The node's handler bridge and its string-out calls.
  auto node = keel::Node::open(keel::Engine(), keel::NodeOptions().node_id(1).secret("s").on_event(
                                                   [](uint64_t, keel::Status, std::string_view) {}));
  (void)node;
  (void)keel::Node().addr();
  (void)keel::Node().last_error();
}
