/* tests/tap.h - a tiny TAP producer for mmpipe's test programs.
 *
 *   int main(void) {
 *     ok(1 + 1 == 2, "arithmetic");
 *     is_int(f(), 3, "f() is 3");
 *     is_close(x, 0.5, 1e-6, "x");
 *     return done_testing();
 *   }
 *
 * Header-only: every test program includes it once. skip_all() prints
 * "1..0 # SKIP reason" (automake's TAP driver counts it as skipped).
 */
#ifndef MMPIPE_TESTS_TAP_H
#define MMPIPE_TESTS_TAP_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n_ = 0, tap_failed_ = 0;

static inline int tap_vok_(int cond, const char *fmt, va_list ap) {
  ++tap_n_;
  printf("%sok %d - ", cond ? "" : "not ", tap_n_);
  vprintf(fmt, ap);
  printf("\n");
  if (!cond) ++tap_failed_;
  fflush(stdout);
  return cond;
}

static inline int __attribute__((format(printf, 2, 3))) ok(int cond, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int r = tap_vok_(cond, fmt, ap);
  va_end(ap);
  return r;
}

static inline void __attribute__((format(printf, 1, 2))) diag(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("# ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  fflush(stdout);
}

#define is_int(got, want, ...)                                              \
  do {                                                                      \
    long long g_ = (long long)(got), w_ = (long long)(want);                \
    if (!ok(g_ == w_, __VA_ARGS__)) diag("  got %lld, want %lld", g_, w_); \
  } while (0)

#define is_str(got, want, ...)                                                  \
  do {                                                                          \
    const char *g_ = (got), *w_ = (want);                                       \
    if (!ok(g_ && w_ && strcmp(g_, w_) == 0, __VA_ARGS__))                      \
      diag("  got \"%s\", want \"%s\"", g_ ? g_ : "(null)", w_ ? w_ : "(null)"); \
  } while (0)

/* |got - want| <= tol */
#define is_close(got, want, tol, ...)                                        \
  do {                                                                       \
    double g_ = (double)(got), w_ = (double)(want);                          \
    if (!ok(fabs(g_ - w_) <= (tol), __VA_ARGS__))                            \
      diag("  got %.9g, want %.9g (tol %.3g)", g_, w_, (double)(tol));       \
  } while (0)

/* the message contains a substring */
#define like(got, sub, ...)                                                      \
  do {                                                                           \
    const char *g_ = (got), *s_ = (sub);                                         \
    if (!ok(g_ && strstr(g_, s_) != NULL, __VA_ARGS__))                          \
      diag("  \"%s\" does not contain \"%s\"", g_ ? g_ : "(null)", s_);          \
  } while (0)

static inline int done_testing(void) {
  printf("1..%d\n", tap_n_);
  fflush(stdout);
  return tap_failed_ ? 1 : 0;
}

static inline void skip_all(const char *reason) {
  printf("1..0 # SKIP %s\n", reason);
  fflush(stdout);
  exit(0);
}

/* Directory of the source tree (for fixtures) and of shared test data. */
static inline const char *tap_srcdir(void) {
  const char *d = getenv("MMP_TEST_SRCDIR");
  return d ? d : ".";
}
static inline const char *tap_shared_data(void) {
  const char *d = getenv("MMP_SHARED_DATA");
  return d ? d : "../shared/data";
}

#endif
