/*
 * Misuse at the C boundary must give a clear status, never a crash:
 * - NULL for every pointer parameter of every function → NULL_ARGUMENT
 *   (where NULL is documented as allowed, the call must succeed instead);
 * - out-of-range enum values (durability, recovery_mode, upto) and bad
 *   struct_size / option values → INVALID_ARGUMENT;
 * - a handle of the wrong type → INVALID_ARGUMENT;
 * - _close(NULL) / _free(NULL) are no-ops;
 * - every error object carries the returned code and a non-empty message
 *   (checked by CHECK_STATUS for every failing call below);
 * - out-parameters are left untouched on failure;
 * - a second open of the same directory → BUSY.
 */
#include "keel_test.h"

/* Sentinel written into out-parameters that must stay untouched. */
#define SENTINEL 0x5EEDull

static void bad_options(const char *dir, keel_wal_options_t o, const char *what) {
  KT_ERR;
  keel_wal_t *wal = NULL;
  keel_status_t st = keel_wal_open(dir, &o, &wal, &err);
  if (st != KEEL_STATUS_INVALID_ARGUMENT) {
    fprintf(stderr, "options with %s: expected INVALID_ARGUMENT, got %s\n", what, keel_status_str(st));
    CHECK(0);
  }
  CHECK(wal == NULL);
  CHECK(err != NULL && keel_error_code(err) == st && keel_error_message(err)[0] != '\0');
  keel_error_free(err);
}

