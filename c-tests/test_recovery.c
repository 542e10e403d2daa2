/*
 * Recovery after close + reopen: the same records come back with the same
 * sequence numbers, durable == last == what was appended, first_seq is 1,
 * and new appends continue the sequence. Uses several segments (64 KiB) so
 * recovery has to chain them, and a second round in DURABILITY_NONE where
 * only keel_wal_close's final sync makes the data durable.
 */
#include "keel_test.h"

#define N 600
#define LEN(s) ((size_t)(((s) * 37) % 700))

static void append_range(keel_wal_t *wal, uint64_t from, uint64_t to) {
  KT_ERR;
  uint8_t buf[700];
  for (uint64_t s = from; s <= to; s++) {
    uint64_t seq = 0;
    kt_fill(buf, LEN(s), s);
    if (s % 50 == 0 && s + 2 <= to) {
      /* every 50th: a batch of 3 records packed back to back */
      uint8_t packed[3 * 700];
      size_t lens[3] = {LEN(s), LEN(s + 1), LEN(s + 2)}, off = 0;
      for (int i = 0; i < 3; i++) {
        kt_fill(packed + off, lens[i], s + (uint64_t)i);
        off += lens[i];
      }
      CHECK_OK(keel_wal_append_batch(wal, packed, lens, 3, &seq, &err));
      CHECK_EQ_U64(seq, s);
      s += 2;
    } else {
      CHECK_OK(keel_wal_append(wal, buf, LEN(s), &seq, &err));
      CHECK_EQ_U64(seq, s);
    }
  }
}

static void check_log(keel_wal_t *wal, uint64_t last_expected) {
  KT_ERR;
  uint64_t first = 0, last = 0, durable = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_first_seq(wal, &first));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_last_seq(wal, &last));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  CHECK_EQ_U64(first, 1);
  CHECK_EQ_U64(last, last_expected);
  CHECK_EQ_U64(durable, last_expected); /* everything recovered is on disk */

  keel_wal_reader_t *r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, &r, &err));
  uint8_t want[700], got[700];
  for (uint64_t s = 1; s <= last_expected; s++) {
    uint64_t seq = 0;
    size_t len = 0;
    CHECK_OK(keel_wal_reader_next(r, &seq, got, sizeof got, &len, &err));
    CHECK_EQ_U64(seq, s);
    CHECK_EQ_U64(len, LEN(s));
    kt_fill(want, LEN(s), s);
    CHECK(memcmp(got, want, len) == 0);
  }
  uint64_t seq;
  size_t len;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next(r, &seq, got, sizeof got, &len, &err));
  keel_wal_reader_close(r);
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_wal_t *wal = NULL;
  keel_wal_options_t opts = kt_options(64 << 10, KEEL_DURABILITY_SYNC);

  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  append_range(wal, 1, N);
  CHECK_OK(keel_wal_close(wal, &err));
  CHECK(kt_count_segments(dir) >= 3); /* recovery really chains segments */

  wal = NULL;
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  check_log(wal, N);
  /* Appends after recovery continue the sequence without a gap. */
  append_range(wal, N + 1, N + 100);
  CHECK_OK(keel_wal_close(wal, &err));

  /* DURABILITY_NONE: nothing is synced until close, which must sync. */
  opts.durability = KEEL_DURABILITY_NONE;
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  check_log(wal, N + 100);
  append_range(wal, N + 101, N + 300);
  CHECK_OK(keel_wal_close(wal, &err));

  /* Reopen with the defaults (opts NULL): the segment size of existing
   * files must not depend on the options of a later open. */
  CHECK_OK(keel_wal_open(dir, NULL, &wal, &err));
  check_log(wal, N + 300);
  CHECK_OK(keel_wal_close(wal, &err));

  kt_rmdir(dir);
  KT_PASS();
}
