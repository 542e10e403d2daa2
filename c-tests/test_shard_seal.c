/*
 * Sealing and merging with tiny options: seal_bytes 4096, 64 KiB WAL
 * segments, no background flush, DURABILITY_NONE, at most 2 immutable
 * segments. A deterministic mix of puts, appends, deletes and batches
 * (including appends that meet a value and must fail with WRONG_KIND) runs
 * in rounds against an in-memory model; after each round a flush lets the
 * shard seal its appendable segment and merge tables. Every key is then
 * checked (get, multi_get and a full scan, byte-exact with versions), after
 * a reopen of the engine with the same options, and after a reopen with
 * the defaults.
 */
#include "keel_test.h"

#define NKEYS 400
#define ROUNDS 12
#define OPS_PER_ROUND 250
#define MAX_VALUE 300
#define MAX_SEALED 2

/* The model: what each key must hold. A posting list is kept as its
 * expected encoding, so both kinds compare byte for byte. */
static struct {
  uint32_t kind; /* KEEL_KIND_NONE, _VALUE or _POSTING */
  uint64_t version;
  uint8_t *bytes;
  size_t len;
} model[NKEYS];

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t next_rand(void) {
  rng = rng * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng >> 33);
}

static size_t key_of(uint32_t i, char *key) { return (size_t)sprintf(key, "k%04u", (unsigned)i); }

static void model_put(uint32_t i, const uint8_t *value, size_t len, uint64_t version) {
  free(model[i].bytes);
  model[i].bytes = malloc(len ? len : 1);
  CHECK(model[i].bytes != NULL);
  if (len) memcpy(model[i].bytes, value, len);
  model[i].len = len;
  model[i].kind = KEEL_KIND_VALUE;
  model[i].version = version;
}

static void model_append(uint32_t i, const uint8_t *item, size_t len, uint64_t version) {
  if (model[i].kind != KEEL_KIND_POSTING) {
    free(model[i].bytes);
    model[i].bytes = NULL;
    model[i].len = 0;
  }
  model[i].bytes = realloc(model[i].bytes, model[i].len + 4 + len);
  CHECK(model[i].bytes != NULL);
  model[i].len = kt_posting_add(model[i].bytes, model[i].len, item, len);
  model[i].kind = KEEL_KIND_POSTING;
  model[i].version = version;
}

static void model_delete(uint32_t i) {
  free(model[i].bytes);
  model[i].bytes = NULL;
  model[i].len = 0;
  model[i].kind = KEEL_KIND_NONE;
  model[i].version = 0;
}

/* Posting lists stay short so that the model stays small. */
static uint32_t pick_key(void) { return next_rand() % NKEYS; }

static void one_round(const keel_shard_t *s, keel_batch_t *b, uint64_t round) {
  KT_ERR;
  static uint8_t data[MAX_VALUE];
  char key[16];
  for (int op = 0; op < OPS_PER_ROUND; op++) {
    const uint32_t i = pick_key(), what = next_rand() % 100;
    const size_t klen = key_of(i, key);
    size_t len = next_rand() % MAX_VALUE;
    if (what % 17 == 0) len = 0;
    kt_fill(data, len, round * 1000 + (uint64_t)op);
    uint64_t v = 0;
    if (what < 40) {
      CHECK_OK(keel_shard_put(s, (const uint8_t *)key, klen, data, len, &v, &err));
      model_put(i, data, len, v);
    } else if (what < 75) {
      len %= 40;
      if (model[i].kind == KEEL_KIND_VALUE) {
        const uint64_t before = kt_last_version(s);
        CHECK_STATUS(KEEL_STATUS_WRONG_KIND, keel_shard_append(s, (const uint8_t *)key, klen, data, len, &v, &err));
        CHECK_EQ_U64(kt_last_version(s), before);
      } else {
        CHECK_OK(keel_shard_append(s, (const uint8_t *)key, klen, data, len, &v, &err));
        model_append(i, data, len, v);
      }
    } else if (what < 90) {
      CHECK_OK(keel_shard_delete(s, (const uint8_t *)key, klen, &v, &err));
      model_delete(i);
    } else {
      /* A batch of 6 operations on random keys, built so that it succeeds:
       * each op is checked against the model as updated by earlier ops of
       * the same batch (which is how the shard judges it too). */
      CHECK_RC(KEEL_STATUS_OK, keel_batch_clear(b));
      struct { uint32_t key, kind; size_t len; uint64_t seed; } ops[6];
      uint32_t kinds_now[6];
      for (int k = 0; k < 6; k++) {
        ops[k].key = pick_key();
        ops[k].kind = 1 + next_rand() % 3; /* 1 put, 2 append, 3 delete */
        ops[k].len = next_rand() % 60;
        ops[k].seed = round * 100000 + (uint64_t)op * 10 + (uint64_t)k;
        uint32_t now = model[ops[k].key].kind;
        for (int j = 0; j < k; j++)
          if (ops[j].key == ops[k].key) now = kinds_now[j];
        if (ops[k].kind == 2 && now == KEEL_KIND_VALUE) ops[k].kind = 1;
        kinds_now[k] = ops[k].kind == 1 ? KEEL_KIND_VALUE : ops[k].kind == 2 ? KEEL_KIND_POSTING : KEEL_KIND_NONE;
        const size_t kl = key_of(ops[k].key, key);
        kt_fill(data, ops[k].len, ops[k].seed);
        if (ops[k].kind == 1) CHECK_OK(keel_batch_put(b, (const uint8_t *)key, kl, data, ops[k].len, &err));
        if (ops[k].kind == 2) CHECK_OK(keel_batch_append(b, (const uint8_t *)key, kl, data, ops[k].len, &err));
        if (ops[k].kind == 3) CHECK_OK(keel_batch_delete(b, (const uint8_t *)key, kl, &err));
      }
      uint64_t first = 0, last = 0;
      CHECK_OK(keel_shard_write(s, b, &first, &last, &err));
      CHECK_EQ_U64(last, first + 5);
      for (int k = 0; k < 6; k++) {
        kt_fill(data, ops[k].len, ops[k].seed);
        if (ops[k].kind == 1) model_put(ops[k].key, data, ops[k].len, first + (uint64_t)k);
        if (ops[k].kind == 2) model_append(ops[k].key, data, ops[k].len, first + (uint64_t)k);
        if (ops[k].kind == 3) model_delete(ops[k].key);
      }
    }
  }
}

