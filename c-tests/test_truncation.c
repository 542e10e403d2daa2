/*
 * Truncation with 64 KiB segments: keel_wal_ack deletes whole acknowledged
 * segments (first_seq moves, files disappear, reading below first_seq gives
 * TRUNCATED), keel_wal_set_keep_from holds segments back until released,
 * and an open reader pins the segments it has yet to read. Also: ack is
 * monotonic, ack beyond last is INVALID_ARGUMENT, keep_from below first is
 * TRUNCATED, and the truncated prefix stays gone after a reopen.
 */
#include "keel_test.h"

#define N 600
#define LEN 1000 /* ~64 records per segment: N spans ~10 segments */

static uint64_t first_seq(keel_wal_t *wal) {
  uint64_t f = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_first_seq(wal, &f));
  return f;
}

/* Reads from `from` to N and checks each record. */
static void read_through(keel_wal_t *wal, uint64_t from) {
  KT_ERR;
  keel_wal_reader_t *r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, from, KEEL_WAL_READ_DURABLE, &r, &err));
  uint8_t got[LEN], want[LEN];
  for (uint64_t s = from; s <= N; s++) {
    uint64_t seq = 0;
    size_t len = 0;
    CHECK_OK(keel_wal_reader_next(r, &seq, got, sizeof got, &len, &err));
    CHECK_EQ_U64(seq, s);
    kt_fill(want, LEN, s);
    CHECK(len == LEN && memcmp(got, want, LEN) == 0);
  }
  keel_wal_reader_close(r);
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_wal_options_t opts = kt_options(64 << 10, KEEL_DURABILITY_NONE); /* as kt_open_filled */
  keel_wal_t *wal = kt_open_filled(dir, N, LEN);
  int segments = kt_count_segments(dir);
  CHECK(segments >= 8);
  CHECK_EQ_U64(first_seq(wal), 1);

  /* keep_from holds everything from 100 on, whatever ack says. */
  CHECK_OK(keel_wal_set_keep_from(wal, 100, &err));
  CHECK_OK(keel_wal_ack(wal, 400, &err));
  uint64_t f = first_seq(wal);
  CHECK(f > 1 && f <= 100);                   /* only segments below 100 went */
  CHECK(kt_count_segments(dir) < segments);
  read_through(wal, 100);

  /* A reader at 150 pins its segment: releasing keep_from stops at it. */
  keel_wal_reader_t *pin = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 150, KEEL_WAL_READ_DURABLE, &pin, &err));
  CHECK_OK(keel_wal_set_keep_from(wal, KEEL_WAL_KEEP_NONE, &err));
  f = first_seq(wal);
  CHECK(f > 100 && f <= 150);
  /* The pinned reader reads on; once it has moved past 300, ack frees the
   * segments behind it (ack of the same value re-runs truncation). */
  uint8_t got[LEN];
  for (uint64_t s = 150; s <= 300; s++) {
    uint64_t seq = 0;
    size_t len = 0;
    CHECK_OK(keel_wal_reader_next(pin, &seq, got, sizeof got, &len, &err));
    CHECK_EQ_U64(seq, s);
  }
  CHECK_OK(keel_wal_ack(wal, 400, &err));
  f = first_seq(wal);
  CHECK(f > 150 && f <= 301);
  keel_wal_reader_close(pin);

  /* No hold left: ack 400 deletes every whole segment up to 400. */
  CHECK_OK(keel_wal_ack(wal, 400, &err));
  f = first_seq(wal);
  CHECK(f > 301 && f <= 401);
  read_through(wal, f);
  read_through(wal, 401);

  /* Below first_seq: TRUNCATED, for readers and for keep_from. */
  keel_wal_reader_t *r = NULL;
  CHECK_STATUS(KEEL_STATUS_TRUNCATED, keel_wal_reader_open(wal, 1, KEEL_WAL_READ_DURABLE, &r, &err));
  CHECK_STATUS(KEEL_STATUS_TRUNCATED, keel_wal_reader_open(wal, f - 1, KEEL_WAL_READ_APPENDED, &r, &err));
  CHECK(r == NULL);
  CHECK_STATUS(KEEL_STATUS_TRUNCATED, keel_wal_set_keep_from(wal, f - 1, &err));
  /* from 0 means "the first retained record". */
  CHECK_OK(keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, &r, &err));
  uint64_t seq = 0;
  size_t len = 0;
  CHECK_OK(keel_wal_reader_next(r, &seq, got, sizeof got, &len, &err));
  CHECK_EQ_U64(seq, f);
  keel_wal_reader_close(r);

  /* ack is monotonic (lower is ignored) and bounded by last_seq. */
  CHECK_OK(keel_wal_ack(wal, 10, &err));
  CHECK_EQ_U64(first_seq(wal), f);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_ack(wal, N + 1, &err));
  /* Acking everything never deletes the active segment. */
  CHECK_OK(keel_wal_ack(wal, N, &err));
  CHECK(first_seq(wal) <= N);
  CHECK(kt_count_segments(dir) >= 1);
  f = first_seq(wal);
  CHECK_OK(keel_wal_close(wal, &err));

  /* The missing prefix is fine after a reopen and stays missing. */
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  CHECK_EQ_U64(first_seq(wal), f);
  read_through(wal, f);
  CHECK_STATUS(KEEL_STATUS_TRUNCATED, keel_wal_reader_open(wal, f - 1, KEEL_WAL_READ_DURABLE, &r, &err));
  CHECK_OK(keel_wal_close(wal, &err));

  kt_rmdir(dir);
  KT_PASS();
}
