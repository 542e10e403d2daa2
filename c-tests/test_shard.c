/*
 * Engines and shards through the C API, in normal use:
 * - engine open/close/reopen: values, posting lists and deletions come back
 *   with the versions their writes returned, and versions continue;
 * - the shard registry: list (BUFFER_TOO_SMALL protocol), open twice → BUSY,
 *   drop while open → BUSY, drop of a missing shard → NOT_FOUND, a dropped
 *   shard is gone; shards are independent;
 * - kinds meeting: append to a value → WRONG_KIND with nothing written,
 *   put replaces a list, delete then append starts a new list;
 * - batches (keel_batch_* and the packed format): atomic, consecutive
 *   versions, a WRONG_KIND anywhere fails the whole batch, earlier
 *   operations of a batch count;
 * - multi_get of present and absent keys;
 * - scans and prefix scans: byte order, bounds, a consistent copy;
 * - posting lists walked with keel_posting_next, including bad encodings;
 * - flush(wait) makes persisted_version reach last_version;
 * - concurrent writers on one shard get unique, dense versions.
 */
#include "keel_test.h"

#include <pthread.h>

/* ---- engine lifecycle and recovered state ------------------------------- */

/* What shard 1 holds after write_history(), with the versions returned. */
static uint64_t v_a, v_b, v_p, v_q, v_e, v_empty_key, v_last;
static uint8_t p_list[64];
static size_t p_len;

static void write_history(const keel_shard_t *s) {
  KT_ERR;
  uint64_t v[11];
  CHECK_OK(keel_shard_put(s, KT_S("a"), KT_S("alpha"), &v[0], &err));
  CHECK_OK(keel_shard_put(s, KT_S("b"), KT_S("beta"), &v[1], &err));
  CHECK_OK(keel_shard_append(s, KT_S("p"), KT_S("x1"), &v[2], &err));
  CHECK_OK(keel_shard_append(s, KT_S("p"), KT_S("x2"), &v[3], &err));
  CHECK_OK(keel_shard_put(s, KT_S("c"), KT_S("gone soon"), &v[4], &err));
  CHECK_OK(keel_shard_delete(s, KT_S("c"), &v[5], &err));
  CHECK_OK(keel_shard_delete(s, KT_S("never"), &v[6], &err)); /* absent: still a version */
  CHECK_OK(keel_shard_append(s, KT_S("q"), NULL, 0, &v[7], &err)); /* one empty item */
  CHECK_OK(keel_shard_put(s, KT_S("e"), NULL, 0, &v[8], &err));    /* empty value */
  CHECK_OK(keel_shard_put(s, NULL, 0, KT_S("under the empty key"), &v[9], &err));
  CHECK_OK(keel_shard_put(s, KT_S("b"), KT_S("beta 2"), &v[10], &err)); /* replaces */
  /* Versions are WAL sequence numbers: 1, 2, 3, ... one per operation. */
  for (int i = 0; i < 11; i++) CHECK_EQ_U64(v[i], (uint64_t)i + 1);
  v_a = v[0];
  v_p = v[3]; /* a list carries the version of its last append */
  v_q = v[7];
  v_e = v[8];
  v_empty_key = v[9];
  v_b = v[10];
  v_last = v[10];
  p_len = kt_posting_add(p_list, 0, "x1", 2);
  p_len = kt_posting_add(p_list, p_len, "x2", 2);
}

static void expect_history(const keel_shard_t *s) {
  const uint8_t empty_item[4] = {0, 0, 0, 0};
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "a", "alpha"), v_a);
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "b", "beta 2"), v_b);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("p"), KEEL_KIND_POSTING, p_list, p_len), v_p);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("q"), KEEL_KIND_POSTING, empty_item, 4), v_q);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("e"), KEEL_KIND_VALUE, NULL, 0), v_e);
  CHECK_EQ_U64(KT_EXPECT_GET(s, NULL, 0, KEEL_KIND_VALUE, "under the empty key", 19), v_empty_key);
  KT_EXPECT_ABSENT(s, KT_S("c"));
  KT_EXPECT_ABSENT(s, KT_S("never"));
  KT_EXPECT_ABSENT(s, KT_S("a ")); /* no prefix matching in get */
  CHECK_EQ_U64(kt_last_version(s), v_last);
}

