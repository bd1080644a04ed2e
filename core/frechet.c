/* core/frechet.c - feature statistics, the matrix square root (LAPACK Schur form) and the Frechet distance. */
#include "config.h"

#include <complex.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/frechet.h>

#if defined(HAVE_OPENBLAS) && defined(HAVE_LAPACK)
#define MMP_FRECHET_LAPACK 1
#include <cblas.h>
#endif

/* rows of centred features per dsyrk call */
#define STATS_BLOCK 256

int mmp_feature_stats(const float *feat, int64_t n, int64_t d, double *mu, double *sigma) {
  if (!feat || !mu || !sigma || n < 2 || d < 1 || d > (1 << 20))
    return mmp_error_set(MMP_EINVAL, "feature_stats: need at least 2 rows of 1..2^20 features (got %lld x %lld)",
                         (long long)n, (long long)d);
  double *blk = malloc((size_t)STATS_BLOCK * (size_t)d * sizeof *blk);
  if (!blk) return mmp_error_set(MMP_ENOMEM, "feature_stats: out of memory for %lld features", (long long)d);
  for (int64_t j = 0; j < d; j++) mu[j] = 0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < d; j++) mu[j] += (double)feat[i * d + j];
  for (int64_t j = 0; j < d; j++) mu[j] /= (double)n;
  memset(sigma, 0, (size_t)d * (size_t)d * sizeof *sigma);
  for (int64_t r0 = 0; r0 < n; r0 += STATS_BLOCK) {
    int64_t rows = n - r0 < STATS_BLOCK ? n - r0 : STATS_BLOCK;
    for (int64_t i = 0; i < rows; i++)
      for (int64_t j = 0; j < d; j++) blk[i * d + j] = (double)feat[(r0 + i) * d + j] - mu[j];
#ifdef MMP_FRECHET_LAPACK
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)d, (int)rows, 1.0, blk, (int)d, 1.0, sigma, (int)d);
#else
    for (int64_t i = 0; i < rows; i++)
      for (int64_t a = 0; a < d; a++) {
        double xa = blk[i * d + a];
        for (int64_t b = a; b < d; b++) sigma[a * d + b] += xa * blk[i * d + b];
      }
#endif
  }
  free(blk);
  for (int64_t a = 0; a < d; a++)
    for (int64_t b = a; b < d; b++) {
      double v = sigma[a * d + b] / (double)(n - 1);
      sigma[a * d + b] = sigma[b * d + a] = v;
    }
  return 0;
}

#ifdef MMP_FRECHET_LAPACK

/* LAPACK (Fortran interface of OpenBLAS); the trailing arguments are the
 * hidden lengths of the character arguments. */
extern void dgees_(const char *jobvs, const char *sort, int (*select)(const double *, const double *), const int *n,
                   double *a, const int *lda, int *sdim, double *wr, double *wi, double *vs, const int *ldvs,
                   double *work, const int *lwork, int *bwork, int *info, size_t l1, size_t l2);

/* element (i, j) of a column-major n x n matrix */
#define AT(m, i, j, n) ((m)[(size_t)(j) * (size_t)(n) + (size_t)(i)])

extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
                    double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t l1, size_t l2);

/* Eigenvalues (and with @vectors the eigenvectors, in @a column-major) of
 * the symmetric n x n @a (LAPACK dsyevd). */
static int eigh(double *a, int n, double *w, bool vectors) {
  int info = 0, lwork = -1, liwork = -1, qi = 0;
  double qw = 0;
  const char *jobz = vectors ? "V" : "N";
  dsyevd_(jobz, "U", &n, a, &n, w, &qw, &lwork, &qi, &liwork, &info, 1, 1);
  if (info != 0) return mmp_error_set(MMP_ERUNTIME, "frechet_distance: LAPACK dsyevd workspace query failed (%d)", info);
  lwork = (int)qw + 1;
  liwork = qi + 1;
  double *work = malloc((size_t)lwork * sizeof *work);
  int *iwork = malloc((size_t)liwork * sizeof *iwork);
  if (!work || !iwork) {
    free(work);
    free(iwork);
    return mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for the LAPACK workspace");
  }
  dsyevd_(jobz, "U", &n, a, &n, w, work, &lwork, iwork, &liwork, &info, 1, 1);
  free(work);
  free(iwork);
  return info ? mmp_error_set(MMP_ERUNTIME, "frechet_distance: LAPACK dsyevd failed (info %d)", info) : 0;
}

