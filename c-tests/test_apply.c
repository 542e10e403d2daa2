/*
 * Applying a host's committed entries and fenced writes through the C API
 * (keel_shard_apply, keel_shard_apply_packed, keel_shard_applied_index,
 * keel_shard_write_ex, keel_shard_write_packed_ex):
 * - entries apply with their index; an empty entry moves only the index;
 *   an index at or below the applied one is a duplicate that changes
 *   nothing; a stale fence (FENCED) and an append to a value (WRONG_KIND)
 *   are refused in result->status while the index moves;
 * - fenced writes are refused with FENCED below the highest accepted token
 *   (an equal token passes); tokens accepted by entries count too;
 * - after a close and reopen the applied index and the highest tokens are
 *   what they were;
 * - applies move the lease gate's applied index (keel_shard_lease_stats);
 * - misuse: index 0, NULL result, bad struct sizes, fenced = 2, and the
 *   index does not move on any of them.
 */
#include "keel_test.h"

static keel_write_options_t fenced(const char *bucket, uint64_t token) {
  keel_write_options_t o;
  CHECK(keel_write_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  CHECK_EQ_U64(o.fenced, 0);
  o.fenced = 1;
  o.fence_bucket = (const uint8_t *)bucket;
  o.fence_bucket_len = strlen(bucket);
  o.fence_token = token;
  return o;
}

static keel_apply_result_t fresh_result(void) {
  keel_apply_result_t r;
  memset(&r, 0xAB, sizeof r);
  r.struct_size = sizeof r;
  return r;
}

static keel_status_t never_read_index(void *user, uint64_t *index) {
  (void)user;
  (void)index;
  return KEEL_STATUS_NOT_LEADER;
}

static uint64_t applied_index(const keel_shard_t *s) {
  keel_error_t *err = NULL;
  uint64_t i = 0xBAD;
  CHECK_OK(keel_shard_applied_index(s, &i, &err));
  return i;
}

/* Packs one put as keel_shard_write_packed() reads it. */
static size_t pack_put(uint8_t *out, const char *key, const char *value) {
  size_t k = strlen(key), v = strlen(value), at = 0;
  out[at++] = KEEL_OP_PUT;
  for (int i = 0; i < 4; i++) out[at++] = (uint8_t)(k >> (8 * i));
  for (int i = 0; i < 4; i++) out[at++] = (uint8_t)(v >> (8 * i));
  memcpy(out + at, key, k);
  memcpy(out + at + k, value, v);
  return at + k + v;
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_options_t eo = kt_engine_options(KEEL_DURABILITY_SYNC);
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, &eo, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_EQ_U64(applied_index(s), 0);

  keel_batch_t *b = NULL;
  CHECK_OK(keel_batch_new(&b));
  CHECK_OK(keel_batch_put(b, KT_S("k"), KT_S("v"), &err));

  /* Entry 1: a put with a fence. */
  keel_write_options_t f5 = fenced("jobs", 5);
  keel_apply_result_t r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 1, b, &f5, &r, &err));
  CHECK_EQ_U64(r.struct_size, KEEL_APPLY_RESULT_SIZE_V1);
  CHECK_EQ_U64(r.status, KEEL_STATUS_OK);
  CHECK_EQ_U64(r.duplicate, 0);
  CHECK_EQ_U64(r.op_count, 1);
  CHECK_EQ_U64(r.first_version, 1);
  CHECK_EQ_U64(r.last_version, 1);
  CHECK_EQ_U64(r.applied_index, 1);
  KT_EXPECT_VALUE(s, "k", "v");

  /* Entry 2: empty (NULL batch) moves only the index. */
  r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 2, NULL, NULL, &r, &err));
  CHECK_EQ_U64(r.status, KEEL_STATUS_OK);
  CHECK_EQ_U64(r.op_count, 0);
  CHECK_EQ_U64(r.first_version, 0);
  CHECK_EQ_U64(r.applied_index, 2);

  /* Entry 3: a stale fence is refused, the index moves. */
  keel_batch_t *stale = NULL;
  CHECK_OK(keel_batch_new(&stale));
  CHECK_OK(keel_batch_put(stale, KT_S("x"), KT_S("stale"), &err));
  keel_write_options_t f4 = fenced("jobs", 4);
  r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 3, stale, &f4, &r, &err));
  CHECK_EQ_U64(r.status, KEEL_STATUS_FENCED);
  CHECK_EQ_U64(r.op_count, 0);
  CHECK_EQ_U64(r.applied_index, 3);
  KT_EXPECT_ABSENT(s, KT_S("x"));

  /* Duplicates change nothing. */
  uint64_t last = kt_last_version(s);
  r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 2, stale, NULL, &r, &err));
  CHECK_EQ_U64(r.duplicate, 1);
  CHECK_EQ_U64(r.op_count, 0);
  CHECK_EQ_U64(r.applied_index, 3);
  CHECK_EQ_U64(kt_last_version(s), last);
  KT_EXPECT_ABSENT(s, KT_S("x"));

  /* Entry 4: an append to a value is refused, the index moves. */
  keel_batch_t *wrong = NULL;
  CHECK_OK(keel_batch_new(&wrong));
  CHECK_OK(keel_batch_append(wrong, KT_S("k"), KT_S("item"), &err));
  r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 4, wrong, NULL, &r, &err));
  CHECK_EQ_U64(r.status, KEEL_STATUS_WRONG_KIND);
  CHECK_EQ_U64(r.applied_index, 4);

  /* Entry 6 (gaps are allowed), packed. */
  uint8_t packed[64];
  size_t n = pack_put(packed, "p", "packed");
  r = fresh_result();
  CHECK_OK(keel_shard_apply_packed(s, 6, packed, n, NULL, &r, &err));
  CHECK_EQ_U64(r.status, KEEL_STATUS_OK);
  CHECK_EQ_U64(r.op_count, 1);
  CHECK_EQ_U64(r.applied_index, 6);
  KT_EXPECT_VALUE(s, "p", "packed");
  r = fresh_result();
  CHECK_OK(keel_shard_apply_packed(s, 7, NULL, 0, NULL, &r, &err));
  CHECK_EQ_U64(r.applied_index, 7);

  /* Fenced writes: the entries' token 5 counts; below it is FENCED, an
   * equal one passes, a larger one becomes the highest. */
  uint64_t first = 0, lastv = 0;
  CHECK_STATUS(KEEL_STATUS_FENCED, keel_shard_write_ex(s, stale, &f4, &first, &lastv, &err));
  KT_EXPECT_ABSENT(s, KT_S("x"));
  CHECK_OK(keel_shard_write_ex(s, b, &f5, &first, &lastv, &err));
  CHECK(first > 0 && first == lastv);
  keel_write_options_t f9 = fenced("jobs", 9);
  CHECK_OK(keel_shard_write_packed_ex(s, packed, n, &f9, &first, &lastv, &err));
  CHECK_STATUS(KEEL_STATUS_FENCED, keel_shard_write_packed_ex(s, packed, n, &f5, NULL, NULL, &err));
  CHECK_OK(keel_shard_write_ex(s, stale, NULL, NULL, NULL, &err)); /* no fence */
  KT_EXPECT_VALUE(s, "x", "stale");
  keel_write_options_t other = fenced("other", 1);
  CHECK_OK(keel_shard_write_ex(s, b, &other, NULL, NULL, &err)); /* per bucket */

  /* Misuse: the index never moves. */
  r = fresh_result();
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_apply(s, 0, b, NULL, &r, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_apply(s, 8, b, NULL, NULL, &err));
  /* The message names the parameter the caller passed NULL: `result`. */
  CHECK(keel_shard_apply(s, 8, b, NULL, NULL, &err) == KEEL_STATUS_NULL_ARGUMENT);
  CHECK(strstr(keel_error_message(err), "result") != NULL);
  keel_error_free(err);
  err = NULL;
  keel_apply_result_t bad = fresh_result();
  bad.struct_size = 3;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_apply(s, 8, b, NULL, &bad, &err));
  CHECK_EQ_U64(bad.struct_size, 3);
  keel_write_options_t two = fenced("jobs", 10);
  two.fenced = 2;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_apply(s, 8, b, &two, &r, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_write_ex(s, b, &two, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_apply_packed(s, 8, packed, n - 1, NULL, &r, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_apply(NULL, 8, b, NULL, &r, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_applied_index(s, NULL, &err));
  keel_write_options_t small;
  CHECK(keel_write_options_init_sized(&small, 8) == KEEL_STATUS_INVALID_ARGUMENT);
  CHECK(keel_write_options_init_sized(NULL, sizeof small) == KEEL_STATUS_NULL_ARGUMENT);
  CHECK_EQ_U64(applied_index(s), 7);

  /* Applies feed the lease gate: configured now, it starts at the shard's
   * index, and the next apply moves it. */
  keel_lease_options_t lo;
  CHECK(keel_lease_options_init_sized(&lo, sizeof lo) == KEEL_STATUS_OK);
  lo.self_id = 1;
  lo.lease_ms = 700;
  lo.election_timeout_min_ms = 1000;
  lo.max_clock_drift_ms = 100;
  lo.max_round_trip_ms = 100;
  lo.clock = KEEL_CLOCK_MANUAL;
  lo.read_index = never_read_index;
  CHECK_OK(keel_shard_consensus_configure(s, &lo, &err));
  keel_lease_stats_t ls;
  ls.struct_size = sizeof ls;
  CHECK_OK(keel_shard_lease_stats(s, &ls, &err));
  CHECK_EQ_U64(ls.applied_index, 7);
  CHECK_OK(keel_shard_apply(s, 8, NULL, NULL, &r, &err));
  ls.struct_size = sizeof ls;
  CHECK_OK(keel_shard_lease_stats(s, &ls, &err));
  CHECK_EQ_U64(ls.applied_index, 8);
  CHECK_OK(keel_shard_consensus_set_applied(s, 8, &err)); /* the host may say it too */

  /* Reopen: the index and the tokens are what they were. */
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  CHECK_OK(keel_engine_open(dir, &eo, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, false, &s, &err));
  CHECK_EQ_U64(applied_index(s), 8);
  CHECK_STATUS(KEEL_STATUS_FENCED, keel_shard_write_ex(s, b, &f5, NULL, NULL, &err));
  CHECK_OK(keel_shard_write_ex(s, b, &f9, NULL, NULL, &err));
  r = fresh_result();
  CHECK_OK(keel_shard_apply(s, 8, b, NULL, &r, &err));
  CHECK_EQ_U64(r.duplicate, 1);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_applied_index(NULL, &last, &err));
  /* A handle that is not a live shard (here the engine's). */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_applied_index((keel_shard_t *)e, &last, &err));

  keel_batch_free(b);
  keel_batch_free(stale);
  keel_batch_free(wrong);
  CHECK_OK(keel_engine_close(e, &err));
  kt_rmdir(dir);
  KT_PASS();
}
