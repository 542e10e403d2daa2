/*
 * lease_bench.c: the cost of lease reads through the C API (bench/lease/README.md).
 *
 *   lease_bench --dir DIR [--secs S] [--keys N] [--pairs P] [--read-index-us U] [--threads T]
 *
 * One shard of N keys (16 B keys, 100 B values, loaded through
 * keel_shard_apply), configured for lease reads on the monotonic clock.
 * This process plays the host's consensus: a heartbeat thread reports
 * fresh quorum acks of two peers every 20 ms (so a lease read never finds
 * its lease stale), and the read-index callback is a simulated round
 * trip of a fixed latency that answers the index last applied.
 *
 * Requests: k ∈ {1, 4, 8} reads of random keys (k = 1 one keel_shard_get_ex,
 * k > 1 a read session, keel_shard_read_begin + k gets + end), 0 % or
 * 10 % of requests a write (one put applied at the next raft index), with
 * the lease on (KEEL_READ_LEASE) or off (KEEL_READ_LINEARIZABLE: a
 * read-index per request). Each case runs T client threads for S seconds
 * and prints one JSON line: requests/s, reads/s, p50/p99 request
 * latency, read-index calls and lease hits from keel_shard_lease_stats.
 *
 * Then the cost of the lease check itself: P pairs of one thread reading
 * the same keys with keel_shard_get (a plain local read) and with
 * keel_shard_get_ex at KEEL_READ_LEASE, in alternating slices of 2,000
 * reads; each pair prints a JSON line with both rates.
 */
#define _POSIX_C_SOURCE 200809L
#include "keel.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { KEY_BYTES = 16, VALUE_BYTES = 100, LOAD_BATCH = 1000, SELF = 1, TERM = 1 };

static void die(const char *what, keel_status_t st, keel_error_t *err) {
  fprintf(stderr, "lease_bench: %s: %s%s%s\n", what, keel_status_str(st), err ? ": " : "",
          err ? keel_error_message(err) : "");
  exit(1);
}

#define TRY(call)                                          \
  do {                                                     \
    keel_error_t *err_ = NULL;                             \
    keel_status_t st_ = (call);                            \
    if (st_ != KEEL_STATUS_OK) die(#call, st_, err_);      \
  } while (0)
#define ERR (&err_)

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
  struct timespec t = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
  while (nanosleep(&t, &t) != 0) {
  }
}

/* "k" and 15 decimal digits (keys stay below 10^15). */
static void key_of(uint64_t i, uint8_t out[KEY_BYTES]) {
  out[0] = 'k';
  for (int d = KEY_BYTES - 1; d >= 1; d--, i /= 10) out[d] = (uint8_t)('0' + i % 10);
}

