/*
 * test_transfer.c — shard transfer through the C API: two engines and two
 * nodes in one process over real loopback TCP. A writer thread keeps
 * writing while a shard moves; the host finishes with a hand-over, the
 * digests agree and the source answers MOVED. A forwarding transfer
 * applies each later write on the receiver before it returns. A cancelled
 * transfer leaves the receiver's shard incoming, and a restart resumes it
 * by WAL delta. Freeing a running transfer lets its callback, which
 * reports the cancel meanwhile, still ask the handle for its status. Bad
 * arguments are refused with the right status. Waits
 * are on the progress callback (a condition variable) or on
 * keel_transfer_wait(), never on time.
 */
#include "keel_test.h"

#include <pthread.h>
#include <stddef.h>

enum { SRC = 1, DST = 2 };

/* One side: an engine in its own directory and its node. */
typedef struct {
  char *dir;
  keel_engine_t *engine;
  keel_node_t *node;
} side_t;

static side_t open_side(uint64_t id) {
  KT_ERR;
  side_t s;
  s.dir = kt_tempdir();
  keel_engine_options_t eo;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&eo, sizeof eo));
  eo.flush_interval_ms = 0; /* the WAL keeps everything: a restart can resume */
  CHECK_OK(keel_engine_open(s.dir, &eo, &s.engine, &err));
  keel_node_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_node_options_init_sized(&o, sizeof o));
  o.node_id = id;
  o.listen_addr = "127.0.0.1:0";
  o.max_frame_bytes = 1 << 20;
  o.heartbeat_misses = 60;
  CHECK_OK(keel_node_open(s.engine, &o, &s.node, &err));
  return s;
}

static void close_side(side_t *s) {
  KT_ERR;
  CHECK_RC(KEEL_STATUS_OK, keel_node_close(s->node, NULL));
  CHECK_OK(keel_engine_close(s->engine, &err));
  kt_rmdir(s->dir);
}

static keel_shard_t *open_shard(side_t *s, uint32_t id, bool create) {
  KT_ERR;
  keel_shard_t *shard = NULL;
  CHECK_OK(keel_engine_shard_open(s->engine, id, create, &shard, &err));
  return shard;
}

static uint64_t put(keel_shard_t *shard, const char *key, uint64_t n) {
  KT_ERR;
  uint64_t version = 0;
  CHECK_OK(keel_shard_put(shard, (const uint8_t *)key, strlen(key), (const uint8_t *)&n, sizeof n, &version, &err));
  return version;
}

static void fill(keel_shard_t *shard, int n) {
  char key[32];
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "k%05d", (i * 7919) % 2000);
    put(shard, key, (uint64_t)i);
  }
}

static void digest(keel_shard_t *shard, uint8_t out[32]) {
  KT_ERR;
  CHECK_OK(keel_shard_digest(shard, out, &err));
}

/* What the progress callback saw, guarded by mu. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int calls;
  uint32_t stage;
  uint32_t stages_seen; /* bit per stage */
  uint64_t last_ops;
  int ops_went_back;
} seen_t;