extern void dpstrf_(const char *uplo, const int *n, double *a, const int *lda, int *piv, int *rank, const double *tol,
                    double *work, int *info, size_t l1);

/* A factor F (n x rank, column-major, transfer full in @f) with s = F F^T,
 * for the symmetric positive semidefinite n x n @s: LAPACK's pivoted
 * Cholesky (dpstrf, P^T s P = L L^T stopped at its default tolerance
 * n eps max(diag)), F = P L. */
static int psd_factor(const double *s, int n, double **f, int *rank) {
  size_t nn = (size_t)n * (size_t)n;
  double *a = malloc(nn * sizeof *a), *work = malloc((size_t)n * 2 * sizeof *work);
  int *piv = malloc((size_t)n * sizeof *piv), info = 0, r = 0, rc = 0;
  const double tol = -1; /* LAPACK's default */
  *f = NULL;
  if (!a || !work || !piv) {
    rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for %d x %d", n, n);
    goto out;
  }
  memcpy(a, s, nn * sizeof *a);
  dpstrf_("L", &n, a, &n, piv, &r, &tol, work, &info, 1);
  if (info < 0) {
    rc = mmp_error_set(MMP_ERUNTIME, "frechet_distance: LAPACK dpstrf failed (info %d)", info);
    goto out;
  }
  /* info 1: rank deficient (r < n), which is expected of covariances */
  *rank = r;
  if (r > 0) {
    double *g = calloc((size_t)n * (size_t)r, sizeof *g);
    if (!g) {
      rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for %d x %d", n, r);
      goto out;
    }
    /* row piv[k] - 1 of F is row k of L's first r columns (lower part) */
    for (int j = 0; j < r; j++)
      for (int k = j; k < n; k++) AT(g, piv[k] - 1, j, n) = AT(a, k, j, n);
    *f = g;
  }
out:
  free(a);
  free(work);
  free(piv);
  return rc;
}

/* tr sqrt(s1 s2) by a symmetric eigenproblem: with s1 = F1 F1^T and
 * s2 = F2 F2^T, s1 s2 has the nonzero eigenvalues of C C^T, C = F1^T F2
 * (r1 x r2), so the trace of the root is the sum of the roots of C C^T's
 * (or C^T C's, the smaller) eigenvalues (dsyevd without vectors); negative
 * ones, rounding noise, count 0. About 3 d^3 flops + one tridiagonalisation
 * for full ranks, less when the sets are smaller than d. */
/* The full-rank case with one factorisation: P^T s1 P = L L^T (dpstrf), so
 * s1 s2 has the eigenvalues of L^T (P^T s2 P) L, two triangular products
 * (2 d^3 flops, against 3.3 d^3 for the second factor, C and C C^T). *done
 * false (and nothing computed) when s1 is rank deficient. */
static int trace_sqrt_tri(const double *s1, const double *s2, int n, double *tr, bool *neg, bool *done) {
  size_t nn = (size_t)n * (size_t)n;
  double *a = malloc(nn * sizeof *a), *m = malloc(nn * sizeof *m), *work = malloc((size_t)n * 2 * sizeof *work);
  double *w = malloc((size_t)n * sizeof *w);
  int *piv = malloc((size_t)n * sizeof *piv), info = 0, r = 0, rc = 0;
  const double tol = -1; /* LAPACK's default */
  *done = false;
  if (!a || !m || !work || !w || !piv) {
    rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for %d x %d", n, n);
    goto out;
  }
  memcpy(a, s1, nn * sizeof *a);
  dpstrf_("L", &n, a, &n, piv, &r, &tol, work, &info, 1);
  if (info < 0) {
    rc = mmp_error_set(MMP_ERUNTIME, "frechet_distance: LAPACK dpstrf failed (info %d)", info);
    goto out;
  }
  if (r < n) goto out; /* info 1: rank deficient; the caller factors both */
  for (int j = 0; j < n; j++)
    for (int i = 0; i < n; i++) AT(m, i, j, n) = AT(s2, piv[i] - 1, piv[j] - 1, n);
  /* only the lower triangle of a is read: L */
  cblas_dtrmm(CblasColMajor, CblasRight, CblasLower, CblasNoTrans, CblasNonUnit, n, n, 1.0, a, n, m, n);
  cblas_dtrmm(CblasColMajor, CblasLeft, CblasLower, CblasTrans, CblasNonUnit, n, n, 1.0, a, n, m, n);
  if ((rc = eigh(m, n, w, false))) goto out;
  double acc = 0;
  for (int i = 0; i < n; i++) {
    if (w[i] > 0) acc += sqrt(w[i]);
    else if (w[i] < 0) *neg = true;
  }
  *tr = acc;
  *done = true;
out:
  free(a);
  free(m);
  free(work);
  free(w);
  free(piv);
  return rc;
}

