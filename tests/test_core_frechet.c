/* tests/test_core_frechet.c - feature statistics, sqrtm and the Frechet distance against scipy (tests/gen_fid.py). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/frechet.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static mmp_safetensors_t *st;

/* A fixture tensor as host doubles (transfer full). */
static double *get_f64(const char *name, int64_t *n, int64_t *d) {
  mmp_tensor_t *t = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_DTYPE_COUNT);
  if (!t) return NULL;
  int64_t m = mmp_tensor_numel(t);
  double *v = malloc((size_t)m * sizeof *v);
  for (int64_t i = 0; i < m; i++) {
    int64_t idx[MMP_MAX_DIMS] = {0}, r = i;
    for (int k = t->ndim - 1; k >= 0; k--) {
      idx[k] = r % t->shape[k];
      r /= t->shape[k];
    }
    v[i] = mmp_tensor_get(t, idx);
  }
  if (n) *n = t->ndim > 0 ? t->shape[0] : 1;
  if (d) *d = t->ndim > 1 ? t->shape[1] : 1;
  mmp_tensor_unref(t);
  return v;
}

static float *get_f32(const char *name, int64_t *n, int64_t *d) {
  double *v = get_f64(name, n, d);
  if (!v) return NULL;
  float *f = malloc((size_t)(*n * *d) * sizeof *f);
  for (int64_t i = 0; i < *n * *d; i++) f[i] = (float)v[i];
  free(v);
  return f;
}

