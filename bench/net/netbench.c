/*
 * netbench: one run of the batched-writer benchmark (its set-up and
 * goals are in bench/net/README.md). bench/net/run.sh runs it
 * many times and bench/net/report.py turns the runs into the report.
 *
 * One publisher process, one subscriber process (forked) holding N TCP
 * loopback connections. 40 B messages: 8 B CLOCK_MONOTONIC publish time,
 * 8 B sequence number, 1 B "measured" flag, filler.
 *
 * Pipeline depth D (closed rounds): the publisher publishes D messages
 * back to back (each stamped just before it is published), reaches one
 * drain point, then blocks until the subscriber process reports that
 * every subscriber has received all D; then the next round. Latency is
 * per message per subscriber: time of the read(2) that completed it
 * minus its stamp.
 *
 * Variants (the same process layout and pinning for all four):
 *   naive    keel, default (sendmsg) backend, keel_publisher_publish(...,
 *            KEEL_PUBLISH_FLUSH) for every message: one send per message
 *            per subscriber through the same engine.
 *   sendmsg  keel, KEEL_NET_BACKEND_SENDMSG: D x keel_publisher_publish(0),
 *            then one keel_publisher_flush().
 *   uring    the same with KEEL_NET_BACKEND_IO_URING.
 *   redis    a running redis-server: subscribers send SUBSCRIBE c over TCP
 *            and read RESP "message" pushes; the publisher writes D
 *            PUBLISH commands in one write(2) over the server's Unix
 *            socket (so that the server's TCP sends are only the ones to
 *            subscribers, which perf then counts), then reads D replies.
 *
 * usage: netbench --variant naive|sendmsg|uring|redis --subs N --depth D
 *                 --secs S [--warmup S] [--pub-cpu C] [--sub-cpu C]
 *                 [--redis-port P --redis-sock PATH [--redis-pid PID]]
 *                 [--perf-ctl FIFO --perf-ack FIFO] [--out FILE] [--tag TEXT]
 * Appends one JSON object (one line) to FILE (default stdout). Exit 0 on
 * success; on any error prints "netbench: ..." and exits 1.
 */
#define _GNU_SOURCE
#include "keel.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG_LEN 40
#define MAX_SUBS 64
#define MAX_DEPTH 100000

/* RESP framing (channel "c", 40 B payload). */
static const char RESP_PUSH[] = "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$40\r\n"; /* + 40 B + \r\n */
#define RESP_PUSH_HDR (sizeof(RESP_PUSH) - 1)                             /* 29 */
#define RESP_PUSH_LEN (RESP_PUSH_HDR + MSG_LEN + 2)                       /* 71 */
static const char RESP_PUB[] = "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$40\r\n";
#define RESP_PUB_HDR (sizeof(RESP_PUB) - 1)
#define RESP_PUB_LEN (RESP_PUB_HDR + MSG_LEN + 2)
static const char RESP_SUB_CMD[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$1\r\nc\r\n";
static const char RESP_SUB_REPLY[] = "*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n";

enum variant { V_NAIVE, V_SENDMSG, V_URING, V_REDIS };
static const char *VNAME[] = {"naive", "sendmsg", "uring", "redis"};

/* ---- latency histogram (log-linear, < 1.6 % bucket width) ---------------- */
#define HBUCKETS 3840
static inline int hidx(uint64_t v) {
  if (v < 128) return (int)v;
  int k = 63 - __builtin_clzll(v);
  int g = k - 6;
  return (g << 6) + (int)((v >> g) & 63) + 64;
}
static inline double hmid(int idx) {
  if (idx < 128) return idx;
  int g = (idx - 64) >> 6, sub = (idx - 64) & 63;
  double lo = (double)((uint64_t)(64 + sub) << g);
  return lo + (double)((uint64_t)1 << g) / 2.0;
}

/* Written by the subscriber process, read by the publisher after it exits. */
struct shared {
  uint64_t hist[HBUCKETS];
  uint64_t delivered;          /* every message received, all subscribers */
  uint64_t delivered_measured; /* of those, with the measured flag */
  uint64_t lat_sum_ns, lat_max_ns, lat_count;
  uint64_t reads, wakeups;
  uint64_t sub_cpu_us; /* subscriber process CPU time (measured + warm-up) */
  int error;
  char errmsg[512];
};

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "netbench: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static struct shared *SH;
static void child_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(SH->errmsg, sizeof SH->errmsg, fmt, ap);
  va_end(ap);
  SH->error = 1;
  fprintf(stderr, "netbench (subscribers): %s\n", SH->errmsg);
  _exit(1);
}

