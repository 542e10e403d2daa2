/*
 * Readers: start at a middle sequence number (inside a later segment), at
 * last + 1 (nothing yet, then follows), beyond last + 1 (INVALID_ARGUMENT);
 * a too-small buffer gives BUFFER_TOO_SMALL with the needed length and does
 * not consume the record; a reader outliving its WAL returns CLOSED.
 */
#include "keel_test.h"

#define N 500
#define LEN 900 /* ~70 records per 64 KiB segment: N spans ~7 segments */

static void expect_record(keel_wal_reader_t *r, uint64_t s) {
  KT_ERR;
  uint8_t got[LEN], want[LEN];
  uint64_t seq = 0;
  size_t len = 0;
  CHECK_OK(keel_wal_reader_next(r, &seq, got, sizeof got, &len, &err));
  CHECK_EQ_U64(seq, s);
  CHECK_EQ_U64(len, LEN);
  kt_fill(want, LEN, s);
  CHECK(memcmp(got, want, LEN) == 0);
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_wal_options_t opts = kt_options(64 << 10, KEEL_DURABILITY_NONE); /* as kt_open_filled */
  keel_wal_t *wal = kt_open_filled(dir, N, LEN);
  uint8_t rec[LEN];
  CHECK(kt_count_segments(dir) >= 5);

  /* From the middle: several starting points, each read to the end. */
  const uint64_t starts[] = {2, 71, 250, 333, N - 1, N};
  for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
    keel_wal_reader_t *r = NULL;
    CHECK_OK(keel_wal_reader_open(wal, starts[k], KEEL_WAL_READ_DURABLE, &r, &err));
    for (uint64_t s = starts[k]; s <= N; s++) expect_record(r, s);
    uint64_t seq;
    size_t len;
    CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next(r, &seq, rec, sizeof rec, &len, &err));
    keel_wal_reader_close(r);
  }

  /* At last + 1: empty now, then follows new appends. */
  keel_wal_reader_t *r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, N + 1, KEEL_WAL_READ_APPENDED, &r, &err));
  uint64_t seq = 0;
  size_t len = 0;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_wal_reader_next(r, &seq, rec, sizeof rec, &len, &err));
  kt_fill(rec, LEN, N + 1);
  CHECK_OK(keel_wal_append(wal, rec, LEN, &seq, &err));
  CHECK_EQ_U64(seq, N + 1);
  expect_record(r, N + 1);

  /* Beyond last + 1 is an argument error, not "empty". */
  keel_wal_reader_t *bad = (keel_wal_reader_t *)&bad; /* must stay untouched */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT,
               keel_wal_reader_open(wal, N + 3, KEEL_WAL_READ_APPENDED, &bad, &err));
  CHECK(bad == (keel_wal_reader_t *)&bad);

  /* Too-small buffer: needed length reported, record not consumed. */
  keel_wal_reader_t *small = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 42, KEEL_WAL_READ_DURABLE, &small, &err));
  uint8_t tiny[LEN - 1];
  seq = 777;
  len = 0;
  CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL,
               keel_wal_reader_next(small, &seq, tiny, sizeof tiny, &len, &err));
  CHECK_EQ_U64(len, LEN);
  CHECK_EQ_U64(seq, 777); /* only the length out-parameter is written */
  len = 0;
  CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL, keel_wal_reader_next(small, &seq, NULL, 0, &len, &err));
  CHECK_EQ_U64(len, LEN); /* the size-query idiom: (NULL, 0) */
  expect_record(small, 42); /* still record 42: nothing was skipped */
  expect_record(small, 43);
  keel_wal_reader_close(small);

  /* A reader may outlive the WAL handle: it then reports CLOSED. */
  CHECK_OK(keel_wal_close(wal, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_wal_reader_next(r, &seq, rec, sizeof rec, &len, &err));
  keel_buf_t b = {NULL, 0};
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_wal_reader_next_buf(r, &seq, &b, &err));
  keel_wal_reader_close(r);

  /* After a reopen, a middle read still works across segments. */
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  CHECK_OK(keel_wal_reader_open(wal, 140, KEEL_WAL_READ_DURABLE, &r, &err));
  for (uint64_t s = 140; s <= N + 1; s++) expect_record(r, s);
  keel_wal_reader_close(r);
  CHECK_OK(keel_wal_close(wal, &err));

  kt_rmdir(dir);
  KT_PASS();
}
