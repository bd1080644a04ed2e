/* plugins/schedulers/sigmas.c - the sigma schedule of euler and euler_ancestral (diffusers 0.19.3). */
#include "plugins/schedulers/sigmas.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

float *sched_train_sigmas(const sched_common_t *c) {
  int64_t T = c->num_train_timesteps;
  float *s = malloc((size_t)T * sizeof *s);
  if (!s) {
    mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
    return NULL;
  }
  for (int64_t i = 0; i < T; i++) {
    float a = c->alphas_cumprod[i];
    s[i] = sqrtf((1.0f - a) / a);
  }
  return s;
}

void sched_sigmas_free(sched_sigmas_t *s) {
  free(s->timesteps_f);
  free(s->timesteps);
  free(s->sigmas);
  memset(s, 0, sizeof *s);
}

int sched_sigmas_build(const sched_common_t *c, int64_t n, bool interp_log_linear, bool karras,
                       sched_sigmas_t *out) {
  int64_t T = c->num_train_timesteps;
  memset(out, 0, sizeof *out);
  /* timesteps (float64, numpy) */
  int64_t len = n;
  double ratio_f = (double)T / (double)n;
  if (c->spacing == SCHED_SPACING_TRAILING) len = sched_np_arange((double)T, 0.0, -ratio_f, NULL);
  if (len < 1) return mmp_error_set(MMP_EINVAL, "%s: empty schedule", c->plugin);
  double *tf = malloc((size_t)len * sizeof *tf);
  float *train = sched_train_sigmas(c);
  double *sig = malloc((size_t)(len + 1) * sizeof *sig);
  float *log_train = malloc((size_t)T * sizeof *log_train);
  if (!tf || !train || !sig || !log_train) {
    free(tf);
    free(train);
    free(sig);
    free(log_train);
    return mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
  }
  if (c->spacing == SCHED_SPACING_LINSPACE) {
    double *v = sig; /* scratch */
    sched_np_linspace(0.0, (double)(T - 1), n, v);
    for (int64_t i = 0; i < n; i++) tf[i] = v[n - 1 - i];
  } else if (c->spacing == SCHED_SPACING_LEADING) {
    int64_t ratio = T / n;
    for (int64_t i = 0; i < n; i++) tf[i] = (double)((n - 1 - i) * ratio) + (double)c->steps_offset;
  } else {
    sched_np_arange((double)T, 0.0, -ratio_f, tf);
    for (int64_t i = 0; i < len; i++) tf[i] = sched_np_round(tf[i]) - 1.0;
  }
  for (int64_t i = 0; i < T; i++) log_train[i] = logf(train[i]);

  size_t nsig;
  float *sigmas = NULL;
  double *insig = NULL; /* the sigmas before the trailing 0, as float64 */
  size_t nin = 0;
  float *lin = NULL;
  if (!interp_log_linear) {
    /* np.interp(timesteps, arange(T), sigmas) */
    for (int64_t i = 0; i < len; i++) {
      double x = tf[i];
      if (x <= 0) {
        sig[i] = train[0];
      } else if (x >= (double)(T - 1)) {
        sig[i] = train[T - 1];
      } else {
        int64_t j = (int64_t)floor(x);
        if ((double)j == x) {
          sig[i] = train[j];
        } else {
          double slope = ((double)train[j + 1] - (double)train[j]) / 1.0;
          sig[i] = slope * (x - (double)j) + (double)train[j];
        }
      }
    }
    insig = sig;
    nin = (size_t)len;
  } else {
    /* torch.linspace(log(sigmas[-1]), log(sigmas[0]), n + 1).exp() in float32 */
    lin = malloc((size_t)(n + 1) * sizeof *lin);
    insig = malloc((size_t)(n + 1) * sizeof *insig);
    if (!lin || !insig) {
      free(lin);
      free(insig);
      free(tf);
      free(train);
      free(sig);
      free(log_train);
      return mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
    }
    sched_torch_linspace_f32((double)logf(train[T - 1]), (double)logf(train[0]), n + 1, lin);
    for (int64_t i = 0; i <= n; i++) insig[i] = (double)expf(lin[i]);
    nin = (size_t)(n + 1);
  }
  if (karras) {
    double *k = malloc((size_t)n * sizeof *k);
    if (!k) {
      if (insig != sig) free(insig);
      free(lin);
      free(tf);
      free(train);
      free(sig);
      free(log_train);
      return mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
    }
    sched_karras(insig[0], insig[nin - 1], n, k);
    double *tk = realloc(tf, (size_t)n * sizeof *tk);
    if (tk) {
      tf = tk;
      for (int64_t i = 0; i < n; i++) tf[i] = sched_sigma_to_t(k[i], log_train, T);
    }
    len = n;
    if (insig != sig) free(insig);
    insig = k;
    nin = (size_t)n;
  }
  nsig = nin + 1;
  sigmas = malloc(nsig * sizeof *sigmas);
  int64_t *ti = malloc((size_t)len * sizeof *ti);
  if (sigmas && ti) {
    for (size_t i = 0; i < nin; i++) sigmas[i] = (float)insig[i];
    sigmas[nin] = 0.0f;
    for (int64_t i = 0; i < len; i++) ti[i] = (int64_t)sched_np_round(tf[i]);
  }
  if (insig != sig) free(insig);
  free(lin);
  free(sig);
  free(train);
  free(log_train);
  if (!sigmas || !ti) {
    free(sigmas);
    free(ti);
    free(tf);
    return mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
  }
  for (int64_t i = 0; i < len; i++)
    if (!(tf[i] >= 0.0 && tf[i] <= (double)(T - 1))) {
      free(sigmas);
      free(ti);
      double bad = tf[i];
      free(tf);
      return sched_config_error(c->cfg,
                                c->spacing == SCHED_SPACING_LEADING ? "steps_offset"
                                                                    : "timestep_spacing",
                                "timestep %g (call %lld) lies outside [0, %lld)", bad,
                                (long long)i, (long long)T);
    }
  out->timesteps_f = tf;
  out->timesteps = ti;
  out->sigmas = sigmas;
  out->n = (size_t)len;
  out->nsig = nsig;
  return 0;
}