static void on_progress(void *user, const keel_transfer_progress_t *p) {
  seen_t *s = user;
  CHECK(p != NULL && p->struct_size >= KEEL_TRANSFER_PROGRESS_SIZE_V1);
  pthread_mutex_lock(&s->mu);
  s->calls++;
  s->stage = p->stage;
  s->stages_seen |= 1u << p->stage;
  if (p->ops_sent < s->last_ops) s->ops_went_back = 1;
  s->last_ops = p->ops_sent;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void seen_init(seen_t *s) {
  memset(s, 0, sizeof *s);
  CHECK(pthread_mutex_init(&s->mu, NULL) == 0);
  CHECK(pthread_cond_init(&s->cv, NULL) == 0);
}

static void seen_destroy(seen_t *s) {
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
}

/* Blocks until the callback reported `stage` (the ctest timeout guards a hang). */
static void seen_wait(seen_t *s, uint32_t stage) {
  pthread_mutex_lock(&s->mu);
  while (s->stage != stage) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static keel_transfer_options_t small_batches(seen_t *seen) {
  keel_transfer_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.auto_finish, KEEL_TRANSFER_FINISH_NONE);
  CHECK_EQ_U64(o.struct_size, KEEL_TRANSFER_OPTIONS_SIZE_V3);
  CHECK_EQ_U64(offsetof(keel_transfer_options_t, sequential), KEEL_TRANSFER_OPTIONS_SIZE_V2);
  CHECK_EQ_U64(o.sequential, 0); /* pipelined */
  /* The retry policy's fields are 0: the library's defaults. */
  CHECK_EQ_U64(o.max_retries, 0);
  CHECK_EQ_U64(o.first_backoff_ms, 0);
  CHECK_EQ_U64(o.max_backoff_ms, 0);
  o.max_batch_bytes = 4096;
  o.max_batch_records = 16;
  o.max_retries = 3;
  o.first_backoff_ms = 10;
  o.max_backoff_ms = 40;
  o.on_progress = seen ? on_progress : NULL;
  o.user_data = seen;
  return o;
}

static uint32_t stage_of(keel_transfer_t *t) {
  KT_ERR;
  uint32_t stage = 99;
  CHECK_OK(keel_transfer_status(t, &stage, &err));
  return stage;
}

static keel_transfer_progress_t progress_of(keel_transfer_t *t) {
  keel_transfer_progress_t p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_progress(t, &p));
  return p;
}

/* A writer that puts until the source answers MOVED. It pauses after
 * PAUSE_AFTER writes until the test saw the transfer catch up: a writer
 * faster than the link would keep it catching up, so the test decides
 * when it can catch up, not the scheduler. */
enum { PAUSE_AFTER = 2000 };
typedef struct {
  keel_shard_t *shard;
  uint64_t writes, last_version;
  char last_key[32];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int go;
} writer_t;

