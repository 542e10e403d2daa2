/*
 * pubsub_server — fan-out over TCP with a keel publisher.
 *
 *   pubsub_server PORT                                    lines from stdin
 *   pubsub_server PORT --ticks N --interval-ms M [--wait K]    a ticker
 *
 * Listens on 127.0.0.1:PORT (0 picks a free port; the first line printed
 * says which). Every TCP client that connects becomes a subscriber of one
 * keel publisher and receives each message published after it joined.
 * Without --ticks each line read from stdin is one message (the lines of
 * one read(2) are flushed together: one send per subscriber); the server
 * stops at end of input. With --ticks it publishes N timestamped lines,
 * one every M ms, starting once K subscribers (default 1) have joined.
 * On exit (end of input, last tick, Ctrl-C or SIGTERM) it prints the
 * publisher's counters, closes every subscriber after what was queued for
 * it has been sent, and returns 0.
 *
 * Try it:
 *   terminal 1:  pubsub_server 7000
 *   terminals 2, 3, ...:  nc 127.0.0.1 7000
 *   then type lines in terminal 1; every nc prints them. Stop an nc: the
 *   server reports it at the next message or two (keel's event callback).
 *   Or: pubsub_server 7000 --ticks 20 --interval-ms 500 --wait 2
 *
 * Threads: main() does everything (accept, read, publish, flush). keel's
 * event callback runs on keel's reactor thread: it only prints (under the
 * same mutex as main) and queues the subscriber's id; main() releases it
 * with keel_publisher_unsubscribe(). (keel allows that call in the
 * callback too, but the publisher handle must then outlive every callback,
 * i.e. be closed only after keel_net_close().)
 *
 * Build: cc -std=c99 pubsub_server.c $(pkg-config --cflags --libs keel) -lpthread
 */
#define _GNU_SOURCE /* ppoll, accept4 */
#include <keel.h>

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Shared between main() and the event callback (keel's reactor thread). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t dead[256];  /* ids the callback reported, not yet released */
static size_t ndead;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* printf for both threads: one whole line at a time, flushed at once. */
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&lock);
  fputs("pubsub_server: ", stdout);
  vprintf(fmt, ap);
  fputc('\n', stdout);
  fflush(stdout);
  pthread_mutex_unlock(&lock);
  va_end(ap);
}

/* keel closed subscriber `id` on its own (it left, or never read). Runs on
 * the reactor thread: print, remember the id, return quickly. Never call
 * keel_net_close() here (it returns BUSY). */
static void on_event(void *user, uint64_t id, keel_status_t status, const char *message) {
  (void)user;
  say("subscriber %" PRIu64 " left: %s (%s)", id, keel_status_str(status), message);
  pthread_mutex_lock(&lock);
  if (ndead < sizeof dead / sizeof dead[0]) dead[ndead++] = id; /* else released at exit */
  pthread_mutex_unlock(&lock);
}

static int fail(const char *what, keel_status_t st, keel_error_t *err) {
  fprintf(stderr, "pubsub_server: %s: %s: %s\n", what, keel_status_str(st),
          err ? keel_error_message(err) : "(no details)");
  keel_error_free(err);
  return 1;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static keel_publisher_t *pub;
static unsigned connected;

/* Accepts every pending connection and subscribes it. */
static void accept_all(int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) perror("pubsub_server: accept");
      return;
    }
    uint64_t id = 0;
    keel_error_t *err = NULL;
    keel_status_t st = keel_publisher_subscribe(pub, fd, &id, &err);
    if (st != KEEL_STATUS_OK) {
      fail("keel_publisher_subscribe", st, err);
      close(fd); /* on failure the fd is still ours */
      continue;
    }
    say("subscriber %" PRIu64 " joined (%u connected)", id, ++connected);
  }
}

/* Releases the subscribers the callback reported (the publisher's totals
 * keep their counters). */
static void release_dead(void) {
  uint64_t ids[sizeof dead / sizeof dead[0]];
  pthread_mutex_lock(&lock);
  size_t n = ndead;
  memcpy(ids, dead, n * sizeof ids[0]);
  ndead = 0;
  pthread_mutex_unlock(&lock);
  for (size_t i = 0; i < n; i++) {
    if (keel_publisher_unsubscribe(pub, ids[i], NULL) == KEEL_STATUS_OK) connected--;
  }
}

static keel_status_t publish(const char *data, size_t len, uint32_t flags) {
  keel_error_t *err = NULL;
  keel_status_t st = keel_publisher_publish(pub, (const uint8_t *)data, len, flags, &err);
  if (st != KEEL_STATUS_OK) fail("keel_publisher_publish", st, err);
  return st;
}

/* Publishes "tick I/N <UTC time>\n". */
static keel_status_t tick(long i, long n) {
  char line[96];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int len = snprintf(line, sizeof line, "tick %ld/%ld ", i, n);
  len += (int)strftime(line + len, sizeof line - (size_t)len, "%Y-%m-%dT%H:%M:%S", &tm);
  len += snprintf(line + len, sizeof line - (size_t)len, ".%03ldZ\n", ts.tv_nsec / 1000000);
  return publish(line, (size_t)len, KEEL_PUBLISH_FLUSH);
}

/* Reads what stdin has, publishes each complete line (newline included)
 * and flushes once. Returns 0 at end of input, -1 on error, 1 otherwise. */
