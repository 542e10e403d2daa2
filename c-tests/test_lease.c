/*
 * Lease reads of a shard through the C API (keel_shard_consensus_*,
 * keel_read_options_t, the _ex reads, read sessions), on a manual clock
 * the test sets (never wall time):
 * - an unconfigured shard reads stale; lease and linearizable reads and a
 *   bad level are INVALID_ARGUMENT; a lease that does not fit the election
 *   timeout minus drift and round trip is refused, as are self_id 0, a
 *   read timeout of 0, a missing callback and a second configuration;
 * - a follower answers NOT_LEADER with the leader hint in the error
 *   object, through the _ex read and through keel_shard_get() with a
 *   default level of lease; stale reads still work; a key, scan bound
 *   or prefix too long is INVALID_ARGUMENT there, as on the leader, where
 *   it costs no read-index;
 * - a fresh ack serves with no read-index call; now - ack == lease and a
 *   transfer in progress fall back to exactly one call; a read-index past
 *   the applied index waits for it (another thread applies it) or times
 *   out with TIMEOUT;
 * - a session costs one read-index for a get, a multi_get and two scans;
 *   a session of another shard is refused;
 * - the callback's error comes back; the counters say all of it;
 * - read_index_free runs once per configuration: at once when it is
 *   refused, at the shard's close otherwise;
 * - keel_shard_consensus_now() reads the shard's clock (manual, or
 *   CLOCK_MONOTONIC or CLOCK_BOOTTIME, between two reads of it by the
 *   test), and an ack stamped with it holds a lease.
 */
#include "keel_test.h"

#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <time.h>

#define MS 1000000ull

struct host {
  uint64_t index;         /* what the read-index answers */
  keel_status_t status;   /* or this error */
  unsigned calls;
  unsigned frees; /* read_index_free calls */
};

static void on_free(void *user) {
  struct host *h = user;
  __atomic_add_fetch(&h->frees, 1, __ATOMIC_SEQ_CST);
}

static keel_status_t read_index(void *user, uint64_t *index) {
  struct host *h = user;
  __atomic_add_fetch(&h->calls, 1, __ATOMIC_SEQ_CST);
  if (h->status != KEEL_STATUS_OK) return h->status;
  *index = __atomic_load_n(&h->index, __ATOMIC_SEQ_CST);
  return KEEL_STATUS_OK;
}