static void lifecycle(void) {
  KT_ERR;
  char *dir = kt_tempdir();

  /* The documented defaults. */
  keel_engine_options_t o;
  memset(&o, 0xAB, sizeof o);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.struct_size, sizeof o);
  CHECK_EQ_U64(o.durability, KEEL_DURABILITY_SYNC);
  CHECK_EQ_U64(o.sync_interval_ms, 100);
  CHECK_EQ_U64(o.max_sealed_segments, 8);
  CHECK_EQ_U64(o.wal_segment_size, 64ull << 20);
  CHECK_EQ_U64(o.flush_interval_ms, 5000);
  CHECK_EQ_U64(o.seal_bytes, 32ull << 20);

  keel_engine_t *engine = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &engine, &err)); /* NULL: the defaults */
  CHECK(engine != NULL);

  /* One engine per directory. */
  keel_engine_t *second = NULL;
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_engine_open(dir, NULL, &second, &err));
  CHECK(second == NULL);

  size_t count = 99;
  CHECK_OK(keel_engine_shard_list(engine, NULL, 0, &count, &err));
  CHECK_EQ_U64(count, 0);

  keel_shard_t *s = NULL;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_open(engine, 1, false, &s, &err));
  CHECK(s == NULL);
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));
  CHECK(s != NULL);
  keel_shard_t *again = NULL;
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_engine_shard_open(engine, 1, true, &again, &err));
  CHECK(again == NULL);
  CHECK_EQ_U64(kt_last_version(s), 0);
  CHECK_EQ_U64(kt_persisted_version(s), 0);

  write_history(s);
  expect_history(s);

  /* keel_shard_close, then the engine; a closed shard may be opened again. */
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  expect_history(s);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  /* Reopen with other options: everything recovered, same versions. */
  keel_engine_options_t none = kt_engine_options(KEEL_DURABILITY_NONE);
  CHECK_OK(keel_engine_open(dir, &none, &engine, &err));
  uint32_t ids[4] = {0};
  CHECK_OK(keel_engine_shard_list(engine, ids, 4, &count, &err));
  CHECK_EQ_U64(count, 1);
  CHECK_EQ_U64(ids[0], 1);
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  expect_history(s);

  /* Versions continue where the log ended. */
  uint64_t v = 0;
  CHECK_OK(keel_shard_append(s, KT_S("p"), KT_S("x3"), &v, &err));
  CHECK_EQ_U64(v, v_last + 1);
  v_p = v_last = v;
  p_len = kt_posting_add(p_list, p_len, "x3", 2);
  CHECK_OK(keel_shard_delete(s, KT_S("a"), &v, &err));
  CHECK_EQ_U64(v, v_last + 1);
  v_last = v;

  /* keel_engine_close closes the shard still open (NONE: its final flush
   * and WAL close are what make the writes durable). The handle is freed
   * by keel_shard_close afterwards, which then returns OK. */
  CHECK_OK(keel_engine_close(engine, &err));
  CHECK_OK(keel_shard_close(s, &err));

  CHECK_OK(keel_engine_open(dir, NULL, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  KT_EXPECT_ABSENT(s, KT_S("a"));
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("p"), KEEL_KIND_POSTING, p_list, p_len), v_p);
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "b", "beta 2"), v_b);
  CHECK_EQ_U64(kt_last_version(s), v_last);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
}

/* ---- the shard registry -------------------------------------------------- */

