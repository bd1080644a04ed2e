/* plugins/schedulers/common.c - beta schedules, timestep spacing, validation and tensor helpers for the schedulers. */
#include "plugins/schedulers/common.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/safetensors.h>

/* ---- config helpers ---- */

int sched_config_error(const mmp_config_t *cfg, const char *key, const char *fmt, ...) {
  char msg[512], path[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const mmp_config_t *node = cfg ? mmp_config_lookup(cfg, key) : NULL;
  const char *file = node ? mmp_config_file(node) : NULL;
  const char *where = node ? mmp_config_path(node, path, sizeof path) : NULL;
  if (!where) {
    const char *gp = cfg ? mmp_config_path(cfg, path, sizeof path) : NULL;
    static const char fallback[] = "scheduler";
    char tmp[256];
    snprintf(tmp, sizeof tmp, "%s.%s", gp && *gp ? gp : fallback, key);
    snprintf(path, sizeof path, "%s", tmp);
    where = path;
  }
  if (file)
    return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", file, mmp_config_line(node), where, msg);
  if (node && mmp_config_layer(node) == MMP_LAYER_OVERRIDE)
    return mmp_error_set(MMP_ECONFIG, "-s %s: %s", where, msg);
  if (node && mmp_config_layer(node) == MMP_LAYER_DEFAULT)
    return mmp_error_set(MMP_ECONFIG, "%s (default): %s", where, msg);
  return mmp_error_set(MMP_ECONFIG, "%s: %s", where, msg);
}

int sched_get_int(const mmp_config_t *cfg, const char *key, int64_t fallback, int64_t *out) {
  int rc = mmp_config_get_int(cfg, key, out);
  if (rc == MMP_ENOENT) {
    *out = fallback;
    mmp_error_clear();
    return 0;
  }
  return rc;
}

int sched_get_float(const mmp_config_t *cfg, const char *key, double fallback, double *out) {
  int rc = mmp_config_get_float(cfg, key, out);
  if (rc == MMP_ENOENT) {
    *out = fallback;
    mmp_error_clear();
    return 0;
  }
  if (rc == 0 && !isfinite(*out))
    return sched_config_error(cfg, key, "must be a finite number");
  return rc;
}

int sched_get_bool(const mmp_config_t *cfg, const char *key, bool fallback, bool *out) {
  int rc = mmp_config_get_bool(cfg, key, out);
  if (rc == MMP_ENOENT) {
    *out = fallback;
    mmp_error_clear();
    return 0;
  }
  return rc;
}

int sched_get_string(const mmp_config_t *cfg, const char *key, const char *fallback,
                     const char **out) {
  int rc = mmp_config_get_string(cfg, key, out);
  if (rc == MMP_ENOENT) {
    *out = fallback;
    mmp_error_clear();
    return 0;
  }
  return rc;
}

int sched_get_enum(const mmp_config_t *cfg, const char *key, const char *fallback,
                   const char *const *names, int *out) {
  const char *s;
  int rc = sched_get_string(cfg, key, fallback, &s);
  if (rc < 0) return rc;
  for (int i = 0; names[i]; i++)
    if (strcmp(s, names[i]) == 0) {
      *out = i;
      return 0;
    }
  char list[256] = "";
  for (int i = 0; names[i]; i++) {
    if (i) strncat(list, ", ", sizeof list - strlen(list) - 1);
    strncat(list, names[i], sizeof list - strlen(list) - 1);
  }
  return sched_config_error(cfg, key, "unknown value \"%s\" (one of: %s)", s, list);
}

/* ---- numpy / torch reproductions ---- */

void sched_np_linspace(double start, double stop, int64_t num, double *out) {
  if (num <= 0) return;
  if (num == 1) {
    out[0] = start;
    return;
  }
  double delta = stop - start;
  double step = delta / (double)(num - 1);
  for (int64_t i = 0; i < num; i++) {
    double y = step == 0.0 ? (double)i / (double)(num - 1) * delta : (double)i * step;
    out[i] = y + start;
  }
  out[num - 1] = stop;
}

int64_t sched_np_arange(double start, double stop, double step, double *out) {
  double tmp = (stop - start) / step;
  int64_t len;
  if (tmp == 0.0 && stop - start != 0.0)
    len = signbit(tmp) ? 0 : 1;
  else
    len = (int64_t)ceil(tmp);
  if (len <= 0) return 0;
  if (out) {
    out[0] = start;
    if (len > 1) {
      double next = start + step;
      out[1] = next;
      double d = next - start;
      for (int64_t i = 2; i < len; i++) out[i] = start + (double)i * d;
    }
  }
  return len;
}

double sched_np_round(double x) { return nearbyint(x); }

/* The CPU kernel of torch 1.13 (AVX2 build, the capability Debian's torch
 * uses on x86-64): blocks of 2 x 8 lanes from a base (start + step * idx
 * below the half, end - step * (steps - idx - 1) above), each lane base +
 * k * step, all fused multiply-adds; the scalar tail uses the same formula
 * per element. Matches torch bit for bit on AVX2 machines for the schedules
 * we use; elsewhere within one ulp. */
void sched_torch_linspace_f32(double start, double end, int64_t steps, float *out) {
  float s = (float)start, e = (float)end;
  if (steps <= 0) return;
  if (steps == 1) {
    out[0] = s;
    return;
  }
  float step = (e - s) / (float)(steps - 1);
  int64_t half = steps / 2, i = 0;
  while (i + 16 <= steps) {
    for (int blk = 0; blk < 2; blk++, i += 8) {
      float base = i < half ? fmaf(step, (float)i, s) : fmaf(-step, (float)(steps - i - 1), e);
      for (int k = 0; k < 8; k++) out[i + k] = fmaf((float)k, step, base);
    }
  }
  for (; i < steps; i++)
    out[i] = i < half ? fmaf(step, (float)i, s) : fmaf(-step, (float)(steps - i - 1), e);
}

void sched_karras(double in_first, double in_last, int64_t n, double *out) {
  const double rho = 7.0;
  double max_inv_rho = pow(in_first, 1.0 / rho);
  double min_inv_rho = pow(in_last, 1.0 / rho);
  sched_np_linspace(0.0, 1.0, n, out);
  for (int64_t i = 0; i < n; i++) out[i] = pow(max_inv_rho + out[i] * (min_inv_rho - max_inv_rho), rho);
}

double sched_sigma_to_t(double sigma, const float *log_sigmas, int64_t T) {
  double log_sigma = log(sigma);
  /* cumsum(dists >= 0).argmax(): the last index with log_sigma >= ls[i],
   * or 0 when there is none; clipped to T - 2 */
  int64_t low = 0;
  for (int64_t i = 0; i < T; i++)
    if (log_sigma - (double)log_sigmas[i] >= 0) low = i;
  if (low > T - 2) low = T - 2;
  if (low < 0) low = 0;
  int64_t high = low + 1;
  double lo = log_sigmas[low], hi = log_sigmas[high];
  double w = (lo - log_sigma) / (lo - hi);
  if (w < 0) w = 0;
  if (w > 1) w = 1;
  return (1 - w) * (double)low + w * (double)high;
}

/* ---- beta schedules ---- */

static int read_betas_text(const char *path, double **out, int64_t *n) {
  FILE *f = fopen(path, "r");
  if (!f) return mmp_error_set(MMP_EIO, "cannot open %s: %s", path, strerror(errno));
  size_t cap = 1024, len = 0;
  double *v = malloc(cap * sizeof *v);
  char line[4096];
  int lineno = 0, rc = 0;
  while (v && fgets(line, sizeof line, f)) {
    lineno++;
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *p = line;
    for (;;) {
      while (*p && (isspace((unsigned char)*p) || *p == ',' || *p == '[' || *p == ']')) p++;
      if (!*p) break;
      char *end;
      errno = 0;
      double x = strtod(p, &end);
      if (end == p || errno == ERANGE) {
        rc = mmp_error_set(MMP_EDATA, "%s:%d: not a number: \"%.20s\"", path, lineno, p);
        break;
      }
      if (len == cap) {
        cap *= 2;
        double *nv = realloc(v, cap * sizeof *nv);
        if (!nv) break;
        v = nv;
      }
      v[len++] = x;
      p = end;
    }
    if (rc) break;
  }
  fclose(f);
  if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory reading %s", path);
  if (rc) {
    free(v);
    return rc;
  }
  *out = v;
  *n = (int64_t)len;
  return 0;
}

static int read_betas_safetensors(const char *path, double **out, int64_t *n) {
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) return mmp_error_code() ? mmp_error_code() : MMP_EIO;
  int rc = 0;
  if (mmp_safetensors_count(st) != 1) {
    rc = mmp_error_set(MMP_EDATA, "%s: expected exactly one tensor, found %zu", path,
                       mmp_safetensors_count(st));
    goto done;
  }
  const char *name = mmp_safetensors_name(st, 0);
  mmp_dtype_t dt;
  int ndim;
  int64_t shape[MMP_MAX_DIMS];
  rc = mmp_safetensors_info(st, name, &dt, &ndim, shape);
  if (rc < 0) goto done;
  int64_t count = 1;
  for (int i = 0; i < ndim; i++) count *= shape[i];
  if (ndim != 1) {
    rc = mmp_error_set(MMP_EDATA, "%s: tensor \"%s\" must be 1-D, has %d dims", path, name, ndim);
    goto done;
  }
  double *v = malloc((size_t)(count ? count : 1) * sizeof *v);
  if (!v) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory reading %s", path);
    goto done;
  }
  if (dt == MMP_F64) {
    /* keep the file's doubles: torch.tensor(list, float32) rounds once */
    mmp_tensor_t *t = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_DTYPE_COUNT);
    if (t && t->dtype == MMP_F64) {
      rc = mmp_tensor_to_host(t, v, (size_t)count * sizeof(double));
      mmp_tensor_unref(t);
      if (rc == 0) goto ok;
    } else {
      mmp_tensor_unref(t);
    }
    mmp_error_clear();
  }
  {
    mmp_tensor_t *t = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_F32);
    if (!t) {
      free(v);
      rc = mmp_error_code() ? mmp_error_code() : MMP_EDATA;
      goto done;
    }
    float *fv = malloc((size_t)(count ? count : 1) * sizeof *fv);
    rc = fv ? mmp_tensor_to_host(t, fv, (size_t)count * sizeof(float)) : MMP_ENOMEM;
    for (int64_t i = 0; rc == 0 && i < count; i++) v[i] = fv[i];
    free(fv);
    mmp_tensor_unref(t);
    if (rc < 0) {
      free(v);
      goto done;
    }
  }
