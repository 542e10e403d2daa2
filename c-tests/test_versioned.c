/*
 * test_versioned.c — structs versioned by struct_size survive the next
 * version (issue #10 §5), and the open checks and size limits of §6:
 *   - every options struct as an "older" prefix (keel_wal_options_t
 *     version 1) and as a "newer" layout with extra trailing fields:
 *     missing fields take their defaults, keel reads nothing past the
 *     declared size, unknown trailing fields must be zero;
 *   - every stats struct as a "newer" layout: keel writes only its own
 *     fields, sets struct_size to their size, and leaves the canary past
 *     them untouched; too small a struct_size writes nothing;
 *   - a keel_buf_t that still holds a buffer is refused, never leaked;
 *   - keel_wal_open refuses a foreign directory unless allow_foreign_files;
 *   - keel_engine_open on a WAL directory names what the directory is;
 *   - a 16 MiB value with a 4 KiB key is accepted at default options.
 */
#include "keel_test.h"

#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define CANARY 0xA5

static int all_bytes(const void *p, size_t n, uint8_t b) {
  const uint8_t *q = (const uint8_t *)p;
  for (size_t i = 0; i < n; i++)
    if (q[i] != b) return 0;
  return 1;
}

static char *subdir(const char *dir, const char *name) {
  char *p = malloc(strlen(dir) + strlen(name) + 2);
  CHECK(p != NULL);
  sprintf(p, "%s/%s", dir, name);
  return p;
}

static void touch(const char *dir, const char *name) {
  char *p = subdir(dir, name);
  FILE *f = fopen(p, "w");
  CHECK(f != NULL);
  CHECK(fputs("not keel", f) >= 0);
  CHECK(fclose(f) == 0);
  free(p);
}

/* keel_wal_options_t as the first header declared it. */
typedef struct {
  uint32_t struct_size, durability, sync_interval_ms, recovery_mode;
  uint64_t segment_size, max_record_size;
} wal_options_v1;

/* keel_wal_options_t as a future header might declare it. */
typedef struct {
  keel_wal_options_t now;
  uint32_t future_flag;
  uint64_t future_size;
} wal_options_next;

static void wal_options_versions(const char *root) {
  KT_ERR;
  keel_wal_t *w = NULL;
  CHECK_EQ_U64(sizeof(wal_options_v1), KEEL_WAL_OPTIONS_SIZE_V1);
  CHECK_EQ_U64(sizeof(keel_wal_options_t), KEEL_WAL_OPTIONS_SIZE_V2);

  /* The legacy init writes version 1 only, whatever the struct. */
  keel_wal_options_t full;
  memset(&full, CANARY, sizeof full);
  CHECK_RC(KEEL_STATUS_OK, keel_wal_options_init(&full));
  CHECK_EQ_U64(full.struct_size, KEEL_WAL_OPTIONS_SIZE_V1);
  CHECK(all_bytes((uint8_t *)&full + KEEL_WAL_OPTIONS_SIZE_V1, sizeof full - KEEL_WAL_OPTIONS_SIZE_V1, CANARY));
  /* max_record_size 0 is the documented default: min(16 MiB, segment - 104). */
  CHECK_EQ_U64(full.max_record_size, 0);

  /* Older program: a v1 struct with non-zero memory after it. keel reads
   * only 32 bytes (else it would see allow_foreign_files = 0xA5A5A5A5). */
  struct { wal_options_v1 o; uint8_t after[16]; } old;
  memset(&old, CANARY, sizeof old);
  CHECK_RC(KEEL_STATUS_OK, keel_wal_options_init_sized((keel_wal_options_t *)&old.o, sizeof old.o));
  CHECK_EQ_U64(old.o.struct_size, sizeof old.o);
  CHECK_EQ_U64(old.o.segment_size, 64u << 20);
  CHECK(all_bytes(old.after, sizeof old.after, CANARY));
  old.o.segment_size = 64 << 10;
  old.o.durability = KEEL_DURABILITY_NONE;
  char *fresh = subdir(root, "wal-v1");
  CHECK_OK(keel_wal_open(fresh, (const keel_wal_options_t *)&old.o, &w, &err));
  CHECK_OK(keel_wal_close(w, &err));
  /* ... and allow_foreign_files takes its default (0) for it. */
  char *foreign = subdir(root, "foreign");
  CHECK(mkdir(foreign, 0700) == 0);
  touch(foreign, "notes.txt");
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_open(foreign, (const keel_wal_options_t *)&old.o, &w, &err));

  /* Newer program: trailing fields this keel does not know, zeroed by
   * init_sized. Zero means "default" and is accepted. */
  wal_options_next next;
  memset(&next, CANARY, sizeof next);
  CHECK_RC(KEEL_STATUS_OK, keel_wal_options_init_sized(&next.now, sizeof next));
  CHECK_EQ_U64(next.now.struct_size, sizeof next);
  CHECK_EQ_U64(next.now.allow_foreign_files, 0);
  CHECK(next.future_flag == 0 && next.future_size == 0);
  next.now.segment_size = 64 << 10;
  next.now.durability = KEEL_DURABILITY_NONE;
  next.now.allow_foreign_files = 1; /* the version-2 field is read */
  CHECK_OK(keel_wal_open(foreign, &next.now, &w, &err));
  CHECK_OK(keel_wal_close(w, &err));
  /* A non-zero unknown field is refused: an option never silently dropped. */
  next.future_size = 7;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_open(foreign, &next.now, &w, &err));
  next.future_size = 0;
  CHECK_OK(keel_wal_open(foreign, &next.now, &w, &err));
  CHECK_OK(keel_wal_close(w, &err));

  /* Sizes no header ever had. */
  keel_wal_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_options_init_sized(&o, sizeof o));
  o.struct_size = KEEL_WAL_OPTIONS_SIZE_V1 - 8;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_open(fresh, &o, &w, &err));
  o.struct_size = KEEL_WAL_OPTIONS_SIZE_V1 + 4;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_open(fresh, &o, &w, &err));
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_options_init_sized(&o, 8));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_options_init_sized(NULL, sizeof o));
  free(fresh);
  free(foreign);
}