/* Every key of the model through get, then all of them in one multi_get,
 * then a full scan (keys "k0000".."k0399" sort as their numbers). */
static void verify(const keel_shard_t *s) {
  KT_ERR;
  char key[16];
  uint32_t present = 0;
  for (uint32_t i = 0; i < NKEYS; i++) {
    const size_t kl = key_of(i, key);
    if (model[i].kind == KEEL_KIND_NONE) {
      KT_EXPECT_ABSENT(s, (const uint8_t *)key, kl);
      continue;
    }
    present++;
    CHECK_EQ_U64(KT_EXPECT_GET(s, (const uint8_t *)key, kl, model[i].kind, model[i].bytes, model[i].len),
                 model[i].version);
  }
  CHECK(present > NKEYS / 4); /* the mix leaves plenty of keys behind */

  static char packed[NKEYS * 5 + 1]; /* + the NUL sprintf writes last */
  static size_t lens[NKEYS];
  static keel_buf_t values[NKEYS];
  static uint32_t kinds[NKEYS];
  static uint64_t versions[NKEYS];
  for (uint32_t i = 0; i < NKEYS; i++) lens[i] = key_of(i, packed + 5 * i);
  CHECK_OK(keel_shard_multi_get(s, (const uint8_t *)packed, lens, NKEYS, values, kinds, versions, &err));
  for (uint32_t i = 0; i < NKEYS; i++) {
    CHECK_EQ_U64(kinds[i], model[i].kind);
    CHECK_EQ_U64(versions[i], model[i].version);
    CHECK_EQ_U64(values[i].len, model[i].len);
    CHECK(model[i].len == 0 || memcmp(values[i].ptr, model[i].bytes, model[i].len) == 0);
    CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&values[i]));
  }

  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan_prefix(s, KT_S("k"), &it, &err));
  uint32_t i = 0, seen = 0;
  const uint8_t *k, *v;
  size_t klen, vlen;
  uint32_t kind;
  uint64_t version;
  keel_status_t st;
  while ((st = keel_iter_next(it, &k, &klen, &v, &vlen, &kind, &version, NULL)) == KEEL_STATUS_OK) {
    while (i < NKEYS && model[i].kind == KEEL_KIND_NONE) i++;
    CHECK(i < NKEYS);
    CHECK(klen == key_of(i, key) && memcmp(k, key, klen) == 0);
    CHECK_EQ_U64(kind, model[i].kind);
    CHECK_EQ_U64(version, model[i].version);
    CHECK(vlen == model[i].len && (vlen == 0 || memcmp(v, model[i].bytes, vlen) == 0));
    i++;
    seen++;
  }
  CHECK_EQ_U64(st, KEEL_STATUS_NOT_FOUND);
  CHECK_EQ_U64(seen, present);
  keel_iter_close(it);
}

/* Table files ever seen in the segments directory, to show that merges
 * replace tables (more distinct names over time than ever exist at once). */