ok:
  *out = v;
  *n = count;
done:
  mmp_safetensors_close(st);
  return rc;
}

static int load_trained_betas(sched_common_t *c, const char *path) {
  double *v = NULL;
  int64_t n = 0;
  size_t len = strlen(path);
  int rc = (len > 12 && strcmp(path + len - 12, ".safetensors") == 0)
               ? read_betas_safetensors(path, &v, &n)
               : read_betas_text(path, &v, &n);
  if (rc < 0)
    return sched_config_error(c->cfg, "trained_betas", "%s", mmp_error_last());
  if (n != c->num_train_timesteps) {
    free(v);
    return sched_config_error(c->cfg, "trained_betas",
                              "%s holds %lld betas but num_train_timesteps is %lld", path,
                              (long long)n, (long long)c->num_train_timesteps);
  }
  for (int64_t i = 0; i < n; i++) {
    float b = (float)v[i];
    if (!(b > 0.0f && b < 1.0f)) {
      free(v);
      return sched_config_error(c->cfg, "trained_betas",
                                "%s: beta %lld is %g; betas must lie in (0, 1)", path,
                                (long long)i, (double)b);
    }
    c->betas[i] = b;
  }
  free(v);
  return 0;
}

static void cumprod_f32(const float *alphas, int64_t n, float *out) {
  double acc = 1.0; /* torch's CPU cumprod accumulates float in double */
  for (int64_t i = 0; i < n; i++) {
    acc *= (double)alphas[i];
    out[i] = (float)acc;
  }
}