static double relerr(const double *a, const double *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num = fmax(num, fabs(a[i] - b[i]));
    den = fmax(den, fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

static void fd_case(const char *name, double tol, bool abs_tol) {
  char k[128];
  int64_t n1, d1, n2, d2;
  snprintf(k, sizeof k, "fd/%s/f1", name);
  float *f1 = get_f32(k, &n1, &d1);
  snprintf(k, sizeof k, "fd/%s/f2", name);
  float *f2 = get_f32(k, &n2, &d2);
  snprintf(k, sizeof k, "fd/%s/fid", name);
  double *want = get_f64(k, NULL, NULL);
  if (!ok(f1 && f2 && want && d1 == d2, "%s: fixture", name)) return;
  int64_t d = d1;
  double *mu1 = malloc((size_t)d * sizeof *mu1), *mu2 = malloc((size_t)d * sizeof *mu2);
  double *s1 = malloc((size_t)(d * d) * sizeof *s1), *s2 = malloc((size_t)(d * d) * sizeof *s2);
  ok(mmp_feature_stats(f1, n1, d, mu1, s1) == 0 && mmp_feature_stats(f2, n2, d, mu2, s2) == 0, "%s: stats", name);
  snprintf(k, sizeof k, "fd/%s/mu1", name);
  double *wmu = get_f64(k, NULL, NULL);
  if (wmu) {
    double e = relerr(mu1, wmu, d);
    ok(e <= 1e-12, "%s: mean rel err %.3g <= 1e-12", name, e);
    free(wmu);
  }
  snprintf(k, sizeof k, "fd/%s/sigma1", name);
  if (mmp_safetensors_info(st, k, NULL, NULL, NULL) == 0) {
    double *ws = get_f64(k, NULL, NULL);
    double e = relerr(s1, ws, d * d);
    ok(e <= 1e-12, "%s: covariance (n-1) rel err %.3g <= 1e-12", name, e);
    free(ws);
  }
  snprintf(k, sizeof k, "fd/%s/sqrtm_re", name);
  if (mmp_safetensors_info(st, k, NULL, NULL, NULL) == 0) {
    double *wre = get_f64(k, NULL, NULL);
    snprintf(k, sizeof k, "fd/%s/sqrtm_im", name);
    double *wim = get_f64(k, NULL, NULL);
    double *prod = calloc((size_t)(d * d), sizeof *prod), *re = malloc((size_t)(d * d) * sizeof *re);
    double *im = malloc((size_t)(d * d) * sizeof *im);
    for (int64_t i = 0; i < d; i++)
      for (int64_t j = 0; j < d; j++)
        for (int64_t l = 0; l < d; l++) prod[i * d + j] += s1[i * d + l] * s2[l * d + j];
    bool cplx = false, fin = false;
    int rc = mmp_sqrtm(prod, d, re, im, &cplx, &fin);
    double e = relerr(re, wre, d * d), ei = relerr(im, wim, d * d) * 0;
    double scale = 0;
    for (int64_t i = 0; i < d * d; i++) scale = fmax(scale, fabs(wre[i]));
    for (int64_t i = 0; i < d * d; i++) ei = fmax(ei, fabs(im[i] - wim[i]) / scale);
    ok(rc == 0 && fin, "%s: sqrtm computed (%s)", name, cplx ? "complex" : "real");
    /* rank-deficient products: the roots of the noise eigenvalues differ by
     * rounding of O(sqrt(eps)); well-conditioned ones agree to ~1e-12 */
    double lim = strcmp(name, "small") == 0 ? 1e-3 : 1e-9;
    ok(e <= lim && ei <= lim, "%s: sqrtm real part rel err %.3g, imaginary %.3g <= %g (scipy)", name, e, ei, lim);
    free(wre);
    free(wim);
    free(prod);
    free(re);
    free(im);
  }
  double got = NAN, eig = NAN;
  mmp_frechet_info_t info;
  int rc = mmp_frechet_distance_method(mu1, s1, mu2, s2, d, MMP_SQRTM_EIGEN, &eig, NULL);
  double eerr = abs_tol ? fabs(eig - want[0]) : fabs(eig - want[0]) / fabs(want[0]);
  ok(rc == 0 && eerr <= tol, "%s: eigen method FID %.10g: %s err %.3g <= %g", name, eig, abs_tol ? "abs" : "rel",
     eerr, tol);
  double au = NAN;
  rc = mmp_frechet_distance_method(mu1, s1, mu2, s2, d, MMP_SQRTM_AUTO, &au, &info);
  double aerr = abs_tol ? fabs(au - want[0]) : fabs(au - want[0]) / fabs(want[0]);
  /* zero_feature has constant features: auto takes Schur there */
  int wm = strcmp(name, "zero_feature") == 0 ? MMP_SQRTM_SCHUR : MMP_SQRTM_EIGEN;
  ok(rc == 0 && aerr <= tol && info.method == wm, "%s: auto method (%s) FID %.10g: err %.3g <= %g", name,
     info.method == MMP_SQRTM_SCHUR ? "schur" : "eigen", au, aerr, tol);
  rc = mmp_frechet_distance(mu1, s1, mu2, s2, d, &got, &info);
  if (!ok(rc == 0, "%s: distance", name)) diag("%s", mmp_error_last());
  double err = abs_tol ? fabs(got - want[0]) : fabs(got - want[0]) / fabs(want[0]);
  ok(err <= tol, "%s: FID %.10g vs scipy %.10g: %s err %.3g <= %g (complex root %d, eps retry %d)", name, got,
     want[0], abs_tol ? "abs" : "rel", err, tol, info.complex_root, info.eps_retry);
  free(f1);
  free(f2);
  free(want);
  free(mu1);
  free(mu2);
  free(s1);
  free(s2);
}

/* The formula-defined feature sets of tests/gen_frechet_large.py. */
static uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94D049BB133111EB);
  return x ^ (x >> 31);
}

static double uniform(uint64_t seed, uint64_t i, uint64_t j) {
  return (double)(mix64((seed << 40) ^ (i << 20) ^ j) >> 11) * 0x1p-53;
}