/* xorshift64*: each thread's own key sequence, from its seed. */
static uint64_t next_rand(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

/* ---- the host: applied index, simulated read-index, heartbeats ---------- */

static keel_shard_t *shard;
static uint64_t read_index_ns;
static uint64_t applied;      /* the last raft index applied (atomic) */
static int heartbeats_stop;   /* atomic */
static pthread_mutex_t apply_mu = PTHREAD_MUTEX_INITIALIZER;

static keel_status_t sim_read_index(void *user, uint64_t *index) {
  (void)user;
  /* The consensus round trip: the leader confirms it still leads, then
   * answers its commit index (here everything committed is applied). */
  sleep_ns(read_index_ns);
  *index = __atomic_load_n(&applied, __ATOMIC_ACQUIRE);
  return KEEL_STATUS_OK;
}

static void *heartbeats(void *arg) {
  (void)arg;
  while (!__atomic_load_n(&heartbeats_stop, __ATOMIC_ACQUIRE)) {
    /* Stamped at send time: the ack of a heartbeat sent now. */
    uint64_t sent = now_ns();
    TRY(keel_shard_consensus_ack(shard, 2, TERM, sent, ERR));
    TRY(keel_shard_consensus_ack(shard, 3, TERM, sent, ERR));
    sleep_ns(20 * 1000000ull);
  }
  return NULL;
}

/* Applies one entry of puts at the next raft index (one writer at a time,
 * as raft applies entries in order). */
static void apply_puts(const uint64_t *ids, size_t n) {
  keel_batch_t *b;
  TRY(keel_batch_new(&b));
  uint8_t key[KEY_BYTES], value[VALUE_BYTES];
  for (size_t i = 0; i < n; i++) {
    key_of(ids[i], key);
    memset(value, (int)(ids[i] & 0xff), sizeof value);
    TRY(keel_batch_put(b, key, KEY_BYTES, value, VALUE_BYTES, ERR));
  }
  pthread_mutex_lock(&apply_mu);
  uint64_t index = __atomic_load_n(&applied, __ATOMIC_ACQUIRE) + 1;
  keel_apply_result_t r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  TRY(keel_shard_apply(shard, index, b, NULL, &r, ERR));
  if (r.status != KEEL_STATUS_OK || r.duplicate) die("apply refused", r.status, NULL);
  __atomic_store_n(&applied, index, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&apply_mu);
  keel_batch_free(b);
}

/* ---- one case ---------------------------------------------------------- */

typedef struct {
  int k, write_pct, lease;
  uint64_t keys, seed, deadline_ns;
  uint64_t *lat; /* request latencies, ns */
  size_t nlat, cap;
  uint64_t reads, writes;
} client_t;

static keel_read_options_t level_opts(uint32_t level) {
  keel_read_options_t o;
  TRY(keel_read_options_init_sized(&o, sizeof o));
  o.level = level;
  return o;
}

static void read_one(const keel_read_options_t *o, uint64_t id) {
  uint8_t key[KEY_BYTES];
  key_of(id, key);
  keel_buf_t v = {NULL, 0};
  TRY(keel_shard_get_ex(shard, o, key, KEY_BYTES, &v, NULL, NULL, ERR));
  if (v.len != VALUE_BYTES) die("a loaded key read back wrong", KEEL_STATUS_CORRUPTION, NULL);
  keel_buf_free(&v);
}

static void *client_main(void *arg) {
  client_t *c = arg;
  keel_read_options_t level = level_opts(c->lease ? KEEL_READ_LEASE : KEEL_READ_LINEARIZABLE);
  while (c->nlat < c->cap) {
    uint64_t t0 = now_ns();
    if (t0 >= c->deadline_ns) break;
    if ((int)(next_rand(&c->seed) % 100) < c->write_pct) {
      uint64_t id = next_rand(&c->seed) % c->keys;
      apply_puts(&id, 1);
      c->writes++;
    } else if (c->k == 1) {
      read_one(&level, next_rand(&c->seed) % c->keys);
      c->reads++;
    } else {
      keel_read_session_t *s;
      TRY(keel_shard_read_begin(shard, &level, &s, NULL, ERR));
      keel_read_options_t in = level_opts(KEEL_READ_DEFAULT);
      in.session = s;
      for (int i = 0; i < c->k; i++) read_one(&in, next_rand(&c->seed) % c->keys);
      keel_shard_read_end(s);
      c->reads += (uint64_t)c->k;
    }
    c->lat[c->nlat++] = now_ns() - t0;
  }
  return NULL;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static keel_lease_stats_t lease_stats(void) {
  keel_lease_stats_t s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  TRY(keel_shard_lease_stats(shard, &s, ERR));
  return s;
}

static void run_case(int k, int write_pct, int lease, int threads, double secs, uint64_t keys, uint64_t seed) {
  client_t c[8];
  pthread_t t[8];
  keel_lease_stats_t before = lease_stats();
  uint64_t start = now_ns(), deadline = start + (uint64_t)(secs * 1e9);
  for (int i = 0; i < threads; i++) {
    size_t cap = 8 << 20;
    c[i] = (client_t){.k = k, .write_pct = write_pct, .lease = lease, .keys = keys,
                      .seed = seed * 1000003u + (uint64_t)i + 1, .deadline_ns = deadline,
                      .lat = malloc(cap * sizeof(uint64_t)), .cap = cap};
    if (!c[i].lat) die("malloc", KEEL_STATUS_RESOURCE, NULL);
    if (pthread_create(&t[i], NULL, client_main, &c[i]) != 0) die("pthread_create", KEEL_STATUS_RESOURCE, NULL);
  }
  size_t n = 0;
  uint64_t reads = 0, writes = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    n += c[i].nlat;
    reads += c[i].reads;
    writes += c[i].writes;
  }
  double elapsed = (double)(now_ns() - start) / 1e9;
  keel_lease_stats_t after = lease_stats();
  uint64_t *all = malloc((n ? n : 1) * sizeof(uint64_t));
  if (!all) die("malloc", KEEL_STATUS_RESOURCE, NULL);
  size_t at = 0;
  for (int i = 0; i < threads; i++) {
    memcpy(all + at, c[i].lat, c[i].nlat * sizeof(uint64_t));
    at += c[i].nlat;
    free(c[i].lat);
  }
  qsort(all, n, sizeof(uint64_t), cmp_u64);
  double p50 = n ? (double)all[n / 2] / 1e3 : 0, p99 = n ? (double)all[(n * 99) / 100] / 1e3 : 0;
  free(all);
  uint64_t calls = after.read_index_calls - before.read_index_calls;
  uint64_t hits = after.lease_hits - before.lease_hits;
#define D(f) (after.f - before.f)
  uint64_t misses = D(miss_not_leader) + D(miss_ack_stale) + D(miss_ack_missing) + D(miss_ack_future) +
                    D(miss_transfer) + D(miss_term_not_applied) + D(miss_clock);
  char why[256];
  snprintf(why, sizeof why,
           "{\"not_leader\": %" PRIu64 ", \"ack_stale\": %" PRIu64 ", \"ack_missing\": %" PRIu64
           ", \"ack_future\": %" PRIu64 ", \"transfer\": %" PRIu64 ", \"term_not_applied\": %" PRIu64
           ", \"clock\": %" PRIu64 "}",
           D(miss_not_leader), D(miss_ack_stale), D(miss_ack_missing), D(miss_ack_future), D(miss_transfer),
           D(miss_term_not_applied), D(miss_clock));
#undef D
  uint64_t read_requests = (uint64_t)n - writes;
  printf("{\"kind\": \"case\", \"k\": %d, \"write_pct\": %d, \"lease\": %s, \"threads\": %d, \"secs\": %.3f, "
         "\"requests\": %zu, \"read_requests\": %" PRIu64 ", \"reads\": %" PRIu64 ", \"writes\": %" PRIu64 ", "
         "\"requests_per_s\": %.1f, \"reads_per_s\": %.1f, \"p50_us\": %.2f, \"p99_us\": %.2f, "
         "\"read_index_calls\": %" PRIu64 ", \"read_index_calls_per_s\": %.1f, "
         "\"read_index_calls_per_read_request\": %.4f, \"lease_hits\": %" PRIu64 ", \"lease_misses\": %" PRIu64 ", "
         "\"lease_hit_ratio\": %.4f, \"misses_by_reason\": %s}\n",
         k, write_pct, lease ? "true" : "false", threads, elapsed, n, read_requests, reads, writes,
         (double)n / elapsed, (double)reads / elapsed, p50, p99, calls, (double)calls / elapsed,
         read_requests ? (double)calls / (double)read_requests : 0.0, hits, misses,
         hits + misses ? (double)hits / (double)(hits + misses) : 0.0, why);
  fflush(stdout);
}

/* One thread reads `n` keys of the sequence from `*seed` with plain
 * keel_shard_get or with the lease read; returns the nanoseconds taken. */
static uint64_t read_slice(bool lease, uint64_t n, uint64_t keys, uint64_t *seed) {
  keel_read_options_t o = level_opts(KEEL_READ_LEASE);
  uint8_t key[KEY_BYTES];
  uint64_t start = now_ns();
  for (uint64_t i = 0; i < n; i++) {
    key_of(next_rand(seed) % keys, key);
    keel_buf_t v = {NULL, 0};
    if (lease) {
      TRY(keel_shard_get_ex(shard, &o, key, KEY_BYTES, &v, NULL, NULL, ERR));
    } else {
      TRY(keel_shard_get(shard, key, KEY_BYTES, &v, NULL, NULL, ERR));
    }
    keel_buf_free(&v);
  }
  return now_ns() - start;
}

/* One cost pair: plain and lease reads of the same keys, in alternating
 * slices of 2,000 reads for about `secs` in all, so that whatever the
 * machine or the shard's background work does meanwhile falls on both
 * alike; the reads per second of each. */
static void cost_pair(double secs, uint64_t keys, uint64_t seed, double *plain, double *lease) {
  uint64_t t[2] = {0, 0}, n[2] = {0, 0}, deadline = now_ns() + (uint64_t)(secs * 1e9);
  for (int slice = 0; now_ns() < deadline; slice++) {
    uint64_t s = seed + (uint64_t)slice;
    for (int k = 0; k < 2; k++) {
      int mode = (slice + k) % 2; /* which goes first alternates */
      uint64_t same = s;
      t[mode] += read_slice(mode == 1, 2000, keys, &same);
      n[mode] += 2000;
    }
  }
  *plain = (double)n[0] / ((double)t[0] / 1e9);
  *lease = (double)n[1] / ((double)t[1] / 1e9);
}

int main(int argc, char **argv) {
  const char *dir = NULL;
  double secs = 2.0;
  uint64_t keys = 1000000, pairs = 3, threads = 2;
  read_index_ns = 200 * 1000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--dir")) dir = argv[i + 1];
    else if (!strcmp(argv[i], "--secs")) secs = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--keys")) keys = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--pairs")) pairs = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--threads")) threads = strtoull(argv[i + 1], NULL, 10);
    else if (!strcmp(argv[i], "--read-index-us")) read_index_ns = strtoull(argv[i + 1], NULL, 10) * 1000;
    else {
      fprintf(stderr, "lease_bench: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (!dir || keys == 0 || threads == 0 || threads > 8 || secs <= 0) {
    fprintf(stderr, "usage: %s --dir DIR [--secs S] [--keys N] [--pairs P] [--threads T<=8] [--read-index-us U]\n",
            argv[0]);
    return 2;
  }

  keel_engine_options_t eo;
  TRY(keel_engine_options_init_sized(&eo, sizeof eo));
  eo.durability = KEEL_DURABILITY_NONE; /* the reads are measured, not the load */
  keel_engine_t *engine;
  TRY(keel_engine_open(dir, &eo, &engine, ERR));
  TRY(keel_engine_shard_open(engine, 1, true, &shard, ERR));
  uint64_t ids[LOAD_BATCH];
  for (uint64_t i = 0; i < keys; i += LOAD_BATCH) {
    size_t n = 0;
    for (uint64_t j = i; j < keys && n < LOAD_BATCH; j++) ids[n++] = j;
    apply_puts(ids, n);
  }

  keel_lease_options_t lo;
  TRY(keel_lease_options_init_sized(&lo, sizeof lo));
  lo.self_id = SELF;
  lo.lease_ms = 700;
  lo.election_timeout_min_ms = 1000;
  lo.max_clock_drift_ms = 100;
  lo.max_round_trip_ms = 100;
  lo.clock = KEEL_CLOCK_MONOTONIC;
  lo.read_index = sim_read_index;
  TRY(keel_shard_consensus_configure(shard, &lo, ERR));
  const uint64_t voters[3] = {1, 2, 3};
  TRY(keel_shard_consensus_set_voters(shard, voters, 3, NULL, 0, ERR));
  TRY(keel_shard_consensus_set_role(shard, KEEL_ROLE_LEADER, TERM, SELF, ERR));
  /* The new leader's own-term entry (etcd raft's empty entry). */
  apply_puts(ids, 0);
  bool recorded = false;
  TRY(keel_shard_consensus_term_applied(shard, TERM, &recorded, ERR));
  if (!recorded) die("the own-term entry did not count", KEEL_STATUS_RESOURCE, NULL);
  pthread_t hb;
  if (pthread_create(&hb, NULL, heartbeats, NULL) != 0) die("pthread_create", KEEL_STATUS_RESOURCE, NULL);
  while (lease_stats().lease_hits == 0) {
    /* Wait for the first quorum ack before measuring (one lease read). */
    uint64_t s = 7;
    read_slice(true, 1, keys, &s);
  }

  printf("{\"kind\": \"config\", \"keys\": %" PRIu64 ", \"key_bytes\": %d, \"value_bytes\": %d, \"secs\": %.3f, "
         "\"threads\": %" PRIu64 ", \"read_index_us\": %.1f, \"lease_ms\": 700, \"heartbeat_ms\": 20, \"pairs\": %" PRIu64
         "}\n",
         keys, KEY_BYTES, VALUE_BYTES, secs, threads, (double)read_index_ns / 1e3, pairs);
  uint64_t seed = 1;
  const int ks[3] = {1, 4, 8}, writes[2] = {0, 10};
  for (int w = 0; w < 2; w++)
    for (int ki = 0; ki < 3; ki++)
      for (int lease = 1; lease >= 0; lease--) run_case(ks[ki], writes[w], lease, (int)threads, secs, keys, seed++);

  for (uint64_t p = 1; p <= pairs; p++) {
    double plain, lease;
    cost_pair(secs, keys, 1000 * p, &plain, &lease);
    printf("{\"kind\": \"cost_pair\", \"pair\": %" PRIu64 ", \"plain_reads_per_s\": %.1f, \"lease_reads_per_s\": %.1f}\n",
           p, plain, lease);
    fflush(stdout);
  }

  __atomic_store_n(&heartbeats_stop, 1, __ATOMIC_RELEASE);
  pthread_join(hb, NULL);
  TRY(keel_shard_close(shard, ERR));
  TRY(keel_engine_close(engine, ERR));
  return 0;
}