static void rescale_zero_terminal_snr(float *betas, int64_t T) {
  float *a = malloc((size_t)T * sizeof *a), *ac = malloc((size_t)T * sizeof *ac);
  if (!a || !ac) {
    free(a);
    free(ac);
    return;
  }
  for (int64_t i = 0; i < T; i++) a[i] = 1.0f - betas[i];
  cumprod_f32(a, T, ac);
  for (int64_t i = 0; i < T; i++) ac[i] = sqrtf(ac[i]);
  float s0 = ac[0], sT = ac[T - 1];
  float k = s0 / (s0 - sT);
  for (int64_t i = 0; i < T; i++) {
    ac[i] = ac[i] - sT;
    ac[i] = ac[i] * k;
  }
  for (int64_t i = 0; i < T; i++) ac[i] = ac[i] * ac[i];
  a[0] = ac[0];
  for (int64_t i = 1; i < T; i++) a[i] = ac[i] / ac[i - 1];
  for (int64_t i = 0; i < T; i++) betas[i] = 1.0f - a[i];
  free(a);
  free(ac);
}

int sched_common_init(sched_common_t *c, const char *plugin, const mmp_config_t *cfg,
                      unsigned flags) {
  static const char *const preds[] = {"epsilon", "v_prediction", "sample", NULL};
  static const char *const spacings[] = {"leading", "linspace", "trailing", NULL};
  static const char *const schedules3[] = {"linear", "scaled_linear", "squaredcos_cap_v2", NULL};
  static const char *const schedules4[] = {"linear", "scaled_linear", "squaredcos_cap_v2",
                                           "sigmoid", NULL};
  memset(c, 0, sizeof *c);
  c->plugin = plugin;
  c->cfg = cfg;
  int rc, pred, spacing, schedule;
  if ((rc = sched_get_int(cfg, "num_train_timesteps", 1000, &c->num_train_timesteps)) < 0) return rc;
  if (c->num_train_timesteps < 2 || c->num_train_timesteps > 100000000)
    return sched_config_error(cfg, "num_train_timesteps", "must be in [2, 1e8], not %lld",
                              (long long)c->num_train_timesteps);
  if ((rc = sched_get_int(cfg, "num_inference_steps", 50, &c->num_inference_steps)) < 0) return rc;
  if (c->num_inference_steps < 1)
    return sched_config_error(cfg, "num_inference_steps", "must be at least 1, not %lld",
                              (long long)c->num_inference_steps);
  if (c->num_inference_steps > c->num_train_timesteps)
    return sched_config_error(cfg, "num_inference_steps",
                              "%lld exceeds num_train_timesteps (%lld)",
                              (long long)c->num_inference_steps,
                              (long long)c->num_train_timesteps);
  if ((rc = sched_get_float(cfg, "beta_start", 0.0001, &c->beta_start)) < 0) return rc;
  if ((rc = sched_get_float(cfg, "beta_end", 0.02, &c->beta_end)) < 0) return rc;
  if ((rc = sched_get_enum(cfg, "prediction_type", "epsilon", preds, &pred)) < 0) return rc;
  c->prediction = (sched_pred_t)pred;
  if (c->prediction == SCHED_PRED_SAMPLE && (flags & SCHED_NO_PRED_SAMPLE))
    return sched_config_error(cfg, "prediction_type",
                              "\"sample\" is not supported by %s (diffusers 0.19.3 neither)",
                              plugin);
  if ((rc = sched_get_enum(cfg, "timestep_spacing", "leading", spacings, &spacing)) < 0) return rc;
  c->spacing = (sched_spacing_t)spacing;
  if ((rc = sched_get_int(cfg, "steps_offset", 0, &c->steps_offset)) < 0) return rc;
  if (c->steps_offset < 0 || c->steps_offset >= c->num_train_timesteps)
    return sched_config_error(cfg, "steps_offset", "must be in [0, num_train_timesteps), not %lld",
                              (long long)c->steps_offset);
  if (flags & SCHED_HAS_THRESHOLD) {
    if ((rc = sched_get_bool(cfg, "thresholding", false, &c->thresholding)) < 0) return rc;
    if ((rc = sched_get_float(cfg, "dynamic_thresholding_ratio", 0.995, &c->dyn_ratio)) < 0) return rc;
    if ((rc = sched_get_float(cfg, "sample_max_value", 1.0, &c->sample_max_value)) < 0) return rc;
    if (c->thresholding && !(c->dyn_ratio >= 0.0 && c->dyn_ratio <= 1.0))
      return sched_config_error(cfg, "dynamic_thresholding_ratio", "must be in [0, 1], not %g",
                                c->dyn_ratio);
    if (c->thresholding && !(c->sample_max_value >= 1.0))
      return sched_config_error(cfg, "sample_max_value", "must be at least 1, not %g",
                                c->sample_max_value);
  }
  if (flags & SCHED_HAS_RNG) {
    int64_t seed;
    const char *mode;
    if ((rc = sched_get_int(cfg, "seed", 0, &seed)) < 0) return rc;
    if (seed < 0) return sched_config_error(cfg, "seed", "must not be negative");
    c->seed = (uint64_t)seed;
    if ((rc = sched_get_string(cfg, "rng", "torch", &mode)) < 0) return rc;
    if (mmp_rng_mode_parse(mode, &c->rng_mode) < 0)
      return sched_config_error(cfg, "rng", "unknown generator \"%s\" (torch or philox)", mode);
  }

  int64_t T = c->num_train_timesteps;
  c->betas = malloc((size_t)T * sizeof *c->betas);
  c->alphas_cumprod = malloc((size_t)T * sizeof *c->alphas_cumprod);
  if (!c->betas || !c->alphas_cumprod) return mmp_error_set(MMP_ENOMEM, "%s: out of memory", plugin);

  char path[4096];
  rc = mmp_config_get_path(cfg, "trained_betas", path, sizeof path);
  if (rc == 0 && path[0]) {
    if ((rc = load_trained_betas(c, path)) < 0) return rc;
  } else {
    if (rc < 0 && rc != MMP_ENOENT) return rc;
    mmp_error_clear();
    if ((rc = sched_get_enum(cfg, "beta_schedule", "linear",
                             (flags & SCHED_ALLOW_SIGMOID) ? schedules4 : schedules3, &schedule)) < 0)
      return rc;
    if (schedule != 2) { /* the cosine schedule ignores beta_start/beta_end */
      if (!(c->beta_start > 0.0 && c->beta_start < 1.0))
        return sched_config_error(cfg, "beta_start", "must be in (0, 1), not %g", c->beta_start);
      if (!(c->beta_end > 0.0 && c->beta_end < 1.0))
        return sched_config_error(cfg, "beta_end", "must be in (0, 1), not %g", c->beta_end);
      if (c->beta_end < c->beta_start)
        return sched_config_error(cfg, "beta_end", "%g is smaller than beta_start (%g)",
                                  c->beta_end, c->beta_start);
    }
    switch (schedule) {
    case 0:
      sched_torch_linspace_f32(c->beta_start, c->beta_end, T, c->betas);
      break;
    case 1:
      sched_torch_linspace_f32(sqrt(c->beta_start), sqrt(c->beta_end), T, c->betas);
      for (int64_t i = 0; i < T; i++) c->betas[i] = c->betas[i] * c->betas[i];
      break;
    case 2:
      for (int64_t i = 0; i < T; i++) {
        double t1 = (double)i / (double)T, t2 = (double)(i + 1) / (double)T;
        double a1 = cos((t1 + 0.008) / 1.008 * M_PI / 2), a2 = cos((t2 + 0.008) / 1.008 * M_PI / 2);
        double b = 1 - (a2 * a2) / (a1 * a1);
        c->betas[i] = (float)(b < 0.999 ? b : 0.999);
      }
      break;
    case 3: {
      sched_torch_linspace_f32(-6.0, 6.0, T, c->betas);
      float scale = (float)(c->beta_end - c->beta_start), off = (float)c->beta_start;
      for (int64_t i = 0; i < T; i++) {
        float s = 1.0f / (1.0f + expf(-c->betas[i]));
        s = s * scale;
        c->betas[i] = s + off;
      }
      break;
    }
    }
  }
  if (flags & SCHED_ALLOW_ZERO_SNR) {
    bool zsnr;
    if ((rc = sched_get_bool(cfg, "rescale_betas_zero_snr", false, &zsnr)) < 0) return rc;
    if (zsnr) {
      if (c->prediction == SCHED_PRED_EPSILON)
        return sched_config_error(cfg, "rescale_betas_zero_snr",
                                  "zero terminal SNR needs prediction_type v_prediction or "
                                  "sample (epsilon divides by sqrt(alphas_cumprod) = 0)");
      rescale_zero_terminal_snr(c->betas, T);
    }
  }
  float *alphas = malloc((size_t)T * sizeof *alphas);
  if (!alphas) return mmp_error_set(MMP_ENOMEM, "%s: out of memory", plugin);
  for (int64_t i = 0; i < T; i++) alphas[i] = 1.0f - c->betas[i];
  cumprod_f32(alphas, T, c->alphas_cumprod);
  free(alphas);
  for (int64_t i = 0; i < T; i++)
    if (!(c->alphas_cumprod[i] >= 0.0f && c->alphas_cumprod[i] < 1.0f) ||
        (c->alphas_cumprod[i] == 0.0f && i < T - 1))
      return sched_config_error(cfg, "beta_schedule",
                                "the schedule gives alphas_cumprod[%lld] = %g (must be in (0, 1))",
                                (long long)i, (double)c->alphas_cumprod[i]);
  return 0;
}

