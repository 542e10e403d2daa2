/*
 * Misuse of the engine, shard, batch, scan and posting-list API must give a
 * clear status, never a crash:
 * - NULL for each required pointer → NULL_ARGUMENT (documented optional
 *   pointers are accepted), _close(NULL) / _free(NULL) are no-ops;
 * - bad options (durability out of range, struct_size too small, values
 *   out of range) → INVALID_ARGUMENT;
 * - a key of KEEL_SHARD_MAX_KEY_SIZE + 1 bytes → INVALID_ARGUMENT in every
 *   call taking a key or a scan bound (KEEL_SHARD_MAX_KEY_SIZE itself
 *   works); a value larger than a WAL record → INVALID_ARGUMENT, nothing
 *   written;
 * - a handle of the wrong type → INVALID_ARGUMENT;
 * - a scan after its shard closed, and a shard after its engine closed
 *   → CLOSED (and the handles are still freed with OK);
 * - out of descriptors an engine or shard open answers RESOURCE and
 *   opens nothing (the same call works afterwards); an engine whose
 *   shard list is lost beside shard directories answers CORRUPTION;
 * - out-parameters are left untouched on failure, and every error object
 *   has the returned code and a non-empty message (CHECK_STATUS checks
 *   that for each failing call).
 */
#include "keel_test.h"

#include <sys/stat.h>

#define SENTINEL 0x5EEDull


/* The open must fail with INVALID_ARGUMENT and leave *out untouched. */
static void bad_options_at(const char *dir, const keel_engine_options_t *o, const char *what) {
  KT_ERR;
  keel_engine_t *const untouched = (keel_engine_t *)o;
  keel_engine_t *engine = untouched;
  keel_status_t st = keel_engine_open(dir, o, &engine, &err);
  if (st != KEEL_STATUS_INVALID_ARGUMENT) {
    fprintf(stderr, "engine options with %s: expected INVALID_ARGUMENT, got %s\n", what, keel_status_str(st));
    if (st == KEEL_STATUS_OK) keel_engine_close(engine, NULL);
    CHECK(0);
  }
  CHECK(engine == untouched);
  CHECK(err != NULL && keel_error_code(err) == st && keel_error_message(err)[0] != '\0');
  keel_error_free(err);
}

static void bad_options(const char *dir, keel_engine_options_t o, const char *what) {
  bad_options_at(dir, &o, what);
}