static void registry(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  keel_engine_t *engine = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));

  keel_shard_t *s3 = NULL, *s7 = NULL, *s42 = NULL;
  CHECK_OK(keel_engine_shard_open(engine, 42, true, &s42, &err));
  CHECK_OK(keel_engine_shard_open(engine, 7, true, &s7, &err));
  CHECK_OK(keel_engine_shard_open(engine, 3, true, &s3, &err));

  /* Shards are independent: own keys, own versions from 1. */
  uint64_t v = 0;
  CHECK_OK(keel_shard_put(s3, KT_S("k"), KT_S("in three"), &v, &err));
  CHECK_EQ_U64(v, 1);
  CHECK_OK(keel_shard_put(s7, KT_S("k"), KT_S("in seven"), &v, &err));
  CHECK_EQ_U64(v, 1);
  CHECK_OK(keel_shard_put(s7, KT_S("k2"), KT_S("more"), &v, &err));
  CHECK_EQ_U64(v, 2);
  KT_EXPECT_VALUE(s3, "k", "in three");
  KT_EXPECT_VALUE(s7, "k", "in seven");
  KT_EXPECT_ABSENT(s42, KT_S("k"));
  CHECK_OK(keel_shard_close(s3, &err));
  CHECK_OK(keel_shard_close(s42, &err));

  /* The list: every shard, open or not, ascending. */
  size_t count = 0;
  CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL, keel_engine_shard_list(engine, NULL, 0, &count, &err));
  CHECK_EQ_U64(count, 3);
  uint32_t ids[8] = {0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE};
  count = 0;
  CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL, keel_engine_shard_list(engine, ids, 2, &count, &err));
  CHECK_EQ_U64(count, 3);
  CHECK(ids[0] == 0xEE && ids[1] == 0xEE); /* nothing written */
  CHECK_OK(keel_engine_shard_list(engine, ids, 3, &count, &err)); /* exactly enough */
  CHECK_EQ_U64(count, 3);
  CHECK(ids[0] == 3 && ids[1] == 7 && ids[2] == 42 && ids[3] == 0xEE);

  /* Drop: BUSY while open, NOT_FOUND when missing, gone afterwards. */
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_engine_shard_drop(engine, 7, &err));
  KT_EXPECT_VALUE(s7, "k", "in seven"); /* the refused drop touched nothing */
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_drop(engine, 99, &err));
  CHECK_OK(keel_engine_shard_drop(engine, 3, &err));
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_drop(engine, 3, &err));
  CHECK_OK(keel_engine_shard_list(engine, ids, 8, &count, &err));
  CHECK_EQ_U64(count, 2);
  CHECK(ids[0] == 7 && ids[1] == 42);
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_open(engine, 3, false, &s3, &err));
  /* Created again, it starts empty at version 0. */
  CHECK_OK(keel_engine_shard_open(engine, 3, true, &s3, &err));
  KT_EXPECT_ABSENT(s3, KT_S("k"));
  CHECK_EQ_U64(kt_last_version(s3), 0);
  CHECK_OK(keel_shard_close(s3, &err));

  /* After its close a shard may be dropped; the others are untouched. */
  CHECK_OK(keel_shard_close(s7, &err));
  CHECK_OK(keel_engine_shard_drop(engine, 7, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  /* The drops are durable. */
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_list(engine, ids, 8, &count, &err));
  CHECK_EQ_U64(count, 2);
  CHECK(ids[0] == 3 && ids[1] == 42);
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_open(engine, 7, false, &s7, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
}

/* ---- a missing segment file ------------------------------------------------ */

/* A shard whose segment file is gone fails to open with CORRUPTION; an
 * engine opened with salvage opens it and keel_shard_salvage_report() names
 * the file. */
static void missing_file(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  CHECK(!opts.salvage); /* never the default */
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));
  uint64_t v = 0;
  CHECK_OK(keel_shard_put(s, KT_S("k"), KT_S("v"), &v, &err));
  keel_buf_t report = {NULL, 0};
  CHECK_OK(keel_shard_salvage_report(s, &report, NULL)); /* a clean open found nothing */
  CHECK(report.ptr == NULL && report.len == 0);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  char path[4096];
  snprintf(path, sizeof path, "%s/shards/1/segments/seg-0000000000000001.state", dir);
  CHECK(unlink(path) == 0);
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_engine_shard_open(engine, 1, false, &s, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  opts.salvage = true;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  KT_EXPECT_VALUE(s, "k", "v"); /* the WAL still held it */
  CHECK_OK(keel_shard_salvage_report(s, &report, &err));
  CHECK(report.ptr != NULL && report.len > 0);
  char *text = malloc(report.len + 1); /* the report is not NUL-terminated */
  CHECK(text != NULL);
  memcpy(text, report.ptr, report.len);
  text[report.len] = '\0';
  CHECK(strstr(text, "seg-0000000000000001.state") != NULL);
  free(text);
  /* A filled buffer is refused (it would leak), then freed by the caller. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_salvage_report(s, &report, &err));
  CHECK_OK(keel_buf_free(&report));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_salvage_report(s, NULL, &err));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
}

/* ---- kinds meeting ------------------------------------------------------- */

static void kinds(const keel_shard_t *s) {
  KT_ERR;
  uint64_t v = 0, v_val = 0, before = 0;
  uint8_t list[64];
  size_t len;

  CHECK_OK(keel_shard_put(s, KT_S("kv"), KT_S("a value"), &v_val, &err));
  before = kt_last_version(s);
  v = 0xBAD;
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_append(s, KT_S("kv"), KT_S("item"), &v, &err));
  CHECK_EQ_U64(v, 0xBAD);                     /* no version handed out */
  CHECK_EQ_U64(kt_last_version(s), before);   /* nothing written */
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "kv", "a value"), v_val);

  /* Append to an absent key creates a list; put replaces the list. */
  CHECK_OK(keel_shard_append(s, KT_S("kl"), KT_S("i1"), &v, &err));
  CHECK_OK(keel_shard_append(s, KT_S("kl"), KT_S("i2"), &v, &err));
  len = kt_posting_add(list, 0, "i1", 2);
  len = kt_posting_add(list, len, "i2", 2);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("kl"), KEEL_KIND_POSTING, list, len), v);
  CHECK_OK(keel_shard_put(s, KT_S("kl"), KT_S("now a value"), &v, &err));
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "kl", "now a value"), v);
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_append(s, KT_S("kl"), KT_S("i3"), NULL, &err));

  /* Delete makes it absent; an append then starts a new list. */
  CHECK_OK(keel_shard_delete(s, KT_S("kl"), NULL, &err));
  KT_EXPECT_ABSENT(s, KT_S("kl"));
  CHECK_OK(keel_shard_append(s, KT_S("kl"), KT_S("fresh"), &v, &err));
  len = kt_posting_add(list, 0, "fresh", 5);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("kl"), KEEL_KIND_POSTING, list, len), v);

  /* An empty value is still a value. */
  CHECK_OK(keel_shard_put(s, KT_S("kz"), NULL, 0, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_append(s, KT_S("kz"), KT_S("i"), NULL, &err));
}

/* ---- batches ------------------------------------------------------------- */