void sched_common_free(sched_common_t *c) {
  if (!c) return;
  free(c->betas);
  free(c->alphas_cumprod);
  mmp_rng_free(c->rng);
  c->betas = c->alphas_cumprod = NULL;
  c->rng = NULL;
}

int sched_check_steps(const sched_common_t *c, int n, int64_t *out) {
  int64_t v = n == 0 ? c->num_inference_steps : n;
  if (v < 1)
    return mmp_error_set(MMP_EINVAL, "%s: num_inference_steps must be at least 1, not %lld",
                         c->plugin, (long long)v);
  if (v > c->num_train_timesteps)
    return mmp_error_set(MMP_EINVAL, "%s: num_inference_steps %lld exceeds num_train_timesteps (%lld)",
                         c->plugin, (long long)v, (long long)c->num_train_timesteps);
  *out = v;
  return 0;
}

int sched_check_range(const sched_common_t *c, const int64_t *ts, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (ts[i] < 0 || ts[i] >= c->num_train_timesteps)
      return sched_config_error(c->cfg, c->spacing == SCHED_SPACING_LEADING ? "steps_offset"
                                                                            : "timestep_spacing",
                                "timestep %lld (call %zu) lies outside [0, %lld)",
                                (long long)ts[i], i, (long long)c->num_train_timesteps);
  return 0;
}