/* The other options structs (`cur` is their newest published size): check
 * the newer layout (zero tail accepted, non-zero refused), a size below
 * version 1, and that the legacy init writes version 1 only. */
#define NEWER_OPTIONS(type, v1, cur, init, init_sized, open_ok, open_refused)   \
  do {                                                                           \
    struct { type now; uint64_t future[3]; } next_;                              \
    CHECK_EQ_U64(sizeof(type), cur);                                             \
    memset(&next_, CANARY, sizeof next_);                                        \
    CHECK_RC(KEEL_STATUS_OK, init(&next_.now));                                  \
    CHECK_EQ_U64(next_.now.struct_size, v1);                                     \
    CHECK(all_bytes(next_.future, sizeof next_.future, CANARY));                 \
    CHECK_RC(KEEL_STATUS_OK, init_sized(&next_.now, sizeof next_));              \
    CHECK_EQ_U64(next_.now.struct_size, sizeof next_);                           \
    CHECK(all_bytes(next_.future, sizeof next_.future, 0));                      \
    type *o_ = &next_.now;                                                       \
    open_ok;                                                                     \
    next_.future[2] = 1;                                                         \
    open_refused;                                                                \
    next_.future[2] = 0;                                                         \
    next_.now.struct_size = (v1) - 8;                                            \
    open_refused;                                                                \
    CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, init_sized(&next_.now, (v1) - 8));    \
  } while (0)

/* keel_engine_options_t version 3 adds flush_threads: a version-2 struct
 * (with non-zero memory after it) gets the default pool; 0 is the
 * default, 1..256 are taken, 257 is refused. */
static void engine_flush_threads(const char *root) {
  KT_ERR;
  keel_engine_t *e = NULL;
  CHECK_EQ_U64(offsetof(keel_engine_options_t, flush_threads), KEEL_ENGINE_OPTIONS_SIZE_V2);
  struct { keel_engine_options_t o; uint8_t after[8]; } v2;
  memset(&v2, CANARY, sizeof v2);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&v2.o, KEEL_ENGINE_OPTIONS_SIZE_V2));
  CHECK_EQ_U64(v2.o.struct_size, KEEL_ENGINE_OPTIONS_SIZE_V2);
  CHECK(all_bytes((uint8_t *)&v2.o + KEEL_ENGINE_OPTIONS_SIZE_V2, sizeof v2 - KEEL_ENGINE_OPTIONS_SIZE_V2, CANARY));
  char *dir = subdir(root, "engine-v2");
  CHECK_OK(keel_engine_open(dir, &v2.o, &e, &err)); /* reads no flush_threads = 0xA5A5A5A5 */
  CHECK_OK(keel_engine_close(e, &err));

  keel_engine_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.flush_threads, 0);
  o.flush_threads = 1;
  CHECK_OK(keel_engine_open(dir, &o, &e, &err));
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  o.flush_threads = 257;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, &o, &e, &err));
  free(dir);
}