static void batches(const keel_shard_t *s) {
  KT_ERR;
  keel_batch_t *b = NULL;
  size_t n = 99;
  uint64_t first = 0xBAD, last = 0xBAD;
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 0);
  uint64_t before = kt_last_version(s);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write(s, b, &first, &last, &err));
  CHECK(first == 0xBAD && last == 0xBAD);
  CHECK_EQ_U64(kt_last_version(s), before);

  CHECK_OK(keel_shard_put(s, KT_S("bv"), KT_S("old"), NULL, &err));
  CHECK_OK(keel_shard_put(s, KT_S("bdel"), KT_S("doomed"), NULL, &err));

  CHECK_OK(keel_batch_put(b, KT_S("ba"), KT_S("A"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bl"), KT_S("l1"), &err));
  CHECK_OK(keel_batch_delete(b, KT_S("bdel"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bl"), KT_S("l2"), &err));
  CHECK_OK(keel_batch_put(b, KT_S("bv"), KT_S("new"), &err));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 5);
  before = kt_last_version(s);
  CHECK_OK(keel_shard_write(s, b, &first, &last, &err));
  CHECK_EQ_U64(first, before + 1);
  CHECK_EQ_U64(last, first + 4); /* consecutive, one per operation */
  CHECK_EQ_U64(kt_last_version(s), last);
  uint8_t list[64];
  size_t len = kt_posting_add(list, 0, "l1", 2);
  len = kt_posting_add(list, len, "l2", 2);
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "ba", "A"), first);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("bl"), KEEL_KIND_POSTING, list, len), first + 3);
  KT_EXPECT_ABSENT(s, KT_S("bdel"));
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "bv", "new"), last);

  /* The batch is left as it was: writing it again repeats it. */
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 5);
  CHECK_OK(keel_shard_write(s, b, NULL, NULL, &err));
  len = kt_posting_add(list, len, "l1", 2);
  len = kt_posting_add(list, len, "l2", 2);
  KT_EXPECT_GET(s, KT_S("bl"), KEEL_KIND_POSTING, list, len);
  CHECK_RC(KEEL_STATUS_OK, keel_batch_clear(b));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 0);

  /* Atomic: a WRONG_KIND in the last operation fails the whole batch. */
  CHECK_OK(keel_batch_put(b, KT_S("bn1"), KT_S("never"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bn2"), KT_S("never"), &err));
  CHECK_OK(keel_batch_delete(b, KT_S("ba"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bv"), KT_S("onto a value"), &err));
  before = kt_last_version(s);
  first = last = 0xBAD;
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_write(s, b, &first, &last, &err));
  CHECK(first == 0xBAD && last == 0xBAD);
  CHECK_EQ_U64(kt_last_version(s), before);
  KT_EXPECT_ABSENT(s, KT_S("bn1"));
  KT_EXPECT_ABSENT(s, KT_S("bn2"));
  KT_EXPECT_VALUE(s, "ba", "A");
  KT_EXPECT_VALUE(s, "bv", "new");

  /* Earlier operations of the batch count: put then append on one key
   * fails, delete then append (or append then put) succeeds. */
  CHECK_RC(KEEL_STATUS_OK, keel_batch_clear(b));
  CHECK_OK(keel_batch_put(b, KT_S("bk"), KT_S("v"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bk"), KT_S("i"), &err));
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_write(s, b, NULL, NULL, &err));
  KT_EXPECT_ABSENT(s, KT_S("bk"));
  CHECK_EQ_U64(kt_last_version(s), before);

  CHECK_RC(KEEL_STATUS_OK, keel_batch_clear(b));
  CHECK_OK(keel_batch_delete(b, KT_S("bv"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bv"), KT_S("i"), &err));
  CHECK_OK(keel_batch_append(b, KT_S("bm"), KT_S("i"), &err));
  CHECK_OK(keel_batch_put(b, KT_S("bm"), KT_S("value wins"), &err));
  CHECK_OK(keel_shard_write(s, b, &first, &last, &err));
  CHECK_EQ_U64(first, before + 1);
  CHECK_EQ_U64(last, before + 4);
  len = kt_posting_add(list, 0, "i", 1);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("bv"), KEEL_KIND_POSTING, list, len), first + 1);
  CHECK_EQ_U64(KT_EXPECT_VALUE(s, "bm", "value wins"), last);
  keel_batch_free(b);

  /* The packed format: [u8 op][u32 LE key len][u32 LE body len][key][body]. */
  uint8_t ops[256];
  size_t off = 0;
#define PACK(op, key, body)                                                  \
  do {                                                                       \
    uint32_t kl_ = (uint32_t)strlen(key), bl_ = (uint32_t)strlen(body);      \
    ops[off++] = (op);                                                       \
    for (int i_ = 0; i_ < 4; i_++) ops[off++] = (uint8_t)(kl_ >> (8 * i_));  \
    for (int i_ = 0; i_ < 4; i_++) ops[off++] = (uint8_t)(bl_ >> (8 * i_));  \
    memcpy(ops + off, key, kl_); off += kl_;                                 \
    memcpy(ops + off, body, bl_); off += bl_;                                \
  } while (0)
  PACK(KEEL_OP_PUT, "pk", "packed value");
  PACK(KEEL_OP_APPEND, "pl", "p1");
  PACK(KEEL_OP_DELETE, "ba", "");
  PACK(KEEL_OP_APPEND, "pl", "p2");
  const size_t good = off;
  before = kt_last_version(s);
  /* Cut short anywhere inside an operation: INVALID_ARGUMENT, nothing written. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, ops, good - 1, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, ops, 5, NULL, NULL, &err));
  uint8_t bad_op[sizeof ops];
  memcpy(bad_op, ops, good);
  bad_op[0] = 9; /* not a KEEL_OP_* */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, bad_op, good, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, ops, 0, NULL, NULL, &err)); /* empty */
  CHECK_EQ_U64(kt_last_version(s), before);
  CHECK_OK(keel_shard_write_packed(s, ops, good, &first, &last, &err));
  CHECK_EQ_U64(first, before + 1);
  CHECK_EQ_U64(last, before + 4);
  KT_EXPECT_VALUE(s, "pk", "packed value");
  KT_EXPECT_ABSENT(s, KT_S("ba"));
  len = kt_posting_add(list, 0, "p1", 2);
  len = kt_posting_add(list, len, "p2", 2);
  CHECK_EQ_U64(KT_EXPECT_GET(s, KT_S("pl"), KEEL_KIND_POSTING, list, len), last);
  /* A delete with a body is malformed; a packed WRONG_KIND fails it all. */
  off = 0;
  PACK(KEEL_OP_DELETE, "pk", "body");
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, ops, off, NULL, NULL, &err));
  off = 0;
  PACK(KEEL_OP_PUT, "pnew", "x");
  PACK(KEEL_OP_APPEND, "pk", "onto a value");
  CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_write_packed(s, ops, off, NULL, NULL, &err));
  KT_EXPECT_ABSENT(s, KT_S("pnew"));
  CHECK_EQ_U64(kt_last_version(s), last);
#undef PACK
}

/* ---- multi_get ----------------------------------------------------------- */

static void multi_get(const keel_shard_t *s) {
  KT_ERR;
  uint64_t v_val = 0, v_list = 0;
  CHECK_OK(keel_shard_put(s, KT_S("m/value"), KT_S("mv"), &v_val, &err));
  CHECK_OK(keel_shard_append(s, KT_S("m/list"), KT_S("m1"), NULL, &err));
  CHECK_OK(keel_shard_append(s, KT_S("m/list"), KT_S("m2"), &v_list, &err));
  uint8_t list[32];
  size_t list_len = kt_posting_add(list, 0, "m1", 2);
  list_len = kt_posting_add(list, list_len, "m2", 2);

  /* Keys packed back to back; the same key twice and an absent one. */
  const char packed[] = "m/valuem/missingm/listm/value";
  size_t lens[4] = {7, 9, 6, 7};
  keel_buf_t values[4];
  uint32_t kinds[4];
  uint64_t versions[4];
  memset(values, 0, sizeof values);
  CHECK_OK(keel_shard_multi_get(s, (const uint8_t *)packed, lens, 4, values, kinds, versions, &err));
  CHECK(kinds[0] == KEEL_KIND_VALUE && versions[0] == v_val);
  CHECK(values[0].len == 2 && memcmp(values[0].ptr, "mv", 2) == 0);
  CHECK(kinds[1] == KEEL_KIND_NONE && versions[1] == 0);
  CHECK(values[1].ptr == NULL && values[1].len == 0);
  CHECK(kinds[2] == KEEL_KIND_POSTING && versions[2] == v_list);
  CHECK(values[2].len == list_len && memcmp(values[2].ptr, list, list_len) == 0);
  CHECK(kinds[3] == KEEL_KIND_VALUE && versions[3] == v_val);
  CHECK(values[3].ptr != values[0].ptr); /* each is its own buffer */
  for (int i = 0; i < 4; i++) CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&values[i]));

  /* versions may be NULL; count 0 needs no arrays at all. */
  CHECK_OK(keel_shard_multi_get(s, (const uint8_t *)packed, lens, 2, values, kinds, NULL, &err));
  CHECK(kinds[0] == KEEL_KIND_VALUE && kinds[1] == KEEL_KIND_NONE);
  for (int i = 0; i < 2; i++) CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&values[i]));
  CHECK_OK(keel_shard_multi_get(s, NULL, NULL, 0, NULL, NULL, NULL, &err));

  /* The empty key is a key like any other. */
  size_t zero = 0;
  CHECK_OK(keel_shard_multi_get(s, NULL, &zero, 1, values, kinds, versions, &err));
  CHECK(kinds[0] == KEEL_KIND_NONE && versions[0] == 0 && values[0].ptr == NULL);
  CHECK_OK(keel_shard_put(s, NULL, 0, KT_S("empty key"), NULL, &err));
  CHECK_OK(keel_shard_multi_get(s, NULL, &zero, 1, values, kinds, versions, &err));
  CHECK(kinds[0] == KEEL_KIND_VALUE && values[0].len == 9 && memcmp(values[0].ptr, "empty key", 9) == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&values[0]));
}

