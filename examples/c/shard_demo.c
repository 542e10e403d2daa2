/*
 * shard_demo — a keel shard from C: keys, values and posting lists that
 * survive a close and reopen.
 *
 *   shard_demo [DIR]
 *
 * Opens an engine on DIR (default: a fresh temporary directory), opens
 * shard 1 (creating it), writes documents and tag posting lists, one
 * atomic batch, flushes, closes; then reopens and checks that every key
 * and every posting list came back, prints one list and a prefix scan.
 * Each run appends its number to the list "runs", so running it again on
 * the same DIR shows state recovered from earlier runs. Exits non-zero on
 * any failure.
 *
 * Build: cc -std=c99 shard_demo.c $(pkg-config --cflags --libs keel)
 */
#define _GNU_SOURCE /* mkdtemp */
#include <keel.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DOCS 300
#define TAGS 7

static int failed(const char *what, keel_status_t st, keel_error_t *err) {
  fprintf(stderr, "shard_demo: %s failed: %s: %s\n", what, keel_status_str(st),
          err ? keel_error_message(err) : "(no details)");
  keel_error_free(err);
  return 1;
}

#define CHECK(what, call)                 \
  do {                                    \
    keel_error_t *err_ = NULL;            \
    keel_status_t st_ = (call);           \
    if (st_ != KEEL_STATUS_OK)            \
      return failed(what, st_, err_);     \
  } while (0)
/* CHECK passes &err_ to the call through this name. */
#define ERR (&err_)

static const uint8_t *b(const char *s) { return (const uint8_t *)s; }

/* Number of items in an encoded posting list (KEEL_KIND_POSTING). */
static long count_items(const keel_buf_t *list) {
  size_t off = 0, len = 0;
  const uint8_t *item = NULL;
  long n = 0;
  while (keel_posting_next(list->ptr, list->len, &off, &item, &len, NULL) == KEEL_STATUS_OK) n++;
  return n;
}

static int open_shard(const char *dir, keel_engine_t **engine, keel_shard_t **shard) {
  keel_engine_options_t opts;
  keel_engine_options_init(&opts);
  opts.durability = KEEL_DURABILITY_SYNC; /* a write returns once it is on disk */
  CHECK("keel_engine_open", keel_engine_open(dir, &opts, engine, ERR));
  CHECK("keel_engine_shard_open", keel_engine_shard_open(*engine, 1, true, shard, ERR));
  return 0;
}

