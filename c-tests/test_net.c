/*
 * keel_net_t ownership and lifetime through the C API:
 * - keel closes the fds it adopts, so one fd adopted by two nets would be
 *   closed twice: the second net refuses it (INVALID_ARGUMENT) and leaves
 *   it alone, for a writer and for a publisher's subscriber;
 * - keel_net_close waits for queued bytes only, never for an idle peer's
 *   EOF (an open writer, and one the host closed earlier, whose peers stay
 *   connected);
 * - keel_net_fallback says why io_uring was asked for and not used: a
 *   child process whose seccomp filter fails io_uring_setup with ENOSYS
 *   (what container profiles do) gets KEEL_NET_FALLBACK_SETUP naming the
 *   error; a net that runs what it asked for gets KEEL_NET_FALLBACK_NONE.
 */
#include "keel_test.h"

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

static keel_net_t *open_net(uint32_t backend) {
  KT_ERR;
  keel_net_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_net_options_init(&o));
  o.backend = backend;
  keel_net_t *net = NULL;
  CHECK_OK(keel_net_open(&o, &net, &err));
  return net;
}

static void read_exact(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    CHECK(r > 0);
    got += (size_t)r;
  }
}

static void fd_in_two_nets(uint32_t backend) {
  KT_ERR;
  keel_net_t *a = open_net(backend), *b = open_net(backend);
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  keel_writer_t *w = NULL, *w2 = NULL;
  CHECK_OK(keel_writer_adopt(a, sv[0], NULL, &w, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_writer_adopt(b, sv[0], NULL, &w2, &err));
  CHECK(w2 == NULL);
  keel_publisher_t *pub = NULL;
  CHECK_OK(keel_publisher_new(b, NULL, &pub, &err));
  uint64_t id = 0;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_publisher_subscribe(pub, sv[0], &id, &err));
  /* The refusals left the fd to its owner: the first net still sends. */
  CHECK_OK(keel_writer_send(w, (const uint8_t *)"mine", 4, 0, &err));
  char buf[8];
  read_exact(sv[1], buf, 4);
  CHECK(memcmp(buf, "mine", 4) == 0);
  CHECK_OK(keel_writer_close(w, &err));
  CHECK_OK(keel_net_close(a, &err));
  CHECK(read(sv[1], buf, sizeof buf) == 0); /* closed once, by its owner */
  close(sv[1]);
  CHECK_OK(keel_publisher_close(pub, &err));
  CHECK_OK(keel_net_close(b, &err));
}

/* The watchdog of idle_peers(): hangs the peers up if keel_net_close has
 * not returned after 30 s (what used to end the wait) and says so. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int closed;
  int intervened;
  int peers[2];
} watchdog_t;

static void *watch(void *arg) {
  watchdog_t *wd = (watchdog_t *)arg;
  struct timespec until;
  CHECK(clock_gettime(CLOCK_REALTIME, &until) == 0);
  until.tv_sec += 30;
  pthread_mutex_lock(&wd->mu);
  while (!wd->closed) {
    if (pthread_cond_timedwait(&wd->cv, &wd->mu, &until) == ETIMEDOUT) break;
  }
  if (!wd->closed) {
    wd->intervened = 1;
    shutdown(wd->peers[0], SHUT_RDWR);
    shutdown(wd->peers[1], SHUT_RDWR);
  }
  pthread_mutex_unlock(&wd->mu);
  return NULL;
}

static void idle_peers(uint32_t backend) {
  KT_ERR;
  keel_net_t *net = open_net(backend);
  keel_writer_options_t wo;
  CHECK_RC(KEEL_STATUS_OK, keel_writer_options_init(&wo));
  wo.close_timeout_ms = 600000; /* the largest allowed */
  int a[2], b[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
  keel_writer_t *open = NULL, *closed = NULL;
  CHECK_OK(keel_writer_adopt(net, a[0], &wo, &open, &err));
  CHECK_OK(keel_writer_adopt(net, b[0], &wo, &closed, &err));
  CHECK_OK(keel_writer_send(open, (const uint8_t *)"one", 3, 0, &err));
  CHECK_OK(keel_writer_send(closed, (const uint8_t *)"two", 3, 0, &err));
  CHECK_OK(keel_writer_close(closed, &err)); /* flushed, then waiting for EOF */

  watchdog_t wd = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {a[1], b[1]}};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, watch, &wd) == 0);
  CHECK_OK(keel_net_close(net, &err));
  pthread_mutex_lock(&wd.mu);
  wd.closed = 1;
  pthread_cond_signal(&wd.cv);
  pthread_mutex_unlock(&wd.mu);
  CHECK(pthread_join(t, NULL) == 0);
  CHECK(!wd.intervened); /* keel_net_close waited for the idle peers */

  char buf[8];
  read_exact(a[1], buf, 3);
  CHECK(memcmp(buf, "one", 3) == 0);
  CHECK(read(a[1], buf, sizeof buf) == 0);
  read_exact(b[1], buf, 3);
  CHECK(memcmp(buf, "two", 3) == 0);
  CHECK(read(b[1], buf, sizeof buf) == 0);
  CHECK_OK(keel_writer_close(open, &err));
  close(a[1]);
  close(b[1]);
}