/* ---- scans ----------------------------------------------------------------- */

/* Keys in byte order (unsigned: 0xff sorts last). "" is the empty key. */
static const char *const scan_keys[] = {
    "", "a", "ab", "abc", "b", "ba", "c", "user/1", "user/2", "user0", "\xff", "\xff\xff",
};
#define NSCAN (sizeof scan_keys / sizeof scan_keys[0])
static uint64_t scan_versions[NSCAN];

/* Walks `it` to the end and expects exactly scan_keys[from .. to), each
 * with its value ("v:" + key; "abc" is a list holding its key) and
 * version; frees the iterator. */
static void expect_scan(keel_iter_t *it, size_t from, size_t to) {
  KT_ERR;
  for (size_t i = from; i < to; i++) {
    const uint8_t *k = NULL, *val = NULL;
    size_t kl = 0, vl = 0;
    uint32_t kind = 0;
    uint64_t version = 0;
    CHECK_OK(keel_iter_next(it, &k, &kl, &val, &vl, &kind, &version, &err));
    if (kl != strlen(scan_keys[i]) || (kl && memcmp(k, scan_keys[i], kl) != 0)) {
      fprintf(stderr, "scan entry %zu: expected key '%s', got '%.*s'\n", i, scan_keys[i], (int)kl, (const char *)k);
      CHECK(0);
    }
    CHECK_EQ_U64(version, scan_versions[i]);
    uint8_t want[64];
    size_t wl;
    if (strcmp(scan_keys[i], "abc") == 0) {
      CHECK_EQ_U64(kind, KEEL_KIND_POSTING);
      wl = kt_posting_add(want, 0, "abc", 3);
    } else {
      CHECK_EQ_U64(kind, KEEL_KIND_VALUE);
      wl = (size_t)snprintf((char *)want, sizeof want, "v:%s", scan_keys[i]);
    }
    CHECK(vl == wl && memcmp(val, want, wl) == 0);
  }
  /* The end, and it stays the end; the pointers are left alone. */
  const uint8_t *k = (const uint8_t *)"untouched", *val = k;
  size_t kl = 1, vl = 1;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_iter_next(it, &k, &kl, &val, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_iter_next(it, &k, &kl, &val, &vl, NULL, NULL, &err));
  CHECK(k == (const uint8_t *)"untouched" && val == k && kl == 1 && vl == 1);
  keel_iter_close(it);
}