int sched_spaced_timesteps(const sched_common_t *c, int64_t n, int64_t **out, size_t *cnt) {
  int64_t T = c->num_train_timesteps;
  int64_t len = n;
  double ratio_f = (double)T / (double)n;
  if (c->spacing == SCHED_SPACING_TRAILING) len = sched_np_arange((double)T, 0.0, -ratio_f, NULL);
  int64_t *ts = malloc((size_t)(len > 0 ? len : 1) * sizeof *ts);
  double *v = malloc((size_t)(len > 0 ? len : 1) * sizeof *v);
  if (!ts || !v) {
    free(ts);
    free(v);
    return mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
  }
  if (c->spacing == SCHED_SPACING_LINSPACE) {
    sched_np_linspace(0.0, (double)(T - 1), n, v);
    for (int64_t i = 0; i < n; i++) ts[i] = (int64_t)sched_np_round(v[n - 1 - i]);
  } else if (c->spacing == SCHED_SPACING_LEADING) {
    int64_t ratio = T / n;
    for (int64_t i = 0; i < n; i++) ts[i] = (n - 1 - i) * ratio + c->steps_offset;
  } else {
    sched_np_arange((double)T, 0.0, -ratio_f, v);
    for (int64_t i = 0; i < len; i++) ts[i] = (int64_t)sched_np_round(v[i]) - 1;
  }
  free(v);
  *out = ts;
  *cnt = (size_t)(len > 0 ? len : 0);
  return 0;
}

