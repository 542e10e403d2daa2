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
 * - misuse: NULL handle, out-pointers and bucket, zero TTL.
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