static keel_iter_t *scan(const keel_shard_t *s, const char *start, const char *end) {
  KT_ERR;
  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan(s, (const uint8_t *)start, strlen(start), (const uint8_t *)end,
                           end ? strlen(end) : 999 /* ignored when end is NULL */, &it, &err));
  CHECK(it != NULL);
  return it;
}

static keel_iter_t *scan_prefix(const keel_shard_t *s, const char *prefix) {
  KT_ERR;
  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan_prefix(s, KT_S(prefix), &it, &err));
  return it;
}

static size_t key_index(const char *key) {
  for (size_t i = 0; i < NSCAN; i++)
    if (strcmp(scan_keys[i], key) == 0) return i;
  CHECK(0);
  return 0;
}

static void scans(const keel_shard_t *s) {
  KT_ERR;
  /* Written in reverse order so that order comes from the keys. */
  for (size_t n = NSCAN; n-- > 0;) {
    char value[32];
    snprintf(value, sizeof value, "v:%s", scan_keys[n]);
    if (strcmp(scan_keys[n], "abc") == 0)
      CHECK_OK(keel_shard_append(s, KT_S("abc"), KT_S("abc"), &scan_versions[n], &err));
    else
      CHECK_OK(keel_shard_put(s, KT_S(scan_keys[n]), KT_S(value), &scan_versions[n], &err));
  }
  /* A deleted key never shows up. */
  CHECK_OK(keel_shard_put(s, KT_S("bb"), KT_S("deleted"), NULL, &err));
  CHECK_OK(keel_shard_delete(s, KT_S("bb"), NULL, &err));

  expect_scan(scan(s, "", NULL), 0, NSCAN);          /* everything */
  expect_scan(scan(s, "ab", "b"), key_index("ab"), key_index("b")); /* [ab, b) */
  expect_scan(scan(s, "abd", "c"), key_index("b"), key_index("c")); /* start between keys */
  expect_scan(scan(s, "b", "b"), 0, 0);              /* empty range */
  expect_scan(scan(s, "user", NULL), key_index("user/1"), NSCAN);
  expect_scan(scan(s, "\xff\xff\xff", NULL), 0, 0); /* past the last key */
  expect_scan(scan(s, "", "a"), 0, 1);               /* only the empty key */

  expect_scan(scan_prefix(s, "user/"), key_index("user/1"), key_index("user0"));
  expect_scan(scan_prefix(s, "a"), key_index("a"), key_index("b"));
  expect_scan(scan_prefix(s, "ab"), key_index("ab"), key_index("b"));
  expect_scan(scan_prefix(s, "\xff"), key_index("\xff"), NSCAN); /* no upper bound */
  expect_scan(scan_prefix(s, "zzz"), 0, 0);
  expect_scan(scan_prefix(s, ""), 0, NSCAN);

  /* A scan is a consistent copy taken when it opens: later writes, deletes
   * and replacements inside its range do not show. */
  keel_iter_t *it = scan(s, "a", "b");
  CHECK_OK(keel_shard_put(s, KT_S("aa"), KT_S("new key"), NULL, &err));
  CHECK_OK(keel_shard_delete(s, KT_S("ab"), NULL, &err));
  CHECK_OK(keel_shard_put(s, KT_S("a"), KT_S("replaced"), NULL, &err));
  CHECK_OK(keel_shard_append(s, KT_S("abc"), KT_S("more"), NULL, &err));
  expect_scan(it, key_index("a"), key_index("b"));

  /* The iterator's pointers stay valid until the next call. */
  it = scan_prefix(s, "a");
  const uint8_t *k1, *v1, *k2, *v2;
  size_t kl1, vl1, kl2, vl2;
  CHECK_OK(keel_iter_next(it, &k1, &kl1, &v1, &vl1, NULL, NULL, &err));
  CHECK(kl1 == 1 && k1[0] == 'a' && vl1 == 8 && memcmp(v1, "replaced", 8) == 0);
  CHECK_OK(keel_iter_next(it, &k2, &kl2, &v2, &vl2, NULL, NULL, &err));
  CHECK(kl2 == 2 && memcmp(k2, "aa", 2) == 0);
  keel_iter_close(it);
}