static int trace_sqrt_eigen(const double *s1, const double *s2, int n, double *tr, bool *neg) {
  double *f1 = NULL, *f2 = NULL, *c = NULL, *g = NULL, *w = NULL;
  int r1 = 0, r2 = 0, rc;
  bool done = false;
  *tr = 0;
  *neg = false;
  if ((rc = trace_sqrt_tri(s1, s2, n, tr, neg, &done)) || done) return rc;
  if ((rc = psd_factor(s1, n, &f1, &r1)) || (rc = psd_factor(s2, n, &f2, &r2))) goto out;
  if (r1 == 0 || r2 == 0) goto out; /* a zero covariance: s1 s2 = 0 */
  int r = r1 < r2 ? r1 : r2;
  c = malloc((size_t)r1 * (size_t)r2 * sizeof *c);
  g = malloc((size_t)r * (size_t)r * sizeof *g);
  w = malloc((size_t)r * sizeof *w);
  if (!c || !g || !w) {
    rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for %d x %d", r1, r2);
    goto out;
  }
  cblas_dgemm(CblasColMajor, CblasTrans, CblasNoTrans, r1, r2, n, 1.0, f1, n, f2, n, 0.0, c, r1);
  if (r1 <= r2)
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, r1, r2, 1.0, c, r1, 0.0, g, r1);
  else
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasTrans, r2, r1, 1.0, c, r1, 0.0, g, r2);
  if ((rc = eigh(g, r, w, false))) goto out;
  double acc = 0;
  for (int i = 0; i < r; i++) {
    if (w[i] > 0) acc += sqrt(w[i]);
    else if (w[i] < 0) *neg = true;
  }
  *tr = acc;
out:
  free(f1);
  free(f2);
  free(c);
  free(g);
  free(w);
  return rc;
}

/* The root of a matrix in Schur form, in column-major order: the n x n
 * upper-triangular R (real or complex) and the Schur vectors Z. */
typedef struct schur_root {
  int n;
  bool cplx;
  double *t, *z;                 /* real Schur form and vectors (dgees) */
  double complex *ct, *cz;       /* complex ones when needed */
  bool ok;                       /* the recurrence found a root */
} schur_root_t;

static void schur_free(schur_root_t *s) {
  free(s->t);
  free(s->z);
  free(s->ct);
  free(s->cz);
  memset(s, 0, sizeof *s);
}


/* scipy.linalg.rsf2csf: Givens rotations that turn each 2x2 block of the
 * real Schur form into upper-triangular complex entries. */
