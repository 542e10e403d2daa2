/*
 * Versions and status names: the header macros agree with the loaded
 * library (a stale header or a mismatched libkeel.so fails here), and
 * Cargo.toml, and keel_status_str names every status code and "UNKNOWN" otherwise.
 */
#include "keel_test.h"

int main(void) {
  /* Header vs. library. */
  CHECK(strcmp(KEEL_VERSION_STRING, keel_version()) == 0);
  CHECK_EQ_U64(KEEL_ABI_VERSION, keel_abi_version());

#ifdef KEEL_CARGO_VERSION
  /* ... and with Cargo.toml (CMake reads it), the single source. */
  CHECK(strcmp(KEEL_CARGO_VERSION, KEEL_VERSION_STRING) == 0);
#endif

  /* The macros agree with each other. */
  char parts[64];
  snprintf(parts, sizeof parts, "%d.%d.%d", KEEL_VERSION_MAJOR, KEEL_VERSION_MINOR, KEEL_VERSION_PATCH);
  CHECK(strcmp(parts, KEEL_VERSION_STRING) == 0);
  CHECK_EQ_U64(KEEL_VERSION_NUMBER,
               KEEL_VERSION_MAJOR * 10000 + KEEL_VERSION_MINOR * 100 + KEEL_VERSION_PATCH);

  /* Every status has its documented name; names never change. */
  static const struct { keel_status_t code; const char *name; } names[] = {
      {KEEL_STATUS_OK, "OK"},
      {KEEL_STATUS_NULL_ARGUMENT, "NULL_ARGUMENT"},
      {KEEL_STATUS_INVALID_ARGUMENT, "INVALID_ARGUMENT"},
      {KEEL_STATUS_IO, "IO"},
      {KEEL_STATUS_CORRUPTION, "CORRUPTION"},
      {KEEL_STATUS_NOT_FOUND, "NOT_FOUND"},
      {KEEL_STATUS_BUSY, "BUSY"},
      {KEEL_STATUS_TIMEOUT, "TIMEOUT"},
      {KEEL_STATUS_CLOSED, "CLOSED"},
      {KEEL_STATUS_POISONED, "POISONED"},
      {KEEL_STATUS_PANIC, "PANIC"},
      {KEEL_STATUS_BUFFER_TOO_SMALL, "BUFFER_TOO_SMALL"},
      {KEEL_STATUS_TRUNCATED, "TRUNCATED"},
      {KEEL_STATUS_NOT_LEADER, "NOT_LEADER"},
      {KEEL_STATUS_UNSUPPORTED, "UNSUPPORTED"},
      {KEEL_STATUS_NO_SPACE, "NO_SPACE"},
      {KEEL_STATUS_WRONG_KIND, "WRONG_KIND"},
      {KEEL_STATUS_RESOURCE, "RESOURCE"},
      {KEEL_STATUS_FENCED, "FENCED"},
      {KEEL_STATUS_REFUSED, "REFUSED"},
      {KEEL_STATUS_PROTOCOL, "PROTOCOL"},
      {KEEL_STATUS_MOVED, "MOVED"},
  };
  const size_t n = sizeof names / sizeof names[0];
  for (size_t i = 0; i < n; i++) {
    /* Values are dense 0..n-1 and never renumbered. */
    CHECK_EQ_U64(names[i].code, i);
    const char *got = keel_status_str(names[i].code);
    CHECK(got != NULL);
    if (strcmp(got, names[i].name) != 0) {
      fprintf(stderr, "status %u: expected %s, got %s\n", names[i].code, names[i].name, got);
      CHECK(0);
    }
    CHECK(keel_status_str(names[i].code) == got); /* static: same pointer */
  }
  CHECK(strcmp(keel_status_str((keel_status_t)n), "UNKNOWN") == 0);
  CHECK(strcmp(keel_status_str(1000), "UNKNOWN") == 0);
  CHECK(strcmp(keel_status_str(UINT32_MAX), "UNKNOWN") == 0);

  KT_PASS();
}