/* ---- posting lists --------------------------------------------------------- */

#define NITEMS 100

static void postings(const keel_shard_t *s) {
  KT_ERR;
  static uint8_t items[NITEMS][600];
  static size_t item_len[NITEMS];
  static uint8_t want[NITEMS * 604];
  size_t want_len = 0;
  for (int i = 0; i < NITEMS; i++) {
    item_len[i] = i == 7 ? 0 : (size_t)((i * 53) % 600); /* one empty item, binary bytes */
    kt_fill(items[i], item_len[i], (uint64_t)i);
    CHECK_OK(keel_shard_append(s, KT_S("postings"), item_len[i] ? items[i] : NULL, item_len[i], NULL, &err));
    want_len = kt_posting_add(want, want_len, items[i], item_len[i]);
  }
  KT_EXPECT_GET(s, KT_S("postings"), KEEL_KIND_POSTING, want, want_len);

  keel_buf_t list = {NULL, 0};
  uint32_t kind = 0;
  CHECK_OK(keel_shard_get(s, KT_S("postings"), &list, &kind, NULL, &err));
  CHECK_EQ_U64(kind, KEEL_KIND_POSTING);
  size_t off = 0;
  for (int i = 0; i < NITEMS; i++) {
    const uint8_t *item = NULL;
    size_t len = 99999;
    CHECK_OK(keel_posting_next(list.ptr, list.len, &off, &item, &len, &err));
    CHECK_EQ_U64(len, item_len[i]);
    CHECK(item >= list.ptr && item + len <= list.ptr + list.len); /* points into the list */
    CHECK(memcmp(item, items[i], len) == 0);
  }
  CHECK_EQ_U64(off, list.len);
  const uint8_t *item = (const uint8_t *)"untouched";
  size_t len = 1;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_posting_next(list.ptr, list.len, &off, &item, &len, &err));
  CHECK(item == (const uint8_t *)"untouched" && len == 1 && off == list.len);

  /* Bad encodings: CORRUPTION, with the offset left where it was. */
  off = 0;
  size_t walked = 0;
  keel_status_t st;
  while ((st = keel_posting_next(list.ptr, list.len - 1, &off, &item, &len, NULL)) == KEEL_STATUS_OK) walked++;
  CHECK_EQ_U64(st, KEEL_STATUS_CORRUPTION); /* the last item is cut short */
  CHECK_EQ_U64(walked, NITEMS - 1);
  const size_t at_last = off;
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_posting_next(list.ptr, list.len - 1, &off, &item, &len, &err));
  CHECK_EQ_U64(off, at_last);

  const uint8_t huge[6] = {0xff, 0xff, 0xff, 0xff, 'a', 'b'}; /* claims 4 GiB - 1 */
  off = 0;
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_posting_next(huge, sizeof huge, &off, &item, &len, &err));
  CHECK_EQ_U64(off, 0);
  const uint8_t stub[3] = {1, 0, 0}; /* shorter than a length prefix */
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_posting_next(stub, sizeof stub, &off, &item, &len, &err));
  const uint8_t trailing[6] = {1, 0, 0, 0, 'x', 9}; /* one good item, then a stub */
  CHECK_OK(keel_posting_next(trailing, sizeof trailing, &off, &item, &len, &err));
  CHECK(off == 5 && len == 1 && item[0] == 'x');
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_posting_next(trailing, sizeof trailing, &off, &item, &len, &err));

  /* Offsets: at the end is NOT_FOUND, beyond it INVALID_ARGUMENT. */
  off = list.len + 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_posting_next(list.ptr, list.len, &off, &item, &len, &err));
  off = 0;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_posting_next(NULL, 0, &off, &item, &len, &err)); /* empty list */
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&list));
}

/* ---- flush and persisted versions ---------------------------------------- */