static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_us_self(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)ru.ru_utime.tv_sec * 1000000u + ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_sec * 1000000u +
         ru.ru_stime.tv_usec;
}

/* utime+stime of another process in microseconds (clock ticks, coarse). */
static uint64_t cpu_us_pid(int pid) {
  if (pid <= 0) return 0;
  char path[64], buf[2048];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  unsigned long ut = 0, st = 0;
  /* after ")": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime(14) stime(15) */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) return 0;
  long hz = sysconf(_SC_CLK_TCK);
  return (uint64_t)(ut + st) * 1000000u / (uint64_t)hz;
}

static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity(%d): %s", cpu, strerror(errno));
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write: %s", strerror(errno));
    }
    p += n;
    len -= (size_t)n;
  }
}

static void read_exact(int fd, void *buf, size_t len, const char *what) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("reading %s: %s", what, n == 0 ? "EOF" : strerror(errno));
    p += n;
    len -= (size_t)n;
  }
}

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* ---- subscriber process -------------------------------------------------- */
struct sub {
  int fd;
  uint64_t count;    /* messages received */
  uint64_t next_seq; /* expected sequence number */
  size_t have;       /* bytes of a partial frame in part[] */
  uint8_t part[RESP_PUSH_LEN];
};

static void sub_main(enum variant v, int nsubs, int depth, int port, int ctl, int sub_cpu) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  pin(sub_cpu);
  static struct sub subs[MAX_SUBS];
  size_t frame = v == V_REDIS ? RESP_PUSH_LEN : MSG_LEN;
  size_t off = v == V_REDIS ? RESP_PUSH_HDR : 0;
  for (int i = 0; i < nsubs; i++) {
    int fd = tcp_connect(port);
    if (fd < 0) child_fail("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    if (v == V_REDIS) {
      if (write(fd, RESP_SUB_CMD, sizeof RESP_SUB_CMD - 1) != (ssize_t)(sizeof RESP_SUB_CMD - 1))
        child_fail("SUBSCRIBE: %s", strerror(errno));
      char reply[sizeof RESP_SUB_REPLY - 1];
      size_t got = 0;
      while (got < sizeof reply) {
        ssize_t n = read(fd, reply + got, sizeof reply - got);
        if (n <= 0) child_fail("reading the SUBSCRIBE reply: %s", n == 0 ? "EOF" : strerror(errno));
        got += (size_t)n;
      }
      if (memcmp(reply, RESP_SUB_REPLY, sizeof reply) != 0) child_fail("unexpected SUBSCRIBE reply");
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    subs[i] = (struct sub){.fd = fd};
  }
  int ep = epoll_create1(0);
  if (ep < 0) child_fail("epoll_create1: %s", strerror(errno));
  for (int i = 0; i <= nsubs; i++) {
    struct epoll_event e = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, i == nsubs ? ctl : subs[i].fd, &e) != 0)
      child_fail("epoll_ctl: %s", strerror(errno));
  }
  char ready = 'R';
  if (write(ctl, &ready, 1) != 1) child_fail("ctl write: %s", strerror(errno));

  static uint8_t buf[1 << 18];
  uint64_t acked = 0; /* messages per subscriber acknowledged to the publisher */
  struct epoll_event evs[MAX_SUBS + 1];
  for (;;) {
    int ne = epoll_wait(ep, evs, MAX_SUBS + 1, -1);
    if (ne < 0) {
      if (errno == EINTR) continue;
      child_fail("epoll_wait: %s", strerror(errno));
    }
    SH->wakeups++;
    for (int k = 0; k < ne; k++) {
      uint32_t i = evs[k].data.u32;
      if ((int)i == nsubs) {
        char c;
        ssize_t n = read(ctl, &c, 1);
        if (n == 1 && c == 'S') {
          SH->sub_cpu_us = cpu_us_self();
          c = 'D';
          if (write(ctl, &c, 1) != 1) _exit(1);
          _exit(0);
        }
        child_fail("control channel: %s", n == 0 ? "EOF (publisher gone)" : "unexpected byte");
      }
      struct sub *s = &subs[i];
      ssize_t n = read(s->fd, buf, sizeof buf);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        child_fail("subscriber %u read: %s", i, strerror(errno));
      }
      if (n == 0) child_fail("subscriber %u: EOF", i);
      uint64_t t = now_ns();
      SH->reads++;
      size_t p = 0, len = (size_t)n;
      while (p < len) {
        const uint8_t *f;
        if (s->have > 0 || len - p < frame) {
          size_t take = frame - s->have;
          if (take > len - p) take = len - p;
          memcpy(s->part + s->have, buf + p, take);
          s->have += take;
          p += take;
          if (s->have < frame) break;
          f = s->part;
          s->have = 0;
        } else {
          f = buf + p;
          p += frame;
        }
        if (v == V_REDIS && (memcmp(f, RESP_PUSH, RESP_PUSH_HDR) != 0 || f[frame - 2] != '\r' || f[frame - 1] != '\n'))
          child_fail("subscriber %u: unexpected RESP frame", i);
        uint64_t ts, seq;
        memcpy(&ts, f + off, 8);
        memcpy(&seq, f + off + 8, 8);
        if (seq != s->next_seq)
          child_fail("subscriber %u: sequence %" PRIu64 " where %" PRIu64 " was expected", i, seq, s->next_seq);
        s->next_seq++;
        s->count++;
        SH->delivered++;
        if (f[off + 16]) {
          uint64_t lat = t > ts ? t - ts : 0;
          SH->hist[hidx(lat)]++;
          SH->lat_sum_ns += lat;
          SH->lat_count++;
          if (lat > SH->lat_max_ns) SH->lat_max_ns = lat;
          SH->delivered_measured++;
        }
      }
    }
    uint64_t min = UINT64_MAX;
    for (int i = 0; i < nsubs; i++)
      if (subs[i].count < min) min = subs[i].count;
    while (min >= acked + (uint64_t)depth) {
      acked += (uint64_t)depth;
      char c = 'A';
      if (write(ctl, &c, 1) != 1) child_fail("ctl write: %s", strerror(errno));
    }
  }
}

