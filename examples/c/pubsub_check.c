/*
 * pubsub_check — tests pubsub_server with real TCP subscribers.
 *
 *   pubsub_check SERVER_COMMAND...
 *
 * e.g. `pubsub_check build/examples-c/pubsub_server`, or with a wrapper:
 * `pubsub_check valgrind -q --error-exitcode=1 build/examples-c/pubsub_server`.
 * The server's arguments are appended. Two runs, each on a free port:
 *
 * 1. stdin mode: 3 subscribers plus one that leaves early. The check
 *    feeds LINES lines (of varying length) to the server's stdin in chunks,
 *    waiting for the subscribers after each; the early one reads the first
 *    chunk and closes. The server must report it through keel's event
 *    callback, the other 3 must receive every line in order and then end
 *    of stream when stdin closes; the server must exit 0 and count LINES
 *    messages, in fewer sends than copies sent (a chunk is one send).
 * 2. ticker mode (--ticks TICKS --interval-ms 2 --wait 3): 3 subscribers
 *    get TICKS "tick i/TICKS ..." lines in order, then end of stream.
 *
 * Every wait has a deadline and the server gets SIGKILL if the check
 * fails or dies, so nothing is left running. Exits 0 when all is well.
 */
#define _GNU_SOURCE /* pipe2, prctl */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LINES 120
#define CHUNK 10
#define TICKS 30
#define SUBS 3

static pid_t server = -1;
static int server_in = -1, server_out = -1;
static double deadline; /* of the current run, in ms */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("pubsub_check: FAILED: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (server > 0) kill(server, SIGKILL), waitpid(server, NULL, 0);
  exit(1);
}

/* poll() that fails the check at the deadline. */
static void wait_ready(struct pollfd *p, nfds_t n) {
  for (;;) {
    double left = deadline - now_ms();
    if (left <= 0) die("timed out");
    int r = poll(p, n, (int)left + 1);
    if (r > 0) return;
    if (r < 0 && errno != EINTR) die("poll: %s", strerror(errno));
  }
}

/* Starts SERVER_COMMAND... ARGS with pipes on its stdin and stdout. */
static void spawn(char **cmd, int ncmd, const char **args) {
  char *argv[32];
  int n = 0;
  for (int i = 0; i < ncmd && n < 24; i++) argv[n++] = cmd[i];
  for (int i = 0; args[i] && n < 31; i++) argv[n++] = (char *)args[i];
  argv[n] = NULL;
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) die("pipe: %s", strerror(errno));
  pid_t parent = getpid();
  server = fork();
  if (server < 0) die("fork: %s", strerror(errno));
  if (server == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the check */
    if (getppid() != parent) _exit(127);
    signal(SIGPIPE, SIG_DFL);
    dup2(in[0], STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    execvp(argv[0], argv);
    perror("pubsub_check: exec");
    _exit(127);
  }
  close(in[0]), close(out[1]);
  server_in = in[1], server_out = out[0];
}

/* The next line the server printed (echoed), without its newline. */
static char *server_line(void) {
  static char buf[8192], line[1024];
  static size_t have;
  for (;;) {
    char *nl = memchr(buf, '\n', have);
    if (nl) {
      size_t len = (size_t)(nl - buf);
      snprintf(line, sizeof line, "%.*s", (int)len, buf);
      memmove(buf, nl + 1, have - len - 1);
      have -= len + 1;
      printf("  server| %s\n", line);
      return line;
    }
    struct pollfd p = {server_out, POLLIN, 0};
    wait_ready(&p, 1);
    ssize_t r = read(server_out, buf + have, sizeof buf - have);
    if (r <= 0) die("the server's output ended (did it crash?)");
    have += (size_t)r;
  }
}

/* Skips server lines until one contains `what`. */
static char *expect(const char *what) {
  char *l;
  while (!strstr(l = server_line(), what)) {}
  return l;
}

/* Waits for the server to exit and checks that it returned 0. */
static void reap(void) {
  if (server_in >= 0) close(server_in), server_in = -1;
  expect("bye");
  int status;
  while (waitpid(server, &status, WNOHANG) == 0) {
    if (now_ms() > deadline) die("the server did not exit");
    usleep(1000);
  }
  server = -1;
  close(server_out);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) die("the server exited with status %#x", status);
}

struct sub {
  int fd;
  long lines;       /* complete lines received and checked */
  char part[256];   /* the line being received */
  size_t plen;
  int eof;
};

/* Connects subscriber `s` and returns the id the server gave it. */
static long connect_sub(struct sub *s, int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  memset(s, 0, sizeof *s);
  s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&a, sizeof a) != 0) die("connect: %s", strerror(errno));
  const char *joined = strstr(expect(" joined"), "subscriber "); /* one at a time */
  return joined ? atol(joined + 11) : -1;
}

/* The text of line i (1-based) of the stdin run, varying in length. */
static void stdin_line(long i, char *out, size_t cap) {
  snprintf(out, cap, "line %ld of %d %.*s\n", i, LINES, (int)(i % 41), "abcdefghijklmnopqrstuvwxyz0123456789.,;:!");
}

/* Reads from the subscribers until each has `want` lines (or, with
 * want < 0, reached end of stream), checking every line with `check`. */