static void flushes(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  /* NONE and no background flush: nothing is persisted until asked. */
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 5, true, &s, &err));
  for (int i = 0; i < 50; i++) {
    char key[16];
    snprintf(key, sizeof key, "f%02d", i);
    CHECK_OK(keel_shard_put(s, KT_S(key), KT_S("flush me"), NULL, &err));
  }
  CHECK_OK(keel_shard_append(s, KT_S("fl"), KT_S("item"), NULL, &err));
  const uint64_t last = kt_last_version(s);
  CHECK_EQ_U64(last, 51);
  CHECK(kt_persisted_version(s) < last);

  uint64_t persisted = 0;
  CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
  CHECK_EQ_U64(persisted, last);
  CHECK_EQ_U64(kt_persisted_version(s), last);
  CHECK_OK(keel_shard_flush(s, true, NULL, &err)); /* nothing new: still fine */
  CHECK_EQ_U64(kt_persisted_version(s), last);

  /* Without wait: returns at once with what is persisted so far (<= last);
   * a later waited flush covers it. */
  CHECK_OK(keel_shard_put(s, KT_S("f-late"), KT_S("x"), NULL, &err));
  persisted = 0xBAD;
  CHECK_OK(keel_shard_flush(s, false, &persisted, &err));
  CHECK(persisted >= last && persisted <= last + 1);
  CHECK_OK(keel_shard_flush(s, false, NULL, &err));
  CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
  CHECK_EQ_U64(persisted, last + 1);
  CHECK_EQ_U64(kt_last_version(s), last + 1);

  /* A hold on WAL records from the last version is accepted and released. */
  CHECK_OK(keel_shard_set_keep_from(s, last + 1, &err));
  CHECK_OK(keel_shard_set_keep_from(s, KEEL_WAL_KEEP_NONE, &err));

  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_shard_open(engine, 5, false, &s, &err));
  CHECK_EQ_U64(kt_last_version(s), last + 1);
  /* Everything was flushed by the close; a waited flush reports it. */
  CHECK(kt_persisted_version(s) <= last + 1);
  CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
  CHECK_EQ_U64(persisted, last + 1);
  KT_EXPECT_VALUE(s, "f-late", "x");
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
}

/* ---- concurrent writers ---------------------------------------------------- */

#define WRITERS 4
#define PER_WRITER 250

static keel_shard_t *shared;
static uint64_t written[WRITERS][PER_WRITER];

static void *writer(void *arg) {
  KT_ERR;
  const int t = (int)(intptr_t)arg;
  for (int i = 0; i < PER_WRITER; i++) {
    char key[32];
    snprintf(key, sizeof key, "w%d/%03d", t, i);
    if (i % 2)
      CHECK_OK(keel_shard_put(shared, KT_S(key), KT_S(key), &written[t][i], &err));
    else
      CHECK_OK(keel_shard_append(shared, KT_S("w/all"), KT_S(key), &written[t][i], &err));
  }
  return NULL;
}

static void concurrent(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  keel_engine_t *engine = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &shared, &err));
  pthread_t threads[WRITERS];
  for (int t = 0; t < WRITERS; t++) CHECK(pthread_create(&threads[t], NULL, writer, (void *)(intptr_t)t) == 0);
  for (int t = 0; t < WRITERS; t++) CHECK(pthread_join(threads[t], NULL) == 0);

  /* Unique and dense: versions 1..TOTAL, each handed out once. */
  static uint8_t seen[WRITERS * PER_WRITER + 1];
  for (int t = 0; t < WRITERS; t++)
    for (int i = 0; i < PER_WRITER; i++) {
      const uint64_t v = written[t][i];
      CHECK(v >= 1 && v <= WRITERS * PER_WRITER && !seen[v]);
      seen[v] = 1;
    }
  CHECK_EQ_U64(kt_last_version(shared), WRITERS * PER_WRITER);
  for (int t = 0; t < WRITERS; t++)
    for (int i = 1; i < PER_WRITER; i += 2) {
      char key[32];
      snprintf(key, sizeof key, "w%d/%03d", t, i);
      CHECK_EQ_U64(KT_EXPECT_VALUE(shared, key, key), written[t][i]);
    }
  /* The shared list holds every appended item once, in version order. */
  keel_buf_t list = {NULL, 0};
  CHECK_OK(keel_shard_get(shared, KT_S("w/all"), &list, NULL, NULL, &err));
  size_t off = 0, n = 0;
  const uint8_t *item;
  size_t len;
  uint64_t prev = 0;
  while (keel_posting_next(list.ptr, list.len, &off, &item, &len, NULL) == KEEL_STATUS_OK) {
    int t, i;
    char text[32];
    CHECK(len < sizeof text);
    memcpy(text, item, len);
    text[len] = '\0';
    CHECK(sscanf(text, "w%d/%d", &t, &i) == 2);
    CHECK(written[t][i] > prev);
    prev = written[t][i];
    n++;
  }
  CHECK_EQ_U64(n, WRITERS * PER_WRITER / 2);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&list));
  CHECK_OK(keel_shard_close(shared, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);
}

int main(void) {
  KT_ERR;
  lifecycle();
  registry();
  missing_file();

  char *dir = kt_tempdir();
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));
  kinds(s);
  batches(s);
  multi_get(s);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_shard_open(engine, 2, true, &s, &err)); /* scans want their own keys */
  scans(s);
  postings(s);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);

  flushes();
  concurrent();
  KT_PASS();
}