static void writer_resume(writer_t *w) {
  pthread_mutex_lock(&w->mu);
  w->go = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void *writer_main(void *arg) {
  writer_t *w = arg;
  for (uint64_t i = 0;; i++) {
    if (i == PAUSE_AFTER) {
      pthread_mutex_lock(&w->mu);
      while (!w->go) pthread_cond_wait(&w->cv, &w->mu);
      pthread_mutex_unlock(&w->mu);
    }
    char key[32];
    snprintf(key, sizeof key, "w%05u", (unsigned)(i % 3000));
    uint64_t version = 0;
    keel_status_t rc = keel_shard_put(w->shard, (const uint8_t *)key, strlen(key), (const uint8_t *)&i, sizeof i, &version, NULL);
    if (rc == KEEL_STATUS_MOVED) return NULL;
    CHECK_RC(KEEL_STATUS_OK, rc);
    w->writes++;
    w->last_version = version;
    memcpy(w->last_key, key, sizeof key);
  }
}

static void moves_while_a_writer_writes(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 7, true);
  fill(shard, 1500);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_expect(b->node, 7, SRC));
  seen_t seen;
  seen_init(&seen);
  keel_transfer_options_t o = small_batches(&seen);
  keel_transfer_t *t = NULL;
  CHECK_OK(keel_transfer_start(a->node, shard, 7, DST, &o, &t, &err));
  writer_t w = {.shard = shard};
  CHECK(pthread_mutex_init(&w.mu, NULL) == 0);
  CHECK(pthread_cond_init(&w.cv, NULL) == 0);
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, writer_main, &w) == 0);

  /* Caught up, it keeps streaming the writer's writes until the finish. */
  seen_wait(&seen, KEEL_TRANSFER_WAITING_FINISH);
  CHECK_RC(KEEL_STATUS_TIMEOUT, keel_transfer_wait(t, 0)); /* it waits for the host */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_confirm_hand_over(t, &err)); /* not handed over */
  writer_resume(&w);
  CHECK_OK(keel_transfer_finish(t, KEEL_TRANSFER_FINISH_HAND_OVER, &err));
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_transfer_finish(t, KEEL_TRANSFER_FINISH_COPY, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK(pthread_join(thread, NULL) == 0);
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_DONE);

  keel_transfer_progress_t p = progress_of(t);
  CHECK_EQ_U64(p.handed_over, 1);
  CHECK_EQ_U64(p.snapshot, 1);
  CHECK_EQ_U64(p.ops_sent, p.ops_total);
  CHECK(p.entries_sent > 0 && p.batches > 10 && p.bytes_sent > 0);
  CHECK(p.max_batches_in_memory <= 2);
  uint64_t last = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_shard_last_version(shard, &last));
  CHECK_EQ_U64(p.last_version, last);
  /* The callback saw every stage up to DONE, and the counters only grew. */
  pthread_mutex_lock(&seen.mu);
  for (uint32_t s = KEEL_TRANSFER_BACKFILL; s <= KEEL_TRANSFER_DRAINING; s++) CHECK(seen.stages_seen & (1u << s));
  CHECK_EQ_U64(seen.stage, KEEL_TRANSFER_DONE);
  CHECK(!seen.ops_went_back);
  pthread_mutex_unlock(&seen.mu);

  /* The source refuses writes; the receiver holds the same data. */
  uint64_t v = 0;
  CHECK_STATUS(KEEL_STATUS_MOVED, keel_shard_put(shard, (const uint8_t *)"late", 4, (const uint8_t *)"x", 1, &v, &err));
  keel_shard_t *got = open_shard(b, 7, false);
  uint8_t da[32], db[32];
  digest(shard, da);
  digest(got, db);
  CHECK(memcmp(da, db, 32) == 0);
  CHECK(w.writes > 0);
  keel_buf_t value = {0};
  uint32_t kind = 0;
  CHECK_OK(keel_shard_get(got, (const uint8_t *)w.last_key, strlen(w.last_key), &value, &kind, &v, &err));
  CHECK_EQ_U64(v, w.last_version); /* the writer's last acknowledged write */
  keel_buf_free(&value);
  /* The host confirms the hand-over: the source's shard is closed and dropped. */
  CHECK_OK(keel_transfer_confirm_hand_over(t, &err));
  CHECK_STATUS(KEEL_STATUS_CLOSED, keel_shard_put(shard, (const uint8_t *)"late", 4, (const uint8_t *)"x", 1, &v, &err));
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_transfer_confirm_hand_over(t, &err));
  keel_shard_t *gone = NULL;
  CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_engine_shard_open(a->engine, 7, false, &gone, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  digest(got, db);
  CHECK(memcmp(da, db, 32) == 0); /* the receiver's copy is untouched */
  CHECK_OK(keel_shard_close(got, &err));
  CHECK_OK(keel_shard_close(shard, &err));
  pthread_cond_destroy(&w.cv);
  pthread_mutex_destroy(&w.mu);
  seen_destroy(&seen);
}

static void forwards_each_write_then_hands_over(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 9, true);
  fill(shard, 300);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_expect(b->node, 9, SRC));
  keel_transfer_options_t o = small_batches(NULL);
  o.auto_finish = KEEL_TRANSFER_FINISH_FORWARD;
  o.sequential = KEEL_TRANSFER_SEQUENTIAL; /* the benchmark's baseline moves it too */
  keel_transfer_t *t = NULL;
  CHECK_OK(keel_transfer_start(a->node, shard, 9, DST, &o, &t, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_FORWARDING);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_finish(t, KEEL_TRANSFER_FINISH_COPY, &err));
  for (int i = 0; i < 20; i++) {
    uint64_t v = put(shard, "fwd", (uint64_t)i);
    CHECK(progress_of(t).last_version >= v); /* the receiver had it before put returned */
  }
  CHECK_OK(keel_transfer_finish(t, KEEL_TRANSFER_FINISH_HAND_OVER, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_DONE);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  keel_shard_t *got = open_shard(b, 9, false);
  uint8_t da[32], db[32];
  digest(shard, da);
  digest(got, db);
  CHECK(memcmp(da, db, 32) == 0);
  CHECK_OK(keel_shard_close(got, &err));
  CHECK_OK(keel_shard_close(shard, &err));
}

