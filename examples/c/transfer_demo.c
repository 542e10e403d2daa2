/*
 * transfer_demo.c — moves a shard from one node to another while a writer
 * keeps writing to it, then prints both sides' content digests.
 *
 *   transfer_demo <dir>     (engines in <dir>/source and <dir>/receiver)
 *
 * Two engines and two nodes live in this one process and talk over real
 * loopback TCP. The transfer streams the shard (a snapshot, then the WAL
 * records written since) and keeps streaming new writes until the host
 * asks it to finish; the hand-over then drains the last writes under the
 * shard's write hold, after which the source answers KEEL_STATUS_MOVED
 * and the writer stops. Exits 0 only when the digests match.
 */
#define _POSIX_C_SOURCE 200809L
#include "keel.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SOURCE = 1, RECEIVER = 2, SHARD = 42 };

static void die(const char *what, keel_status_t st, keel_error_t *err) {
  fprintf(stderr, "%s: %s: %s\n", what, keel_status_str(st), err ? keel_error_message(err) : "");
  exit(1);
}

#define TRY(call)                           \
  do {                                      \
    keel_error_t *err_ = NULL;              \
    keel_status_t st_ = (call);             \
    if (st_ != KEEL_STATUS_OK) die(#call, st_, err_); \
  } while (0)
/* For calls with an error argument: pass &err_ as the last one. */
#define ERR &err_

typedef struct {
  keel_engine_t *engine;
  keel_node_t *node;
} side_t;

static side_t open_side(const char *dir, uint64_t id) {
  side_t s;
  TRY(keel_engine_open(dir, NULL, &s.engine, ERR));
  keel_node_options_t o;
  TRY(keel_node_options_init_sized(&o, sizeof o));
  o.node_id = id;
  o.listen_addr = "127.0.0.1:0";
  TRY(keel_node_open(s.engine, &o, &s.node, ERR));
  return s;
}

/* The progress callback runs on the transfer's thread: it prints each new
 * stage and wakes main() once the receiver has caught up. */
static const char *const STAGES[] = {"connecting", "backfill", "catching up", "waiting for finish",
                                     "draining", "forwarding", "done", "failed", "cancelled"};
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static uint32_t stage = KEEL_TRANSFER_CONNECTING;
static int stage_seen = -1;

static void on_progress(void *user, const keel_transfer_progress_t *p) {
  (void)user;
  pthread_mutex_lock(&mu);
  if ((int)p->stage != stage_seen) {
    printf("  stage: %-18s ops %llu of %llu, entries %llu, %llu bytes\n", STAGES[p->stage],
           (unsigned long long)p->ops_sent, (unsigned long long)p->ops_total,
           (unsigned long long)p->entries_sent, (unsigned long long)p->bytes_sent);
    stage_seen = (int)p->stage;
  }
  stage = p->stage;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

/* Writes until the source answers MOVED; counts its acknowledged writes. */
static unsigned long long writes;
static void *writer(void *arg) {
  keel_shard_t *shard = arg;
  for (unsigned long long i = 0;; i++) {
    char key[32], value[32];
    snprintf(key, sizeof key, "user:%05llu", i % 10000);
    snprintf(value, sizeof value, "visit %llu", i);
    uint64_t v;
    keel_status_t st = keel_shard_put(shard, (const uint8_t *)key, strlen(key), (const uint8_t *)value,
                                      strlen(value), &v, NULL);
    if (st == KEEL_STATUS_MOVED) return NULL;
    if (st != KEEL_STATUS_OK) die("writer put", st, NULL);
    writes++;
  }
}

static void print_digest(const char *who, keel_shard_t *shard, uint8_t out[32]) {
  TRY(keel_shard_digest(shard, out, ERR));
  printf("%-9s digest ", who);
  for (int i = 0; i < 32; i++) printf("%02x", out[i]);
  printf("\n");
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <dir>\n", argv[0]);
    return 2;
  }
  char src_dir[4096], dst_dir[4096];
  snprintf(src_dir, sizeof src_dir, "%s/source", argv[1]);
  snprintf(dst_dir, sizeof dst_dir, "%s/receiver", argv[1]);
  side_t src = open_side(src_dir, SOURCE), dst = open_side(dst_dir, RECEIVER);
  char addr[64];
  size_t len;
  TRY(keel_node_addr(dst.node, addr, sizeof addr, &len));
  TRY(keel_node_connect(src.node, RECEIVER, addr, ERR));

  keel_shard_t *shard;
  TRY(keel_engine_shard_open(src.engine, SHARD, true, &shard, ERR));
  for (int i = 0; i < 20000; i++) {
    char key[32];
    snprintf(key, sizeof key, "user:%05d", i % 10000);
    TRY(keel_shard_put(shard, (const uint8_t *)key, strlen(key), (const uint8_t *)"first visit", 11, NULL, ERR));
  }

  /* The receiver accepts only the shards its host announced. */
  TRY(keel_transfer_expect(dst.node, SHARD, SOURCE));
  pthread_t w;
  if (pthread_create(&w, NULL, writer, shard) != 0) return 1;
  keel_transfer_options_t o;
  TRY(keel_transfer_options_init_sized(&o, sizeof o));
  o.on_progress = on_progress;
  keel_transfer_t *t;
  printf("moving shard %d from node %d to node %d while a writer writes\n", SHARD, SOURCE, RECEIVER);
  TRY(keel_transfer_start(src.node, shard, SHARD, RECEIVER, &o, &t, ERR));

  /* Caught up: hand the shard over (the writer sees MOVED and stops). A
   * writer faster than the link would keep the transfer catching up, so
   * the host finishes anyway after a while: the finish bounds the rest. */
  struct timespec give_up;
  clock_gettime(CLOCK_REALTIME, &give_up);
  give_up.tv_sec += 5;
  pthread_mutex_lock(&mu);
  while (stage != KEEL_TRANSFER_WAITING_FINISH && stage < KEEL_TRANSFER_DONE) {
    if (pthread_cond_timedwait(&cv, &mu, &give_up) == ETIMEDOUT) {
      printf("  still catching up after 5 s: finishing anyway\n");
      break;
    }
  }
  pthread_mutex_unlock(&mu);
  TRY(keel_transfer_finish(t, KEEL_TRANSFER_FINISH_HAND_OVER, ERR));
  TRY(keel_transfer_wait(t, KEEL_TRANSFER_WAIT_FOREVER));
  pthread_join(w, NULL);
  uint32_t final_stage;
  TRY(keel_transfer_status(t, &final_stage, ERR));
  if (final_stage != KEEL_TRANSFER_DONE) die("transfer", KEEL_STATUS_PROTOCOL, NULL);
  keel_transfer_progress_t p;
  memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  TRY(keel_transfer_progress(t, &p));
  printf("done: %llu entries and %llu operations in %llu batches, %llu bytes; the writer's %llu writes\n"
         "      read %llu us, send %llu us, writes held %llu us for the final drain\n",
         (unsigned long long)p.entries_sent, (unsigned long long)p.ops_sent, (unsigned long long)p.batches,
         (unsigned long long)p.bytes_sent, writes, (unsigned long long)p.read_time_us,
         (unsigned long long)p.send_time_us, (unsigned long long)p.final_hold_us);
  TRY(keel_transfer_free(t));

  keel_shard_t *moved;
  TRY(keel_engine_shard_open(dst.engine, SHARD, false, &moved, ERR));
  uint8_t a[32], b[32];
  print_digest("source", shard, a);
  print_digest("receiver", moved, b);
  int same = memcmp(a, b, 32) == 0;
  printf(same ? "digests match\n" : "DIGESTS DIFFER\n");

  TRY(keel_shard_close(moved, ERR));
  TRY(keel_shard_close(shard, ERR));
  TRY(keel_node_close(src.node, NULL));
  TRY(keel_node_close(dst.node, NULL));
  TRY(keel_engine_close(src.engine, ERR));
  TRY(keel_engine_close(dst.engine, ERR));
  return same ? 0 : 1;
}