static void receive(struct sub *subs, int n, long want, int (*check)(long i, const char *line)) {
  for (;;) {
    struct pollfd p[8];
    int np = 0, map[8];
    for (int i = 0; i < n; i++)
      if (!subs[i].eof && (want < 0 || subs[i].lines < want)) map[np] = i, p[np++] = (struct pollfd){subs[i].fd, POLLIN, 0};
    if (np == 0) return;
    wait_ready(p, (nfds_t)np);
    for (int k = 0; k < np; k++) {
      struct sub *s = &subs[map[k]];
      if (!p[k].revents) continue;
      char buf[4096];
      ssize_t r = read(s->fd, buf, sizeof buf);
      if (r < 0) die("subscriber %d: read: %s", map[k], strerror(errno));
      if (r == 0) {
        if (s->plen || want >= 0) die("subscriber %d: end of stream after %ld lines", map[k], s->lines);
        s->eof = 1;
      }
      for (ssize_t j = 0; j < r; j++) {
        if (s->plen + 1 >= sizeof s->part) die("subscriber %d: line too long", map[k]);
        s->part[s->plen++] = buf[j];
        if (buf[j] != '\n') continue;
        s->part[s->plen] = '\0';
        if (!check(++s->lines, s->part))
          die("subscriber %d: line %ld is \"%.*s\"", map[k], s->lines, (int)s->plen - 1, s->part);
        s->plen = 0;
      }
    }
  }
}

static int check_stdin_line(long i, const char *line) {
  char want[128];
  stdin_line(i, want, sizeof want);
  return i <= LINES && strcmp(line, want) == 0;
}

static int check_tick(long i, const char *line) {
  char want[64];
  snprintf(want, sizeof want, "tick %ld/%d ", i, TICKS);
  return i <= TICKS && strncmp(line, want, strlen(want)) == 0;
}

static int port_of(const char *listening) {
  const char *colon = strstr(listening, "127.0.0.1:");
  return colon ? atoi(colon + 10) : 0;
}

static void stdin_run(char **cmd, int ncmd) {
  const char *args[] = {"0", NULL};
  spawn(cmd, ncmd, args);
  int port = port_of(expect("listening on"));
  if (port <= 0) die("no port in the server's first line");
  struct sub subs[SUBS + 1]; /* subs[SUBS] leaves after the first chunk */
  long leaver = 0;
  for (int i = 0; i <= SUBS; i++) leaver = connect_sub(&subs[i], port);

  for (long sent = 0; sent < LINES; sent += CHUNK) {
    char chunk[CHUNK * 128];
    size_t len = 0;
    for (long i = sent + 1; i <= sent + CHUNK; i++) {
      stdin_line(i, chunk + len, sizeof chunk - len);
      len += strlen(chunk + len);
    }
    if (write(server_in, chunk, len) != (ssize_t)len) die("write to the server: %s", strerror(errno));
    receive(subs, sent == 0 ? SUBS + 1 : SUBS, sent + CHUNK, check_stdin_line);
    if (sent == 0) close(subs[SUBS].fd); /* the early leaver */
  }
  char left[64]; /* keel's event callback must have reported the leaver */
  snprintf(left, sizeof left, "subscriber %ld left", leaver);
  expect(left);
  close(server_in), server_in = -1; /* end of input: the server stops */
  char *st = expect("stats:");
  unsigned long long published = 0, copies = 0, sends = 0;
  if (sscanf(strstr(st, "stats:"), "stats: %llu messages published, %llu copies sent in %llu sends",
             &published, &copies, &sends) != 3)
    die("cannot parse the stats line");
  if (published != LINES || copies < (unsigned long long)SUBS * LINES || sends >= copies)
    die("stats: %llu published, %llu copies sent, %llu sends", published, copies, sends);
  receive(subs, SUBS, -1, check_stdin_line); /* then end of stream */
  for (int i = 0; i < SUBS; i++) {
    if (subs[i].lines != LINES) die("subscriber %d got %ld lines", i, subs[i].lines);
    close(subs[i].fd);
  }
  reap();
  printf("pubsub_check: stdin mode: %d subscribers got all %d lines in order; the early leaver "
         "was reported; %llu sends for %llu copies\n", SUBS, LINES, sends, copies);
}

static void ticker_run(char **cmd, int ncmd) {
  char ticks[16], wait[16];
  snprintf(ticks, sizeof ticks, "%d", TICKS);
  snprintf(wait, sizeof wait, "%d", SUBS);
  const char *args[] = {"0", "--ticks", ticks, "--interval-ms", "2", "--wait", wait, NULL};
  spawn(cmd, ncmd, args);
  int port = port_of(expect("listening on"));
  if (port <= 0) die("no port in the server's first line");
  struct sub subs[SUBS];
  for (int i = 0; i < SUBS; i++) connect_sub(&subs[i], port);
  receive(subs, SUBS, -1, check_tick);
  for (int i = 0; i < SUBS; i++) {
    if (subs[i].lines != TICKS) die("subscriber %d got %ld ticks", i, subs[i].lines);
    close(subs[i].fd);
  }
  reap();
  printf("pubsub_check: ticker mode: %d subscribers got all %d ticks in order\n", SUBS, TICKS);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: pubsub_check SERVER_COMMAND...\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a dead server gives EPIPE, not a silent death */
  setvbuf(stdout, NULL, _IOLBF, 0);
  deadline = now_ms() + 15000;
  stdin_run(argv + 1, argc - 1);
  deadline = now_ms() + 15000;
  ticker_run(argv + 1, argc - 1);
  printf("pubsub_check: passed\n");
  return 0;
}