/* ---- tensor helpers ---- */

void sched_unref_all(mmp_tensor_t **ts, size_t n) {
  for (size_t i = 0; i < n; i++) {
    mmp_tensor_unref(ts[i]);
    ts[i] = NULL;
  }
}

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

mmp_tensor_t *sched_threshold(const sched_common_t *c, const mmp_tensor_t *x0) {
  if (!x0) return NULL;
  if (x0->ndim < 1) {
    mmp_error_set(MMP_ESHAPE, "%s: thresholding needs a batch dimension", c->plugin);
    return NULL;
  }
  int64_t B = x0->shape[0], numel = mmp_tensor_numel(x0);
  int64_t per = B ? numel / B : 0;
  if (per == 0) return mmp_clone(x0);
  mmp_tensor_t *f = x0->dtype == MMP_F32 ? mmp_tensor_ref((mmp_tensor_t *)x0) : mmp_convert(x0, MMP_F32);
  float *host = f ? malloc((size_t)numel * sizeof *host) : NULL;
  mmp_tensor_t **parts = host ? calloc((size_t)B, sizeof *parts) : NULL;
  mmp_tensor_t *res = NULL;
  if (!parts || mmp_tensor_to_host(f, host, (size_t)numel * sizeof(float)) < 0) {
    if (!mmp_error_code()) mmp_error_set(MMP_ENOMEM, "%s: out of memory", c->plugin);
    goto done;
  }
  float q = (float)c->dyn_ratio;
  for (int64_t b = 0; b < B; b++) {
    float *row = host + b * per;
    for (int64_t i = 0; i < per; i++) row[i] = fabsf(row[i]);
    qsort(row, (size_t)per, sizeof *row, cmp_float);
    /* torch.quantile(..., interpolation="linear") in float32 */
    float rank = q * (float)(per - 1);
    int64_t lo = (int64_t)rank;
    float w = rank - (float)lo;
    int64_t hi = (int64_t)ceilf(rank);
    float a = row[lo], e = row[hi], s;
    s = fabsf(w) < 0.5f ? a + w * (e - a) : e - (e - a) * (1.0f - w);
    if (s < 1.0f) s = 1.0f;
    if (s > (float)c->sample_max_value) s = (float)c->sample_max_value;
    mmp_tensor_t *sl = mmp_slice(f, 0, b, b + 1, 1);
    mmp_tensor_t *cl = mmp_clamp(sl, -(double)s, (double)s);
    parts[b] = mmp_scale(cl, 1.0 / (double)s, 0.0);
    mmp_tensor_unref(sl);
    mmp_tensor_unref(cl);
    if (!parts[b]) goto done;
  }
  res = B == 1 ? mmp_tensor_ref(parts[0]) : mmp_concat(parts, (int)B, 0);
done:
  if (parts) sched_unref_all(parts, (size_t)B);
  free(parts);
  free(host);
  mmp_tensor_unref(f);
  return res;
}

