/*
 * The smallest keel user: built by `make test-install` against an
 * installed keel (pkg-config shared, pkg-config --static, and CMake
 * find_package with keel::keel and keel::keel_static). Appends a record,
 * reads it back, and checks header and library agree.
 */
#include <keel.h>

#include <stdio.h>
#include <string.h>

/* consumer LABEL DIR: DIR is a fresh directory the caller removes. */
int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: consumer LABEL DIR\n");
    return 2;
  }
  const char *how = argv[1], *dir = argv[2];
  if (strcmp(keel_version(), KEEL_VERSION_STRING) != 0 || keel_abi_version() != KEEL_ABI_VERSION) {
    fprintf(stderr, "%s: header %s / library %s mismatch\n", how, KEEL_VERSION_STRING, keel_version());
    return 1;
  }
  keel_wal_t *wal = NULL;
  keel_wal_reader_t *r = NULL;
  keel_error_t *err = NULL;
  const char msg[] = "hello from an installed keel";
  uint8_t buf[64];
  uint64_t seq = 0;
  size_t len = 0;
  keel_status_t st = keel_wal_open(dir, NULL, &wal, &err);
  if (st == KEEL_STATUS_OK) st = keel_wal_append(wal, (const uint8_t *)msg, sizeof msg, &seq, &err);
  if (st == KEEL_STATUS_OK) st = keel_wal_reader_open(wal, seq, KEEL_WAL_READ_DURABLE, &r, &err);
  if (st == KEEL_STATUS_OK) st = keel_wal_reader_next(r, &seq, buf, sizeof buf, &len, &err);
  keel_wal_reader_close(r);
  if (wal != NULL && st == KEEL_STATUS_OK) st = keel_wal_close(wal, &err);
  else keel_wal_close(wal, NULL);
  if (st != KEEL_STATUS_OK) {
    fprintf(stderr, "%s: %s: %s\n", how, keel_status_str(st), keel_error_message(err));
    keel_error_free(err);
    return 1;
  }
  if (len != sizeof msg || memcmp(buf, msg, len) != 0) {
    fprintf(stderr, "%s: record did not round-trip\n", how);
    return 1;
  }
  printf("%s: keel %s ok\n", how, keel_version());
  return 0;
}