static void cancel_then_restart(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 8, true);
  fill(shard, 600);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_expect(b->node, 8, SRC));
  seen_t seen;
  seen_init(&seen);
  keel_transfer_options_t o = small_batches(&seen);
  keel_transfer_t *t = NULL;
  CHECK_OK(keel_transfer_start(a->node, shard, 8, DST, &o, &t, &err));
  seen_wait(&seen, KEEL_TRANSFER_WAITING_FINISH);
  uint64_t had = progress_of(t).last_version;
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_cancel(t));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_CANCELLED);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_finish(t, KEEL_TRANSFER_FINISH_COPY, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  /* The receiver's copy stays incoming: its host cannot open it. */
  keel_shard_t *busy = NULL;
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_engine_shard_open(b->engine, 8, false, &busy, &err));

  fill(shard, 200);
  o.method = KEEL_TRANSFER_WAL_DELTA;
  o.auto_finish = KEEL_TRANSFER_FINISH_COPY;
  o.max_retries = KEEL_TRANSFER_NO_RETRIES; /* loopback loses nothing */
  /* A version-2 caller: keel reads nothing past its struct_size. */
  o.struct_size = KEEL_TRANSFER_OPTIONS_SIZE_V2;
  o.sequential = 99;
  CHECK_OK(keel_transfer_start(a->node, shard, 8, DST, &o, &t, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_DONE);
  keel_transfer_progress_t p = progress_of(t);
  CHECK_EQ_U64(p.snapshot, 0); /* resumed from what the receiver had */
  CHECK_EQ_U64(p.receiver_had, had);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  keel_shard_t *got = open_shard(b, 8, false);
  uint8_t da[32], db[32];
  digest(shard, da);
  digest(got, db);
  CHECK(memcmp(da, db, 32) == 0);
  CHECK_OK(keel_shard_close(got, &err));
  CHECK_OK(keel_shard_close(shard, &err));
  seen_destroy(&seen);
}

/* A callback that asks its transfer for the stage, as the progress
 * callback may: the handle comes from the host once the start returned. */
typedef struct {
  seen_t seen;
  keel_transfer_t *t; /* under seen.mu */
  uint32_t last_stage;
  keel_status_t status_rc, progress_rc;
} asking_t;

static void asks_its_transfer(void *user, const keel_transfer_progress_t *p) {
  asking_t *a = user;
  pthread_mutex_lock(&a->seen.mu);
  keel_transfer_t *t = a->t;
  pthread_mutex_unlock(&a->seen.mu);
  keel_status_t status_rc = KEEL_STATUS_OK, progress_rc = KEEL_STATUS_OK;
  uint32_t stage = 99;
  if (t != NULL) {
    status_rc = keel_transfer_status(t, &stage, NULL);
    keel_transfer_progress_t q;
    memset(&q, 0, sizeof q);
    q.struct_size = sizeof q;
    progress_rc = keel_transfer_progress(t, &q);
  }
  pthread_mutex_lock(&a->seen.mu);
  a->seen.stage = p->stage;
  if (t != NULL) {
    a->last_stage = stage;
    a->status_rc = status_rc;
    a->progress_rc = progress_rc;
  }
  pthread_cond_broadcast(&a->seen.cv);
  pthread_mutex_unlock(&a->seen.mu);
}

/* Freeing a transfer that is not over cancels it, and its thread then
 * reports CANCELLED to the progress callback while keel_transfer_free()
 * waits for it. The callback may ask its transfer for the status and
 * progress then, as at any other time: the handle stays valid until the
 * free has joined that thread (it was freed before, and this read freed
 * memory). */
