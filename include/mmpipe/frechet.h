/* mmpipe/frechet.h - feature statistics and the Frechet distance (FID).
 *
 * The numbers of pytorch-fid's calculate_activation_statistics and
 * calculate_frechet_distance (and AR-LDM's copy of them), in double
 * precision. The matrix square root uses LAPACK (OpenBLAS's): the real
 * Schur form (dgees), converted to the complex Schur form where it has 2x2
 * blocks (as scipy's rsf2csf), the upper-triangular square root by the
 * column recurrence, then the back-transform (doc/evaluation.md compares it
 * with scipy 1.10's blocked sqrtm). mmp_frechet_distance_method() also has
 * a fast method for covariances (a symmetric eigenproblem, about a second
 * at d = 2048) and an automatic choice between the two.
 *
 *   double *mu = malloc(d * sizeof *mu), *sigma = malloc(d * d * sizeof *sigma);
 *   mmp_feature_stats(feats, n, d, mu, sigma);       // n rows of d floats
 *   double fid;
 *   mmp_frechet_distance(mu, sigma, mu2, sigma2, d, &fid, NULL);
 *
 * Without LAPACK (configure found no OpenBLAS) the distance returns
 * MMP_EUNSUPPORTED.
 */
#ifndef MMPIPE_FRECHET_H
#define MMPIPE_FRECHET_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Mean over rows (@mu, d doubles) and covariance with the n-1 denominator
 * (@sigma, d*d doubles, row-major, symmetric) of @n rows of @d f32
 * features, computed in double as numpy's mean and cov on the f64 array.
 * @n >= 2. Returns 0, MMP_EINVAL (n < 2, d < 1) or MMP_ENOMEM. */
int mmp_feature_stats(const float *feat, int64_t n, int64_t d, double *mu, double *sigma);

/* What the distance did (nullable out-parameter of mmp_frechet_distance). */
typedef struct mmp_frechet_info {
  bool eps_retry;    /* sqrtm(s1 s2) was not finite: retried with eps on both diagonals */
  bool complex_root; /* the square root was complex (its real part was kept) */
  double max_imag_diag; /* largest |imag| on the root's diagonal (0 when real) */
  double trace_sqrt;    /* trace of the real part of sqrtm(s1 s2) */
  int method;           /* the mmp_sqrtm_method_t that computed it (SCHUR or EIGEN) */
} mmp_frechet_info_t;

/* ||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)) into @out, as
 * calculate_frechet_distance: when the root of s1 s2 is not finite, retry
 * with 1e-6 added to both diagonals; a complex root whose diagonal has an
 * imaginary part above 1e-3 is MMP_ERUNTIME ("Imaginary component"),
 * otherwise its real part is used. Matrices are d*d row-major doubles.
 * Returns 0, MMP_EINVAL, MMP_ENOMEM, MMP_ERUNTIME or MMP_EUNSUPPORTED. */
int mmp_frechet_distance(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                         int64_t d, double *out, mmp_frechet_info_t *info);

/* How tr(sqrtm(s1 s2)) is computed. */
typedef enum mmp_sqrtm_method {
  /* scipy 1.10's sqrtm: Schur form of the product, its triangular root,
   * the eps retry and the imaginary-diagonal check (pytorch-fid exactly;
   * O(25 d^3) flops: about a minute at d = 2048 on 2 cores) */
  MMP_SQRTM_SCHUR = 0,
  /* a symmetric eigenproblem: s1 = F1 F1^T, s2 = F2 F2^T (pivoted Cholesky),
   * tr sqrt(s1 s2) = sum sqrt(eig(C C^T)), C = F1^T F2 (negative
   * eigenvalues count 0, as the real part of their imaginary roots); no
   * retry, no imaginary check; for covariances (positive semidefinite) only
   * (doc/evaluation.md; about a second at d = 2048 on 2 cores) */
  MMP_SQRTM_EIGEN = 1,
  /* EIGEN, except where a covariance has a diagonal entry <= 0 (a feature
   * constant over a set: the case in which scipy's root of the product can
   * fail and pytorch-fid retries with eps), there SCHUR */
  MMP_SQRTM_AUTO = 2
} mmp_sqrtm_method_t;

/* mmp_frechet_distance with a choice of @method. */
int mmp_frechet_distance_method(const double *mu1, const double *sigma1, const double *mu2, const double *sigma2,
                                int64_t d, mmp_sqrtm_method_t method, double *out, mmp_frechet_info_t *info);

/* The principal square root of the real d*d row-major matrix @a as scipy's
 * sqrtm(a, disp=False) returns it: @re and @im (d*d each, @im nullable)
 * receive its real and imaginary parts; @is_complex whether the root is
 * complex; @finite whether every entry is finite (a zero pivot of the
 * recurrence with a nonzero numerator gives NaN everywhere, as scipy's
 * SqrtmError path). Returns 0, MMP_EINVAL, MMP_ENOMEM, MMP_ERUNTIME (LAPACK
 * failed) or MMP_EUNSUPPORTED. */
int mmp_sqrtm(const double *a, int64_t d, double *re, double *im, bool *is_complex, bool *finite);

#ifdef __cplusplus
}
#endif
#endif