mmp_tensor_t *sched_clip_or_threshold(const sched_common_t *c, mmp_tensor_t *x0, bool clip,
                                      double clip_range) {
  if (!x0) return NULL;
  mmp_tensor_t *r;
  if (c->thresholding)
    r = sched_threshold(c, x0);
  else if (clip)
    r = mmp_clamp(x0, -clip_range, clip_range);
  else
    return x0;
  mmp_tensor_unref(x0);
  return r;
}

mmp_tensor_t *sched_noise(sched_common_t *c, const mmp_tensor_t *given, const mmp_tensor_t *like) {
  if (given) {
    if (!mmp_tensor_same_shape(given, like)) {
      char a[128], b[128];
      mmp_error_set(MMP_ESHAPE, "%s: noise is %s, the sample %s", c->plugin,
                    mmp_tensor_describe(given, a, sizeof a), mmp_tensor_describe(like, b, sizeof b));
      return NULL;
    }
    return mmp_tensor_ref((mmp_tensor_t *)given);
  }
  if (!c->rng) {
    c->rng = mmp_rng_new(c->seed, c->rng_mode);
    if (!c->rng) return NULL;
  }
  return mmp_rng_randn(c->rng, mmp_tensor_backend(like), like->ndim, like->shape);
}

mmp_tensor_t *sched_batch_coeffs(const float *v, int64_t b, const mmp_tensor_t *like) {
  int64_t shape[MMP_MAX_DIMS];
  int nd = like->ndim < 1 ? 1 : like->ndim;
  shape[0] = b;
  for (int i = 1; i < nd; i++) shape[i] = 1;
  return mmp_tensor_from_data(mmp_tensor_backend(like), MMP_F32, nd, shape, v);
}

int sched_read_timesteps(const mmp_tensor_t *t, int64_t **out, int64_t *n) {
  if (!t || t->ndim > 1)
    return mmp_error_set(MMP_ESHAPE, "timesteps must be a 1-D tensor");
  if (t->dtype != MMP_I64 && t->dtype != MMP_I32)
    return mmp_error_set(MMP_EDTYPE, "timesteps must be i64 or i32, not %s", mmp_dtype_name(t->dtype));
  int64_t cnt = t->ndim == 0 ? 1 : t->shape[0];
  int64_t *v = malloc((size_t)(cnt ? cnt : 1) * sizeof *v);
  if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; i < cnt; i++) {
    int64_t idx = i;
    v[i] = (int64_t)mmp_tensor_get(t, &idx);
  }
  *out = v;
  *n = cnt;
  return 0;
}