static void options(const char *dir) {
  KT_ERR;
  keel_engine_options_t def;
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_engine_options_init(NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_engine_options_init_sized(NULL, sizeof def));
  /* Every field: the legacy init fills version 1 only, and the larger
   * struct_size below makes the library read the fields after it (the
   * stack's bytes there once failed the open). The canary makes any field
   * init_sized leaves unset fail it every time. */
  memset(&def, 0xA5, sizeof def);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&def, sizeof def));
  keel_engine_options_t o = def;
  o.durability = 3;                        bad_options(dir, o, "durability 3");
  o.durability = UINT32_MAX;               bad_options(dir, o, "durability UINT32_MAX");
  o = def; o.struct_size = 0;              bad_options(dir, o, "struct_size 0");
  o = def; o.struct_size = sizeof o - 1;   bad_options(dir, o, "struct_size sizeof - 1");
  o = def; o.struct_size = 8;              bad_options(dir, o, "struct_size 8");
  o = def; o.seal_bytes = 4095;            bad_options(dir, o, "seal_bytes 4095");
  o = def; o.max_sealed_segments = 0;      bad_options(dir, o, "max_sealed_segments 0");
  o = def; o.wal_segment_size = 4096;      bad_options(dir, o, "wal_segment_size 4096");
  o = def; o.wal_segment_size = (4ull << 30) + 1; bad_options(dir, o, "wal_segment_size 4 GiB + 1");
  o = def; o.durability = KEEL_DURABILITY_PERIODIC; o.sync_interval_ms = 0;
  bad_options(dir, o, "sync_interval_ms 0");
  o.sync_interval_ms = 60001;              bad_options(dir, o, "sync_interval_ms 60001");

  /* The smallest accepted values, and a larger struct_size (a newer
   * caller whose extra fields hold their default, zero) are fine. The
   * library checks that the bytes it does not know are zero, so they must
   * exist: a struct_size past the end of `o` made it read the stack beyond
   * (valgrind: "depends on uninitialised value"), and a non-zero byte there
   * would have failed the open. */
  struct {
    keel_engine_options_t o;
    uint8_t newer[8];
  } big;
  memset(&big, 0, sizeof big);
  big.o = def;
  big.o.struct_size = sizeof big;
  CHECK(big.o.struct_size > sizeof big.o);
  big.o.seal_bytes = 4096;
  big.o.max_sealed_segments = 1;
  big.o.wal_segment_size = 64 << 10;
  big.o.durability = KEEL_DURABILITY_PERIODIC;
  big.o.sync_interval_ms = 1;
  big.o.flush_interval_ms = 0;
  keel_engine_t *engine = NULL;
  CHECK_OK(keel_engine_open(dir, &big.o, &engine, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  /* A non-zero byte past what the library knows is refused. */
  big.newer[7] = 1;
  bad_options_at(dir, &big.o, "a non-zero byte past the known fields");
}

static void nulls(keel_engine_t *engine, keel_shard_t *s) {
  KT_ERR;
  const uint8_t k[1] = {'k'};
  uint64_t u = SENTINEL;
  size_t n = SENTINEL;
  uint32_t kind = 0xBAD;
  keel_buf_t buf = {NULL, 0};

  /* No-ops. */
  CHECK_OK(keel_engine_close(NULL, &err));
  CHECK_OK(keel_shard_close(NULL, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_shard_close(NULL, NULL));
  keel_iter_close(NULL);
  keel_batch_free(NULL);

  /* Engine. */
  keel_engine_t *e2 = (keel_engine_t *)&u;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_open(NULL, NULL, &e2, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_open("/tmp", NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open("", NULL, &e2, &err));
  CHECK(e2 == (keel_engine_t *)&u);
  keel_shard_t *s2 = (keel_shard_t *)&u;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_open(NULL, 1, true, &s2, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_open(engine, 9, true, NULL, &err));
  CHECK(s2 == (keel_shard_t *)&u);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_drop(NULL, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_list(NULL, NULL, 0, &n, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_list(engine, NULL, 0, NULL, &err));
  CHECK_EQ_U64(n, SENTINEL);
  /* ids NULL is only for asking the count (capacity 0). */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_list(engine, NULL, 8, &n, &err));
  n = SENTINEL;

  /* Shard writes. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_put(NULL, k, 1, k, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_put(s, NULL, 1, k, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_put(s, k, 1, NULL, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_delete(NULL, k, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_delete(s, NULL, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_append(NULL, k, 1, k, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_append(s, NULL, 1, k, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_append(s, k, 1, NULL, 1, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_write_packed(NULL, k, 1, &u, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_write_packed(s, NULL, 10, &u, &u, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_EQ_U64(kt_last_version(s), 0); /* none of that wrote anything */

  /* Batches. */
  keel_batch_t *b = NULL;
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_batch_new(NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_put(NULL, k, 1, k, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_put(b, NULL, 1, k, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_put(b, k, 1, NULL, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_delete(NULL, k, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_delete(b, NULL, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_append(NULL, k, 1, k, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_batch_append(b, k, 1, NULL, 1, &err));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_batch_count(NULL, &n));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_batch_count(b, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_batch_clear(NULL));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 0); /* the failed adds added nothing */
  CHECK_OK(keel_batch_put(b, NULL, 0, NULL, 0, &err)); /* (NULL, 0) is an empty key and value */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_write(NULL, b, &u, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_write(s, NULL, &u, &u, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_OK(keel_shard_write(s, b, NULL, NULL, &err)); /* versions optional */
  keel_batch_free(b);

  /* Reads. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_get(NULL, k, 1, &buf, &kind, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_get(s, NULL, 1, &buf, &kind, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_get(s, k, 1, NULL, &kind, &u, &err));
  CHECK(buf.ptr == NULL && kind == 0xBAD && u == SENTINEL);
  CHECK_OK(keel_shard_get(s, NULL, 0, &buf, NULL, NULL, &err)); /* kind, version optional */
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&buf));

  const size_t lens[2] = {1, 1};
  keel_buf_t values[2] = {{NULL, 0}, {NULL, 0}};
  uint32_t kinds[2] = {0xBAD, 0xBAD};
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_multi_get(NULL, k, lens, 1, values, kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_multi_get(s, NULL, lens, 1, values, kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_multi_get(s, k, NULL, 1, values, kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_multi_get(s, k, lens, 1, NULL, kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_multi_get(s, k, lens, 1, values, NULL, NULL, &err));
  CHECK(values[0].ptr == NULL && kinds[0] == 0xBAD);

  keel_iter_t *it = (keel_iter_t *)&u;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan(NULL, k, 1, NULL, 0, &it, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan(s, NULL, 1, NULL, 0, &it, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan(s, k, 1, k, 1, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan_prefix(NULL, k, 1, &it, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan_prefix(s, NULL, 1, &it, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_scan_prefix(s, k, 1, NULL, &err));
  CHECK(it == (keel_iter_t *)&u);
  CHECK_OK(keel_shard_scan_prefix(s, NULL, 0, &it, &err)); /* empty prefix: every key */
  const uint8_t *kp = NULL, *vp = NULL;
  size_t kl = SENTINEL, vl = SENTINEL;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_iter_next(NULL, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_iter_next(it, NULL, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_iter_next(it, &kp, NULL, &vp, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_iter_next(it, &kp, &kl, NULL, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_iter_next(it, &kp, &kl, &vp, NULL, NULL, NULL, &err));
  CHECK(kp == NULL && vp == NULL && kl == SENTINEL && vl == SENTINEL);
  /* The failed calls did not consume the one entry (the empty key). */
  CHECK_OK(keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK(kl == 0 && vl == 0);
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  keel_iter_close(it);

  /* State and flush. */
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_shard_persisted_version(NULL, &u));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_shard_persisted_version(s, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_shard_last_version(NULL, &u));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_shard_last_version(s, NULL));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_flush(NULL, true, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_set_keep_from(NULL, 1, &err));
  CHECK_EQ_U64(u, SENTINEL);

  /* Posting lists. */
  const uint8_t list[5] = {1, 0, 0, 0, 'x'};
  const uint8_t *item = NULL;
  size_t off = 0, len = SENTINEL;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_posting_next(NULL, 5, &off, &item, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_posting_next(list, 5, NULL, &item, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_posting_next(list, 5, &off, NULL, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_posting_next(list, 5, &off, &item, NULL, &err));
  CHECK(off == 0 && item == NULL && len == SENTINEL);
  CHECK_OK(keel_posting_next(list, 5, &off, &item, &len, NULL)); /* err optional */
  CHECK(off == 5 && len == 1 && item == list + 4);
}

/* A scan that must fail with INVALID_ARGUMENT, its message naming `what`. */
static void refused_bound(keel_status_t got, keel_error_t **err, const char *what) {
  CHECK(got == KEEL_STATUS_INVALID_ARGUMENT);
  CHECK(*err != NULL && strstr(keel_error_message(*err), what) != NULL);
  keel_error_free(*err);
  *err = NULL;
}

/* Every call that takes a key refuses KEEL_SHARD_MAX_KEY_SIZE + 1 bytes. */
static void long_keys(const keel_shard_t *s) {
  KT_ERR;
  static uint8_t key[KEEL_SHARD_MAX_KEY_SIZE + 2]; /* room for multi_get's 1 + over */
  memset(key, 'K', sizeof key);
  const size_t max = KEEL_SHARD_MAX_KEY_SIZE, over = max + 1;
  uint64_t u = SENTINEL;
  const uint64_t before = kt_last_version(s);

  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_put(s, key, over, KT_S("v"), &u, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_delete(s, key, over, &u, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_append(s, key, over, KT_S("i"), &u, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_EQ_U64(kt_last_version(s), before);
  keel_buf_t buf = {NULL, 0};
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get(s, key, over, &buf, NULL, NULL, &err));
  CHECK(buf.ptr == NULL);
  const size_t lens[2] = {1, over};
  keel_buf_t values[2] = {{NULL, 0}, {NULL, 0}};
  uint32_t kinds[2];
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_multi_get(s, key, lens, 2, values, kinds, NULL, &err));
  CHECK(values[0].ptr == NULL && values[1].ptr == NULL); /* on error nothing needs freeing */

  keel_batch_t *b = NULL;
  size_t n = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  CHECK_OK(keel_batch_put(b, KT_S("fine"), KT_S("v"), &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_batch_put(b, key, over, KT_S("v"), &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_batch_delete(b, key, over, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_batch_append(b, key, over, KT_S("i"), &err));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_count(b, &n));
  CHECK_EQ_U64(n, 1); /* the refused operations were not added */
  keel_batch_free(b);

  /* The packed format checks keys too, and writes nothing. */
  static uint8_t packed[9 + KEEL_SHARD_MAX_KEY_SIZE + 1];
  packed[0] = KEEL_OP_PUT;
  for (int i = 0; i < 4; i++) packed[1 + i] = (uint8_t)(over >> (8 * i));
  memset(packed + 5, 0, 4);
  memcpy(packed + 9, key, over);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_packed(s, packed, sizeof packed, NULL, NULL, &err));
  CHECK_EQ_U64(kt_last_version(s), before);

  /* So are a scan's bounds and prefix (a reversed range too), each named;
   * *out stays untouched. */
  keel_iter_t *it = NULL;
  refused_bound(keel_shard_scan(s, key, over, NULL, 0, &it, &err), &err, "scan start bound");
  refused_bound(keel_shard_scan(s, KT_S(""), key, over, &it, &err), &err, "scan end bound");
  refused_bound(keel_shard_scan(s, key, over, KT_S("a"), &it, &err), &err, "scan start bound");
  refused_bound(keel_shard_scan_prefix(s, key, over, &it, &err), &err, "scan prefix");
  CHECK(it == NULL);

  /* The longest key is fine everywhere, as a scan's bound too. */
  CHECK_OK(keel_shard_put(s, key, max, KT_S("longest"), &u, &err));
  CHECK_OK(keel_shard_append(s, key + 1, max - 1, KT_S("item"), NULL, &err));
  KT_EXPECT_GET(s, key, max, KEEL_KIND_VALUE, "longest", 7);
  CHECK_OK(keel_shard_scan(s, key, max, NULL, 0, &it, &err));
  const uint8_t *k = NULL, *v = NULL;
  size_t klen = 0, vlen = 0;
  CHECK_OK(keel_iter_next(it, &k, &klen, &v, &vlen, NULL, NULL, &err));
  CHECK(klen == max && vlen == 7 && memcmp(v, "longest", 7) == 0);
  keel_iter_close(it);
  it = NULL;
  CHECK_OK(keel_shard_scan_prefix(s, key, max, &it, &err));
  keel_iter_close(it);
  CHECK_OK(keel_shard_delete(s, key, max, NULL, &err));
  KT_EXPECT_ABSENT(s, key, max);
}

/* A value or item larger than one WAL record (64 KiB segments here). */
static void large_values(const keel_shard_t *s) {
  KT_ERR;
  static uint8_t big[64 << 10];
  const uint64_t before = kt_last_version(s);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_put(s, KT_S("big"), big, sizeof big, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_append(s, KT_S("big"), big, sizeof big, NULL, &err));
  CHECK_EQ_U64(kt_last_version(s), before);
  KT_EXPECT_ABSENT(s, KT_S("big"));
  CHECK_OK(keel_shard_put(s, KT_S("big"), big, 16 << 10, NULL, &err)); /* a smaller one fits */
}

/* Handles of the wrong type: INVALID_ARGUMENT, and nothing is freed. */
static void wrong_types(keel_engine_t *engine, keel_shard_t *s) {
  KT_ERR;
  keel_batch_t *b = NULL;
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan_prefix(s, NULL, 0, &it, &err));
  const uint8_t *kp, *vp;
  size_t kl, vl, n;
  uint64_t u = 0;

  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_put((const keel_shard_t *)engine, KT_S("k"), KT_S("v"), NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get((const keel_shard_t *)b, KT_S("k"), &(keel_buf_t){NULL, 0}, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_shard_open((const keel_engine_t *)s, 1, true, &s, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_shard_list((const keel_engine_t *)it, NULL, 0, &n, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_iter_next((keel_iter_t *)b, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_batch_put((keel_batch_t *)it, KT_S("k"), KT_S("v"), &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write(s, (const keel_batch_t *)s, NULL, NULL, &err));
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_batch_count((const keel_batch_t *)engine, &n));
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_last_version((const keel_shard_t *)engine, &u));
  /* Closing through the wrong type is refused and frees nothing. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_close((keel_shard_t *)engine, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_close((keel_engine_t *)s, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_put((const keel_shard_t *)(void *)&u, KT_S("k"), KT_S("v"), NULL, &err));
  /* A WAL is not a shard either. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_append((const keel_wal_t *)s, (const uint8_t *)"x", 1, NULL, &err));
  CHECK_OK(keel_shard_put(s, KT_S("still"), KT_S("works"), NULL, &err));
  keel_iter_close(it);
  keel_batch_free(b);
}

/* Closed shards and engines: CLOSED, and the handles still free cleanly. */
static void closed_handles(const char *dir) {
  KT_ERR;
  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  keel_engine_t *engine = NULL;
  keel_shard_t *s1 = NULL, *s2 = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  /* ids NULL with a capacity is refused with no id to copy too. */
  size_t n = SENTINEL;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_engine_shard_list(engine, NULL, 8, &n, &err));
  CHECK_EQ_U64(n, SENTINEL);
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s1, &err));
  CHECK_OK(keel_engine_shard_open(engine, 2, true, &s2, &err));
  /* No keys is still a read: its options are checked. */
  keel_read_options_t bad;
  CHECK_RC(KEEL_STATUS_OK, keel_read_options_init_sized(&bad, sizeof bad));
  bad.level = 99;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_multi_get_ex(s2, &bad, NULL, NULL, 0, NULL, NULL, NULL, &err));
  CHECK_OK(keel_shard_multi_get(s2, NULL, NULL, 0, NULL, NULL, NULL, &err));
  CHECK_OK(keel_shard_put(s1, KT_S("a"), KT_S("1"), NULL, &err));
  CHECK_OK(keel_shard_put(s1, KT_S("b"), KT_S("2"), NULL, &err));
  CHECK_OK(keel_shard_put(s2, KT_S("z"), KT_S("26"), NULL, &err));

  /* A scan whose shard is closed: CLOSED, even with entries left. */
  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan_prefix(s1, NULL, 0, &it, &err));
  const uint8_t *kp, *vp;
  size_t kl, vl;
  CHECK_OK(keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK_OK(keel_shard_close(s1, &err));
  kp = vp = NULL;
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK(kp == NULL && vp == NULL);
  keel_iter_close(it); /* freeing it after the shard is fine */
  /* The closed shard's handle is gone; the shard can be opened again. */
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s1, &err));

  /* Shards and a scan outliving their engine. */
  CHECK_OK(keel_shard_scan_prefix(s2, NULL, 0, &it, &err));
  keel_batch_t *b = NULL;
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  CHECK_OK(keel_batch_put(b, KT_S("k"), KT_S("v"), &err));
  CHECK_OK(keel_engine_close(engine, &err));

  uint64_t u = SENTINEL;
  keel_buf_t buf = {NULL, 0};
  keel_iter_t *it2 = NULL;
  const size_t lens[1] = {1};
  keel_buf_t values[1] = {{NULL, 0}};
  uint32_t kinds[1];
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_put(s2, KT_S("k"), KT_S("v"), &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_delete(s2, KT_S("z"), &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_append(s2, KT_S("l"), KT_S("i"), &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_write(s2, b, &u, &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_get(s2, KT_S("z"), &buf, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_multi_get(s2, (const uint8_t *)"z", lens, 1, values, kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_multi_get(s2, NULL, NULL, 0, NULL, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_scan(s2, NULL, 0, NULL, 0, &it2, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_scan_prefix(s2, NULL, 0, &it2, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_flush(s2, true, &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_flush(s2, false, &u, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_set_keep_from(s2, 1, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
  CHECK(u == SENTINEL && buf.ptr == NULL && it2 == NULL && values[0].ptr == NULL);
  keel_iter_close(it);
  keel_batch_free(b);
  CHECK_OK(keel_shard_close(s1, &err)); /* freed with OK after the engine closed */
  CHECK_OK(keel_shard_close(s2, &err));

  /* The engine's close flushed both shards. */
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s1, &err));
  CHECK_OK(keel_engine_shard_open(engine, 2, false, &s2, &err));
  KT_EXPECT_VALUE(s1, "b", "2");
  KT_EXPECT_VALUE(s2, "z", "26");
  CHECK_EQ_U64(kt_last_version(s2), 1);
  CHECK_OK(keel_engine_close(engine, &err));
  CHECK_OK(keel_shard_close(s1, &err));
  CHECK_OK(keel_shard_close(s2, &err));
}

/* The statuses an engine open and a shard open return past their
 * arguments, each listed in keel.h: RESOURCE out of descriptors (nothing
 * left open: the same call works once they are freed), and CORRUPTION
 * for a shard list lost while shard directories remain. */
static void open_failures(const char *dir) {
  KT_ERR;
  char path[512];
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  kt_fds_t fds;
  snprintf(path, sizeof path, "%s/fds", dir);
  kt_fds_fill(&fds);
  CHECK_STATUS(KEEL_STATUS_RESOURCE, keel_engine_open(path, NULL, &e, &err));
  kt_fds_release(&fds);
  CHECK(e == NULL);
  CHECK_OK(keel_engine_open(path, NULL, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_shard_close(s, &err));
  s = NULL;
  kt_fds_fill(&fds);
  CHECK_STATUS(KEEL_STATUS_RESOURCE, keel_engine_shard_open(e, 1, false, &s, &err));
  CHECK_STATUS(KEEL_STATUS_RESOURCE, keel_engine_shard_open(e, 2, true, &s, &err));
  kt_fds_release(&fds);
  CHECK(s == NULL);
  CHECK_OK(keel_engine_shard_open(e, 1, false, &s, &err));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));

  snprintf(path, sizeof path, "%s/lost", dir);
  CHECK(mkdir(path, 0700) == 0);
  snprintf(path, sizeof path, "%s/lost/shards", dir);
  CHECK(mkdir(path, 0700) == 0);
  snprintf(path, sizeof path, "%s/lost/shards/7", dir);
  CHECK(mkdir(path, 0700) == 0);
  snprintf(path, sizeof path, "%s/lost", dir);
  e = NULL;
  CHECK_STATUS(KEEL_STATUS_CORRUPTION, keel_engine_open(path, NULL, &e, &err));
  CHECK(e == NULL);
}

static void reversed_scan(const keel_shard_t *s) {
  KT_ERR;
  keel_iter_t *it = NULL;
  keel_status_t st = keel_shard_scan(s, KT_S("z"), KT_S("a"), &it, &err);
  CHECK(st == KEEL_STATUS_OK || st == KEEL_STATUS_INVALID_ARGUMENT);
  keel_error_free(err);
  err = NULL;
  if (st == KEEL_STATUS_OK) {
    const uint8_t *kp, *vp;
    size_t kl, vl;
    CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_iter_next(it, &kp, &kl, &vp, &vl, NULL, NULL, &err));
    keel_iter_close(it);
  }
  CHECK_OK(keel_shard_put(s, KT_S("after reversed scan"), KT_S("ok"), NULL, &err)); /* not poisoned */
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  options(dir);

  keel_engine_options_t opts = kt_engine_options(KEEL_DURABILITY_NONE);
  opts.wal_segment_size = 64 << 10;
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));
  nulls(engine, s);
  long_keys(s);
  large_values(s);
  wrong_types(engine, s);
  reversed_scan(s);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));
  kt_rmdir(dir);

  dir = kt_tempdir();
  closed_handles(dir);
  kt_rmdir(dir);

  dir = kt_tempdir();
  open_failures(dir);
  kt_rmdir(dir);
  KT_PASS();
}