int main(int argc, char **argv) {
  char tmp[] = "/tmp/keel-shard-demo-XXXXXX";
  const char *dir = argc > 1 ? argv[1] : mkdtemp(tmp);
  if (!dir) return perror("mkdtemp"), 1;

  keel_engine_t *engine = NULL;
  keel_shard_t *shard = NULL;
  if (open_shard(dir, &engine, &shard)) return 1;

  /* How many runs happened before this one (recovered from disk). */
  long earlier_runs = 0;
  keel_buf_t runs = {NULL, 0};
  keel_status_t st = keel_shard_get(shard, b("runs"), 4, &runs, NULL, NULL, NULL);
  if (st == KEEL_STATUS_OK) earlier_runs = count_items(&runs);
  keel_buf_free(&runs);

  /* Documents (values) and tags (posting lists of document ids). */
  uint64_t version = 0;
  for (int d = 0; d < DOCS; d++) {
    char key[32], value[64], tag[32];
    int kl = snprintf(key, sizeof key, "doc:%04d", d);
    int vl = snprintf(value, sizeof value, "document %d, run %ld", d, earlier_runs + 1);
    CHECK("keel_shard_put", keel_shard_put(shard, b(key), (size_t)kl, b(value), (size_t)vl, &version, ERR));
    int tl = snprintf(tag, sizeof tag, "tag:%d", d % TAGS);
    CHECK("keel_shard_append", keel_shard_append(shard, b(tag), (size_t)tl, b(key), (size_t)kl, &version, ERR));
  }
  /* One atomic batch: the run counter and a summary, both or neither. */
  keel_batch_t *batch = NULL;
  char run[16];
  int rl = snprintf(run, sizeof run, "%ld", earlier_runs + 1);
  CHECK("keel_batch_new", keel_batch_new(&batch));
  CHECK("keel_batch_append", keel_batch_append(batch, b("runs"), 4, b(run), (size_t)rl, ERR));
  CHECK("keel_batch_put", keel_batch_put(batch, b("summary"), 7, b("300 docs, 7 tags"), 16, ERR));
  uint64_t first = 0, last = 0;
  CHECK("keel_shard_write", keel_shard_write(shard, batch, &first, &last, ERR));
  keel_batch_free(batch);
  uint64_t persisted = 0;
  CHECK("keel_shard_flush", keel_shard_flush(shard, true, &persisted, ERR));
  printf("shard_demo: wrote %d documents and %d tag lists; last version %" PRIu64 ", persisted %" PRIu64 "\n",
         DOCS, TAGS, last, persisted);
  CHECK("keel_shard_close", keel_shard_close(shard, ERR));
  CHECK("keel_engine_close", keel_engine_close(engine, ERR));

  /* Reopen: everything comes back from the segment files and the WAL. */
  if (open_shard(dir, &engine, &shard)) return 1;
  for (int d = 0; d < DOCS; d++) {
    char key[32], want[64];
    int kl = snprintf(key, sizeof key, "doc:%04d", d);
    int wl = snprintf(want, sizeof want, "document %d, run %ld", d, earlier_runs + 1);
    keel_buf_t got = {NULL, 0};
    uint32_t kind = 0;
    CHECK("keel_shard_get", keel_shard_get(shard, b(key), (size_t)kl, &got, &kind, NULL, ERR));
    int ok = kind == KEEL_KIND_VALUE && got.len == (size_t)wl && memcmp(got.ptr, want, (size_t)wl) == 0;
    keel_buf_free(&got);
    if (!ok) return fprintf(stderr, "shard_demo: %s did not come back\n", key), 1;
  }
  keel_buf_t list = {NULL, 0};
  CHECK("keel_shard_get(runs)", keel_shard_get(shard, b("runs"), 4, &list, NULL, NULL, ERR));
  long runs_now = count_items(&list);
  keel_buf_free(&list);
  if (runs_now != earlier_runs + 1)
    return fprintf(stderr, "shard_demo: runs list has %ld items, expected %ld\n", runs_now, earlier_runs + 1), 1;

  /* A posting list, item by item, and a prefix scan over the tags. */
  CHECK("keel_shard_get(tag:3)", keel_shard_get(shard, b("tag:3"), 5, &list, NULL, &version, ERR));
  size_t off = 0, len = 0;
  const uint8_t *item = NULL;
  printf("shard_demo: after reopen, tag:3 (version %" PRIu64 ") holds %ld ids:", version, count_items(&list));
  for (int i = 0; i < 4 && keel_posting_next(list.ptr, list.len, &off, &item, &len, NULL) == KEEL_STATUS_OK; i++)
    printf(" %.*s", (int)len, (const char *)item);
  printf(" ...\n");
  keel_buf_free(&list);

  keel_iter_t *it = NULL;
  CHECK("keel_shard_scan_prefix", keel_shard_scan_prefix(shard, b("tag:"), 4, &it, ERR));
  const uint8_t *k, *v;
  size_t klen, vlen;
  int tags = 0;
  while ((st = keel_iter_next(it, &k, &klen, &v, &vlen, NULL, NULL, NULL)) == KEEL_STATUS_OK) tags++;
  keel_iter_close(it);
  if (st != KEEL_STATUS_NOT_FOUND || tags != TAGS)
    return fprintf(stderr, "shard_demo: prefix scan found %d tags (%s)\n", tags, keel_status_str(st)), 1;
  printf("shard_demo: recovered %d documents, %d tag lists, run %ld of this shard\n", DOCS, tags, runs_now);

  CHECK("keel_shard_close", keel_shard_close(shard, ERR));
  CHECK("keel_engine_close", keel_engine_close(engine, ERR));
  return 0;
}