/* ---- publisher ----------------------------------------------------------- */
static atomic_int g_events;
static char g_event_msg[512];
static void on_event(void *user, uint64_t conn_id, keel_status_t status, const char *message) {
  (void)user;
  if (atomic_fetch_add(&g_events, 1) == 0)
    snprintf(g_event_msg, sizeof g_event_msg, "connection %" PRIu64 ": %s: %s", conn_id, keel_status_str(status),
             message);
}

static void kcheck(keel_status_t st, keel_error_t *err, const char *what) {
  if (st != KEEL_STATUS_OK) {
    fprintf(stderr, "netbench: %s: %s: %s\n", what, keel_status_str(st), err ? keel_error_message(err) : "");
    keel_error_free(err);
    exit(1);
  }
}

static int perf_ctl = -1, perf_ack = -1;
/* Sends "enable"/"disable" to perf stat --control and waits for its ack. */
static void perf_cmd(const char *cmd) {
  if (perf_ctl < 0) return;
  char line[32];
  int n = snprintf(line, sizeof line, "%s\n", cmd);
  write_all(perf_ctl, line, (size_t)n);
  char ack[8];
  size_t got = 0;
  while (got < sizeof ack) {
    ssize_t r = read(perf_ack, ack + got, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die("perf ack: %s", r == 0 ? "EOF" : strerror(errno));
    if (ack[got] == '\0') continue; /* perf writes "ack\n" with its NUL */
    if (ack[got++] == '\n') break;
  }
  if (got < 4 || memcmp(ack, "ack\n", 4) != 0) die("perf answered %.*s instead of ack", (int)got, ack);
}

struct ksum {
  uint64_t sends, uring_sends, immediate_sends, items_sent, bytes_sent, passes, batched_passes, flush_idle,
      flush_size, flush_iovec, flush_quota, short_sends, eagain, writable_waits, max_items_per_send,
      max_flush_wait_ns;
};

static struct ksum keel_counters(keel_publisher_t *pub, const uint64_t *ids, int n) {
  struct ksum k = {0};
  for (int i = 0; i < n; i++) {
    keel_writer_stats_t s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    keel_error_t *err = NULL;
    kcheck(keel_publisher_subscriber_stats(pub, ids[i], &s, &err), err, "keel_publisher_subscriber_stats");
    k.sends += s.sends;
    k.uring_sends += s.uring_sends;
    k.immediate_sends += s.immediate_sends;
    k.items_sent += s.items_sent;
    k.bytes_sent += s.bytes_sent;
    k.passes += s.passes;
    k.batched_passes += s.batched_passes;
    k.flush_idle += s.flush_idle;
    k.flush_size += s.flush_size;
    k.flush_iovec += s.flush_iovec;
    k.flush_quota += s.flush_quota;
    k.short_sends += s.short_sends;
    k.eagain += s.eagain;
    k.writable_waits += s.writable_waits;
    if (s.max_items_per_send > k.max_items_per_send) k.max_items_per_send = s.max_items_per_send;
    if (s.max_flush_wait_ns > k.max_flush_wait_ns) k.max_flush_wait_ns = s.max_flush_wait_ns;
  }
  return k;
}

static double pct_hist(const uint64_t *hist, double p) {
  uint64_t n = 0;
  for (int i = 0; i < HBUCKETS; i++) n += hist[i];
  if (n == 0) return -1;
  uint64_t rank = (uint64_t)(p / 100.0 * (double)n);
  if ((double)rank < p / 100.0 * (double)n) rank++;
  if (rank < 1) rank = 1;
  uint64_t c = 0;
  for (int i = 0; i < HBUCKETS; i++) {
    c += hist[i];
    if (c >= rank) return hmid(i) / 1000.0;
  }
  return -1;
}
static double pct(const struct shared *sh, double p) { return pct_hist(sh->hist, p); }

/* Durations of measured rounds (first publish to acknowledgement). */
static uint64_t round_hist[HBUCKETS];

int main(int argc, char **argv) {
  enum variant v = V_SENDMSG;
  int nsubs = 1, depth = 1, pub_cpu = -1, sub_cpu = -1, redis_port = 0, redis_pid = 0;
  double secs = 1.0, warmup = 0.2;
  const char *redis_sock = NULL, *out = NULL, *ctl_path = NULL, *ack_path = NULL, *tag = "";
  int have_variant = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define ARG(name) (strcmp(a, name) == 0 && val && (i++, 1))
    if (ARG("--variant")) {
      int found = 0;
      for (int k = 0; k < 4; k++)
        if (strcmp(val, VNAME[k]) == 0) v = (enum variant)k, found = 1;
      if (!found) die("unknown variant %s (naive, sendmsg, uring, redis)", val);
      have_variant = 1;
    } else if (ARG("--subs")) nsubs = atoi(val);
    else if (ARG("--depth")) depth = atoi(val);
    else if (ARG("--secs")) secs = atof(val);
    else if (ARG("--warmup")) warmup = atof(val);
    else if (ARG("--pub-cpu")) pub_cpu = atoi(val);
    else if (ARG("--sub-cpu")) sub_cpu = atoi(val);
    else if (ARG("--redis-port")) redis_port = atoi(val);
    else if (ARG("--redis-sock")) redis_sock = val;
    else if (ARG("--redis-pid")) redis_pid = atoi(val);
    else if (ARG("--perf-ctl")) ctl_path = val;
    else if (ARG("--perf-ack")) ack_path = val;
    else if (ARG("--out")) out = val;
    else if (ARG("--tag")) tag = val;
    else die("bad argument %s (see the top of bench/net/netbench.c)", a);
#undef ARG
  }
  if (!have_variant) die("--variant is required");
  if (nsubs < 1 || nsubs > MAX_SUBS) die("--subs must be 1..%d", MAX_SUBS);
  if (depth < 1 || depth > MAX_DEPTH) die("--depth must be 1..%d", MAX_DEPTH);
  if (v == V_REDIS && (!redis_port || !redis_sock)) die("redis needs --redis-port and --redis-sock");
  signal(SIGPIPE, SIG_IGN);
  if (ctl_path) {
    perf_ctl = open(ctl_path, O_WRONLY | O_CLOEXEC);
    perf_ack = open(ack_path ? ack_path : "", O_RDONLY | O_CLOEXEC);
    if (perf_ctl < 0 || perf_ack < 0) die("opening the perf control fifos: %s", strerror(errno));
  }

  SH = mmap(NULL, sizeof *SH, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (SH == MAP_FAILED) die("mmap: %s", strerror(errno));
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair: %s", strerror(errno));

  int lfd = -1, port = redis_port;
  if (v != V_REDIS) {
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 128) != 0 ||
        getsockname(lfd, (struct sockaddr *)&a, &al) != 0)
      die("listen on 127.0.0.1: %s", strerror(errno));
    port = ntohs(a.sin_port);
  }

  pid_t child = fork();
  if (child < 0) die("fork: %s", strerror(errno));
  if (child == 0) {
    close(sv[0]);
    if (lfd >= 0) close(lfd);
    sub_main(v, nsubs, depth, port, sv[1], sub_cpu);
    _exit(1);
  }
  close(sv[1]);
  int ctl = sv[0];
  pin(pub_cpu);
  struct timeval tmo = {.tv_sec = 10};
  setsockopt(ctl, SOL_SOCKET, SO_RCVTIMEO, &tmo, sizeof tmo);

  keel_net_t *net = NULL;
  keel_publisher_t *pub = NULL;
  uint64_t ids[MAX_SUBS];
  uint32_t backend = 0;
  int rfd = -1;
  keel_error_t *err = NULL;
  if (v != V_REDIS) {
    keel_net_options_t no;
    kcheck(keel_net_options_init(&no), NULL, "keel_net_options_init");
    no.backend = v == V_URING ? KEEL_NET_BACKEND_IO_URING : v == V_SENDMSG ? KEEL_NET_BACKEND_SENDMSG
                                                                         : KEEL_NET_BACKEND_DEFAULT;
    no.on_event = on_event;
    kcheck(keel_net_open(&no, &net, &err), err, "keel_net_open");
    kcheck(keel_net_backend(net, &backend), NULL, "keel_net_backend");
    kcheck(keel_publisher_new(net, NULL, &pub, &err), err, "keel_publisher_new");
    for (int i = 0; i < nsubs; i++) {
      int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
      if (fd < 0) die("accept: %s", strerror(errno));
      kcheck(keel_publisher_subscribe(pub, fd, &ids[i], &err), err, "keel_publisher_subscribe");
    }
    close(lfd);
  } else {
    rfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", redis_sock);
    if (rfd < 0 || connect(rfd, (struct sockaddr *)&a, sizeof a) != 0)
      die("connect to redis at %s: %s", redis_sock, strerror(errno));
  }
  char c;
  read_exact(ctl, &c, 1, "subscriber readiness");
  if (c != 'R') die("subscriber process did not start");

  uint8_t msg[MSG_LEN];
  memset(msg, 'k', sizeof msg);
  uint8_t *rbuf = NULL;
  if (v == V_REDIS) {
    rbuf = malloc((size_t)depth * RESP_PUB_LEN);
    for (int j = 0; j < depth; j++) {
      uint8_t *m = rbuf + (size_t)j * RESP_PUB_LEN;
      memcpy(m, RESP_PUB, RESP_PUB_HDR);
      memset(m + RESP_PUB_HDR, 'k', MSG_LEN);
      m[RESP_PUB_LEN - 2] = '\r';
      m[RESP_PUB_LEN - 1] = '\n';
    }
  }
  char reply[1 << 16];
  uint64_t seq = 0, rounds = 0, mrounds = 0, replies_checked = 0;
  int measured = 0;
  uint64_t t_start = now_ns(), t0 = 0, t1 = 0, cpu0 = 0, cpu1 = 0, rcpu0 = 0, rcpu1 = 0;
  uint64_t warm_end = t_start + (uint64_t)(warmup * 1e9), span = (uint64_t)(secs * 1e9);
  struct ksum k0 = {0}, k1 = {0};
  for (;;) {
    if (!measured && now_ns() >= warm_end) {
      measured = 1;
      if (pub) k0 = keel_counters(pub, ids, nsubs);
      perf_cmd("enable");
      cpu0 = cpu_us_self();
      rcpu0 = cpu_us_pid(redis_pid);
      t0 = now_ns();
    }
    uint64_t round_t0 = now_ns();
    if (v == V_REDIS) {
      for (int j = 0; j < depth; j++) {
        uint8_t *m = rbuf + (size_t)j * RESP_PUB_LEN + RESP_PUB_HDR;
        uint64_t ts = now_ns();
        memcpy(m, &ts, 8);
        memcpy(m + 8, &seq, 8);
        m[16] = (uint8_t)measured;
        seq++;
      }
      write_all(rfd, rbuf, (size_t)depth * RESP_PUB_LEN);
    } else {
      msg[16] = (uint8_t)measured;
      uint32_t flags = v == V_NAIVE ? KEEL_PUBLISH_FLUSH : 0;
      for (int j = 0; j < depth; j++) {
        uint64_t ts = now_ns();
        memcpy(msg, &ts, 8);
        memcpy(msg + 8, &seq, 8);
        seq++;
        keel_status_t st = keel_publisher_publish(pub, msg, MSG_LEN, flags, &err);
        if (st != KEEL_STATUS_OK) kcheck(st, err, "keel_publisher_publish");
      }
      if (v != V_NAIVE) kcheck(keel_publisher_flush(pub, &err), err, "keel_publisher_flush");
    }
    read_exact(ctl, &c, 1, "round acknowledgement (timeout 10 s: messages lost?)");
    if (c != 'A') die("unexpected byte from the subscriber process");
    if (v == V_REDIS) {
      /* D integer replies ":N\r\n"; the first must say N subscribers got it. */
      uint64_t want = (uint64_t)depth;
      while (want > 0) {
        ssize_t n = read(rfd, reply, sizeof reply);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("reading PUBLISH replies: %s", n == 0 ? "EOF" : strerror(errno));
        if (!replies_checked) {
          char expect[32];
          int el = snprintf(expect, sizeof expect, ":%d\r\n", nsubs);
          if (n < el || memcmp(reply, expect, (size_t)el) != 0)
            die("PUBLISH reply %.*s: expected %d receivers", (int)(n < 16 ? n : 16), reply, nsubs);
          replies_checked = 1;
        }
        for (ssize_t i = 0; i < n; i++)
          if (reply[i] == '\n') {
            if (want == 0) die("more PUBLISH replies than commands");
            want--;
          }
      }
    }
    rounds++;
    if (measured) {
      mrounds++;
      uint64_t t = now_ns();
      round_hist[hidx(t - round_t0)]++;
      if (t - t0 >= span) {
        t1 = t;
        break;
      }
    }
  }
  cpu1 = cpu_us_self();
  rcpu1 = cpu_us_pid(redis_pid);
  perf_cmd("disable");
  if (pub) k1 = keel_counters(pub, ids, nsubs);
  c = 'S';
  write_all(ctl, &c, 1);
  read_exact(ctl, &c, 1, "subscriber results");
  int status = 0;
  waitpid(child, &status, 0);
  if (SH->error) die("subscriber process: %s", SH->errmsg);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("subscriber process failed (status %d)", status);

  uint64_t published_measured = mrounds * (uint64_t)depth;
  uint64_t expect = published_measured * (uint64_t)nsubs;
  if (SH->delivered_measured != expect)
    die("delivered %" PRIu64 " measured messages, expected %" PRIu64, SH->delivered_measured, expect);
  if (SH->delivered != rounds * (uint64_t)depth * (uint64_t)nsubs) die("delivered count mismatch");

  if (pub) {
    keel_publisher_stats_t ps;
    memset(&ps, 0, sizeof ps);
    ps.struct_size = sizeof ps;
    kcheck(keel_publisher_stats(pub, &ps), NULL, "keel_publisher_stats");
    kcheck(keel_publisher_close(pub, &err), err, "keel_publisher_close");
    kcheck(keel_net_close(net, &err), err, "keel_net_close");
  }
  if (rfd >= 0) close(rfd);

  double el = (double)(t1 - t0) / 1e9;
  double delivered = (double)expect;
  FILE *f = out ? fopen(out, "a") : stdout;
  if (!f) die("open %s: %s", out, strerror(errno));
  fprintf(f,
          "{\"tag\":\"%s\",\"variant\":\"%s\",\"subs\":%d,\"depth\":%d,\"backend\":\"%s\","
          "\"secs\":%.4f,\"warmup_rounds\":%" PRIu64 ",\"rounds\":%" PRIu64 ",\"published\":%" PRIu64
          ",\"delivered\":%" PRIu64 ",\"delivered_per_s\":%.1f,\"published_per_s\":%.1f,",
          tag, VNAME[v], nsubs, depth,
          v == V_REDIS ? "redis" : backend == KEEL_NET_BACKEND_IO_URING ? "io_uring" : "sendmsg", el,
          rounds - mrounds, mrounds, published_measured, expect, delivered / el, (double)published_measured / el);
  fprintf(f, "\"round_us\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f},", pct_hist(round_hist, 50),
          pct_hist(round_hist, 90), pct_hist(round_hist, 99));
  fprintf(f,
          "\"lat_us\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,\"max\":%.3f,\"mean\":%.3f},",
          pct(SH, 50), pct(SH, 90), pct(SH, 99), pct(SH, 99.9), (double)SH->lat_max_ns / 1000.0,
          SH->lat_count ? (double)SH->lat_sum_ns / (double)SH->lat_count / 1000.0 : -1.0);
  char rcpu[32] = "null";
  if (redis_pid) snprintf(rcpu, sizeof rcpu, "%" PRIu64, rcpu1 - rcpu0);
  fprintf(f,
          "\"sub_reads\":%" PRIu64 ",\"sub_wakeups\":%" PRIu64 ",\"sub_cpu_us_total\":%" PRIu64
          ",\"pub_cpu_us\":%" PRIu64 ",\"redis_cpu_us\":%s,",
          SH->reads, SH->wakeups, SH->sub_cpu_us, cpu1 - cpu0, rcpu);
  if (pub) {
    fprintf(f,
            "\"keel\":{\"sends\":%" PRIu64 ",\"uring_sends\":%" PRIu64 ",\"immediate_sends\":%" PRIu64
            ",\"items_sent\":%" PRIu64 ",\"bytes_sent\":%" PRIu64 ",\"passes\":%" PRIu64 ",\"batched_passes\":%" PRIu64
            ",\"flush_idle\":%" PRIu64 ",\"flush_size\":%" PRIu64 ",\"flush_iovec\":%" PRIu64 ",\"flush_quota\":%" PRIu64
            ",\"short_sends\":%" PRIu64 ",\"eagain\":%" PRIu64 ",\"writable_waits\":%" PRIu64
            ",\"max_items_per_send\":%" PRIu64 ",\"max_flush_wait_us\":%.3f,\"events\":%d,\"event\":\"%s\"},",
            k1.sends - k0.sends, k1.uring_sends - k0.uring_sends, k1.immediate_sends - k0.immediate_sends,
            k1.items_sent - k0.items_sent, k1.bytes_sent - k0.bytes_sent, k1.passes - k0.passes,
            k1.batched_passes - k0.batched_passes, k1.flush_idle - k0.flush_idle, k1.flush_size - k0.flush_size,
            k1.flush_iovec - k0.flush_iovec, k1.flush_quota - k0.flush_quota, k1.short_sends - k0.short_sends,
            k1.eagain - k0.eagain, k1.writable_waits - k0.writable_waits, k1.max_items_per_send,
            (double)k1.max_flush_wait_ns / 1000.0, atomic_load(&g_events), g_event_msg);
    fprintf(f, "\"sends_per_delivered\":%.5f,", (double)(k1.sends - k0.sends) / delivered);
  } else {
    fprintf(f, "\"keel\":null,\"sends_per_delivered\":null,");
  }
  fprintf(f, "\"perf_window\":%s}\n", perf_ctl >= 0 ? "true" : "false");
  if (f != stdout) fclose(f);
  return 0;
}
