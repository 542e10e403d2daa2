// wal_example — the keel write-ahead log from C++ (bindings/cpp/keel.hpp).
//
//   wal_example [DIR]     DIR defaults to a new temporary directory (kept,
//                         so you can look at the segment files)
//
// Opens a WAL, appends records and a batch, syncs, closes, reopens it and
// reads everything back. Exits non-zero on the first failure.
//
// Build (from the repository root, after `make lib`):
//   c++ -std=c++17 -Iinclude -Ibindings/cpp examples/cpp/wal_example.cpp
//       target/release/libkeel.a -lpthread -ldl -lm -o wal_example
#include "keel.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

// Prints the failed step and its keel error; returns the exit status.
static int fail(const char* step, const keel::Error& e) {
  std::fprintf(stderr, "wal_example: %s failed: %s\n", step, e.to_string().c_str());
  return 1;
}

int main(int argc, char** argv) {
  std::string dir;
  if (argc > 1) {
    dir = argv[1];
  } else {
    std::string tmpl = (std::filesystem::temp_directory_path() / "keel-wal-example-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) return std::perror("mkdtemp"), 1;
    dir = tmpl;
  }
  std::printf("keel %s, WAL in %s\n", std::string(keel::version()).c_str(), dir.c_str());

  // Durability::None: appends return once in the page cache; sync() below
  // makes them durable in one go. (The default, Sync, syncs every append.)
  const auto options = keel::WalOptions().durability(keel::Durability::None);
  uint64_t last = 0;
  {
    auto opened = keel::Wal::open(dir, options);
    if (!opened) return fail("open", opened.err());
    keel::Wal wal = std::move(opened).value();  // keel::Wal owns the handle

    for (const char* text : {"first record", "second record", "third record"}) {
      auto seq = wal.append(text);
      if (!seq) return fail("append", seq.err());
      std::printf("appended #%llu: %s\n", static_cast<unsigned long long>(seq.value()), text);
    }
    // A batch is atomic: after a crash all of its records are there or none.
    const std::vector<std::string> batch = {"batch a", "batch b", "batch c"};
    auto first = wal.append_batch(batch);
    if (!first) return fail("append_batch", first.err());
    std::printf("appended batch #%llu..#%llu\n", static_cast<unsigned long long>(first.value()),
                static_cast<unsigned long long>(first.value() + batch.size() - 1));

    if (auto synced = wal.sync(); !synced) return fail("sync", synced.err());
    last = wal.durable_seq().value_or(0);
    std::printf("durable up to #%llu\n", static_cast<unsigned long long>(last));

    // close() reports a failed final sync; the destructor would ignore it.
    if (auto closed = wal.close(); !closed) return fail("close", closed.err());
  }

  // Reopen: recovery finds every record, and reading starts from #1.
  auto reopened = keel::Wal::open(dir, options);
  if (!reopened) return fail("reopen", reopened.err());
  keel::Wal wal = std::move(reopened).value();
  auto reader = wal.reader(/*from=*/1);
  if (!reader) return fail("reader", reader.err());

  uint64_t count = 0;
  for (;;) {
    auto record = reader->next();
    if (!record) return fail("read", record.err());
    if (!record->has_value()) break;  // caught up with the log
    const keel::Record& r = **record;
    std::printf("read #%llu: %s\n", static_cast<unsigned long long>(r.seq), r.str().c_str());
    ++count;
  }
  if (count < last) {
    std::fprintf(stderr, "wal_example: read %llu records, expected at least %llu\n",
                 static_cast<unsigned long long>(count), static_cast<unsigned long long>(last));
    return 1;
  }
  std::printf("ok: %llu records survived the reopen\n", static_cast<unsigned long long>(count));
  return 0;  // the reader and the WAL close themselves here
}
