/*
 * wal_demo — the keel write-ahead log from C, start to finish.
 *
 *   wal_demo [DIR]
 *
 * Opens a WAL in DIR (default: a fresh temporary directory), appends
 * records from several threads in SYNC mode (each append returns once its
 * record is on disk) plus one atomic batch, closes, reopens, reads every
 * record back and checks it. Exits non-zero on any failure.
 *
 * Build: cc -std=c99 wal_demo.c $(pkg-config --cflags --libs keel) -lpthread
 */
#define _GNU_SOURCE /* mkdtemp */
#include <keel.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define PER_THREAD 250
#define BATCH 3

/* Every failing keel call goes through here: print what failed and why. */
static int failed(const char *what, keel_status_t st, keel_error_t *err) {
  fprintf(stderr, "wal_demo: %s failed: %s: %s\n", what, keel_status_str(st),
          err ? keel_error_message(err) : "(no details)");
  keel_error_free(err);
  return 1;
}

/* The payload of record i of thread t. Fixed width, so a reader can
 * recompute what it should have received from (t, i) alone. */
static int payload(char *out, size_t cap, int t, int i) {
  return snprintf(out, cap, "thread %d record %03d", t, i);
}

static keel_wal_t *wal;

static void *writer(void *arg) {
  int t = (int)(intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++) {
    char rec[64];
    int len = payload(rec, sizeof rec, t, i);
    keel_error_t *err = NULL;
    /* keel_wal_t is internally synchronised: threads share the handle.
     * Concurrent SYNC appends share one fdatasync (group commit). */
    keel_status_t st = keel_wal_append(wal, (const uint8_t *)rec, (size_t)len, NULL, &err);
    if (st != KEEL_STATUS_OK) return (void *)(intptr_t)failed("keel_wal_append", st, err);
  }
  return NULL;
}

int main(int argc, char **argv) {
  char tmpl[] = "/tmp/keel-demo-XXXXXX";
  const char *dir = argc > 1 ? argv[1] : mkdtemp(tmpl);
  if (dir == NULL) {
    perror("wal_demo: mkdtemp");
    return 1;
  }
  printf("keel %s, WAL directory %s\n", keel_version(), dir);

  /* Options are versioned: always start from keel_wal_options_init. */
  keel_wal_options_t opts;
  keel_wal_options_init(&opts);
  opts.durability = KEEL_DURABILITY_SYNC;

  keel_error_t *err = NULL;
  keel_status_t st = keel_wal_open(dir, &opts, &wal, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_open", st, err);
  uint64_t before = 0; /* the directory may already hold a log */
  keel_wal_last_seq(wal, &before);

  /* 1. Singles from several threads. */
  pthread_t th[THREADS];
  for (int t = 0; t < THREADS; t++) pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t);
  int bad = 0;
  for (int t = 0; t < THREADS; t++) {
    void *rc = NULL;
    pthread_join(th[t], &rc);
    bad |= rc != NULL;
  }
  if (bad) return 1;

  /* 2. One atomic batch: records packed back to back plus their lengths. */
  char packed[3 * 64];
  size_t lens[BATCH], off = 0;
  for (int i = 0; i < BATCH; i++) {
    lens[i] = (size_t)payload(packed + off, sizeof packed - off, THREADS, i);
    off += lens[i];
  }
  uint64_t first_of_batch = 0;
  st = keel_wal_append_batch(wal, (const uint8_t *)packed, lens, BATCH, &first_of_batch, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_append_batch", st, err);

  uint64_t last = 0, durable = 0;
  keel_wal_last_seq(wal, &last);
  keel_wal_durable_seq(wal, &durable);
  uint64_t written = last - before;
  printf("wrote %" PRIu64 " records (%d threads x %d, plus a batch of %d at seq %" PRIu64 ")\n",
         written, THREADS, PER_THREAD, BATCH, first_of_batch);
  printf("last sequence %" PRIu64 ", durable sequence %" PRIu64 "\n", last, durable);
  if (durable != last) {
    fprintf(stderr, "wal_demo: in SYNC mode everything appended should be durable\n");
    return 1;
  }

  /* 3. Close (syncs and stops keel's threads), then reopen: recovery. */
  st = keel_wal_close(wal, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_close", st, err);
  st = keel_wal_open(dir, &opts, &wal, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_open (reopen)", st, err);

  /* 4. Read our records back. Each thread's records must come back in its
   * own order: the log keeps the order of appends. */
  keel_wal_reader_t *r = NULL;
  st = keel_wal_reader_open(wal, before + 1, KEEL_WAL_READ_DURABLE, &r, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_reader_open", st, err);
  int next[THREADS + 1] = {0}; /* next expected record per writer; [THREADS] = batch */
  uint64_t recovered = 0;
  for (;;) {
    uint8_t buf[64];
    uint64_t seq = 0;
    size_t len = 0;
    st = keel_wal_reader_next(r, &seq, buf, sizeof buf - 1, &len, &err);
    if (st == KEEL_STATUS_NOT_FOUND) { /* caught up with the log */
      keel_error_free(err);
      break;
    }
    if (st != KEEL_STATUS_OK) return failed("keel_wal_reader_next", st, err);
    buf[len] = '\0';
    int t = -1, i = -1;
    char want[64];
    if (sscanf((const char *)buf, "thread %d record %d", &t, &i) != 2 || t < 0 || t > THREADS ||
        i != next[t] || payload(want, sizeof want, t, i) != (int)len || memcmp(want, buf, len) != 0) {
      fprintf(stderr, "wal_demo: record %" PRIu64 " is unexpected: \"%s\"\n", seq, (const char *)buf);
      return 1;
    }
    next[t]++;
    recovered++;
  }
  keel_wal_reader_close(r);
  st = keel_wal_close(wal, &err);
  if (st != KEEL_STATUS_OK) return failed("keel_wal_close", st, err);

  printf("recovered %" PRIu64 " records after reopen: %s\n", recovered,
         recovered == written ? "all match" : "MISMATCH");
  return recovered == written ? 0 : 1;
}