static keel_lease_options_t lease_options(struct host *h) {
  keel_lease_options_t o;
  CHECK(keel_lease_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  CHECK_EQ_U64(o.default_level, KEEL_READ_STALE);
  CHECK_EQ_U64(o.read_timeout_ms, 5000);
  o.self_id = 1;
  o.lease_ms = 700;
  o.election_timeout_min_ms = 1000;
  o.max_clock_drift_ms = 100;
  o.max_round_trip_ms = 100;
  o.clock = KEEL_CLOCK_MANUAL;
  o.read_index = read_index;
  o.read_index_user_data = h;
  o.read_index_free = on_free;
  return o;
}

static keel_read_options_t read_opts(uint32_t level, uint64_t timeout_ms) {
  keel_read_options_t o;
  CHECK(keel_read_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  CHECK_EQ_U64(o.level, KEEL_READ_DEFAULT);
  o.level = level;
  o.timeout_ms = timeout_ms;
  return o;
}

/* keel_shard_get_ex of "k": its status; the value must be "v" on OK. */
static keel_status_t get_ex(keel_shard_t *s, const keel_read_options_t *o, keel_error_t **err) {
  keel_buf_t b = {NULL, 0};
  keel_status_t st = keel_shard_get_ex(s, o, KT_S("k"), &b, NULL, NULL, err);
  if (st == KEEL_STATUS_OK) CHECK(b.len == 1 && b.ptr[0] == 'v');
  keel_buf_free(&b);
  return st;
}

static keel_lease_stats_t stats(keel_shard_t *s) {
  KT_ERR;
  keel_lease_stats_t st;
  st.struct_size = sizeof st;
  CHECK_OK(keel_shard_lease_stats(s, &st, &err));
  CHECK_EQ_U64(st.struct_size, KEEL_LEASE_STATS_SIZE_V1);
  return st;
}

struct reader {
  keel_shard_t *shard;
  keel_status_t status;
};

static void *linearizable_reader(void *arg) {
  struct reader *r = arg;
  keel_read_options_t o = read_opts(KEEL_READ_LINEARIZABLE, 60000);
  keel_error_t *err = NULL;
  r->status = get_ex(r->shard, &o, &err);
  keel_error_free(err);
  return NULL;
}

static uint64_t clock_ns(clockid_t id) {
  struct timespec ts;
  CHECK(clock_gettime(id, &ts) == 0);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* KEEL_CLOCK_BOOTTIME: keel_shard_consensus_now() reads CLOCK_BOOTTIME, and
 * an ack stamped with it serves a lease read with no read-index call (a
 * lease of 59 minutes: no scheduling delay can age it out). */
static void boottime_clock(keel_engine_t *e) {
  KT_ERR;
  keel_shard_t *b = NULL;
  CHECK_OK(keel_engine_shard_open(e, 3, true, &b, &err));
  uint64_t now = 0;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_now(b, &now, &err)); /* not configured */
  struct host hb = {1, KEEL_STATUS_OK, 0, 0};
  keel_lease_options_t o = lease_options(&hb);
  o.clock = 3;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(b, &o, &err));
  o = lease_options(&hb);
  o.clock = KEEL_CLOCK_BOOTTIME;
  o.election_timeout_min_ms = 3600 * 1000;
  o.lease_ms = 59 * 60 * 1000;
  CHECK_OK(keel_shard_consensus_configure(b, &o, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_clock(b, 5, &err));
  uint64_t before = clock_ns(CLOCK_BOOTTIME);
  CHECK_OK(keel_shard_consensus_now(b, &now, &err));
  CHECK(before <= now && now <= clock_ns(CLOCK_BOOTTIME));
  const uint64_t voters[] = {1, 2, 3};
  CHECK_OK(keel_shard_consensus_set_voters(b, voters, 3, NULL, 0, &err));
  CHECK_OK(keel_shard_consensus_set_role(b, KEEL_ROLE_LEADER, 1, 0, &err));
  CHECK_OK(keel_shard_consensus_term_applied(b, 1, NULL, &err));
  uint64_t sent = 0;
  CHECK_OK(keel_shard_consensus_now(b, &sent, &err));
  CHECK_OK(keel_shard_consensus_ack(b, 2, 1, sent, &err));
  CHECK_OK(keel_shard_put(b, KT_S("k"), KT_S("v"), NULL, &err));
  keel_read_options_t lease = read_opts(KEEL_READ_LEASE, 0);
  CHECK_OK(get_ex(b, &lease, &err));
  CHECK_EQ_U64(hb.calls, 0);
  keel_lease_stats_t st;
  st.struct_size = sizeof st;
  CHECK_OK(keel_shard_lease_stats(b, &st, &err));
  CHECK_EQ_U64(st.lease_hits, 1);
  CHECK_EQ_U64(st.acks_ignored_bad_time, 0);
  CHECK_OK(keel_shard_close(b, &err));
  CHECK_EQ_U64(hb.frees, 2); /* the refused configuration and the close */
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_t *e = NULL;
  keel_engine_options_t eo = kt_engine_options(KEEL_DURABILITY_NONE);
  CHECK_OK(keel_engine_open(dir, &eo, &e, &err));
  keel_shard_t *s = NULL, *other = NULL;
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_engine_shard_open(e, 2, true, &other, &err));
  CHECK_OK(keel_shard_put(s, KT_S("k"), KT_S("v"), NULL, &err));
  CHECK_OK(keel_shard_put(s, KT_S("k2"), KT_S("w"), NULL, &err));

  /* Unconfigured: stale only. */
  keel_read_options_t stale = read_opts(KEEL_READ_STALE, 0), lease = read_opts(KEEL_READ_LEASE, 0),
                      lin = read_opts(KEEL_READ_LINEARIZABLE, 0), bad = read_opts(9, 0);
  CHECK_OK(get_ex(s, NULL, &err));
  CHECK_OK(get_ex(s, &stale, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(s, &lease, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(s, &lin, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(s, &bad, &err));
  keel_lease_stats_t st;
  st.struct_size = sizeof st;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_lease_stats(s, &st, &err));

  /* Configurations that are refused. */
  struct host h = {10, KEEL_STATUS_OK, 0, 0};
  keel_lease_options_t lo = lease_options(&h);
  lo.lease_ms = 800; /* == 1000 - 100 - 100 */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  lo = lease_options(&h);
  lo.self_id = 0;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  lo = lease_options(&h);
  lo.read_timeout_ms = 0; /* every read naming no timeout would fail at once */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  lo = lease_options(&h);
  lo.read_index = NULL;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  lo = lease_options(&h);
  lo.default_level = 7;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_consensus_configure(s, NULL, &err));
  /* A newer header's struct with an option this keel does not know set:
   * refused, and the user data still handed back. */
  struct {
    keel_lease_options_t o;
    uint64_t newer;
  } big;
  memset(&big, 0, sizeof big);
  big.o = lease_options(&h);
  big.o.struct_size = sizeof big;
  big.newer = 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &big.o, &err));
  CHECK_EQ_U64(h.frees, 6); /* every refused configuration handed its user data back */
  /* A struct_size no header had: keel cannot read the struct, so the
   * user data stays the caller's. */
  lo = lease_options(&h);
  lo.struct_size = 12;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  CHECK_EQ_U64(h.frees, 6);

  lo = lease_options(&h);
  lo.default_level = KEEL_READ_LEASE;
  CHECK_OK(keel_shard_consensus_configure(s, &lo, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(s, &lo, &err));
  CHECK_EQ_U64(h.frees, 7);

  /* A follower: NOT_LEADER with the hint, for _ex and for the default level. */
  CHECK_OK(keel_shard_consensus_set_role(s, KEEL_ROLE_FOLLOWER, 3, 2, &err));
  CHECK_STATUS(KEEL_STATUS_NOT_LEADER, get_ex(s, &lease, &err));
  CHECK_EQ_U64(get_ex(s, &lin, &err), KEEL_STATUS_NOT_LEADER);
  CHECK_EQ_U64(keel_error_leader_hint(err), 2);
  keel_error_free(err);
  err = NULL;
  keel_buf_t b = {NULL, 0};
  CHECK_EQ_U64(keel_shard_get(s, KT_S("k"), &b, NULL, NULL, &err), KEEL_STATUS_NOT_LEADER);
  CHECK_EQ_U64(keel_error_leader_hint(err), 2);
  keel_error_free(err);
  err = NULL;
  CHECK_EQ_U64(keel_error_leader_hint(NULL), 0);
  CHECK_OK(get_ex(s, &stale, &err));
  /* A key, bound or prefix longer than any key is INVALID_ARGUMENT before
   * the level's check: a follower does not send the caller to a leader
   * that would refuse it too. */
  static uint8_t over[KEEL_SHARD_MAX_KEY_SIZE + 1];
  const size_t over_len[] = {sizeof over};
  keel_buf_t over_vals[1] = {{NULL, 0}};
  uint32_t over_kinds[1];
  keel_iter_t *none = NULL;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get_ex(s, &lin, over, sizeof over, &b, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_multi_get_ex(s, &lin, over, over_len, 1, over_vals, over_kinds, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_scan_ex(s, &lin, over, sizeof over, NULL, 0, &none, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_scan_ex(s, &lin, NULL, 0, over, sizeof over, &none, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_scan_prefix_ex(s, &lin, over, sizeof over, &none, &err));
  CHECK(b.ptr == NULL && over_vals[0].ptr == NULL && none == NULL);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_role(s, 5, 3, 0, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_role(s, KEEL_ROLE_FOLLOWER, 2, 0, &err));

  /* The leader of term 5 over {1,2,3}, its own-term entry applied at 10. */
  const uint64_t voters[] = {1, 2, 3}, zero[] = {0};
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_voters(s, zero, 1, NULL, 0, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_consensus_set_voters(s, NULL, 3, NULL, 0, &err));
  CHECK_OK(keel_shard_consensus_set_voters(s, voters, 3, NULL, 0, &err));
  CHECK_OK(keel_shard_consensus_set_role(s, KEEL_ROLE_LEADER, 5, 0, &err));
  CHECK_OK(keel_shard_consensus_set_applied(s, 10, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_applied(s, 9, &err));
  bool recorded = false;
  CHECK_OK(keel_shard_consensus_term_applied(s, 4, &recorded, &err));
  CHECK(!recorded);
  CHECK_OK(keel_shard_consensus_term_applied(s, 5, &recorded, &err));
  CHECK(recorded);
  const uint64_t t0 = 1000 * MS;
  CHECK_OK(keel_shard_consensus_set_clock(s, t0, &err));
  CHECK_OK(keel_shard_consensus_ack(s, 9, 5, t0, &err));     /* not a voter: ignored */
  CHECK_OK(keel_shard_consensus_ack(s, 2, 5, t0 + 1, &err)); /* after now: ignored */
  CHECK_OK(keel_shard_consensus_ack(s, 2, 5, t0, &err));

  /* A fresh lease: no read-index call, through _ex and the default level. */
  CHECK_OK(get_ex(s, &lease, &err));
  CHECK_OK(keel_shard_consensus_set_clock(s, t0 + 700 * MS - 1, &err));
  KT_EXPECT_VALUE(s, "k", "v");
  CHECK_EQ_U64(h.calls, 0);
  /* now - ack == lease: a miss, exactly one call. */
  CHECK_OK(keel_shard_consensus_set_clock(s, t0 + 700 * MS, &err));
  CHECK_OK(get_ex(s, &lease, &err));
  CHECK_EQ_U64(h.calls, 1);
  /* A transfer suspends a fresh lease, for the rest of the term: one
   * raft abandoned may still make its target leader. */
  CHECK_OK(keel_shard_consensus_ack(s, 3, 5, t0 + 700 * MS, &err));
  CHECK_OK(keel_shard_consensus_set_transfer(s, true, &err));
  CHECK_OK(get_ex(s, &lease, &err));
  CHECK_EQ_U64(h.calls, 2);
  CHECK_OK(keel_shard_consensus_set_transfer(s, false, &err));
  CHECK_OK(get_ex(s, &lease, &err));
  CHECK_EQ_U64(h.calls, 3);
  /* Linearizable always asks. */
  CHECK_OK(get_ex(s, &lin, &err));
  CHECK_EQ_U64(h.calls, 4);
  /* ...but not for a read refused for its arguments. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get_ex(s, &lin, over, sizeof over, &b, NULL, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_scan_prefix_ex(s, &lin, over, sizeof over, &none, &err));
  CHECK_EQ_U64(h.calls, 4);

  /* A read-index past the applied index: TIMEOUT, or the wait until it applies. */
  __atomic_store_n(&h.index, 12, __ATOMIC_SEQ_CST);
  keel_read_options_t quick = read_opts(KEEL_READ_LINEARIZABLE, 1);
  CHECK_STATUS(KEEL_STATUS_TIMEOUT, get_ex(s, &quick, &err));
  CHECK_EQ_U64(h.calls, 5);
  struct reader r = {s, KEEL_STATUS_PANIC};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, linearizable_reader, &r) == 0);
  while (__atomic_load_n(&h.calls, __ATOMIC_SEQ_CST) < 6) sched_yield();
  CHECK_OK(keel_shard_consensus_set_applied(s, 12, &err));
  CHECK(pthread_join(t, NULL) == 0);
  CHECK_EQ_U64(r.status, KEEL_STATUS_OK);

  /* A session: one read-index for a get, a multi_get and two scans. */
  keel_read_session_t *session = NULL;
  uint64_t index = 0;
  CHECK_OK(keel_shard_read_begin(s, &lin, &session, &index, &err));
  CHECK_EQ_U64(index, 12);
  CHECK_EQ_U64(h.calls, 7);
  keel_read_options_t in = read_opts(KEEL_READ_DEFAULT, 0);
  in.session = session;
  CHECK_OK(get_ex(s, &in, &err));
  const char keys[] = "kk2";
  const size_t lens[] = {1, 2};
  keel_buf_t vals[2] = {{NULL, 0}, {NULL, 0}};
  uint32_t kinds[2];
  CHECK_OK(keel_shard_multi_get_ex(s, &in, (const uint8_t *)keys, lens, 2, vals, kinds, NULL, &err));
  CHECK(vals[1].len == 1 && vals[1].ptr[0] == 'w');
  keel_bufs_free(vals, 2);
  keel_iter_t *it = NULL;
  CHECK_OK(keel_shard_scan_ex(s, &in, KT_S(""), NULL, 0, &it, &err));
  keel_iter_close(it);
  CHECK_OK(keel_shard_scan_prefix_ex(s, &in, KT_S("k"), &it, &err));
  keel_iter_close(it);
  CHECK_EQ_U64(h.calls, 7);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(other, &in, &err)); /* another shard's session */
  /* A session's read uses no level or timeout, yet refuses a level that is
   * no KEEL_READ_* value, as a read without one does. */
  in.level = KEEL_READ_LINEARIZABLE + 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(s, &in, &err));
  in.level = KEEL_READ_STALE;
  in.timeout_ms = 1;
  CHECK_OK(get_ex(s, &in, &err));
  CHECK_EQ_U64(h.calls, 7);
  in.level = KEEL_READ_DEFAULT;
  in.timeout_ms = 0;
  keel_read_session_t *nested = NULL;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_read_begin(s, &in, &nested, NULL, &err));
  keel_shard_read_end(session);
  keel_shard_read_end(NULL);

  /* The callback's error comes back. */
  h.status = KEEL_STATUS_IO;
  CHECK_STATUS(KEEL_STATUS_IO, get_ex(s, &lin, &err));
  /* ...unless it is not a keel_status_t value: never handed on. */
  h.status = (keel_status_t)999;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, get_ex(s, &lin, &err));
  h.status = KEEL_STATUS_OK;

  st = stats(s);
  CHECK_EQ_U64(st.role, KEEL_ROLE_LEADER);
  CHECK_EQ_U64(st.term, 5);
  CHECK_EQ_U64(st.leader_id, 1);
  CHECK_EQ_U64(st.applied_index, 12);
  CHECK_EQ_U64(st.lease_hits, 2);
  CHECK_EQ_U64(st.miss_not_leader, 2);
  CHECK_EQ_U64(st.miss_ack_stale, 1);
  CHECK_EQ_U64(st.miss_transfer, 2);
  CHECK_EQ_U64(st.read_index_calls, 9);
  CHECK_EQ_U64(st.read_index_errors, 2);
  CHECK_EQ_U64(st.read_index_timeouts, 1);
  CHECK_EQ_U64(st.acks_ignored_not_voter, 1);
  CHECK_EQ_U64(st.acks_ignored_bad_time, 1);
  CHECK(st.read_index_latency_ns_max <= st.read_index_latency_ns_total);

  /* A CLOCK_MONOTONIC shard cannot be set; versioned options misuse. */
  lo = lease_options(&h);
  lo.clock = KEEL_CLOCK_MONOTONIC;
  CHECK_OK(keel_shard_consensus_configure(other, &lo, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_set_clock(other, 5, &err));
  uint64_t before = clock_ns(CLOCK_MONOTONIC), now = 0;
  CHECK_OK(keel_shard_consensus_now(other, &now, &err));
  CHECK(before <= now && now <= clock_ns(CLOCK_MONOTONIC));
  CHECK_OK(keel_shard_consensus_now(s, &now, &err));
  CHECK_EQ_U64(now, t0 + 700 * MS); /* a manual clock reads what was set last */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_consensus_now(s, NULL, &err));
  keel_read_options_t small;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_read_options_init_sized(&small, 8));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_read_options_init_sized(NULL, sizeof small));

  boottime_clock(e);

  CHECK_EQ_U64(h.frees, 7);
  CHECK_OK(keel_shard_close(other, &err));
  CHECK_EQ_U64(h.frees, 8);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_EQ_U64(h.frees, 9); /* once per configured shard, at its close */
  unsigned calls = h.calls;
  CHECK_OK(keel_engine_close(e, &err));
  CHECK_EQ_U64(h.calls, calls);
  kt_rmdir(dir);
  KT_PASS();
}