/* keel_engine_options_t version 4 adds max_unflushed_wal_bytes and
 * write_stall_timeout_ms: a version-3 struct (non-zero memory after it)
 * gets the defaults; 0 is the default; values out of range are refused. */
static void engine_write_stall_options(const char *root) {
  KT_ERR;
  keel_engine_t *e = NULL;
  CHECK_EQ_U64(offsetof(keel_engine_options_t, max_unflushed_wal_bytes), KEEL_ENGINE_OPTIONS_SIZE_V3);
  struct { keel_engine_options_t o; uint8_t after[16]; } v3;
  memset(&v3, CANARY, sizeof v3);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&v3.o, KEEL_ENGINE_OPTIONS_SIZE_V3));
  CHECK(all_bytes((uint8_t *)&v3.o + KEEL_ENGINE_OPTIONS_SIZE_V3, sizeof v3 - KEEL_ENGINE_OPTIONS_SIZE_V3, CANARY));
  char *dir = subdir(root, "engine-v3");
  CHECK_OK(keel_engine_open(dir, &v3.o, &e, &err)); /* reads neither new field */
  CHECK_OK(keel_engine_close(e, &err));

  keel_engine_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.max_unflushed_wal_bytes, 0);
  CHECK_EQ_U64(o.write_stall_timeout_ms, 0);
  o.max_unflushed_wal_bytes = 1 << 20;
  o.write_stall_timeout_ms = 1;
  CHECK_OK(keel_engine_open(dir, &o, &e, &err));
  CHECK_OK(keel_engine_close(e, &err));
  o.max_unflushed_wal_bytes = (1 << 20) - 1;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, &o, &e, &err));
  o.max_unflushed_wal_bytes = 0;
  o.write_stall_timeout_ms = 3600001;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, &o, &e, &err));
  free(dir);
}

/* keel_engine_options_t version 5 adds max_open_files: a version-4 struct
 * (with non-zero memory after it) gets the default bound (half the
 * descriptor limit), 0 is the default, 16 and up are taken, 15 is
 * refused; the stats report the bound in force. */
static void engine_max_open_files(const char *root) {
  KT_ERR;
  keel_engine_t *e = NULL;
  CHECK_EQ_U64(offsetof(keel_engine_options_t, max_open_files), KEEL_ENGINE_OPTIONS_SIZE_V4);
  struct { keel_engine_options_t o; uint8_t after[8]; } v4;
  memset(&v4, CANARY, sizeof v4);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&v4.o, KEEL_ENGINE_OPTIONS_SIZE_V4));
  CHECK_EQ_U64(v4.o.struct_size, KEEL_ENGINE_OPTIONS_SIZE_V4);
  CHECK(all_bytes((uint8_t *)&v4.o + KEEL_ENGINE_OPTIONS_SIZE_V4, sizeof v4 - KEEL_ENGINE_OPTIONS_SIZE_V4, CANARY));
  char *dir = subdir(root, "engine-v4");
  CHECK_OK(keel_engine_open(dir, &v4.o, &e, &err)); /* reads no max_open_files = 0xA5A5... */
  keel_engine_stats_t st;
  st.struct_size = sizeof st;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_stats(e, &st));
  CHECK(st.max_open_files >= 16);
  CHECK_OK(keel_engine_close(e, &err));

  keel_engine_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.max_open_files, 0);
  o.max_open_files = 16;
  CHECK_OK(keel_engine_open(dir, &o, &e, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_engine_stats(e, &st));
  CHECK_EQ_U64(st.max_open_files, 16);
  CHECK_OK(keel_engine_close(e, &err));
  o.max_open_files = 15;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, &o, &e, &err));
  free(dir);
}

