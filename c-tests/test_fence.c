/*
 * The engine's fenced lease table through the C API (keel_fence_*):
 * - try_acquire grants a token, a second acquire is BUSY, validate and
 *   release accept only the holder's token, a released bucket is granted
 *   again with a larger token; buckets are independent (the empty bucket
 *   too);
 * - keel_fence_check accepts growing tokens and an equal one, and rejects
 *   a smaller one with FENCED (named "FENCED");
 * - tokens keep growing across a close and reopen of the engine, and every
 *   lease has expired after the reopen;
 * - out of descriptors, the first grant (which reads the high-water mark)
 *   fails with RESOURCE and grants nothing;
 * - misuse: NULL handle, out-pointers and bucket, zero TTL, a handle that
 *   is not a live engine.
 */
#include "keel_test.h"

#include <stdbool.h>

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  keel_engine_t *e = NULL;
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));

  uint64_t t1 = 0, t2 = 0, other = 0, empty = 0;
  bool ok = false;
  /* The first grant reads the token high-water mark: out of descriptors
   * it fails with RESOURCE, grants nothing, and works once they are free. */
  kt_fds_t fds;
  kt_fds_fill(&fds);
  keel_status_t rc = keel_fence_try_acquire(e, KT_S("jobs/7"), 60000, &t1, NULL);
  kt_fds_release(&fds);
  CHECK_RC(KEEL_STATUS_RESOURCE, rc);
  CHECK(t1 == 0);
  CHECK_OK(keel_fence_try_acquire(e, KT_S("jobs/7"), 60000, &t1, &err));
  CHECK(t1 > 0);
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_fence_try_acquire(e, KT_S("jobs/7"), 60000, &t2, &err));
  CHECK_OK(keel_fence_try_acquire(e, KT_S("jobs/8"), 60000, &other, &err));
  CHECK_OK(keel_fence_try_acquire(e, NULL, 0, 60000, &empty, &err));
  CHECK(other > t1 && empty > other);

  CHECK_OK(keel_fence_validate(e, KT_S("jobs/7"), t1, &ok, &err));
  CHECK(ok);
  CHECK_OK(keel_fence_validate(e, KT_S("jobs/7"), other, &ok, &err));
  CHECK(!ok);
  CHECK_OK(keel_fence_release(e, KT_S("jobs/7"), other, &ok, &err));
  CHECK(!ok); /* another token clears nothing */
  CHECK_OK(keel_fence_release(e, KT_S("jobs/7"), t1, &ok, &err));
  CHECK(ok);
  CHECK_OK(keel_fence_validate(e, KT_S("jobs/7"), t1, &ok, &err));
  CHECK(!ok);
  CHECK_OK(keel_fence_try_acquire(e, KT_S("jobs/7"), 60000, &t2, &err));
  CHECK(t2 > empty);

  /* The storage-side fence. */
  CHECK_OK(keel_fence_check(e, KT_S("jobs/7"), t1, &err));
  CHECK_OK(keel_fence_check(e, KT_S("jobs/7"), t2, &err));
  CHECK_OK(keel_fence_check(e, KT_S("jobs/7"), t2, &err));
  CHECK_STATUS(KEEL_STATUS_FENCED, keel_fence_check(e, KT_S("jobs/7"), t1, &err));
  CHECK_OK(keel_fence_check(e, KT_S("jobs/8"), t1, &err)); /* per bucket */
  CHECK_EQ_U64(KEEL_STATUS_FENCED, 18);
  CHECK(strcmp(keel_status_str(KEEL_STATUS_FENCED), "FENCED") == 0);

  /* Misuse. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_try_acquire(NULL, KT_S("x"), 1, &t1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_try_acquire(e, KT_S("x"), 1, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_try_acquire(e, NULL, 3, 1, &t1, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_fence_try_acquire(e, KT_S("x"), 0, &t1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_validate(e, KT_S("x"), 1, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_release(e, KT_S("x"), 1, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_fence_check(NULL, KT_S("x"), 1, &err));
  /* A handle that is not a live engine (here a shard's). */
  keel_shard_t *shard = NULL;
  CHECK_OK(keel_engine_shard_open(e, 1, true, &shard, &err));
  keel_engine_t *not_engine = (keel_engine_t *)shard;
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_fence_try_acquire(not_engine, KT_S("x"), 1, &t1, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_fence_validate(not_engine, KT_S("x"), 1, &ok, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_fence_release(not_engine, KT_S("x"), 1, &ok, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_fence_check(not_engine, KT_S("x"), 1, &err));
  CHECK_OK(keel_shard_close(shard, &err));

  /* Reopen: leases are gone, tokens keep growing past every earlier one. */
  CHECK_OK(keel_engine_close(e, &err));
  CHECK_OK(keel_engine_open(dir, NULL, &e, &err));
  uint64_t t3 = 0;
  CHECK_OK(keel_fence_validate(e, KT_S("jobs/7"), t2, &ok, &err));
  CHECK(!ok);
  CHECK_OK(keel_fence_try_acquire(e, KT_S("jobs/7"), 60000, &t3, &err));
  CHECK(t3 > t2);
  CHECK_OK(keel_engine_close(e, &err));

  kt_rmdir(dir);
  KT_PASS();
}