/* keel_net_fallback's answer for `net`: the code, the message in `msg`. */
static uint32_t fallback(const keel_net_t *net, char *msg, size_t cap) {
  KT_ERR;
  uint32_t code = 99;
  size_t len = 0;
  CHECK_OK(keel_net_fallback(net, &code, msg, cap, &len, &err));
  CHECK_EQ_U64(len, strlen(msg) + 1);
  return code;
}

static void fallback_none(void) {
  KT_ERR;
  char msg[256];
  keel_net_t *net = open_net(KEEL_NET_BACKEND_SENDMSG);
  CHECK_EQ_U64(fallback(net, msg, sizeof msg), KEEL_NET_FALLBACK_NONE);
  CHECK(msg[0] == '\0');
  /* Misuse: NULL out-parameters, a buffer too small (only the size is
   * written), a handle of another type. */
  uint32_t code = 99;
  size_t len = 0;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_net_fallback(net, NULL, msg, sizeof msg, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_net_fallback(net, &code, msg, sizeof msg, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL, keel_net_fallback(net, &code, NULL, 0, &len, &err));
  CHECK_EQ_U64(len, 1);
  CHECK_EQ_U64(code, 99);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_net_fallback(NULL, &code, msg, sizeof msg, &len, &err));
  int sv[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  keel_writer_t *w = NULL;
  CHECK_OK(keel_writer_adopt(net, sv[0], NULL, &w, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT,
               keel_net_fallback((const keel_net_t *)w, &code, msg, sizeof msg, &len, &err));
  CHECK_OK(keel_writer_close(w, &err));
  CHECK_OK(keel_net_close(net, &err));
  close(sv[1]);

  if (kt_skip_io_uring()) return;
  /* Asked for io_uring on this machine: either it runs (NONE) or the
   * code and message say why not. */
  net = open_net(KEEL_NET_BACKEND_IO_URING);
  uint32_t running = 0;
  CHECK_RC(KEEL_STATUS_OK, keel_net_backend(net, &running));
  code = fallback(net, msg, sizeof msg);
  if (running == KEEL_NET_BACKEND_IO_URING) {
    CHECK_EQ_U64(code, KEEL_NET_FALLBACK_NONE);
  } else {
    CHECK(code != KEEL_NET_FALLBACK_NONE && msg[0] != '\0');
    printf("io_uring unavailable here (code %u): %s\n", code, msg);
  }
  CHECK_OK(keel_net_close(net, &err));
}

/* In a child: a seccomp filter makes io_uring_setup fail with ENOSYS, as
 * a container's profile does; the net falls back and says why. */
static void fallback_under_seccomp(void) {
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {(unsigned short)(sizeof filter / sizeof filter[0]), filter};
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
    CHECK(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0);
    KT_ERR;
    keel_net_t *net = open_net(KEEL_NET_BACKEND_IO_URING);
    uint32_t running = 0;
    CHECK_RC(KEEL_STATUS_OK, keel_net_backend(net, &running));
    CHECK_EQ_U64(running, KEEL_NET_BACKEND_SENDMSG);
    char msg[256];
    uint32_t code = fallback(net, msg, sizeof msg);
    if (code != KEEL_NET_FALLBACK_SETUP || strstr(msg, "io_uring_setup") == NULL) {
      fprintf(stderr, "fallback under seccomp: code %u, message '%s'\n", code, msg);
      _exit(1);
    }
    /* A buffer one byte short: BUFFER_TOO_SMALL with the size needed. */
    size_t len = 0;
    char small[8];
    CHECK(strlen(msg) + 1 > sizeof small);
    CHECK_STATUS(KEEL_STATUS_BUFFER_TOO_SMALL, keel_net_fallback(net, &code, small, sizeof small, &len, &err));
    CHECK_EQ_U64(len, strlen(msg) + 1);
    CHECK_OK(keel_net_close(net, &err));
    _exit(0);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void) {
  /* Before any keel thread exists: the child forks from one thread. */
  if (!kt_skip_io_uring()) fallback_under_seccomp();
  fallback_none();
  fd_in_two_nets(KEEL_NET_BACKEND_SENDMSG);
  idle_peers(KEEL_NET_BACKEND_SENDMSG);
  if (!kt_skip_io_uring()) {
    fd_in_two_nets(KEEL_NET_BACKEND_IO_URING);
    idle_peers(KEEL_NET_BACKEND_IO_URING);
  }
  KT_PASS();
}
