/*
 * keel_engine_stats through the C API:
 * - the engine's threads are its flush workers plus its WAL workers, and
 *   the process really gains that many threads at open (/proc/self/task);
 * - opening 40 shards in PERIODIC mode and writing to each adds no thread
 *   (once the helper thread of each open's replay has exited), counts 40
 *   open shards and at least one open file each; closing them gives every
 *   file back;
 * - no shard WAL has a LOCK of its own (the engine's covers them);
 * - misuse: NULL arguments, a struct_size below version 1, a closed
 *   handle's slot.
 */
#include "keel_test.h"

#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <sys/stat.h>

#define SHARDS 40

static uint64_t process_threads(void) {
  DIR *d = opendir("/proc/self/task");
  CHECK(d != NULL);
  uint64_t n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] != '.') n++;
  }
  closedir(d);
  return n;
}

/* The process's thread count once it settles at `want` (a shard's open
 * runs its WAL replay on a short-lived helper thread, which may still be
 * exiting when the open returns); gives up after a minute and returns
 * what it sees, which the caller's check then reports. */
static uint64_t threads_settled(uint64_t want) {
  uint64_t n = process_threads();
  for (int i = 0; i < 6000 && n != want; i++) {
    usleep(10 * 1000);
    n = process_threads();
  }
  return n;
}

static keel_engine_stats_t stats_of(const keel_engine_t *e) {
  keel_engine_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_stats(e, &st));
  CHECK_EQ_U64(st.struct_size, KEEL_ENGINE_STATS_SIZE_V4);
  return st;
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_PERIODIC);
  opts.sync_interval_ms = 10;
  opts.flush_threads = 2;
  keel_engine_t *engine = NULL;

  const uint64_t before = process_threads();
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  const uint64_t engine_threads = process_threads() - before;
  keel_engine_stats_t st = stats_of(engine);
  CHECK_EQ_U64(st.threads, engine_threads);
  CHECK(st.threads > opts.flush_threads); /* flush workers and WAL workers */
  CHECK_EQ_U64(st.open_shards, 0);
  CHECK_EQ_U64(st.flush_queue_depth, 0);
  CHECK_EQ_U64(st.write_stalls, 0); /* far below max_unflushed_wal_bytes */
  CHECK_EQ_U64(st.write_stall_nanos, 0);
  const uint64_t idle_files = st.open_files; /* the engine's LOCK */
  CHECK(idle_files >= 1);

  keel_shard_t *shards[SHARDS];
  for (uint32_t id = 0; id < SHARDS; id++) {
    CHECK_OK(keel_engine_shard_open(engine, id, true, &shards[id], &err));
    uint64_t v = 0;
    CHECK_OK(keel_shard_put(shards[id], KT_S("k"), KT_S("v"), &v, &err));
  }
  CHECK_EQ_U64(threads_settled(before + engine_threads), before + engine_threads);
  st = stats_of(engine);
  CHECK_EQ_U64(st.threads, engine_threads);
  CHECK_EQ_U64(st.open_shards, SHARDS);
  CHECK(st.open_files >= idle_files + SHARDS);
  /* The descriptor cache: bounded by half the descriptor limit, used by
   * every shard's writes, and too large here to have closed anything. */
  CHECK(st.max_open_files >= 16);
  CHECK(st.file_cache_hits > 0);
  CHECK_EQ_U64(st.file_cache_evictions, 0);
  printf("%d shards: %llu threads, %llu open files, queues %llu/%llu, stalled %llu ns\n", SHARDS,
         (unsigned long long)st.threads, (unsigned long long)st.open_files,
         (unsigned long long)st.flush_queue_depth, (unsigned long long)st.wal_queue_depth,
         (unsigned long long)st.stall_nanos);

  char lock[4096];
  struct stat sb;
  for (uint32_t id = 0; id < SHARDS; id++) {
    snprintf(lock, sizeof lock, "%s/shards/%u/wal/LOCK", dir, id);
    CHECK(stat(lock, &sb) != 0 && errno == ENOENT);
  }

  for (uint32_t id = 0; id < SHARDS; id++) CHECK_OK(keel_shard_close(shards[id], &err));
  st = stats_of(engine);
  CHECK_EQ_U64(st.open_shards, 0);
  CHECK_EQ_U64(st.open_files, idle_files);

  /* Misuse. */
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_engine_stats(engine, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_engine_stats(NULL, &st));
  st.struct_size = 4;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_stats(engine, &st));

  CHECK_OK(keel_engine_close(engine, &err));
  CHECK_EQ_U64(threads_settled(before), before);
  kt_rmdir(dir);
  KT_PASS();
}