static void other_options_versions(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "engine");
  keel_engine_t *e = NULL;
  NEWER_OPTIONS(keel_engine_options_t, KEEL_ENGINE_OPTIONS_SIZE_V1, KEEL_ENGINE_OPTIONS_SIZE_V6, keel_engine_options_init,
                keel_engine_options_init_sized,
                { CHECK_OK(keel_engine_open(dir, o_, &e, &err)); CHECK_OK(keel_engine_close(e, &err)); },
                CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, o_, &e, &err)));
  free(dir);

  keel_net_t *net = NULL;
  NEWER_OPTIONS(keel_net_options_t, KEEL_NET_OPTIONS_SIZE_V1, KEEL_NET_OPTIONS_SIZE_V1, keel_net_options_init,
                keel_net_options_init_sized,
                { CHECK_OK(keel_net_open(o_, &net, &err)); CHECK_OK(keel_net_close(net, &err)); },
                CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_net_open(o_, &net, &err)));

  CHECK_OK(keel_net_open(NULL, &net, &err));
  keel_publisher_t *pub = NULL;
  NEWER_OPTIONS(keel_writer_options_t, KEEL_WRITER_OPTIONS_SIZE_V1, KEEL_WRITER_OPTIONS_SIZE_V1, keel_writer_options_init,
                keel_writer_options_init_sized,
                { CHECK_OK(keel_publisher_new(net, o_, &pub, &err)); CHECK_OK(keel_publisher_close(pub, &err)); },
                CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_publisher_new(net, o_, &pub, &err)));
  CHECK_OK(keel_net_close(net, &err));
}

/* A stats struct inside a larger buffer: keel fills its own fields, sets
 * struct_size to their size and leaves the canary tail alone; a
 * struct_size below version 1 is refused and nothing is written. */
#define NEWER_STATS(type, v1, call)                                              \
  do {                                                                           \
    struct { type now; uint64_t future[4]; } s_;                                 \
    CHECK_EQ_U64(sizeof(type), v1);                                              \
    memset(&s_, CANARY, sizeof s_);                                              \
    s_.now.struct_size = sizeof s_;                                              \
    type *out_ = &s_.now;                                                        \
    CHECK_RC(KEEL_STATUS_OK, call);                                              \
    CHECK_EQ_U64(s_.now.struct_size, v1);                                        \
    CHECK(all_bytes(s_.future, sizeof s_.future, CANARY));                       \
    CHECK(!all_bytes((uint8_t *)&s_.now + 8, sizeof s_.now - 8, CANARY));        \
    memset(&s_, CANARY, sizeof s_);                                              \
    s_.now.struct_size = (v1) - 8;                                               \
    CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, call);                                \
    CHECK(all_bytes((uint8_t *)&s_ + 4, sizeof s_ - 4, CANARY));                 \
  } while (0)

/* A caller compiled against version 1 of a stats struct: keel writes its
 * version-1 fields only and leaves the rest of the caller's memory alone. */
#define OLDER_STATS(type, v1, call)                                              \
  do {                                                                           \
    type s_;                                                                     \
    memset(&s_, CANARY, sizeof s_);                                              \
    s_.struct_size = (v1);                                                       \
    type *out_ = &s_;                                                            \
    CHECK_RC(KEEL_STATUS_OK, call);                                              \
    CHECK_EQ_U64(s_.struct_size, v1);                                            \
    CHECK(all_bytes((uint8_t *)&s_ + (v1), sizeof s_ - (v1), CANARY));           \
  } while (0)