int sched_add_noise_alphas(const sched_common_t *c, const mmp_tensor_t *x0,
                           const mmp_tensor_t *noise, const mmp_tensor_t *timesteps,
                           mmp_tensor_t **out) {
  *out = NULL;
  if (!x0 || !noise || !timesteps) return mmp_error_set(MMP_EINVAL, "%s: add_noise: NULL tensor", c->plugin);
  if (!mmp_tensor_same_shape(x0, noise))
    return mmp_error_set(MMP_ESHAPE, "%s: add_noise: x0 and noise differ in shape", c->plugin);
  int64_t *ts, b;
  int rc = sched_read_timesteps(timesteps, &ts, &b);
  if (rc < 0) return rc;
  if (x0->ndim < 1 || (b != x0->shape[0] && b != 1)) {
    free(ts);
    return mmp_error_set(MMP_ESHAPE, "%s: add_noise: %lld timesteps for a batch of %lld", c->plugin,
                         (long long)b, (long long)(x0->ndim ? x0->shape[0] : 0));
  }
  float *sa = malloc((size_t)b * sizeof *sa), *sb = malloc((size_t)b * sizeof *sb);
  if (!sa || !sb) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; rc == 0 && i < b; i++) {
    if (ts[i] < 0 || ts[i] >= c->num_train_timesteps) {
      rc = mmp_error_set(MMP_EINVAL, "%s: add_noise: timestep %lld outside [0, %lld)", c->plugin,
                         (long long)ts[i], (long long)c->num_train_timesteps);
      break;
    }
    float a = c->alphas_cumprod[ts[i]];
    sa[i] = sqrtf(a);
    sb[i] = sqrtf(1.0f - a);
  }
  if (rc == 0) {
    mmp_tensor_t *ta = sched_batch_coeffs(sa, b, x0), *tb = sched_batch_coeffs(sb, b, x0);
    mmp_tensor_t *p = mmp_mul(ta, x0), *q = mmp_mul(tb, noise);
    *out = mmp_add(p, q);
    mmp_tensor_unref(ta);
    mmp_tensor_unref(tb);
    mmp_tensor_unref(p);
    mmp_tensor_unref(q);
    if (!*out) rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  }
  free(sa);
  free(sb);
  free(ts);
  return rc;
}

int sched_plain_timesteps(const sched_common_t *c, int num_inference_steps, int64_t **out,
                          size_t *cnt, int64_t *steps) {
  int rc = sched_check_steps(c, num_inference_steps, steps);
  if (rc < 0) return rc;
  if ((rc = sched_spaced_timesteps(c, *steps, out, cnt)) < 0) return rc;
  if ((rc = sched_check_range(c, *out, *cnt)) < 0) {
    free(*out);
    *out = NULL;
  }
  return rc;
}

int sched_check_index(const sched_common_t *c, bool ready, size_t index, size_t n) {
  if (!ready) return mmp_error_set(MMP_EINVAL, "%s: step before set_timesteps", c->plugin);
  if (index >= n)
    return mmp_error_set(MMP_EINVAL, "%s: step %zu of a %zu-step schedule", c->plugin, index, n);
  return 0;
}

int sched_step_begin(const sched_common_t *c, bool ready, size_t index, size_t n,
                     const mmp_tensor_t *mo, const mmp_tensor_t *sample, mmp_tensor_t **prev_out,
                     mmp_tensor_t **pred_out) {
  *prev_out = NULL;
  if (pred_out) *pred_out = NULL;
  int rc = sched_check_index(c, ready, index, n);
  if (rc < 0) return rc;
  if (mo && !mmp_tensor_same_shape(mo, sample))
    return mmp_error_set(MMP_ESHAPE, "%s: model output and sample differ in shape", c->plugin);
  return 0;
}

int sched_step_end(mmp_tensor_t *prev, mmp_tensor_t *x0, mmp_tensor_t **prev_out,
                   mmp_tensor_t **pred_out) {
  if (!prev) {
    mmp_tensor_unref(x0);
    return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  }
  *prev_out = prev;
  if (pred_out)
    *pred_out = x0;
  else
    mmp_tensor_unref(x0);
  return 0;
}