int main(void) {
  KT_ERR;
  char *dir = kt_tempdir();
  const uint8_t data[4] = {1, 2, 3, 4};
  size_t lens[2] = {2, 2};
  uint64_t u = SENTINEL;
  size_t len = SENTINEL;

  /* ---- passive objects and NULL no-ops ---- */
  CHECK_RC(KEEL_STATUS_OK, keel_buf_free(NULL));
  keel_error_free(NULL);
  keel_wal_reader_close(NULL);
  CHECK_OK(keel_wal_close(NULL, &err));
  CHECK_RC(KEEL_STATUS_OK, keel_wal_close(NULL, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_error_code(NULL));
  CHECK(keel_error_message(NULL) != NULL); /* a placeholder, never NULL */
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_options_init(NULL));

  /* ---- keel_wal_open ---- */
  keel_wal_options_t opts;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_options_init_sized(&opts, sizeof opts));
  CHECK_EQ_U64(opts.struct_size, sizeof opts);
  keel_wal_t *wal = (keel_wal_t *)&u; /* must stay untouched on failure */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_open(NULL, &opts, &wal, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_open(dir, &opts, NULL, &err));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_open(dir, &opts, NULL, NULL)); /* err optional */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_open("", &opts, &wal, &err));
  CHECK(wal == (keel_wal_t *)&u);

  /* Out-of-range enums and option values. */
  keel_wal_options_t o = opts;
  o.durability = 3;                    bad_options(dir, o, "durability 3");
  o.durability = UINT32_MAX;           bad_options(dir, o, "durability UINT32_MAX");
  o = opts; o.recovery_mode = 4;       bad_options(dir, o, "recovery_mode 4");
  o = opts; o.recovery_mode = UINT32_MAX; bad_options(dir, o, "recovery_mode UINT32_MAX");
  o = opts; o.struct_size = 0;         bad_options(dir, o, "struct_size 0");
  o = opts; o.struct_size = sizeof o - 1; bad_options(dir, o, "struct_size sizeof-1");
  o = opts; o.allow_foreign_files = 2; bad_options(dir, o, "allow_foreign_files 2");
  o = opts; o.segment_size = 4096;     bad_options(dir, o, "segment_size 4096");
  o = opts; o.segment_size = (4ull << 30) + 1; bad_options(dir, o, "segment_size 4 GiB + 1");
  o = opts; o.segment_size = 64 << 10; o.max_record_size = 64 << 10;
  bad_options(dir, o, "max_record_size == segment_size");
  o = opts; o.durability = KEEL_DURABILITY_PERIODIC; o.sync_interval_ms = 0;
  bad_options(dir, o, "sync_interval_ms 0");
  o.sync_interval_ms = 60001;          bad_options(dir, o, "sync_interval_ms 60001");

  /* opts NULL means defaults; err NULL is allowed on success too. */
  wal = NULL;
  CHECK_RC(KEEL_STATUS_OK, keel_wal_open(dir, NULL, &wal, NULL));
  CHECK(wal != NULL);

  /* A second open of a locked directory: BUSY, first handle unaffected. */
  keel_wal_t *second = NULL;
  CHECK_STATUS(KEEL_STATUS_BUSY, keel_wal_open(dir, NULL, &second, &err));
  CHECK(second == NULL);

  /* ---- appends ---- */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append(NULL, data, 4, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append(wal, NULL, 4, &u, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_OK(keel_wal_append(wal, data, 4, NULL, &err)); /* out_seq optional: seq 1 */
  CHECK_OK(keel_wal_append(wal, NULL, 0, &u, &err));   /* (NULL, 0) is valid: seq 2 */
  CHECK_EQ_U64(u, 2);
  u = SENTINEL;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append_batch(NULL, data, lens, 2, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append_batch(wal, NULL, lens, 2, &u, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append_batch(wal, data, NULL, 2, &u, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_append_batch(wal, data, lens, 0, &u, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_OK(keel_wal_append_batch(wal, data, lens, 2, NULL, &err)); /* seqs 3, 4 */
  size_t zero_lens[2] = {0, 0};
  CHECK_OK(keel_wal_append_batch(wal, NULL, zero_lens, 2, &u, &err)); /* all empty: seqs 5, 6 */
  CHECK_EQ_U64(u, 5);

  /* A record above max_record_size: INVALID_ARGUMENT, nothing consumed. */
  {
    keel_wal_t *small = NULL;
    char *dir2 = kt_tempdir();
    keel_wal_options_t so = kt_options(64 << 10, KEEL_DURABILITY_NONE);
    so.max_record_size = 1000;
    CHECK_OK(keel_wal_open(dir2, &so, &small, &err));
    static uint8_t big[1001];
    CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_append(small, big, 1001, NULL, &err));
    size_t bl[2] = {500, 501};
    CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_append_batch(small, big, bl, 2, NULL, &err));
    CHECK_OK(keel_wal_append(small, big, 1000, &u, &err));
    CHECK_EQ_U64(u, 1); /* the failed appends used no sequence number */
    CHECK_OK(keel_wal_close(small, &err));
    kt_rmdir(dir2);
  }

  /* ---- state queries, sync, ack, keep_from ---- */
  u = SENTINEL;
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_durable_seq(NULL, &u));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_durable_seq(wal, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_last_seq(NULL, &u));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_last_seq(wal, NULL));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_first_seq(NULL, &u));
  CHECK_RC(KEEL_STATUS_NULL_ARGUMENT, keel_wal_first_seq(wal, NULL));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_sync(NULL, &err));
  CHECK_OK(keel_wal_sync(wal, NULL));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_ack(NULL, 1, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_set_keep_from(NULL, 1, &err));

  /* ---- readers ---- */
  keel_wal_reader_t *r = (keel_wal_reader_t *)&u;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_open(NULL, 0, KEEL_WAL_READ_DURABLE, &r, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_reader_open(wal, 0, 2, &r, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_reader_open(wal, 0, UINT32_MAX, &r, &err));
  CHECK(r == (keel_wal_reader_t *)&u);
  r = NULL;
  CHECK_OK(keel_wal_reader_open(wal, 0, KEEL_WAL_READ_DURABLE, &r, &err));

  uint8_t buf[8];
  keel_buf_t b = {NULL, 0};
  u = SENTINEL;
  len = SENTINEL;
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next(NULL, &u, buf, sizeof buf, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next(r, NULL, buf, sizeof buf, &len, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next(r, &u, buf, sizeof buf, NULL, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_EQ_U64(len, SENTINEL);
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next_buf(NULL, &u, &b, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next_buf(r, NULL, &b, &err));
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next_buf(r, &u, NULL, &err));
  CHECK(b.ptr == NULL && b.len == 0);
  /* buf NULL with cap > 0 for a non-empty record. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next(r, &u, NULL, sizeof buf, &len, &err));
  CHECK_EQ_U64(u, SENTINEL);
  CHECK_EQ_U64(len, SENTINEL); /* out-parameters are written only on success */
  /* None of the failed calls consumed record 1. */
  CHECK_OK(keel_wal_reader_next(r, &u, buf, sizeof buf, &len, &err));
  CHECK_EQ_U64(u, 1);
  CHECK(len == 4 && memcmp(buf, data, 4) == 0);
  /* Record 2 is empty: buf NULL with cap > 0 is refused all the same,
   * without consuming it; with cap 0 it is fine. */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_reader_next(r, &u, NULL, sizeof buf, &len, &err));
  CHECK_EQ_U64(u, 1);
  CHECK_OK(keel_wal_reader_next(r, &u, NULL, 0, &len, &err));
  CHECK(u == 2 && len == 0);

  /* ---- a handle of the wrong type ---- */
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT,
               keel_wal_append((const keel_wal_t *)r, data, 4, NULL, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT,
               keel_wal_reader_next((keel_wal_reader_t *)wal, &u, buf, sizeof buf, &len, &err));
  CHECK_STATUS(KEEL_STATUS_INVALID_ARGUMENT, keel_wal_close((keel_wal_t *)r, &err));
  CHECK_RC(KEEL_STATUS_INVALID_ARGUMENT, keel_error_code((const keel_error_t *)wal)); /* not an error object */
  keel_wal_reader_close(r);

  /* ---- error objects ---- */
  CHECK_STATUS(KEEL_STATUS_NULL_ARGUMENT, keel_wal_append(NULL, data, 4, NULL, &err)); /* checked inside */
  CHECK(err == NULL); /* CHECK_STATUS freed it; success leaves *err untouched: */
  CHECK_OK(keel_wal_sync(wal, &err));
  CHECK(err == NULL);

  CHECK_OK(keel_wal_close(wal, &err));
  /* After the close the directory is free again. */
  CHECK_OK(keel_wal_open(dir, NULL, &second, &err));
  CHECK_OK(keel_wal_close(second, &err));

  kt_rmdir(dir);
  KT_PASS();
}