static void stats_versions(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "stats-engine");
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_shard_put(s, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1, NULL, &err));
  NEWER_STATS(keel_shard_stats_t, KEEL_SHARD_STATS_SIZE_V2, keel_shard_stats(s, out_));
  NEWER_STATS(keel_engine_stats_t, KEEL_ENGINE_STATS_SIZE_V4, keel_engine_stats(e, out_));
  OLDER_STATS(keel_shard_stats_t, KEEL_SHARD_STATS_SIZE_V1, keel_shard_stats(s, out_));
  OLDER_STATS(keel_engine_stats_t, KEEL_ENGINE_STATS_SIZE_V1, keel_engine_stats(e, out_));
  OLDER_STATS(keel_engine_stats_t, KEEL_ENGINE_STATS_SIZE_V2, keel_engine_stats(e, out_));
  OLDER_STATS(keel_engine_stats_t, KEEL_ENGINE_STATS_SIZE_V3, keel_engine_stats(e, out_));
  /* A result struct: the refused call checks its size before applying. */
  NEWER_STATS(keel_apply_result_t, KEEL_APPLY_RESULT_SIZE_V1, keel_shard_apply(s, 1, NULL, NULL, out_, &err));
  keel_error_free(err);
  err = NULL;
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  free(dir);

  keel_net_t *net = NULL;
  CHECK_OK(keel_net_open(NULL, &net, &err));
  int fds[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  keel_writer_t *w = NULL;
  CHECK_OK(keel_writer_adopt(net, fds[0], NULL, &w, &err));
  CHECK_OK(keel_writer_send(w, (const uint8_t *)"hi", 2, 0, &err));
  NEWER_STATS(keel_writer_stats_t, KEEL_WRITER_STATS_SIZE_V1, keel_writer_stats(w, out_));
  CHECK_OK(keel_writer_close(w, &err));

  int sub[2];
  CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sub) == 0);
  keel_publisher_t *pub = NULL;
  uint64_t id = 0;
  CHECK_OK(keel_publisher_new(net, NULL, &pub, &err));
  CHECK_OK(keel_publisher_subscribe(pub, sub[0], &id, &err));
  CHECK_OK(keel_publisher_publish(pub, (const uint8_t *)"m", 1, KEEL_PUBLISH_FLUSH, &err));
  NEWER_STATS(keel_publisher_stats_t, KEEL_PUBLISHER_STATS_SIZE_V1, keel_publisher_stats(pub, out_));
  NEWER_STATS(keel_writer_stats_t, KEEL_WRITER_STATS_SIZE_V1, keel_publisher_subscriber_stats(pub, id, out_, NULL));
  CHECK_OK(keel_publisher_close(pub, &err));
  CHECK_OK(keel_net_close(net, &err));
  close(fds[1]);
  close(sub[1]);
}

/* The lease structs: keel_read_options_t and keel_lease_options_t like
 * the other options (init wrappers stand for the version-1 init that new
 * structs do not have), keel_lease_stats_t like the other stats. */
static keel_status_t read_options_v1(keel_read_options_t *o) {
  return keel_read_options_init_sized(o, KEEL_READ_OPTIONS_SIZE_V1);
}
static keel_status_t lease_options_v1(keel_lease_options_t *o) {
  return keel_lease_options_init_sized(o, KEEL_LEASE_OPTIONS_SIZE_V1);
}
static keel_status_t answer_one(void *user, uint64_t *index) {
  (void)user;
  *index = 1;
  return KEEL_STATUS_OK;
}
/* keel_engine_options_t version 6 adds disable_commit_log: a version-5
 * struct (non-zero memory after it) gets the commit log, whose stats
 * (keel_engine_stats_t version 4) count a SYNC write's group; 1 turns it
 * off (nothing counted), 2 is refused. */
static void engine_commit_log(const char *root) {
  KT_ERR;
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  CHECK_EQ_U64(offsetof(keel_engine_options_t, disable_commit_log), KEEL_ENGINE_OPTIONS_SIZE_V5);
  CHECK_EQ_U64(offsetof(keel_engine_stats_t, commit_log_commits), KEEL_ENGINE_STATS_SIZE_V3);
  struct { keel_engine_options_t o; uint8_t after[8]; } v5;
  memset(&v5, CANARY, sizeof v5);
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&v5.o, KEEL_ENGINE_OPTIONS_SIZE_V5));
  CHECK(all_bytes((uint8_t *)&v5.o + KEEL_ENGINE_OPTIONS_SIZE_V5, sizeof v5 - KEEL_ENGINE_OPTIONS_SIZE_V5, CANARY));
  char *dir = subdir(root, "engine-v5");
  CHECK_OK(keel_engine_open(dir, &v5.o, &e, &err)); /* reads no disable_commit_log = 0xA5A5... */
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_shard_put(s, (const uint8_t *)"k", 1, (const uint8_t *)"v", 1, NULL, &err));
  keel_engine_stats_t st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_stats(e, &st));
  CHECK_EQ_U64(st.struct_size, KEEL_ENGINE_STATS_SIZE_V4);
  CHECK_EQ_U64(st.commit_log_commits, 1);
  CHECK_EQ_U64(st.commit_log_restored_frames, 0);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));

  keel_engine_options_t o;
  CHECK_RC(KEEL_STATUS_OK, keel_engine_options_init_sized(&o, sizeof o));
  CHECK_EQ_U64(o.disable_commit_log, 0);
  o.disable_commit_log = 1;
  CHECK_OK(keel_engine_open(dir, &o, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, false, &s, &err));
  CHECK_OK(keel_shard_put(s, (const uint8_t *)"k", 1, (const uint8_t *)"w", 1, NULL, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_engine_stats(e, &st));
  CHECK_EQ_U64(st.commit_log_commits, 0);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  o.disable_commit_log = 2;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, &o, &e, &err));
  free(dir);
}