#define MAX_NAMES 256
static char table_names[MAX_NAMES][64];
static int ntable_names;

static int count_tables(const char *seg_dir) {
  DIR *d = opendir(seg_dir);
  CHECK(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    const size_t len = strlen(e->d_name);
    if (len < 4 || strcmp(e->d_name + len - 4, ".sst") != 0) continue;
    n++;
    int known = 0;
    for (int i = 0; i < ntable_names; i++) known |= strcmp(table_names[i], e->d_name) == 0;
    if (!known) {
      CHECK(ntable_names < MAX_NAMES && len < sizeof table_names[0]);
      strcpy(table_names[ntable_names++], e->d_name);
    }
  }
  closedir(d);
  return n;
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  char seg_dir[4200];
  snprintf(seg_dir, sizeof seg_dir, "%s/shards/1/segments", dir); /* layout: src/engine/mod.rs */

  keel_engine_options_t opts;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init(&opts));
  opts.seal_bytes = 4096;
  opts.wal_segment_size = 65536;
  opts.flush_interval_ms = 0;
  opts.durability = KEEL_DURABILITY_NONE;
  opts.max_sealed_segments = MAX_SEALED;

  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  keel_batch_t *b = NULL;
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));

  for (uint64_t round = 1; round <= ROUNDS; round++) {
    one_round(s, b, round);
    /* The flush thread seals and merges after each pass: the second
     * waited flush starts only once the first pass's maintenance is done. */
    uint64_t persisted = 0;
    CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
    CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
    CHECK_EQ_U64(persisted, kt_last_version(s));
    CHECK(count_tables(seg_dir) >= 1); /* the appendable segment was sealed */
    if (round % 4 == 0) verify(s); /* reads across tables and the appendable segment */
  }
  /* Merging brings the tables down to MAX_SEALED. A maintenance step
   * (after each flush pass) runs a bounded number of merges, rewriting
   * tables that are mostly deletions first, so under this delete-heavy load
   * the count may exceed MAX_SEALED for a while: idle flushes settle it. */
  int tables = count_tables(seg_dir), idle = 0;
  for (; tables > MAX_SEALED && idle < 50; idle++) {
    CHECK_OK(keel_shard_flush(s, true, NULL, &err));
    tables = count_tables(seg_dir);
  }
  if (tables > MAX_SEALED) {
    fprintf(stderr, "%d tables after %d idle flushes (max_sealed_segments %d)\n", tables, idle, MAX_SEALED);
    CHECK(0);
  }
  /* keel_shard_stats agrees with the directory and with the getters. */
  keel_shard_stats_t st;
  st.struct_size = sizeof st;
  CHECK_RC(KEEL_STATUS_OK, keel_shard_stats(s, &st));
  CHECK_EQ_U64(st.sealed_segments, (uint64_t)tables);
  CHECK_EQ_U64(st.last_version, kt_last_version(s));
  CHECK(st.wal_first_version > 1 && st.sealed_bytes > 0);
  st.struct_size = 4;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_stats(s, &st));
  /* Each round sealed at least one table, yet at most MAX_SEALED exist:
   * merges replaced the others. */
  CHECK(ntable_names >= ROUNDS);
  verify(s);
  /* The WAL moved on: its early records were truncated once persisted. */
  CHECK(kt_last_version(s) > 2000);
  CHECK_STATUS(KEEL_STATUS_TRUNCATED, keel_shard_set_keep_from(s, 1, &err));
  const uint64_t last = kt_last_version(s);
  keel_batch_free(b);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  /* Reopen with the same options: every key, same versions. */
  CHECK_OK(keel_engine_open(dir, &opts, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  CHECK_EQ_U64(kt_last_version(s), last);
  verify(s);
  /* One more round after recovery, then close through the engine only. */
  CHECK_RC(KEEL_STATUS_OK, keel_batch_new(&b));
  one_round(s, b, ROUNDS + 1);
  keel_batch_free(b);
  verify(s);
  const uint64_t last2 = kt_last_version(s);
  CHECK(last2 > last);
  CHECK_OK(keel_engine_close(engine, &err));
  CHECK_OK(keel_shard_close(s, &err));

  /* And with the defaults: the files do not depend on the options. */
  CHECK_OK(keel_engine_open(dir, NULL, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, false, &s, &err));
  CHECK_EQ_U64(kt_last_version(s), last2);
  verify(s);
  uint64_t persisted = 0;
  CHECK_OK(keel_shard_flush(s, true, &persisted, &err));
  CHECK_EQ_U64(persisted, last2);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(engine, &err));

  for (uint32_t i = 0; i < NKEYS; i++) model_delete(i);
  kt_rmdir(dir);
  KT_PASS();
}