static void rsf2csf(int n, double complex *T, double complex *Z) {
  const double eps = 2.220446049250313e-16;
  for (int m = n - 1; m > 0; m--) {
    if (cabs(AT(T, m, m - 1, n)) > eps * (cabs(AT(T, m - 1, m - 1, n)) + cabs(AT(T, m, m, n)))) {
      double complex a = AT(T, m - 1, m - 1, n), b = AT(T, m - 1, m, n), c = AT(T, m, m - 1, n),
                     dd = AT(T, m, m, n);
      /* an eigenvalue of the block, minus T[m, m] */
      double complex half = (a + dd) / 2, disc = csqrt((a - dd) * (a - dd) / 4 + b * c);
      double complex mu = half + disc - dd;
      double r = sqrt(creal(mu * conj(mu)) + creal(c * conj(c)));
      double complex cs = mu / r, sn = c / r;
      /* G = [[conj(cs), sn], [-sn, cs]]; rows m-1, m of T from column m-1 on */
      for (int j = m - 1; j < n; j++) {
        double complex x = AT(T, m - 1, j, n), y = AT(T, m, j, n);
        AT(T, m - 1, j, n) = conj(cs) * x + sn * y;
        AT(T, m, j, n) = -sn * x + cs * y;
      }
      /* columns m-1, m of T (rows 0..m) and of Z times G^H */
      for (int i = 0; i <= m; i++) {
        double complex x = AT(T, i, m - 1, n), y = AT(T, i, m, n);
        AT(T, i, m - 1, n) = x * cs + y * conj(sn);
        AT(T, i, m, n) = -x * sn + y * conj(cs);
      }
      for (int i = 0; i < n; i++) {
        double complex x = AT(Z, i, m - 1, n), y = AT(Z, i, m, n);
        AT(Z, i, m - 1, n) = x * cs + y * conj(sn);
        AT(Z, i, m, n) = -x * sn + y * conj(cs);
      }
    }
    AT(T, m, m - 1, n) = 0;
  }
}

/* The upper-triangular square root R of the triangular T in place, column
 * by column: R_kj = (T_kj - sum_{k<l<j} R_kl R_lj) / (R_kk + R_jj), the sum
 * accumulated as axpys over the columns of R already computed. A zero
 * denominator with a nonzero numerator fails (scipy's SqrtmError). */
static bool triu_sqrt_real(int n, double *T, double *s) {
  for (int i = 0; i < n; i++) AT(T, i, i, n) = sqrt(AT(T, i, i, n));
  for (int j = 1; j < n; j++) {
    double rjj = AT(T, j, j, n);
    memcpy(s, &AT(T, 0, j, n), (size_t)j * sizeof *s);
    for (int k = j - 1; k >= 0; k--) {
      double den = AT(T, k, k, n) + rjj, r;
      if (den == 0) {
        if (s[k] != 0) return false;
        r = 0;
      } else {
        r = s[k] / den;
      }
      AT(T, k, j, n) = r;
      const double *col = &AT(T, 0, k, n);
      for (int i = 0; i < k; i++) s[i] -= col[i] * r;
    }
  }
  return true;
}

static bool triu_sqrt_cplx(int n, double complex *T, double complex *s) {
  for (int i = 0; i < n; i++) AT(T, i, i, n) = csqrt(AT(T, i, i, n));
  for (int j = 1; j < n; j++) {
    double complex rjj = AT(T, j, j, n);
    memcpy(s, &AT(T, 0, j, n), (size_t)j * sizeof *s);
    for (int k = j - 1; k >= 0; k--) {
      double complex den = AT(T, k, k, n) + rjj, r;
      if (den == 0) {
        if (s[k] != 0) return false;
        r = 0;
      } else {
        r = s[k] / den;
      }
      AT(T, k, j, n) = r;
      const double complex *col = &AT(T, 0, k, n);
      for (int i = 0; i < k; i++) s[i] -= col[i] * r;
    }
  }
  return true;
}