static void lease_versions(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "lease-engine");
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL, *refused = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_engine_shard_open(e, 2, true, &refused, &err));
  keel_buf_t b = {NULL, 0};
  NEWER_OPTIONS(keel_read_options_t, KEEL_READ_OPTIONS_SIZE_V1, KEEL_READ_OPTIONS_SIZE_V1, read_options_v1,
                keel_read_options_init_sized,
                { CHECK_STATUS(KEEL_STATUS_NOT_FOUND, keel_shard_get_ex(s, o_, (const uint8_t *)"k", 1, &b, NULL, NULL, &err)); },
                CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get_ex(s, o_, (const uint8_t *)"k", 1, &b, NULL, NULL, &err)));
  NEWER_OPTIONS(keel_lease_options_t, KEEL_LEASE_OPTIONS_SIZE_V1, KEEL_LEASE_OPTIONS_SIZE_V1, lease_options_v1,
                keel_lease_options_init_sized,
                {
                  o_->self_id = 1;
                  o_->lease_ms = 10;
                  o_->election_timeout_min_ms = 1000;
                  o_->read_index = answer_one;
                  CHECK_OK(keel_shard_consensus_configure(s, o_, &err));
                },
                CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_consensus_configure(refused, o_, &err)));
  NEWER_STATS(keel_lease_stats_t, KEEL_LEASE_STATS_SIZE_V1, keel_shard_lease_stats(s, out_, NULL));
  CHECK_OK(keel_shard_close(refused, &err));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  free(dir);
}

/* A keel_buf_t that still holds a buffer is refused (reusing it would
 * leak); after keel_buf_free() (which zeroes it) the call succeeds. */
static void filled_buffers_are_refused(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "bufs-engine");
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  CHECK_OK(keel_shard_put(s, (const uint8_t *)"a", 1, (const uint8_t *)"va", 2, NULL, &err));
  CHECK_OK(keel_shard_put(s, (const uint8_t *)"b", 1, (const uint8_t *)"vb", 2, NULL, &err));

  keel_buf_t b = {NULL, 0};
  CHECK_OK(keel_shard_get(s, (const uint8_t *)"a", 1, &b, NULL, NULL, &err));
  uint8_t *held = b.ptr;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_get(s, (const uint8_t *)"b", 1, &b, NULL, NULL, &err));
  CHECK(b.ptr == held && b.len == 2 && memcmp(b.ptr, "va", 2) == 0);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_shard_salvage_report(s, &b, &err));
  CHECK(b.ptr == held && b.len == 2);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&b));
  CHECK_OK(keel_shard_get(s, (const uint8_t *)"b", 1, &b, NULL, NULL, &err));
  CHECK(b.len == 2 && memcmp(b.ptr, "vb", 2) == 0);

  /* multi_get: one filled entry refuses the whole call, touching none. */
  keel_buf_t values[2] = {{NULL, 0}, {NULL, 0}};
  uint32_t kinds[2] = {0, 0};
  size_t lens[2] = {1, 1};
  values[1] = b;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT,
               keel_shard_multi_get(s, (const uint8_t *)"ab", lens, 2, values, kinds, NULL, &err));
  CHECK(values[0].ptr == NULL && values[1].ptr == b.ptr && kinds[0] == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_bufs_free(values, 2));
  CHECK_OK(keel_shard_multi_get(s, (const uint8_t *)"ab", lens, 2, values, kinds, NULL, &err));
  CHECK(values[0].len == 2 && values[1].len == 2);
  CHECK_RC(KEEL_STATUS_OK, keel_bufs_free(values, 2));
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  free(dir);

  /* The WAL reader does not advance past a record it refused to hand out. */
  char *wdir = subdir(root, "bufs-wal");
  keel_wal_options_t o = kt_options(64 << 10, KEEL_DURABILITY_NONE);
  keel_wal_t *w = NULL;
  keel_wal_reader_t *r = NULL;
  uint64_t seq = 0;
  CHECK_OK(keel_wal_open(wdir, &o, &w, &err));
  CHECK_OK(keel_wal_append(w, (const uint8_t *)"r1", 2, NULL, &err));
  CHECK_OK(keel_wal_append(w, (const uint8_t *)"r2", 2, NULL, &err));
  CHECK_OK(keel_wal_reader_open(w, 0, KEEL_WAL_READ_APPENDED, &r, &err));
  keel_buf_t rec = {NULL, 0};
  CHECK_OK(keel_wal_reader_next_buf(r, &seq, &rec, &err));
  CHECK(seq == 1 && rec.len == 2 && memcmp(rec.ptr, "r1", 2) == 0);
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_reader_next_buf(r, &seq, &rec, &err));
  CHECK(seq == 1 && memcmp(rec.ptr, "r1", 2) == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&rec));
  CHECK_OK(keel_wal_reader_next_buf(r, &seq, &rec, &err));
  CHECK(seq == 2 && rec.len == 2 && memcmp(rec.ptr, "r2", 2) == 0);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&rec));
  keel_wal_reader_close(r);
  CHECK_OK(keel_wal_close(w, &err));
  free(wdir);
}