double sched_sigmas_init_noise(const sched_common_t *c, const sched_sigmas_t *s) {
  float mx = 0.0f;
  for (size_t i = 0; i < s->nsig; i++)
    if (s->sigmas[i] > mx) mx = s->sigmas[i];
  if (c->spacing == SCHED_SPACING_LINSPACE || c->spacing == SCHED_SPACING_TRAILING) return mx;
  return (double)sqrtf(mx * mx + 1.0f);
}

int sched_sigmas_scale_input(const sched_sigmas_t *s, size_t index, const mmp_tensor_t *sample,
                             mmp_tensor_t **out) {
  *out = NULL;
  if (!s->sigmas) return mmp_error_set(MMP_EINVAL, "scale_model_input before set_timesteps");
  if (index >= s->n)
    return mmp_error_set(MMP_EINVAL, "scale_model_input: call %zu of a %zu-step schedule", index, s->n);
  float sigma = s->sigmas[index];
  float d = sqrtf(sigma * sigma + 1.0f);
  *out = mmp_scale(sample, 1.0 / (double)d, 0.0);
  return *out ? 0 : (mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME);
}

int sched_sigmas_add_noise(const sched_common_t *c, const sched_sigmas_t *s, const mmp_tensor_t *x0,
                           const mmp_tensor_t *noise, const mmp_tensor_t *timesteps,
                           mmp_tensor_t **out) {
  *out = NULL;
  if (!s->sigmas)
    return mmp_error_set(MMP_EINVAL, "%s: add_noise looks timesteps up in the schedule: call "
                         "set_timesteps first", c->plugin);
  if (!x0 || !noise || !mmp_tensor_same_shape(x0, noise))
    return mmp_error_set(MMP_ESHAPE, "%s: add_noise: x0 and noise differ in shape", c->plugin);
  int64_t *ts, b;
  int rc = sched_read_timesteps(timesteps, &ts, &b);
  if (rc < 0) return rc;
  if (x0->ndim < 1 || (b != x0->shape[0] && b != 1)) {
    free(ts);
    return mmp_error_set(MMP_ESHAPE, "%s: add_noise: %lld timesteps for a batch of %lld", c->plugin,
                         (long long)b, (long long)(x0->ndim ? x0->shape[0] : 0));
  }
  float *sg = malloc((size_t)b * sizeof *sg);
  if (!sg) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; rc == 0 && i < b; i++) {
    size_t j = 0;
    /* diffusers matches exactly; the fractional Karras timesteps may differ
     * from numpy's in the last bits, so accept a match within 1e-4 */
    while (j < s->n && fabs(s->timesteps_f[j] - (double)ts[i]) > 1e-4) j++;
    if (j == s->n) {
      rc = mmp_error_set(MMP_EINVAL, "%s: add_noise: timestep %lld is not in the schedule", c->plugin,
                         (long long)ts[i]);
      break;
    }
    sg[i] = s->sigmas[j];
  }
  if (rc == 0) {
    mmp_tensor_t *ts_t = sched_batch_coeffs(sg, b, x0);
    mmp_tensor_t *q = mmp_mul(noise, ts_t);
    *out = mmp_add(x0, q);
    mmp_tensor_unref(ts_t);
    mmp_tensor_unref(q);
    if (!*out) rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  }
  free(sg);
  free(ts);
  return rc;
}