/* Schur form of the column-major n x n @a and the triangular root. */
static int schur_root(const double *a, int n, schur_root_t *out) {
  memset(out, 0, sizeof *out);
  out->n = n;
  size_t nn = (size_t)n * (size_t)n;
  double *wr = malloc((size_t)n * 2 * sizeof *wr), qw = 0;
  out->t = malloc(nn * sizeof *out->t);
  out->z = malloc(nn * sizeof *out->z);
  if (!wr || !out->t || !out->z) {
    free(wr);
    schur_free(out);
    return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory for %d x %d", n, n);
  }
  memcpy(out->t, a, nn * sizeof *a);
  int sdim = 0, info = 0, lwork = -1;
  dgees_("V", "N", NULL, &n, out->t, &n, &sdim, wr, wr + n, out->z, &n, &qw, &lwork, NULL, &info, 1, 1);
  lwork = info == 0 && qw >= 3 * n ? (int)qw : 3 * n + 1;
  double *work = malloc((size_t)lwork * sizeof *work);
  if (!work) {
    free(wr);
    schur_free(out);
    return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory for the LAPACK workspace");
  }
  dgees_("V", "N", NULL, &n, out->t, &n, &sdim, wr, wr + n, out->z, &n, work, &lwork, NULL, &info, 1, 1);
  free(work);
  free(wr);
  if (info != 0) {
    schur_free(out);
    return mmp_error_set(MMP_ERUNTIME, "sqrtm: LAPACK dgees failed (info %d)", info);
  }
  bool triangular = true, nonneg = true;
  for (int i = 0; i + 1 < n && triangular; i++)
    for (int r = i + 1; r < n; r++)
      if (AT(out->t, r, i, n) != 0) {
        triangular = false;
        break;
      }
  for (int i = 0; i < n; i++)
    if (AT(out->t, i, i, n) < 0) nonneg = false;
  if (triangular && nonneg) {
    double *s = malloc((size_t)n * sizeof *s);
    if (!s) {
      schur_free(out);
      return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory");
    }
    out->ok = triu_sqrt_real(n, out->t, s);
    free(s);
    return 0;
  }
  out->cplx = true;
  out->ct = malloc(nn * sizeof *out->ct);
  out->cz = malloc(nn * sizeof *out->cz);
  double complex *s = malloc((size_t)n * sizeof *s);
  if (!out->ct || !out->cz || !s) {
    free(s);
    schur_free(out);
    return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory for the complex Schur form");
  }
  for (size_t i = 0; i < nn; i++) {
    out->ct[i] = out->t[i];
    out->cz[i] = out->z[i];
  }
  free(out->t);
  free(out->z);
  out->t = out->z = NULL;
  if (!triangular) rsf2csf(n, out->ct, out->cz);
  out->ok = triu_sqrt_cplx(n, out->ct, s);
  free(s);
  return 0;
}

/* W = Z R (column-major; the root's Schur vectors times its triangle). */
static void z_times_r(const schur_root_t *s, void *w) {
  int n = s->n;
  size_t nn = (size_t)n * (size_t)n;
  if (!s->cplx) {
    memcpy(w, s->z, nn * sizeof(double));
    cblas_dtrmm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, n, n, 1.0, s->t, n, w, n);
  } else {
    const double complex one = 1;
    memcpy(w, s->cz, nn * sizeof(double complex));
    cblas_ztrmm(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, n, n, &one, s->ct, n, w, n);
  }
}

static bool all_finite(const double *v, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(v[i])) return false;
  return true;
}

int mmp_sqrtm(const double *a, int64_t d, double *re, double *im, bool *is_complex, bool *finite) {
  if (!a || !re || d < 1 || d > 65536) return mmp_error_set(MMP_EINVAL, "sqrtm: bad matrix (d = %lld)", (long long)d);
  int n = (int)d;
  size_t nn = (size_t)n * (size_t)n;
  /* The row-major A read column-major is A^T, and sqrtm(A^T) = sqrtm(A)^T:
   * computing on the column-major view and writing column-major gives
   * sqrtm(A) row-major, without transposes. */
  schur_root_t s;
  int rc = schur_root(a, n, &s);
  if (rc) return rc;
  if (is_complex) *is_complex = s.cplx;
  if (!s.ok) {
    for (size_t i = 0; i < nn; i++) {
      re[i] = NAN;
      if (im) im[i] = s.cplx ? NAN : 0;
    }
    if (finite) *finite = false;
    schur_free(&s);
    return 0;
  }
  void *w = malloc(nn * (s.cplx ? sizeof(double complex) : sizeof(double)) * 2);
  if (!w) {
    schur_free(&s);
    return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory");
  }
  z_times_r(&s, w);
  if (!s.cplx) {
    double *x = (double *)w + nn;
    cblas_dgemm(CblasColMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0, w, n, s.z, n, 0.0, x, n);
    memcpy(re, x, nn * sizeof *re);
    if (im) memset(im, 0, nn * sizeof *im);
    if (finite) *finite = all_finite(re, nn);
  } else {
    const double complex one = 1, zero = 0;
    double complex *x = (double complex *)w + nn;
    cblas_zgemm(CblasColMajor, CblasNoTrans, CblasConjTrans, n, n, n, &one, w, n, s.cz, n, &zero, x, n);
    bool fin = true;
    for (size_t i = 0; i < nn; i++) {
      re[i] = creal(x[i]);
      if (im) im[i] = cimag(x[i]);
      if (!isfinite(creal(x[i])) || !isfinite(cimag(x[i]))) fin = false;
    }
    if (finite) *finite = fin;
  }
  free(w);
  schur_free(&s);
  return 0;
}