static void freed_while_running(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 13, true);
  fill(shard, 100);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_expect(b->node, 13, SRC));
  asking_t ask;
  memset(&ask, 0, sizeof ask);
  seen_init(&ask.seen);
  keel_transfer_options_t o = small_batches(NULL);
  o.on_progress = asks_its_transfer;
  o.user_data = &ask;
  keel_transfer_t *t = NULL;
  CHECK_OK(keel_transfer_start(a->node, shard, 13, DST, &o, &t, &err));
  pthread_mutex_lock(&ask.seen.mu);
  ask.t = t;
  pthread_mutex_unlock(&ask.seen.mu);
  /* No finish was asked for: it waits for one, never over on its own. */
  seen_wait(&ask.seen, KEEL_TRANSFER_WAITING_FINISH);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  /* The free joined the thread that ran the callback: no lock needed. */
  CHECK_EQ_U64(ask.seen.stage, KEEL_TRANSFER_CANCELLED);
  CHECK_RC(KEEL_STATUS_OK, ask.status_rc);
  CHECK_RC(KEEL_STATUS_OK, ask.progress_rc);
  CHECK_EQ_U64(ask.last_stage, KEEL_TRANSFER_CANCELLED);
  seen_destroy(&ask.seen);
  CHECK_OK(keel_shard_close(shard, &err));
}

/* A progress callback cannot wait for or free its own transfer: the
 * transfer waits for the callback, so such a wait could never succeed (nor
 * return, without a time limit), and such a free could neither join the
 * thread it runs on nor stop the callbacks still to come. Both answer BUSY
 * and change nothing; the transfer goes on and the host frees it. */
typedef struct {
  seen_t seen;
  keel_transfer_t *t; /* under seen.mu, set once the transfer waits for a finish */
  int tried;
  keel_status_t wait_rc, free_rc;
} self_waiting_t;

static void waits_for_and_frees_itself(void *user, const keel_transfer_progress_t *p) {
  self_waiting_t *w = user;
  pthread_mutex_lock(&w->seen.mu);
  keel_transfer_t *t = w->t;
  int try_now = t != NULL && !w->tried;
  pthread_mutex_unlock(&w->seen.mu);
  keel_status_t wait_rc = KEEL_STATUS_OK, free_rc = KEEL_STATUS_OK;
  if (try_now) {
    wait_rc = keel_transfer_wait(t, 0);
    free_rc = keel_transfer_free(t);
  }
  pthread_mutex_lock(&w->seen.mu);
  if (try_now) {
    w->tried = 1;
    w->wait_rc = wait_rc;
    w->free_rc = free_rc;
  }
  w->seen.stage = p->stage;
  pthread_cond_broadcast(&w->seen.cv);
  pthread_mutex_unlock(&w->seen.mu);
}

static void a_callback_cannot_wait_for_or_free_its_transfer(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 14, true);
  fill(shard, 100);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_expect(b->node, 14, SRC));
  self_waiting_t w;
  memset(&w, 0, sizeof w);
  seen_init(&w.seen);
  keel_transfer_options_t o = small_batches(NULL);
  o.on_progress = waits_for_and_frees_itself;
  o.user_data = &w;
  keel_transfer_t *t = NULL;
  CHECK_OK(keel_transfer_start(a->node, shard, 14, DST, &o, &t, &err));
  seen_wait(&w.seen, KEEL_TRANSFER_WAITING_FINISH);
  pthread_mutex_lock(&w.seen.mu);
  w.t = t;
  pthread_mutex_unlock(&w.seen.mu);
  /* The finish's DRAINING stage is the callback's next call. */
  CHECK_OK(keel_transfer_finish(t, KEEL_TRANSFER_FINISH_COPY, &err));
  pthread_mutex_lock(&w.seen.mu);
  while (!w.tried) pthread_cond_wait(&w.seen.cv, &w.seen.mu);
  pthread_mutex_unlock(&w.seen.mu);
  CHECK_RC(KEEL_STATUS_BUSY, w.wait_rc);
  CHECK_RC(KEEL_STATUS_BUSY, w.free_rc);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  CHECK_EQ_U64(stage_of(t), KEEL_TRANSFER_DONE);
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  seen_destroy(&w.seen);
  CHECK_OK(keel_shard_close(shard, &err));
  shard = open_shard(b, 14, false); /* the copy arrived */
  CHECK_OK(keel_shard_close(shard, &err));
}