/* An engine on a WAL directory is told what the directory is, and
 * nothing is created in it. */
static void engine_on_a_wal_directory(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "a-wal");
  keel_wal_options_t o = kt_options(64 << 10, KEEL_DURABILITY_NONE);
  keel_wal_t *w = NULL;
  CHECK_OK(keel_wal_open(dir, &o, &w, &err));
  CHECK_OK(keel_wal_close(w, &err));
  keel_engine_t *e = NULL;
  keel_error_t *why = NULL;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_engine_open(dir, NULL, &e, &why));
  CHECK(strstr(keel_error_message(why), "is a keel WAL directory, not an engine data directory") != NULL);
  keel_error_free(why);
  char *shards = subdir(dir, "shards");
  CHECK(access(shards, F_OK) != 0);
  free(shards);
  free(dir);
}

/* The largest value with the largest key, at default options; one byte
 * more is refused with the caller's sizes in the message. */
static void largest_value(const char *root) {
  KT_ERR;
  char *dir = subdir(root, "big");
  keel_engine_t *e = NULL;
  keel_shard_t *s = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));
  CHECK_OK(keel_engine_shard_open(e, 1, true, &s, &err));
  uint8_t *key = malloc(KEEL_SHARD_MAX_KEY_SIZE);
  uint8_t *value = malloc(KEEL_SHARD_MAX_VALUE_SIZE + 1);
  CHECK(key != NULL && value != NULL);
  memset(key, 'k', KEEL_SHARD_MAX_KEY_SIZE);
  memset(value, 'v', KEEL_SHARD_MAX_VALUE_SIZE + 1);
  CHECK_OK(keel_shard_put(s, key, KEEL_SHARD_MAX_KEY_SIZE, value, KEEL_SHARD_MAX_VALUE_SIZE, NULL, &err));
  keel_buf_t b = {NULL, 0};
  CHECK_OK(keel_shard_get(s, key, KEEL_SHARD_MAX_KEY_SIZE, &b, NULL, NULL, &err));
  CHECK_EQ_U64(b.len, KEEL_SHARD_MAX_VALUE_SIZE);
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(&b));
  keel_error_t *why = NULL;
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT,
           keel_shard_put(s, key, 1, value, KEEL_SHARD_MAX_VALUE_SIZE + 1, NULL, &why));
  CHECK(strstr(keel_error_message(why), "value of 16777217 bytes exceeds the limit of 16777216") != NULL);
  keel_error_free(why);
  free(key);
  free(value);
  CHECK_OK(keel_shard_close(s, &err));
  CHECK_OK(keel_engine_close(e, &err));
  free(dir);
}

int main(void) {
  char *root = kt_tempdir();
  wal_options_versions(root);
  other_options_versions(root);
  engine_flush_threads(root);
  engine_write_stall_options(root);
  engine_max_open_files(root);
  engine_commit_log(root);
  stats_versions(root);
  lease_versions(root);
  filled_buffers_are_refused(root);
  engine_on_a_wal_directory(root);
  largest_value(root);
  kt_rmdir(root);
  printf("test_versioned: ok\n");
  return 0;
}