/* The diagonal of sqrtm(A) (A row-major; diag is the same for A^T):
 * diag(Z R Z^H)_i = sum_k (Z R)_ik conj(Z_ik). @finite: R and Z R finite. */
static int sqrtm_diag(const double *a, int n, double *dre, double *dim, bool *cplx, bool *finite) {
  schur_root_t s;
  int rc = schur_root(a, n, &s);
  if (rc) return rc;
  size_t nn = (size_t)n * (size_t)n;
  *cplx = s.cplx;
  *finite = s.ok;
  if (!s.ok) {
    schur_free(&s);
    return 0;
  }
  void *w = malloc(nn * (s.cplx ? sizeof(double complex) : sizeof(double)));
  if (!w) {
    schur_free(&s);
    return mmp_error_set(MMP_ENOMEM, "sqrtm: out of memory");
  }
  z_times_r(&s, w);
  for (int i = 0; i < n; i++) {
    if (!s.cplx) {
      const double *wr = w;
      double acc = 0;
      for (int k = 0; k < n; k++) acc += AT(wr, i, k, n) * AT(s.z, i, k, n);
      dre[i] = acc;
      dim[i] = 0;
    } else {
      const double complex *wc = w;
      double complex acc = 0;
      for (int k = 0; k < n; k++) acc += AT(wc, i, k, n) * conj(AT(s.cz, i, k, n));
      dre[i] = creal(acc);
      dim[i] = cimag(acc);
    }
    if (!isfinite(dre[i]) || !isfinite(dim[i])) *finite = false;
  }
  if (*finite) {
    if (!s.cplx) *finite = all_finite(w, nn);
    else *finite = all_finite(w, 2 * nn);
  }
  free(w);
  schur_free(&s);
  return 0;
}

int mmp_frechet_distance(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                         int64_t d, double *out, mmp_frechet_info_t *info) {
  return mmp_frechet_distance_method(mu1, sigma1, mu2, sigma2, d, MMP_SQRTM_SCHUR, out, info);
}