static void bad_arguments_are_refused(side_t *a, side_t *b) {
  KT_ERR;
  keel_shard_t *shard = open_shard(a, 11, true);
  fill(shard, 10);
  keel_transfer_options_t o;
  keel_transfer_t *t = NULL;
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_options_init_sized(NULL, sizeof o));
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_options_init_sized(&o, 4));
  o = small_batches(NULL);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_start(NULL, shard, 11, DST, &o, &t, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_start(a->node, NULL, 11, DST, &o, &t, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start((keel_node_t *)shard, shard, 11, DST, &o, &t, &err));
  o.method = 7;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.auto_finish = 4;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.max_batch_bytes = 100;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.max_retries = 1001;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.max_backoff_ms = 0;
  o.first_backoff_ms = 6000; /* above the default max_backoff_ms of 5000 */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.ack_timeout_ms = UINT32_MAX; /* past a day: a negative count made unsigned */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.first_backoff_ms = 1;
  o.max_backoff_ms = 86400001;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.sequential = 2;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o._reserved3 = 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o._reserved2 = 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  o = small_batches(NULL);
  o.struct_size = 12;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, DST, &o, &t, &err));
  /* Peer 0 (no node) and this node itself are refused at once. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, 0, NULL, &t, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 11, SRC, NULL, &t, &err));
  /* The shard must be the node's engine's open shard of that id: a
   * confirmed hand-over drops that id from that engine. Neither another
   * id nor a shard of another engine (here the receiver's own shard 11,
   * which holds data of its own) is accepted, and nothing is dropped. */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, shard, 12, DST, NULL, &t, &err));
  keel_shard_t *other = open_shard(b, 11, true);
  fill(other, 3);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_start(a->node, other, 11, DST, NULL, &t, &err));
  CHECK_OK(keel_shard_close(other, &err));
  other = open_shard(b, 11, false); /* still there */
  CHECK_OK(keel_shard_close(other, &err));
  CHECK_OK(keel_engine_shard_drop(b->engine, 11, &err));
  CHECK(t == NULL);
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_expect(b->node, 11, 0));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_expect(NULL, 11, SRC));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_digest(shard, NULL, &err));
  uint8_t d[32];
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_shard_digest(NULL, d, &err));

  /* Not announced: the start succeeds, the transfer fails with REFUSED. */
  CHECK_OK(keel_transfer_start(a->node, shard, 11, DST, NULL, &t, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  uint32_t stage = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_status(t, &stage, &err));
  CHECK_EQ_U64(stage, KEEL_TRANSFER_FAILED);
  CHECK(err != NULL);
  CHECK_EQ_U64(keel_error_code(err), KEEL_STATUS_REFUSED);
  CHECK(strstr(keel_error_message(err), "announced") != NULL);
  keel_error_free(err);
  err = NULL;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_finish(t, 0, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_finish(t, 4, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_status(t, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_status(NULL, &stage, &err));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_wait(NULL, 0));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_cancel(NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_transfer_progress(t, NULL));
  keel_transfer_progress_t p;
  p.struct_size = 4;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_transfer_progress(t, &p));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_cancel(t)); /* over: a no-op */
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(t));
  CHECK_RC(KEEL_STATUS_OK, keel_transfer_free(NULL));
  CHECK_OK(keel_shard_close(shard, &err));
}

int main(void) {
  side_t a = open_side(SRC), b = open_side(DST);
  KT_ERR;
  char addr[64];
  size_t len = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_node_addr(b.node, addr, sizeof addr, &len));
  CHECK_OK(keel_node_connect(a.node, DST, addr, &err));
  moves_while_a_writer_writes(&a, &b);
  forwards_each_write_then_hands_over(&a, &b);
  cancel_then_restart(&a, &b);
  freed_while_running(&a, &b);
  a_callback_cannot_wait_for_or_free_its_transfer(&a, &b);
  bad_arguments_are_refused(&a, &b);
  close_side(&a);
  close_side(&b);
  printf("test_transfer: ok\n");
  return 0;
}
