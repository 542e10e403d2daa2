/*
 * Closing a shard while reads wait on the host's read-index: the close
 * waits for the call in flight, then frees the callback's user data itself
 * (read_index_free runs before the close returns), and no read-index call
 * starts once it returned, even for a read that began before it.
 *
 * Every step waits on state:
 *   1. thread A: a linearizable get makes read-index call #1, which the
 *      host holds open until keel_engine_close() has returned;
 *   2. thread B: a lease get misses (manual clock at 0) and queues for the
 *      next call (it may not take call #1's answer); the lease-miss
 *      counter says when it is past the gate's checks;
 *   3. the main thread closes the engine. A close that waits for call #1
 *      cannot return while it runs: call #1 gives up waiting after
 *      HOLD_GUARD_S seconds (a guard, not an assertion: the outcome is
 *      the same however long it waits) and the close then goes on. A close
 *      that does not wait returns at once, and B's call and the free then
 *      come after it, which the checks at the end catch.
 */
#include "keel_test.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#define HOLD_GUARD_S 2

struct host {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int entered;          /* calls made */
  int closed_returned;  /* keel_engine_close() has returned */
  int calls_after_close;
  int freed;
  int freed_after_close;
};

static struct host h = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0};

static keel_status_t read_index(void *user, uint64_t *index) {
  struct host *host = user;
  pthread_mutex_lock(&host->mu);
  const int n = ++host->entered;
  if (host->closed_returned) host->calls_after_close++;
  pthread_cond_broadcast(&host->cv);
  if (n == 1) {
    struct timespec until;
    CHECK(clock_gettime(CLOCK_REALTIME, &until) == 0);
    until.tv_sec += HOLD_GUARD_S;
    while (!host->closed_returned && pthread_cond_timedwait(&host->cv, &host->mu, &until) == 0) {
    }
  }
  pthread_mutex_unlock(&host->mu);
  *index = 0;
  return KEEL_STATUS_OK;
}

static void on_free(void *user) {
  struct host *host = user;
  pthread_mutex_lock(&host->mu);
  host->freed++;
  if (host->closed_returned) host->freed_after_close++;
  pthread_mutex_unlock(&host->mu);
}

struct reader {
  keel_shard_t *shard;
  uint32_t level;
  keel_status_t st;
};

static void *do_read(void *arg) {
  struct reader *r = arg;
  keel_read_options_t o;
  CHECK(keel_read_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  o.level = r->level;
  o.timeout_ms = 600000; /* a guard only: every wait here is on state */
  keel_buf_t v = {NULL, 0};
  r->st = keel_shard_get_ex(r->shard, &o, (const uint8_t *)"k", 1, &v, NULL, NULL, NULL);
  keel_buf_free(&v);
  return NULL;
}

static uint64_t lease_misses(keel_shard_t *s) {
  KT_ERR;
  keel_lease_stats_t st;
  st.struct_size = sizeof st;
  CHECK_OK(keel_shard_lease_stats(s, &st, &err));
  return st.miss_clock + st.miss_ack_missing + st.miss_ack_stale + st.miss_term_not_applied + st.miss_not_leader +
         st.miss_transfer + st.miss_ack_future;
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_t *engine = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &engine, &err));
  CHECK_OK(keel_engine_shard_open(engine, 1, true, &s, &err));

  keel_lease_options_t o;
  CHECK(keel_lease_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  o.self_id = 1;
  o.lease_ms = 700;
  o.election_timeout_min_ms = 1000;
  o.max_clock_drift_ms = 100;
  o.max_round_trip_ms = 100;
  o.clock = KEEL_CLOCK_MANUAL; /* time 0: every lease read misses */
  o.read_index = read_index;
  o.read_index_user_data = &h;
  o.read_index_free = on_free;
  CHECK_OK(keel_shard_consensus_configure(s, &o, &err));
  const uint64_t voters[1] = {1};
  CHECK_OK(keel_shard_consensus_set_voters(s, voters, 1, NULL, 0, &err));
  CHECK_OK(keel_shard_consensus_set_role(s, KEEL_ROLE_LEADER, 1, 0, &err));

  /* 1. Call #1, held open. */
  struct reader a = {s, KEEL_READ_LINEARIZABLE, KEEL_STATUS_PANIC};
  pthread_t ta, tb;
  CHECK(pthread_create(&ta, NULL, do_read, &a) == 0);
  pthread_mutex_lock(&h.mu);
  while (h.entered < 1) pthread_cond_wait(&h.cv, &h.mu);
  pthread_mutex_unlock(&h.mu);

  /* 2. B misses the lease and queues behind call #1. */
  const uint64_t misses = lease_misses(s);
  struct reader b = {s, KEEL_READ_LEASE, KEEL_STATUS_PANIC};
  CHECK(pthread_create(&tb, NULL, do_read, &b) == 0);
  while (lease_misses(s) == misses) sched_yield();

  /* 3. The engine closes while call #1 runs. */
  CHECK_OK(keel_engine_close(engine, &err));
  pthread_mutex_lock(&h.mu);
  h.closed_returned = 1;
  pthread_cond_broadcast(&h.cv);
  pthread_mutex_unlock(&h.mu);
  CHECK(pthread_join(ta, NULL) == 0);
  CHECK(pthread_join(tb, NULL) == 0);

  fprintf(stderr, "read-index calls: %d (after the close returned: %d); read_index_free: %d (after the close: %d); "
          "A got %s, B got %s\n", h.entered, h.calls_after_close, h.freed, h.freed_after_close, keel_status_str(a.st),
          keel_status_str(b.st));
  /* Each read got its permit, or found the gate or the shard closed. */
  CHECK(a.st == KEEL_STATUS_NOT_FOUND || a.st == KEEL_STATUS_CLOSED);
  CHECK(b.st == KEEL_STATUS_NOT_FOUND || b.st == KEEL_STATUS_CLOSED);
  CHECK_EQ_U64(h.calls_after_close, 0);
  CHECK_EQ_U64(h.freed, 1);
  CHECK_EQ_U64(h.freed_after_close, 0);
  /* Reads after the close fail with CLOSED without calling the host. */
  struct reader late = {s, KEEL_READ_LINEARIZABLE, KEEL_STATUS_PANIC};
  do_read(&late);
  CHECK(late.st == KEEL_STATUS_CLOSED);
  CHECK_EQ_U64(h.entered <= 2, 1);
  CHECK_OK(keel_shard_close(s, &err)); /* frees the handle */
  kt_rmdir(dir);
  KT_PASS();
}
