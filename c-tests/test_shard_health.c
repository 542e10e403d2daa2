/*
 * keel_shard_health through the C API, with a real failure of the
 * background work:
 * - a healthy shard reports OK;
 * - while the shard's segments/ directory is replaced by a regular file,
 *   a flush pass fails (its state file cannot be created: ENOTDIR) and
 *   health reports IO with a message naming the file, while writes and
 *   reads go on (the WAL holds them);
 * - once the directory is back, the next pass succeeds, health is OK
 *   again as soon as its keel_shard_flush(wait) returns, and every write
 *   is persisted;
 * - stats count the unflushed WAL while the flush fails (none after it),
 *   and a reopen after a clean close replays nothing;
 * - misuse: NULL and closed handles.
 * Root ignores permission bits, so an unwritable directory is no failure
 * for CI (which runs as root); a file in the directory's place is.
 */
#include "keel_test.h"

#include <stdbool.h>
#include <sys/stat.h>

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 7, true, &s, &err));

  /* Healthy, before and after a successful pass. */
  CHECK_OK(keel_shard_health(s, &err));
  uint64_t v = 0;
  CHECK_OK(keel_shard_put(s, KT_S("a"), KT_S("1"), &v, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_shard_flush(s, true, NULL, NULL));
  CHECK_OK(keel_shard_health(s, &err));
  CHECK_OK(keel_shard_health(s, NULL)); /* err may be NULL */

  /* The segments directory goes away behind keel's back; a file takes
   * its name so that nothing can be created in it. */
  char seg[4096], moved[4096];
  snprintf(seg, sizeof seg, "%s/shards/7/segments", dir);
  snprintf(moved, sizeof moved, "%s/shards/7/segments.moved", dir);
  CHECK(rename(seg, moved) == 0);
  FILE *f = fopen(seg, "w");
  CHECK(f != NULL);
  CHECK(fclose(f) == 0);

  CHECK_OK(keel_shard_put(s, KT_S("b"), KT_S("2"), &v, &err));
  const uint64_t last = v;
  /* Health has the pass's outcome by the time its flush returns. */
  CHECK_STATUS(KEEL_STATUS_IO, keel_shard_flush(s, true, NULL, &err));
  keel_status_t st = keel_shard_health(s, &err);
  CHECK(st == KEEL_STATUS_IO);
  CHECK(err != NULL && keel_error_code(err) == KEEL_STATUS_IO);
  CHECK(strstr(keel_error_message(err), "segments") != NULL);
  keel_error_free(err);
  err = NULL;
  CHECK_RC(KEEL_STATUS_IO, keel_shard_health(s, NULL));
  CHECK(kt_persisted_version(s) < last);
  /* Writes and reads go on meanwhile. */
  CHECK_OK(keel_shard_put(s, KT_S("c"), KT_S("3"), &v, &err));
  KT_EXPECT_VALUE(s, "b", "2");
  keel_shard_stats_t stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CHECK_RC(KEEL_STATUS_OK, keel_shard_stats(s, &stats));
  CHECK_EQ_U64(stats.struct_size, KEEL_SHARD_STATS_SIZE_V2);
  CHECK(stats.unflushed_wal_bytes > 0); /* b and c, at least */
  CHECK(stats.unflushed_wal_bytes < 1024);
  CHECK_EQ_U64(stats.write_stalls, 0);

  /* Put back: the next pass succeeds and health clears. */
  CHECK(unlink(seg) == 0);
  CHECK(rename(moved, seg) == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_shard_flush(s, true, NULL, NULL));
  CHECK_OK(keel_shard_health(s, &err));
  CHECK_EQ_U64(kt_persisted_version(s), v);

  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CHECK_RC(KEEL_STATUS_OK, keel_shard_stats(s, &stats));
  CHECK_EQ_U64(stats.last_version, v);
  CHECK_EQ_U64(stats.unflushed_wal_bytes, 0);
  CHECK_EQ_U64(stats.persisted_version, v);
  CHECK_EQ_U64(stats.appendable_keys, 3);

  /* Misuse. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_health(NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_health((const keel_shard_t *)engine, &err));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_shard_open(engine, 7, false, &s, &err));
  KT_EXPECT_VALUE(s, "a", "1");
  KT_EXPECT_VALUE(s, "b", "2");
  KT_EXPECT_VALUE(s, "c", "3");
  CHECK_OK(keel_shard_health(s, &err));
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CHECK_RC(KEEL_STATUS_OK, keel_shard_stats(s, &stats));
  CHECK_EQ_U64(stats.replayed_records, 0); /* the close flushed everything */
  CHECK_EQ_U64(stats.replayed_bytes, 0);
  CHECK_OK(keel_engine_close(engine, &err));
  /* The engine closed the shard: health says CLOSED, the handle still frees. */
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_health(s, &err));
  CHECK_OK(keel_shard_close(s, &err));
  kt_rmdir(dir);
  KT_PASS();
}
