/*
 * Concurrent appenders in SYNC mode: THREADS pthreads append PER_THREAD
 * records each (plus one batch each) while a reader thread follows the
 * log. Checks: every returned sequence number is unique and together they
 * are exactly 1..TOTAL; durable == last afterwards; every record read back
 * (by the live reader and again after a reopen) is the one its writer
 * wrote under that sequence number.
 */
#include "keel_test.h"

#include <pthread.h>

#define THREADS 8
#define PER_THREAD 500
#define BATCH 4 /* each thread also appends one batch of BATCH records */
#define OPS (PER_THREAD + BATCH)
#define TOTAL (THREADS * OPS)
#define MAX_LEN 300

/* The record of thread t, op i: a header naming its writer, then filler. */
static size_t make_record(uint8_t *p, int t, int i) {
  size_t len = 8 + (size_t)((t * 31 + i * 17) % (MAX_LEN - 8));
  p[0] = 'K'; p[1] = (uint8_t)t; p[2] = (uint8_t)(i >> 8); p[3] = (uint8_t)i;
  p[4] = p[5] = p[6] = p[7] = 0xA5;
  kt_fill(p + 8, len - 8, (uint64_t)(t * OPS + i));
  return len;
}

static keel_wal_t *wal;
static uint64_t seqs[THREADS][OPS]; /* seqs[t][i]: returned to thread t for op i */

static void *writer(void *arg) {
  int t = (int)(intptr_t)arg;
  KT_ERR;
  uint8_t rec[MAX_LEN];
  for (int i = 0; i < PER_THREAD; i++) {
    if (i == PER_THREAD / 2) {
      /* one batch in the middle: BATCH consecutive sequence numbers */
      uint8_t packed[BATCH * MAX_LEN];
      size_t lens[BATCH], off = 0;
      for (int k = 0; k < BATCH; k++) {
        lens[k] = make_record(packed + off, t, PER_THREAD + k);
        off += lens[k];
      }
      uint64_t first = 0;
      CHECK_OK(keel_wal_append_batch(wal, packed, lens, BATCH, &first, &err));
      for (int k = 0; k < BATCH; k++) seqs[t][PER_THREAD + k] = first + (uint64_t)k;
    }
    size_t len = make_record(rec, t, i);
    CHECK_OK(keel_wal_append(wal, rec, len, &seqs[t][i], &err));
    /* SYNC: returned means durable. */
    uint64_t durable = 0;
    CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
    CHECK(durable >= seqs[t][i]);
  }
  return NULL;
}

/* Who wrote seq s, from the writers' own bookkeeping. */
static int owner_t[TOTAL + 1], owner_i[TOTAL + 1];

static void check_record(uint64_t seq, const uint8_t *p, size_t len) {
  CHECK(seq >= 1 && seq <= TOTAL);
  CHECK(len >= 8 && p[0] == 'K');
  int t = p[1], i = (p[2] << 8) | p[3];
  CHECK(t < THREADS && i < OPS);
  CHECK_EQ_U64(seqs[t][i], seq); /* the writer got this very sequence number */
  uint8_t want[MAX_LEN];
  size_t want_len = make_record(want, t, i);
  CHECK_EQ_U64(len, want_len);
  CHECK(memcmp(p, want, len) == 0);
}

/* Follows the log while writers run: records arrive in order, densely. */
static void *follower(void *arg) {
  (void)arg;
  KT_ERR;
  keel_wal_reader_t *r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, &r, &err));
  uint64_t next = 1;
  uint8_t buf[MAX_LEN];
  while (next <= TOTAL) {
    uint64_t seq = 0;
    size_t len = 0;
    keel_status_t st = keel_wal_reader_next(r, &seq, buf, sizeof buf, &len, &err);
    if (st == KEEL_STATUS_NOT_FOUND) {
      keel_error_free(err);
      err = NULL;
      usleep(200);
      continue;
    }
    CHECK_STATUS(KEEL_STATUS_OK, st);
    CHECK_EQ_U64(seq, next);
    next++;
    /* Content is checked after the writers joined (seqs[] is complete). */
  }
  keel_wal_reader_close(r);
  return NULL;
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_wal_options_t opts = kt_options(1 << 20, KEEL_DURABILITY_SYNC);
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));

  pthread_t th[THREADS], fol;
  CHECK(pthread_create(&fol, NULL, follower, NULL) == 0);
  for (int t = 0; t < THREADS; t++)
    CHECK(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t) == 0);
  for (int t = 0; t < THREADS; t++) CHECK(pthread_join(th[t], NULL) == 0);
  CHECK(pthread_join(fol, NULL) == 0);

  /* Unique and dense: each of 1..TOTAL handed out exactly once. */
  for (int t = 0; t < THREADS; t++)
    for (int i = 0; i < OPS; i++) {
      uint64_t s = seqs[t][i];
      CHECK(s >= 1 && s <= TOTAL);
      CHECK(owner_t[s] == 0); /* not handed out twice */
      owner_t[s] = t + 1;
      owner_i[s] = i;
    }
  for (uint64_t s = 1; s <= TOTAL; s++) CHECK(owner_t[s] != 0);

  uint64_t last = 0, durable = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_last_seq(wal, &last));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_durable_seq(wal, &durable));
  CHECK_EQ_U64(last, TOTAL);
  CHECK_EQ_U64(durable, TOTAL);

  /* Every record matches its writer, live and after a reopen. */
  for (int round = 0; round < 2; round++) {
    keel_wal_reader_t *r = NULL;
    CHECK_OK(keel_wal_reader_open(wal, 1, KEEL_WAL_READ_DURABLE, &r, &err));
    for (uint64_t s = 1; s <= TOTAL; s++) {
      keel_buf_t b = {NULL, 0};
      uint64_t seq = 0;
      CHECK_OK(keel_wal_reader_next_buf(r, &seq, &b, &err));
      CHECK_EQ_U64(seq, s);
      check_record(seq, b.ptr, b.len);
      CHECK(owner_t[s] - 1 == b.ptr[1] && owner_i[s] == ((b.ptr[2] << 8) | b.ptr[3]));
      keel_buf_free(&b);
    }
    keel_wal_reader_close(r);
    CHECK_OK(keel_wal_close(wal, &err));
    if (round == 0) CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  }

  kt_rmdir(dir);
  KT_PASS();
}
