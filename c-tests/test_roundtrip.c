/*
 * WAL round trip: records written with keel_wal_append and
 * keel_wal_append_batch come back byte-exact, in order, with the sequence
 * numbers the appends returned — through both keel_wal_reader_next (caller
 * buffer) and keel_wal_reader_next_buf (keel-owned buffer). Also covers
 * empty records, a reader following the log as it grows, and the
 * DURABLE/APPENDED read limits in KEEL_DURABILITY_NONE, and the
 * background sync of KEEL_DURABILITY_PERIODIC.
 */
#include "keel_test.h"

#define N 200
#define MAX_LEN 5000

static uint8_t expected[N + 16][MAX_LEN];
static size_t expected_len[N + 16];

/* Reads records from..to with reader_next and compares them. */
static void read_all_next(keel_wal_reader_t *r, uint64_t from, uint64_t to) {
  KT_ERR;
  static uint8_t buf[MAX_LEN];
  for (uint64_t s = from; s <= to; s++) {
    uint64_t seq = 0;
    size_t len = 0;
    CHECK_OK(keel_wal_reader_next(r, &seq, buf, sizeof buf, &len, &err));
    CHECK_EQ_U64(seq, s);
    CHECK_EQ_U64(len, expected_len[s]);
    CHECK(memcmp(buf, expected[s], len) == 0);
  }
  uint64_t seq = 12345;
  size_t len = 0;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next(r, &seq, buf, sizeof buf, &len, &err));
  CHECK_EQ_U64(seq, 12345); /* out-parameters untouched on failure */
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_wal_t *wal = NULL;
  keel_wal_options_t opts = kt_options(0, KEEL_DURABILITY_SYNC);
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  CHECK(wal != NULL);

  uint64_t last = 1, first = 1;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_last_seq(wal, &last));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_first_seq(wal, &first));
  CHECK_EQ_U64(last, 0);  /* empty log */
  CHECK_EQ_U64(first, 1); /* last + 1 */

  /* Singles of varying length, including the empty record (seq 1). */
  for (uint64_t s = 1; s <= N - 10; s++) {
    size_t len = (size_t)((s * 997) % MAX_LEN);
    if (s == 1) len = 0;
    kt_fill(expected[s], len, s);
    expected_len[s] = len;
    uint64_t seq = 0;
    CHECK_OK(keel_wal_append(wal, len ? expected[s] : NULL, len, &seq, &err));
    CHECK_EQ_U64(seq, s);
  }

  /* One batch of 10 packed records, one of them empty. */
  uint8_t packed[10 * MAX_LEN];
  size_t lens[10], off = 0;
  for (size_t i = 0; i < 10; i++) {
    uint64_t s = N - 10 + 1 + i;
    lens[i] = i == 4 ? 0 : 100 + i * 300;
    kt_fill(expected[s], lens[i], s);
    expected_len[s] = lens[i];
    memcpy(packed + off, expected[s], lens[i]);
    off += lens[i];
  }
  uint64_t first_of_batch = 0;
  CHECK_OK(keel_wal_append_batch(wal, packed, lens, 10, &first_of_batch, &err));
  CHECK_EQ_U64(first_of_batch, N - 10 + 1);

  uint64_t durable = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_last_seq(wal, &last));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  CHECK_EQ_U64(last, N);
  CHECK_EQ_U64(durable, N); /* SYNC: every returned append is durable */

  /* Caller-buffer reader over everything. */
  keel_wal_reader_t *r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, &r, &err));
  read_all_next(r, 1, N);

  /* The reader follows the log: records appended after it hit the end
   * are returned by later calls. */
  for (uint64_t s = N + 1; s <= N + 5; s++) {
    expected_len[s] = 64 + (size_t)s;
    kt_fill(expected[s], expected_len[s], s);
    CHECK_OK(keel_wal_append(wal, expected[s], expected_len[s], NULL, &err));
  }
  read_all_next(r, N + 1, N + 5);
  keel_wal_reader_close(r);

  /* keel_buf_t reader over everything. */
  CHECK_OK(keel_wal_reader_open(wal, 1, KEEL_WAL_READ_APPENDED, &r, &err));
  for (uint64_t s = 1; s <= N + 5; s++) {
    keel_buf_t b = {NULL, 0};
    uint64_t seq = 0;
    CHECK_OK(keel_wal_reader_next_buf(r, &seq, &b, &err));
    CHECK_EQ_U64(seq, s);
    CHECK_EQ_U64(b.len, expected_len[s]);
    if (b.len == 0) CHECK(b.ptr == NULL); /* documented empty-buffer shape */
    else CHECK(memcmp(b.ptr, expected[s], b.len) == 0);
    CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&b));
    CHECK(b.ptr == NULL && b.len == 0);
    CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&b)); /* second free is harmless */
  }
  keel_buf_t b = {NULL, 0};
  uint64_t seq = 0;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next_buf(r, &seq, &b, &err));
  keel_wal_reader_close(r);
  CHECK_OK(keel_wal_close(wal, &err));

  /* DURABILITY_NONE: an unsynced record is visible to an APPENDED reader
   * only, until keel_wal_sync makes it durable. Same directory, so this
   * also checks a reopen with another durability mode. */
  opts = kt_options(0, KEEL_DURABILITY_NONE);
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  keel_wal_reader_t *rd = NULL, *ra = NULL;
  CHECK_OK(keel_wal_reader_open(wal, N + 6, KEEL_WAL_READ_DURABLE, &rd, &err));
  CHECK_OK(keel_wal_reader_open(wal, N + 6, KEEL_WAL_READ_APPENDED, &ra, &err));
  const uint8_t msg[] = "not yet durable";
  CHECK_OK(keel_wal_append(wal, msg, sizeof msg, &seq, &err));
  CHECK_EQ_U64(seq, N + 6);
  uint8_t buf[64];
  size_t len = 0;
  CHECK_OK(keel_wal_reader_next(ra, &seq, buf, sizeof buf, &len, &err));
  CHECK(len == sizeof msg && memcmp(buf, msg, len) == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  CHECK_EQ_U64(durable, N + 5); /* NONE never syncs on its own */
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next(rd, &seq, buf, sizeof buf, &len, &err));
  CHECK_OK(keel_wal_sync(wal, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  CHECK_EQ_U64(durable, N + 6);
  CHECK_OK(keel_wal_reader_next(rd, &seq, buf, sizeof buf, &len, &err));
  CHECK_EQ_U64(seq, N + 6);
  CHECK(len == sizeof msg && memcmp(buf, msg, len) == 0);
  keel_wal_reader_close(rd);
  keel_wal_reader_close(ra);
  CHECK_OK(keel_wal_close(wal, &err));

  /* DURABILITY_PERIODIC: keel's own thread makes the record durable
   * within the interval, without any keel_wal_sync call. */
  opts = kt_options(0, KEEL_DURABILITY_PERIODIC);
  opts.sync_interval_ms = 10;
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  CHECK_OK(keel_wal_append(wal, msg, sizeof msg, &seq, &err));
  CHECK_EQ_U64(seq, N + 7);
  for (int waited_ms = 0; durable < N + 7; waited_ms++) {
    CHECK(waited_ms < 5000); /* 500 intervals: the sync thread is not running */
    usleep(1000);
    CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  }
  CHECK_OK(keel_wal_close(wal, &err));

  kt_rmdir(dir);
  KT_PASS();
}