static int pump_stdin(char *buf, size_t cap, size_t *have) {
  ssize_t r = read(STDIN_FILENO, buf + *have, cap - *have);
  if (r < 0) return errno == EINTR ? 1 : (perror("pubsub_server: read"), -1);
  if (r == 0 && *have > 0) buf[(*have)++] = '\n'; /* last line had none */
  *have += (size_t)r;
  size_t start = 0;
  for (size_t i = 0; i < *have; i++)
    if (buf[i] == '\n') {
      if (publish(buf + start, i + 1 - start, 0) != KEEL_STATUS_OK) return -1;
      start = i + 1;
    }
  if (start == 0 && *have == cap) { /* a line longer than buf: send it in pieces */
    if (publish(buf, cap, 0) != KEEL_STATUS_OK) return -1;
    start = cap;
  }
  memmove(buf, buf + start, *have - start);
  *have -= start;
  keel_error_t *err = NULL;
  keel_status_t st = keel_publisher_flush(pub, &err);
  if (st != KEEL_STATUS_OK) return fail("keel_publisher_flush", st, err), -1;
  return r == 0 ? 0 : 1;
}

static void usage(void) {
  fprintf(stderr, "usage: pubsub_server PORT [--ticks N --interval-ms M [--wait K]]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  long port = strtol(argv[1], NULL, 10), ticks = 0, interval = 1000, min_subs = 1;
  for (int i = 2; i < argc; i += 2) {
    if (i + 1 == argc) usage();
    long v = strtol(argv[i + 1], NULL, 10);
    if (!strcmp(argv[i], "--ticks")) ticks = v;
    else if (!strcmp(argv[i], "--interval-ms")) interval = v;
    else if (!strcmp(argv[i], "--wait")) min_subs = v;
    else usage();
  }
  if (port < 0 || port > 65535 || ticks < 0 || interval < 0 || min_subs < 0) usage();

  /* Block SIGINT/SIGTERM before keel starts its thread (which inherits
   * the mask), so they are only taken inside ppoll() below. */
  sigset_t block, unblocked;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &unblocked);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  struct sockaddr_in addr;
  socklen_t alen = sizeof addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int one = 1;
  if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 64) != 0 ||
      getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0)
    return perror("pubsub_server: listen"), 1;

  keel_net_options_t nopts;
  keel_net_options_init(&nopts);
  nopts.on_event = on_event;
  keel_writer_options_t sopts;
  keel_writer_options_init(&sopts);
  sopts.close_timeout_ms = 1000; /* at exit, give subscribers 1 s to read the rest */
  keel_net_t *net = NULL;
  keel_error_t *err = NULL;
  keel_status_t st = keel_net_open(&nopts, &net, &err);
  if (st != KEEL_STATUS_OK) return fail("keel_net_open", st, err);
  st = keel_publisher_new(net, &sopts, &pub, &err);
  if (st != KEEL_STATUS_OK) return keel_net_close(net, NULL), fail("keel_publisher_new", st, err);

  say("listening on 127.0.0.1:%u (%s)", ntohs(addr.sin_port),
      ticks ? "ticker" : "publishing lines from stdin");
  char buf[4096];
  size_t have = 0;
  long sent_ticks = 0;
  double next = 0; /* time of the next tick; 0 until enough subscribers */
  int rc = 0;
  struct pollfd pfd[2] = {{lfd, POLLIN, 0}, {ticks ? -1 : STDIN_FILENO, POLLIN, 0}};
  while (!stop && (!ticks || sent_ticks < ticks)) {
    if (ticks && next == 0 && connected >= (unsigned long)min_subs) next = now_ms(); /* start */
    struct timespec tmo = {0, 0}, *tp = NULL;
    if (next > 0) {
      double left = next - now_ms();
      if (left < 0) left = 0;
      tmo.tv_sec = (time_t)(left / 1e3);
      tmo.tv_nsec = (long)((left - tmo.tv_sec * 1e3) * 1e6);
      tp = &tmo;
    }
    if (ppoll(pfd, 2, tp, &unblocked) < 0 && errno != EINTR) {
      perror("pubsub_server: ppoll");
      rc = 1;
      break;
    }
    if (pfd[0].revents & POLLIN) accept_all(lfd);
    if (pfd[1].revents) {
      int more = pump_stdin(buf, sizeof buf, &have);
      if (more <= 0) {
        rc = more < 0;
        break;
      }
    }
    if (next > 0 && now_ms() >= next) {
      if (tick(++sent_ticks, ticks) != KEEL_STATUS_OK) {
        rc = 1;
        break;
      }
      next += (double)interval;
    }
    release_dead();
  }
  if (stop) say("interrupted");

  /* The publisher's totals count every subscriber it ever had. */
  keel_publisher_stats_t ps;
  ps.struct_size = sizeof ps;
  keel_publisher_stats(pub, &ps);
  uint64_t sends = ps.sends, items = ps.items_sent;
  say("stats: %" PRIu64 " messages published, %" PRIu64 " copies sent in %" PRIu64
      " sends (%.2f sends per message, %.2f messages per send), %" PRIu64 " subscribers connected",
      ps.published, items, sends, ps.published ? (double)sends / (double)ps.published : 0.0,
      sends ? (double)items / (double)sends : 0.0, ps.subscribers);

  /* Unsubscribe everyone (queued messages still go out), then stop the
   * reactor: keel_net_close() returns once every socket is closed. */
  if ((st = keel_publisher_close(pub, &err)) != KEEL_STATUS_OK) rc = fail("keel_publisher_close", st, err);
  if ((st = keel_net_close(net, &err)) != KEEL_STATUS_OK) rc = fail("keel_net_close", st, err);
  close(lfd);
  say("bye");
  return rc;
}