int mmp_frechet_distance_method(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                                int64_t d, mmp_sqrtm_method_t method, double *out, mmp_frechet_info_t *info) {
  if (!mu1 || !sigma1 || !mu2 || !sigma2 || !out || d < 1 || d > 65536 ||
      (method != MMP_SQRTM_SCHUR && method != MMP_SQRTM_EIGEN && method != MMP_SQRTM_AUTO))
    return mmp_error_set(MMP_EINVAL, "frechet_distance: bad arguments (d = %lld, method %d)", (long long)d,
                         (int)method);
  int n = (int)d;
  size_t nn = (size_t)n * (size_t)n;
  mmp_frechet_info_t inf = {0};
  if (method == MMP_SQRTM_AUTO) {
    method = MMP_SQRTM_EIGEN;
    for (int i = 0; i < n; i++)
      if (!(sigma1[(size_t)i * n + i] > 0) || !(sigma2[(size_t)i * n + i] > 0)) method = MMP_SQRTM_SCHUR;
  }
  inf.method = method;
  if (method == MMP_SQRTM_EIGEN) {
    double tr = 0, t1 = 0, t2 = 0, dd = 0;
    bool neg = false;
    /* symmetric inputs: their row-major and column-major views agree */
    int rc = trace_sqrt_eigen(sigma1, sigma2, n, &tr, &neg);
    if (rc == 0) {
      for (int i = 0; i < n; i++) {
        t1 += sigma1[(size_t)i * n + i];
        t2 += sigma2[(size_t)i * n + i];
        double df = mu1[i] - mu2[i];
        dd += df * df;
      }
      inf.complex_root = neg;
      inf.trace_sqrt = tr;
      *out = dd + t1 + t2 - 2 * tr;
    }
    if (info) *info = inf;
    return rc;
  }
  double *prod = malloc(nn * sizeof *prod), *dg = malloc((size_t)n * 2 * sizeof *dg);
  double *s1 = NULL, *s2 = NULL;
  int rc = 0;
  if (!prod || !dg) {
    rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory for %d x %d", n, n);
    goto out;
  }
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, sigma1, n, sigma2, n, 0.0, prod, n);
  bool cplx = false, finite = false;
  if ((rc = sqrtm_diag(prod, n, dg, dg + n, &cplx, &finite))) goto out;
  if (!finite) {
    /* pytorch-fid: "fid calculation produces singular product; adding 1e-6
     * to diagonal of cov estimates" */
    inf.eps_retry = true;
    s1 = malloc(nn * sizeof *s1);
    s2 = malloc(nn * sizeof *s2);
    if (!s1 || !s2) {
      rc = mmp_error_set(MMP_ENOMEM, "frechet_distance: out of memory");
      goto out;
    }
    memcpy(s1, sigma1, nn * sizeof *s1);
    memcpy(s2, sigma2, nn * sizeof *s2);
    for (int i = 0; i < n; i++) {
      s1[(size_t)i * n + i] += 1e-6;
      s2[(size_t)i * n + i] += 1e-6;
    }
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, s1, n, s2, n, 0.0, prod, n);
    if ((rc = sqrtm_diag(prod, n, dg, dg + n, &cplx, &finite))) goto out;
    if (!finite) {
      rc = mmp_error_set(MMP_ERUNTIME,
                         "frechet_distance: sqrtm(sigma1 sigma2) is not finite, even with 1e-6 on the diagonals");
      goto out;
    }
  }
  inf.complex_root = cplx;
  double tr = 0, t1 = 0, t2 = 0, dd = 0;
  for (int i = 0; i < n; i++) {
    double a = fabs(dg[n + i]);
    if (a > inf.max_imag_diag) inf.max_imag_diag = a;
    tr += dg[i];
    t1 += sigma1[(size_t)i * n + i];
    t2 += sigma2[(size_t)i * n + i];
    double df = mu1[i] - mu2[i];
    dd += df * df;
  }
  inf.trace_sqrt = tr;
  if (cplx && inf.max_imag_diag > 1e-3) {
    rc = mmp_error_set(MMP_ERUNTIME, "frechet_distance: Imaginary component %g on the diagonal of sqrtm(sigma1 sigma2)",
                       inf.max_imag_diag);
    goto out;
  }
  *out = dd + t1 + t2 - 2 * tr;
out:
  if (info) *info = inf;
  free(prod);
  free(dg);
  free(s1);
  free(s2);
  return rc;
}

#else /* !MMP_FRECHET_LAPACK */

int mmp_sqrtm(const double *a, int64_t d, double *re, double *im, bool *is_complex, bool *finite) {
  (void)a, (void)d, (void)re, (void)im, (void)is_complex, (void)finite;
  return mmp_error_set(MMP_EUNSUPPORTED, "sqrtm: built without LAPACK (install libopenblas-dev and reconfigure)");
}

int mmp_frechet_distance(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                         int64_t d, double *out, mmp_frechet_info_t *info) {
  return mmp_frechet_distance_method(mu1, sigma1, mu2, sigma2, d, MMP_SQRTM_SCHUR, out, info);
}

int mmp_frechet_distance_method(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                                int64_t d, mmp_sqrtm_method_t method, double *out, mmp_frechet_info_t *info) {
  (void)mu1, (void)sigma1, (void)mu2, (void)sigma2, (void)d, (void)method, (void)out;
  if (info) memset(info, 0, sizeof *info);
  return mmp_error_set(MMP_EUNSUPPORTED,
                       "frechet_distance: built without LAPACK (install libopenblas-dev and reconfigure)");
}

#endif