static float *formula_features(int seed, int64_t n, int64_t d, double scale, double shift) {
  float *f = malloc((size_t)(n * d) * sizeof *f);
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) {
      int64_t jn = (j + 1) % d;
      double g0 = uniform(2 * (uint64_t)seed, (uint64_t)i, (uint64_t)j) +
                  uniform(2 * (uint64_t)seed + 1, (uint64_t)i, (uint64_t)j) - 1.0;
      double g1 = uniform(2 * (uint64_t)seed, (uint64_t)i, (uint64_t)jn) +
                  uniform(2 * (uint64_t)seed + 1, (uint64_t)i, (uint64_t)jn) - 1.0;
      double s = scale / (1.0 + (double)j / 32.0), m = shift * s;
      f[i * d + j] = (float)(s * (g0 + 0.6 * g1) + m);
    }
  return f;
}

/* 512-d sets: the fast method (and Schur where @schur) against scipy. */
static void large_case(mmp_safetensors_t *lg, const char *name, double tol, bool schur) {
  char k[128];
  mmp_safetensors_t *keep = st;
  st = lg;
  snprintf(k, sizeof k, "%s/params", name);
  double *p = get_f64(k, NULL, NULL);
  snprintf(k, sizeof k, "%s/fid", name);
  double *want = get_f64(k, NULL, NULL);
  snprintf(k, sizeof k, "%s/check", name);
  double *chk = get_f64(k, NULL, NULL);
  st = keep;
  if (!ok(p && want && chk, "%s: fixture", name)) return;
  int64_t d = (int64_t)p[0], n1 = (int64_t)p[1], n2 = (int64_t)p[2];
  float *f1 = formula_features((int)p[3], n1, d, 1.0, 0.0), *f2 = formula_features((int)p[4], n2, d, p[5], p[6]);
  bool same = true;
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 4; j++) same = same && f1[i * d + j] == (float)chk[i * 4 + j];
  ok(same, "%s: the features formula gives the generator's values", name);
  double *mu1 = malloc((size_t)d * sizeof *mu1), *mu2 = malloc((size_t)d * sizeof *mu2);
  double *s1 = malloc((size_t)(d * d) * sizeof *s1), *s2 = malloc((size_t)(d * d) * sizeof *s2);
  mmp_feature_stats(f1, n1, d, mu1, s1);
  mmp_feature_stats(f2, n2, d, mu2, s2);
  static const mmp_sqrtm_method_t methods[3] = {MMP_SQRTM_AUTO, MMP_SQRTM_EIGEN, MMP_SQRTM_SCHUR};
  static const char *const mname[3] = {"auto", "eigen", "schur"};
  for (int m = 0; m < (schur ? 3 : 2); m++) {
    double got = NAN;
    mmp_frechet_info_t info;
    int rc = mmp_frechet_distance_method(mu1, s1, mu2, s2, d, methods[m], &got, &info);
    double err = fabs(got - want[0]) / fabs(want[0]);
    ok(rc == 0 && err <= tol && (m == 2 ? info.method == MMP_SQRTM_SCHUR : info.method == MMP_SQRTM_EIGEN),
       "%s (%lld-d, %lld and %lld rows): %s FID %.12g vs scipy %.12g: rel err %.3g <= %g", name, (long long)d,
       (long long)n1, (long long)n2, mname[m], got, want[0], err, tol);
  }
  free(p);
  free(want);
  free(chk);
  free(f1);
  free(f2);
  free(mu1);
  free(mu2);
  free(s1);
  free(s2);
}

