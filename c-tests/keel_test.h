/*
 * keel_test.h — the few helpers every C test shares.
 *
 * Each test file is one executable registered with ctest. A failed check
 * prints file:line, the expression, and (for status checks) the status
 * name plus the keel error message, then exits 1 — so a failing test never
 * goes unnoticed and the first failure is the one reported.
 */
#ifndef KEEL_TEST_H
#define KEEL_TEST_H

#define _GNU_SOURCE /* mkdtemp, nftw */
#include "keel.h"

#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* CHECK(cond): plain assertion. */
#define CHECK(cond)                                                           \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                \
    }                                                                         \
  } while (0)

/* CHECK_EQ_U64(a, b): prints both values, which a bare CHECK cannot. */
#define CHECK_EQ_U64(a, b)                                                    \
  do {                                                                        \
    uint64_t a_ = (uint64_t)(a), b_ = (uint64_t)(b);                          \
    if (a_ != b_) {                                                           \
      fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%" PRIu64 " != %" PRIu64 ")\n", \
              __FILE__, __LINE__, #a, #b, a_, b_);                            \
      exit(1);                                                                \
    }                                                                         \
  } while (0)

/*
 * CHECK_STATUS(expected, call): `call` must take `&err` as its trailing
 * argument (a keel_error_t *err declared by KT_ERR). On mismatch prints the
 * expected and actual status names and the keel message.
 */
#define KT_ERR keel_error_t *err = NULL
#define CHECK_STATUS(expected, call)                                          \
  do {                                                                        \
    keel_status_t got_ = (call);                                              \
    kt_check_status(__FILE__, __LINE__, #call, (expected), got_, &err);       \
  } while (0)
#define CHECK_OK(call) CHECK_STATUS(KEEL_STATUS_OK, call)

/* CHECK_RC(expected, call): for calls without an error argument. */
#define CHECK_RC(expected, call)                                              \
  kt_check_status(__FILE__, __LINE__, #call, (expected), (call), NULL)

static inline void kt_check_status(const char *file, int line, const char *expr,
                                   keel_status_t expected, keel_status_t got,
                                   keel_error_t **err) {
  if (got != expected) {
    fprintf(stderr, "%s:%d: %s\n  expected %s, got %s: %s\n", file, line, expr,
            keel_status_str(expected), keel_status_str(got),
            err && *err ? keel_error_message(*err) : "(no error object)");
    exit(1);
  }
  if (err && *err) {
    /* Every failure must come with a matching code and a real message. */
    if (keel_error_code(*err) != got || keel_error_message(*err)[0] == '\0') {
      fprintf(stderr, "%s:%d: %s\n  error object has code %s / empty message\n",
              file, line, expr, keel_status_str(keel_error_code(*err)));
      exit(1);
    }
    keel_error_free(*err);
    *err = NULL;
  } else if (err && got != KEEL_STATUS_OK) {
    fprintf(stderr, "%s:%d: %s\n  returned %s but no error object\n", file, line,
            expr, keel_status_str(got));
    exit(1);
  }
}

/*
 * Under valgrind (`make valgrind` sets KEEL_TEST_VALGRIND=1) the io_uring
 * backend cannot run: valgrind treats io_uring_enter as a call that does
 * not block, so the reactor thread waits in the kernel while holding
 * valgrind's one-thread-at-a-time lock and no other thread runs again.
 * Tests of that backend run natively only; this says when to skip them.
 */
static inline int kt_skip_io_uring(void) {
  const char *v = getenv("KEEL_TEST_VALGRIND");
  return v && *v && strcmp(v, "0") != 0;
}

/*
 * Fills this process's descriptor table, its soft limit lowered to
 * KT_FD_LIMIT first (which bounds the loop): every call that needs a new
 * descriptor then fails with EMFILE, until kt_fds_release() closes them
 * and restores the limit.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
enum { KT_FD_LIMIT = 256 };
typedef struct {
  struct rlimit saved;
  int fds[KT_FD_LIMIT];
  int n;
} kt_fds_t;

static inline void kt_fds_fill(kt_fds_t *f) {
  CHECK(getrlimit(RLIMIT_NOFILE, &f->saved) == 0);
  struct rlimit low = f->saved;
  if (low.rlim_cur > KT_FD_LIMIT) low.rlim_cur = KT_FD_LIMIT;
  CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
  f->n = 0;
  int fd;
  while (f->n < KT_FD_LIMIT && (fd = open("/dev/null", O_RDONLY)) >= 0) f->fds[f->n++] = fd;
  CHECK(f->n < KT_FD_LIMIT && errno == EMFILE);
}

static inline void kt_fds_release(kt_fds_t *f) {
  while (f->n > 0) close(f->fds[--f->n]);
  CHECK(setrlimit(RLIMIT_NOFILE, &f->saved) == 0);
}

/* A fresh directory under $TMPDIR (or /tmp); kt_rmdir removes it. */
static inline char *kt_tempdir(void) {
  const char *base = getenv("TMPDIR");
  char tmpl[4096];
  snprintf(tmpl, sizeof tmpl, "%s/keel-ctest-XXXXXX", base && *base ? base : "/tmp");
  char *dir = mkdtemp(tmpl);
  CHECK(dir != NULL);
  char *copy = strdup(dir);
  CHECK(copy != NULL);
  return copy;
}

static inline int kt_rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(path);
}

static inline void kt_rmdir(char *dir) {
  CHECK(nftw(dir, kt_rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0);
  free(dir);
}

/* Number of segment files (*.wal) in dir, to observe truncation. */
#include <dirent.h>
static inline int kt_count_segments(const char *dir) {
  DIR *d = opendir(dir);
  CHECK(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len > 4 && strcmp(e->d_name + len - 4, ".wal") == 0) n++;
  }
  closedir(d);
  return n;
}

/* Options with a given segment size and durability. */
static inline keel_wal_options_t kt_options(uint64_t segment_size, uint32_t durability) {
  keel_wal_options_t o;
  CHECK(keel_wal_options_init(&o) == KEEL_STATUS_OK);
  if (segment_size) o.segment_size = segment_size;
  o.durability = durability;
  return o;
}

/* Deterministic payload for record `i` of length `len`: byte-exact checks
 * need content that differs per record and per offset. */
static inline void kt_fill(uint8_t *p, size_t len, uint64_t i) {
  for (size_t k = 0; k < len; k++) p[k] = (uint8_t)(i * 131u + k * 7u + (k >> 8));
}

/* Opens a WAL in `dir` (64 KiB segments, NONE mode) holding records
 * 1..n of `len` bytes filled by kt_fill, synced. */
static inline keel_wal_t *kt_open_filled(const char *dir, uint64_t n, size_t len) {
  KT_ERR;
  keel_wal_t *wal = NULL;
  keel_wal_options_t opts = kt_options(64 << 10, KEEL_DURABILITY_NONE);
  CHECK_OK(keel_wal_open(dir, &opts, &wal, &err));
  uint8_t *rec = malloc(len ? len : 1);
  CHECK(rec != NULL);
  for (uint64_t s = 1; s <= n; s++) {
    kt_fill(rec, len, s);
    CHECK_OK(keel_wal_append(wal, rec, len, NULL, &err));
  }
  free(rec);
  CHECK_OK(keel_wal_sync(wal, &err));
  return wal;
}

/* ---- shards ------------------------------------------------------------ */

/* A key, value or item given as a C string: expands to (pointer, length). */
#define KT_S(s) (const uint8_t *)(s), strlen(s)

/* Engine options with the given durability, the background flush off
 * (flushes then happen only on keel_shard_flush, sealing and close, so a
 * test decides when data is persisted) and 1 MiB WAL segments (each shard
 * preallocates one). */
static inline keel_engine_options_t kt_engine_options(uint32_t durability) {
  keel_engine_options_t o;
  CHECK(keel_engine_options_init_sized(&o, sizeof o) == KEEL_STATUS_OK);
  o.durability = durability;
  o.flush_interval_ms = 0;
  o.wal_segment_size = 1 << 20;
  return o;
}

/* Appends one item to an expected posting-list encoding
 * ([u32 little-endian length][bytes]); returns the new length. */
static inline size_t kt_posting_add(uint8_t *list, size_t off, const void *item, size_t len) {
  for (int i = 0; i < 4; i++) list[off + (size_t)i] = (uint8_t)(len >> (8 * i));
  if (len) memcpy(list + off + 4, item, len);
  return off + 4 + len;
}

/* KT_EXPECT_GET(shard, key, key_len, kind, want, want_len): keel_shard_get
 * must return OK with exactly that kind and those bytes (an empty result
 * as {NULL, 0}); evaluates to the key's version. The buffer is freed.
 * Variadic so that KT_S("key") may stand for key, key_len. */
static inline uint64_t kt_expect_get(const char *file, int line, const keel_shard_t *shard,
                                     const uint8_t *key, size_t key_len, uint32_t kind,
                                     const void *want, size_t want_len) {
  keel_error_t *err = NULL;
  keel_buf_t b = {NULL, 0};
  uint32_t got_kind = 0xBAD;
  uint64_t version = 0;
  kt_check_status(file, line, "keel_shard_get", KEEL_STATUS_OK,
                  keel_shard_get(shard, key, key_len, &b, &got_kind, &version, &err), &err);
  if (got_kind != kind || b.len != want_len || (want_len && memcmp(b.ptr, want, want_len) != 0) ||
      (b.len == 0 && b.ptr != NULL) || version == 0) {
    fprintf(stderr, "%s:%d: get '%.*s': expected kind %u with %zu bytes, got kind %u with %zu bytes%s (version %" PRIu64 ")\n",
            file, line, (int)key_len, (const char *)key, kind, want_len, got_kind, b.len,
            b.len == want_len ? " that differ" : "", version);
    exit(1);
  }
  CHECK(keel_buf_free(&b) == KEEL_STATUS_OK);
  return version;
}
#define KT_EXPECT_GET(...) kt_expect_get(__FILE__, __LINE__, __VA_ARGS__)
/* The common case of a value given as a C string. */
#define KT_EXPECT_VALUE(shard, key, value) \
  KT_EXPECT_GET((shard), KT_S(key), KEEL_KIND_VALUE, (value), strlen(value))

/* KT_EXPECT_ABSENT(shard, key, key_len): NOT_FOUND, and the out-parameters
 * stay untouched (the buffer must come in empty: a filled one is refused). */
static inline void kt_expect_absent(const char *file, int line, const keel_shard_t *shard,
                                    const uint8_t *key, size_t key_len) {
  keel_error_t *err = NULL;
  keel_buf_t b = {NULL, 12345};
  uint32_t kind = 0xBAD;
  uint64_t version = 0xBAD;
  kt_check_status(file, line, "keel_shard_get", KEEL_STATUS_NOT_FOUND,
                  keel_shard_get(shard, key, key_len, &b, &kind, &version, &err), &err);
  if (b.ptr != NULL || b.len != 12345 || kind != 0xBAD || version != 0xBAD) {
    fprintf(stderr, "%s:%d: NOT_FOUND get '%.*s' wrote its out-parameters\n", file, line,
            (int)key_len, (const char *)key);
    exit(1);
  }
}
#define KT_EXPECT_ABSENT(...) kt_expect_absent(__FILE__, __LINE__, __VA_ARGS__)

/* The version of the last applied operation of a shard. */
static inline uint64_t kt_last_version(const keel_shard_t *shard) {
  uint64_t v = 0;
  CHECK(keel_shard_last_version(shard, &v) == KEEL_STATUS_OK);
  return v;
}

static inline uint64_t kt_persisted_version(const keel_shard_t *shard) {
  uint64_t v = 0;
  CHECK(keel_shard_persisted_version(shard, &v) == KEEL_STATUS_OK);
  return v;
}

#define KT_PASS() do { printf("%s: ok\n", __FILE__); return 0; } while (0)

#endif /* KEEL_TEST_H */