int main(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/fixtures/fid/fid.safetensors", tap_srcdir());
  st = mmp_safetensors_open(path);
  if (!st) skip_all("fixtures missing");
  double one[1] = {0}, z = 0;
  if (mmp_frechet_distance(one, one, one, one, 1, &z, NULL) == MMP_EUNSUPPORTED) {
    mmp_safetensors_close(st);
    skip_all("built without LAPACK");
  }
  fd_case("wellcond", 1e-6, false);
  fd_case("wellcond_b", 1e-6, false);
  fd_case("identical", 1e-6, true);
  fd_case("zero_feature", 1e-6, false);
  fd_case("small", 1e-3, false);
  fd_case("tiny", 1e-3, false);
  fd_case("wide", 1e-3, false);
  snprintf(path, sizeof path, "%s/tests/fixtures/fid/frechet_large.safetensors", tap_srcdir());
  mmp_safetensors_t *lg = mmp_safetensors_open(path);
  if (ok(lg != NULL, "512-d fixtures")) {
    /* full rank; FID 0.84 beside traces of ~100: the distance cancels */
    large_case(lg, "d512_full", 1e-6, false);
    /* rank deficient (300 and 250 rows): the noise eigenvalues differ (observed 8e-8) */
    large_case(lg, "d512_few", 1e-5, true);
    mmp_safetensors_close(lg);
  }

  /* argument checks */
  float f[2] = {1, 2};
  double mu[1], sg[1];
  ok(mmp_feature_stats(f, 1, 1, mu, sg) == MMP_EINVAL, "stats of one row is MMP_EINVAL");
  ok(mmp_feature_stats(f, 2, 1, mu, sg) == 0 && mu[0] == 1.5 && sg[0] == 0.5, "stats of {1, 2}: mean 1.5, var 0.5");
  /* a root whose diagonal is imaginary: [[-1]] has root i */
  double m1[1] = {0}, m2[1] = {0}, a[1] = {-1}, b[1] = {1}, out = 0;
  ok(mmp_frechet_distance(m1, a, m2, b, 1, &out, NULL) == MMP_ERUNTIME &&
         strstr(mmp_error_last(), "Imaginary component") != NULL,
     "an imaginary diagonal above 1e-3 is an error: %s", mmp_error_last());
  /* 1x1: FID of N(0, 4) and N(1, 1) = 1 + 4 + 1 - 2*2 = 2 */
  double v4[1] = {4}, mu1[1] = {1};
  int rc1 = mmp_frechet_distance(m1, v4, mu1, b, 1, &out, NULL);
  ok(rc1 == 0 && fabs(out - 2) < 1e-15, "1-d FID is 2 (%g)", out);
  /* the eps retry (a product with no square root) */
  double *em1 = get_f64("eps/mu1", NULL, NULL), *es1 = get_f64("eps/sigma1", NULL, NULL);
  double *em2 = get_f64("eps/mu2", NULL, NULL), *es2 = get_f64("eps/sigma2", NULL, NULL);
  double *ew = get_f64("eps/fid", NULL, NULL);
  if (ok(em1 && es1 && em2 && es2 && ew, "eps fixture")) {
    mmp_frechet_info_t info;
    int rc = mmp_frechet_distance(em1, es1, em2, es2, 3, &out, &info);
    double err = fabs(out - ew[0]) / fabs(ew[0]);
    ok(rc == 0 && info.eps_retry && err <= 1e-6, "eps retry taken: FID %.10g vs scipy %.10g, rel err %.3g <= 1e-6",
       out, ew[0], err);
    /* sigma1 has a zero variance: auto uses Schur and so retries as scipy */
    double au = 0;
    rc = mmp_frechet_distance_method(em1, es1, em2, es2, 3, MMP_SQRTM_AUTO, &au, &info);
    ok(rc == 0 && info.method == MMP_SQRTM_SCHUR && info.eps_retry && au == out,
       "auto on a zero variance takes Schur and its eps retry (%.10g)", au);
    bool fin = true, cp = false;
    double re[4], im[4];
    double prod[4] = {0, 1, 0, 0};
    ok(mmp_sqrtm(prod, 2, re, im, &cp, &fin) == 0 && !fin && isnan(re[0]), "sqrtm of [[0, 1], [0, 0]] is NaN");
  }
  free(em1);
  free(es1);
  free(em2);
  free(es2);
  free(ew);
  mmp_safetensors_close(st);
  return done_testing();
}
