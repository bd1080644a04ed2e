/* tests/test_plugin_schedulers.c - the six scheduler plugins against diffusers 0.19.3 golden data and their config errors.
 *
 * Golden data: tests/fixtures/schedulers/ (tests/gen_schedulers.py). Each
 * case runs through the registry, mmp_component_create and the `pipeline
 * forward` scheduler driver. Tolerances: timesteps identical; every step's
 * sample / pred_original_sample / noisy within 1e-5 * max|expected| of that
 * step; fractional model timesteps within 1e-4; init_noise_sigma within
 * 1e-6 relative.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tap.h"
#include "tools/commands.h"

#define REL_TOL 1e-5

static char fixdir[4096];
static mmp_registry_t *reg;

static const mmp_scheduler_ops_t *ops_of(const mmp_component_t *c) {
  return (const mmp_scheduler_ops_t *)c->plugin;
}

/* Build the scheduler of a parsed config. Returns NULL with the message set. */
static mmp_component_t *make(mmp_config_t *cfg, mmp_context_t **ctx_out) {
  mmp_context_t *ctx = mmp_context_new(reg, cfg);
  mmp_component_t *comp = NULL;
  if (ctx && mmp_context_validate_component(ctx, MMP_KIND_SCHEDULER, "scheduler") == 0)
    comp = mmp_component_create(ctx, MMP_KIND_SCHEDULER, "scheduler");
  if (!comp) {
    mmp_context_free(ctx);
    ctx = NULL;
  }
  *ctx_out = ctx;
  return comp;
}

/* max |a - b| over a row relative to max |b|; row i of [N, ...] (or the
 * whole tensor when i < 0) */
static double row_err(const mmp_tensor_t *a, const mmp_tensor_t *b, int64_t i, double *maxabs) {
  int64_t n = mmp_tensor_numel(b), per = (i < 0 || b->ndim == 0) ? n : n / b->shape[0];
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  mmp_tensor_t *af = mmp_convert(a, MMP_F32), *bf = mmp_convert(b, MMP_F32);
  double err = INFINITY, mx = 0;
  if (x && y && af && bf && mmp_tensor_to_host(af, x, (size_t)n * 4) == 0 &&
      mmp_tensor_to_host(bf, y, (size_t)n * 4) == 0) {
    int64_t off = i < 0 ? 0 : i * per;
    err = 0;
    for (int64_t k = off; k < off + per; k++) {
      double d = fabs((double)x[k] - (double)y[k]);
      if (isnan(x[k])) d = INFINITY;
      if (d > err) err = d;
      if (fabs((double)y[k]) > mx) mx = fabs((double)y[k]);
    }
  }
  free(x);
  free(y);
  mmp_tensor_unref(af);
  mmp_tensor_unref(bf);
  *maxabs = mx;
  return err;
}

/* every row of @got within REL_TOL of @want; returns 1 if fine */
static int rows_close(const char *what, const char *name, const mmp_tensor_t *got,
                      const mmp_tensor_t *want) {
  if (!got) {
    diag("%s: %s missing", name, what);
    return 0;
  }
  if (!mmp_tensor_same_shape(got, want)) {
    char a[128], b[128];
    diag("%s: %s is %s, want %s", name, what, mmp_tensor_describe(got, a, sizeof a),
         mmp_tensor_describe(want, b, sizeof b));
    return 0;
  }
  int64_t rows = want->ndim ? want->shape[0] : 1;
  for (int64_t i = 0; i < rows; i++) {
    double mx, e = row_err(got, want, want->ndim >= 2 ? i : -1, &mx);
    if (!(e <= REL_TOL * mx)) {
      diag("%s: %s row %lld: max error %.3g > %.3g (max |want| %.3g)", name, what, (long long)i, e,
           REL_TOL * mx, mx);
      return 0;
    }
    if (want->ndim < 2) break;
  }
  return 1;
}

static mmp_tensormap_t *load(const char *path, bool f64_to_f32) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), f64_to_f32, m) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

static int run_case(const char *name) {
  char path[4200];
  int good = 1;
  snprintf(path, sizeof path, "%s/%s.cfg", fixdir, name);
  mmp_config_t *cfg = mmp_config_load(path);
  snprintf(path, sizeof path, "%s/%s.in.safetensors", fixdir, name);
  mmp_tensormap_t *in = load(path, true);
  snprintf(path, sizeof path, "%s/%s.out.safetensors", fixdir, name);
  mmp_tensormap_t *want = load(path, false);
  mmp_tensormap_t *out = mmp_tensormap_new();
  mmp_context_t *ctx = NULL;
  mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
  if (!cfg || !in || !want || !comp) {
    diag("%s: %s", name, mmp_error_last());
    good = 0;
    goto done;
  }
  int64_t steps = 50;
  mmp_config_get_int(mmp_config_lookup(cfg, "scheduler"), "num_inference_steps", &steps);
  if (pipe_forward_scheduler(comp, steps, in, out) < 0) {
    diag("%s: forward: %s", name, mmp_error_last());
    good = 0;
    goto done;
  }
  /* timesteps identical */
  mmp_tensor_t *wt = mmp_tensormap_get(want, "timesteps"), *gt = mmp_tensormap_get(out, "timesteps");
  if (!gt || !mmp_tensor_same_shape(gt, wt)) {
    diag("%s: timesteps shape differs", name);
    good = 0;
  } else {
    for (int64_t i = 0; i < wt->shape[0]; i++) {
      int64_t ix = i;
      if (mmp_tensor_get(gt, &ix) != mmp_tensor_get(wt, &ix)) {
        diag("%s: timestep %lld is %g, want %g", name, (long long)i, mmp_tensor_get(gt, &ix),
             mmp_tensor_get(wt, &ix));
        good = 0;
        break;
      }
    }
  }
  good &= rows_close("samples", name, mmp_tensormap_get(out, "samples"),
                     mmp_tensormap_get(want, "samples"));
  mmp_tensor_t *wp = mmp_tensormap_get(want, "pred_original_samples");
  mmp_tensor_t *gp = mmp_tensormap_get(out, "pred_original_samples");
  if (wp)
    good &= rows_close("pred_original_samples", name, gp, wp);
  else if (gp) {
    diag("%s: unexpected pred_original_samples", name);
    good = 0;
  }
  mmp_tensor_t *wn = mmp_tensormap_get(want, "noisy");
  if (wn) good &= rows_close("noisy", name, mmp_tensormap_get(out, "noisy"), wn);

  const mmp_scheduler_ops_t *ops = ops_of(comp);
  /* init_noise_sigma */
  mmp_tensor_t *wsig = mmp_tensormap_get(want, "init_noise_sigma");
  if (wsig) {
    int64_t z = 0;
    double w = mmp_tensor_get(wsig, &z), g = ops->init_noise_sigma ? ops->init_noise_sigma(comp->self) : 1.0;
    if (!(fabs(g - w) <= 1e-6 * fabs(w))) {
      diag("%s: init_noise_sigma %.9g, want %.9g", name, g, w);
      good = 0;
    }
  }
  /* exact model timesteps */
  mmp_tensor_t *wmt = mmp_tensormap_get(want, "model_timesteps");
  if (wmt) {
    const double *mt = NULL;
    size_t mn = 0;
    if (!ops->model_timesteps || ops->model_timesteps(comp->self, &mt, &mn) < 0 ||
        (int64_t)mn != wmt->shape[0]) {
      diag("%s: model_timesteps unavailable", name);
      good = 0;
    } else {
      for (int64_t i = 0; i < wmt->shape[0]; i++) {
        int64_t ix = i;
        if (!(fabs(mt[i] - mmp_tensor_get(wmt, &ix)) <= 1e-4)) {
          diag("%s: model timestep %lld is %.9g, want %.9g", name, (long long)i, mt[i],
               mmp_tensor_get(wmt, &ix));
          good = 0;
          break;
        }
      }
    }
  }
  /* scale_model_input of the sample before each call */
  mmp_tensor_t *wmi = mmp_tensormap_get(want, "model_inputs");
  if (wmi) {
    mmp_tensor_t *samples = mmp_tensormap_get(want, "samples");
    mmp_tensor_t *x = mmp_tensor_ref(mmp_tensormap_get(in, "sample"));
    mmp_tensor_t **rows = calloc((size_t)wmi->shape[0], sizeof *rows);
    for (int64_t i = 0; rows && i < wmi->shape[0]; i++) {
      if (ops->scale_model_input(comp->self, (size_t)i, x, &rows[i]) < 0) {
        diag("%s: scale_model_input: %s", name, mmp_error_last());
        good = 0;
        break;
      }
      mmp_tensor_t *u = mmp_unsqueeze(rows[i], 0);
      mmp_tensor_unref(rows[i]);
      rows[i] = u;
      mmp_tensor_unref(x);
      mmp_tensor_t *s = mmp_slice(samples, 0, i, i + 1, 1);
      x = mmp_squeeze(s, 0);
      mmp_tensor_unref(s);
    }
    mmp_tensor_unref(x);
    if (good && rows) {
      mmp_tensor_t *all = mmp_concat(rows, (int)wmi->shape[0], 0);
      good &= rows_close("model_inputs", name, all, wmi);
      mmp_tensor_unref(all);
    }
    for (int64_t i = 0; rows && i < wmi->shape[0]; i++) mmp_tensor_unref(rows[i]);
    free(rows);
  }
done:
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_tensormap_free(in);
  mmp_tensormap_free(want);
  mmp_tensormap_free(out);
  return good;
}

static void golden_cases(void) {
  char path[4200], line[256];
  snprintf(path, sizeof path, "%s/cases.list", fixdir);
  FILE *f = fopen(path, "r");
  if (!f) {
    ok(0, "read %s", path);
    return;
  }
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = '\0';
    if (!line[0] || line[0] == '#') continue;
    ok(run_case(line), "golden %s", line);
  }
  fclose(f);
}

/* the timestep lists of many step counts (timesteps.safetensors) */
static const char *variant_keys(const char *variant) {
  if (!strcmp(variant, "leading")) return "timestep_spacing = \"leading\";";
  if (!strcmp(variant, "linspace")) return "timestep_spacing = \"linspace\";";
  if (!strcmp(variant, "trailing")) return "timestep_spacing = \"trailing\";";
  if (!strcmp(variant, "skip_prk_leading")) return "skip_prk_steps = true;";
  if (!strcmp(variant, "skip_prk_offset1")) return "skip_prk_steps = true; steps_offset = 1;";
  if (!strcmp(variant, "leading_offset1")) return "steps_offset = 1;";
#define ARLDM "beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
  if (!strcmp(variant, "karras")) return "use_karras_sigmas = true; " ARLDM;
  if (!strcmp(variant, "lambda_clip")) return "lambda_min_clipped = -3.0; " ARLDM;
  return NULL;
}

static void timestep_table(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/timesteps.safetensors", fixdir);
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) {
    ok(0, "open %s: %s", path, mmp_error_last());
    return;
  }
  size_t count = mmp_safetensors_count(st), bad = 0, checked = 0;
  for (size_t i = 0; i < count; i++) {
    const char *name = mmp_safetensors_name(st, i);
    char plugin[64], variant[64];
    int n;
    const char *d1 = strchr(name, '.'), *d2 = d1 ? strrchr(name, '.') : NULL;
    if (!d1 || d2 == d1) continue;
    snprintf(plugin, sizeof plugin, "%.*s", (int)(d1 - name), name);
    snprintf(variant, sizeof variant, "%.*s", (int)(d2 - d1 - 1), d1 + 1);
    n = atoi(d2 + 1);
    const char *keys = variant_keys(variant);
    if (!keys) continue;
    char text[1024];
    snprintf(text, sizeof text, "scheduler = { name = \"%s\"; num_inference_steps = %d; %s };",
             plugin, n, keys);
    mmp_config_t *cfg = mmp_config_parse(text, name);
    mmp_context_t *ctx = NULL;
    mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
    mmp_tensor_t *want = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_DTYPE_COUNT);
    const int64_t *ts = NULL;
    const double *mt = NULL;
    size_t nt = 0, nm = 0;
    int good = comp && want && ops_of(comp)->set_timesteps(comp->self, n) == 0 &&
               ops_of(comp)->timesteps(comp->self, &ts, &nt) == 0 && (int64_t)nt == want->shape[0];
    if (good && want->dtype == MMP_F64) {
      good = ops_of(comp)->model_timesteps &&
             ops_of(comp)->model_timesteps(comp->self, &mt, &nm) == 0 && nm == nt;
      for (size_t k = 0; good && k < nt; k++) {
        int64_t ix = (int64_t)k;
        double w = mmp_tensor_get(want, &ix);
        good = fabs(mt[k] - w) <= 1e-4 && ts[k] == (int64_t)nearbyint(w);
      }
    } else {
      for (size_t k = 0; good && k < nt; k++) {
        int64_t ix = (int64_t)k;
        good = ts[k] == (int64_t)mmp_tensor_get(want, &ix);
      }
    }
    if (!good) {
      if (bad < 10) diag("timesteps %s differ (%s)", name, comp ? "" : mmp_error_last());
      bad++;
    }
    checked++;
    mmp_tensor_unref(want);
    mmp_component_free(comp);
    mmp_context_free(ctx);
    mmp_config_free(cfg);
  }
  mmp_safetensors_close(st);
  ok(bad == 0 && checked > 500, "timestep lists: %zu checked, %zu differ", checked, bad);
}

/* ulp distance of two floats of one sign */
static int64_t ulps(float a, float b) {
  int32_t ia, ib;
  memcpy(&ia, &a, 4);
  memcpy(&ib, &b, 4);
  return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

/* the beta schedules: sqrt(alphas_cumprod[t]) through add_noise(ones,
 * zeros, arange(T)) equals diffusers' to the last bit, but for the rare
 * element torch.linspace rounds differently on other CPUs (1 ulp) */
static void schedules(void) {
  static const struct {
    const char *name, *text;
  } v[] = {
      {"linear", "name = \"ddim\";"},
      {"scaled_linear", "name = \"ddim\"; " ARLDM},
      {"squaredcos_cap_v2", "name = \"ddim\"; beta_schedule = \"squaredcos_cap_v2\";"},
      {"sigmoid", "name = \"ddpm\"; beta_schedule = \"sigmoid\";"},
      {"zero_snr", "name = \"ddim\"; rescale_betas_zero_snr = true; prediction_type = \"v_prediction\"; " ARLDM},
      {"linear_500", "name = \"pndm\"; num_train_timesteps = 500; beta_start = 0.0002; beta_end = 0.03;"},
  };
  char path[4200];
  snprintf(path, sizeof path, "%s/schedules.safetensors", fixdir);
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
    char text[512];
    snprintf(text, sizeof text, "scheduler = { %s };", v[k].text);
    mmp_config_t *cfg = mmp_config_parse(text, v[k].name);
    mmp_context_t *ctx = NULL;
    mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
    mmp_tensor_t *want = st ? mmp_safetensors_get(st, v[k].name, cpu, MMP_F32) : NULL;
    int64_t maxu = -1, off = 0;
    if (comp && want) {
      int64_t T = want->shape[0], shp[2] = {T, 1};
      mmp_tensor_t *ones = mmp_tensor_full(cpu, MMP_F32, 2, shp, 1.0);
      mmp_tensor_t *zeros = mmp_tensor_zeros(cpu, MMP_F32, 2, shp);
      int64_t *ar = malloc((size_t)T * sizeof *ar);
      for (int64_t i = 0; ar && i < T; i++) ar[i] = i;
      mmp_tensor_t *tt = ar ? mmp_tensor_from_data(cpu, MMP_I64, 1, &T, ar) : NULL;
      mmp_tensor_t *got = NULL;
      if (tt && ops_of(comp)->add_noise(comp->self, ones, zeros, tt, &got) == 0) {
        maxu = 0;
        for (int64_t i = 0; i < T; i++) {
          int64_t ix[2] = {i, 0}, iw = i;
          int64_t u = ulps((float)mmp_tensor_get(got, ix), (float)mmp_tensor_get(want, &iw));
          if (u > maxu) maxu = u;
          if (u) off++;
        }
      }
      mmp_tensor_unref(got);
      mmp_tensor_unref(tt);
      mmp_tensor_unref(ones);
      mmp_tensor_unref(zeros);
      free(ar);
    }
    ok(maxu >= 0 && maxu <= 1, "schedule %s: sqrt(alphas_cumprod) within %lld ulp (%lld of %lld differ)",
       v[k].name, (long long)maxu, (long long)off, want ? (long long)want->shape[0] : 0LL);
    if (maxu < 0) diag("  %s", mmp_error_last());
    mmp_tensor_unref(want);
    mmp_component_free(comp);
    mmp_context_free(ctx);
    mmp_config_free(cfg);
  }
  mmp_safetensors_close(st);
}

/* a bad config value is MMP_ECONFIG naming the file, line and key */
static void expect_config_error(const char *text, const char *want_key, int want_line,
                                bool at_set_timesteps) {
  mmp_config_t *cfg = mmp_config_parse(text, "bad.cfg");
  mmp_context_t *ctx = NULL;
  mmp_error_clear();
  mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
  int rc = comp ? 0 : mmp_error_code();
  if (comp && at_set_timesteps) rc = ops_of(comp)->set_timesteps(comp->self, 0);
  char where[64];
  snprintf(where, sizeof where, "bad.cfg:%d", want_line);
  const char *msg = mmp_error_last();
  ok(rc == MMP_ECONFIG && strstr(msg, where) && strstr(msg, want_key),
     "config error for %s at %s", want_key, where);
  if (!(rc == MMP_ECONFIG && strstr(msg, where) && strstr(msg, want_key)))
    diag("  rc %d (%s): %s", rc, mmp_strerror(rc), msg);
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
}

static void config_errors(void) {
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  num_inference_steps = -5;\n};",
                      "num_inference_steps", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddpm\";\n  num_inference_steps = 2000;\n};",
                      "num_inference_steps", 3, false);
  expect_config_error("scheduler = {\n  name = \"pndm\";\n  beta_start = 0.01;\n  beta_end = 0.001;\n};",
                      "beta_end", 4, false);
  expect_config_error("scheduler = {\n  name = \"euler\";\n  beta_schedule = \"cosine\";\n};",
                      "beta_schedule", 3, false);
  expect_config_error("scheduler = {\n  name = \"dpmpp_2m\";\n\n  prediction_type = \"noise\";\n};",
                      "prediction_type", 4, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  timestep_spacing = \"uniform\";\n};",
                      "timestep_spacing", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  eta = 1.5;\n};", "eta", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  eta = -0.5;\n};", "eta", 3, false);
  expect_config_error("scheduler = {\n  name = \"dpmpp_2m\";\n  solver_order = 4;\n};",
                      "solver_order", 3, false);
  expect_config_error("scheduler = {\n  name = \"dpmpp_2m\";\n  solver_order = 3;\n"
                      "  algorithm_type = \"sde-dpmsolver++\";\n};",
                      "solver_order", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddpm\";\n  variance_type = \"fixed_large_log\";\n};",
                      "variance_type", 3, false);
  expect_config_error("scheduler = {\n  name = \"euler_ancestral\";\n  prediction_type = \"sample\";\n};",
                      "prediction_type", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  rescale_betas_zero_snr = true;\n};",
                      "rescale_betas_zero_snr", 3, false);
  expect_config_error("scheduler = {\n  name = \"pndm\";\n  num_inference_steps = 3;\n};",
                      "num_inference_steps", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  beta_start = 0.0;\n};", "beta_start",
                      3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  num_train_timesteps = 1;\n};",
                      "num_train_timesteps", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  rng = \"mt19937\";\n};", "rng", 3, false);
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  trained_betas = \"no-such-file.txt\";\n};",
                      "trained_betas", 3, false);
  /* leading timesteps pushed past the last training step by steps_offset */
  expect_config_error("scheduler = {\n  name = \"ddim\";\n  num_inference_steps = 1000;\n"
                      "  steps_offset = 1;\n};",
                      "steps_offset", 4, true);
  expect_config_error("scheduler = {\n  name = \"euler\";\n  num_inference_steps = 1000;\n"
                      "  timestep_spacing = \"leading\";\n  steps_offset = 1;\n};",
                      "steps_offset", 5, true);

  /* a trained_betas file of the wrong length */
  char text[4600];
  snprintf(text, sizeof text,
           "scheduler = {\n  name = \"ddim\";\n  num_train_timesteps = 500;\n"
           "  trained_betas = \"%s/ddim_trained_betas_txt_10.betas.txt\";\n};",
           fixdir);
  expect_config_error(text, "trained_betas", 4, false);
}

/* run-time errors: no crash, a message */
static void runtime_errors(void) {
  mmp_config_t *cfg = mmp_config_parse("scheduler = { name = \"ddim\"; num_inference_steps = 10; };", "x.cfg");
  mmp_context_t *ctx = NULL;
  mmp_component_t *comp = make(cfg, &ctx);
  ok(comp != NULL, "ddim builds");
  if (comp) {
    const mmp_scheduler_ops_t *ops = ops_of(comp);
    int64_t shape[4] = {1, 2, 3, 4}, shape5[5] = {9, 1, 2, 3, 4};
    mmp_backend_t *cpu = mmp_backend_get("cpu");
    mmp_tensor_t *x = mmp_tensor_full(cpu, MMP_F32, 4, shape, 0.5);
    mmp_tensor_t *prev = NULL, *pred = NULL;
    is_int(ops->step(comp->self, 0, x, x, NULL, &prev, &pred), MMP_EINVAL, "step before set_timesteps");
    is_int(ops->set_timesteps(comp->self, -3), MMP_EINVAL, "negative steps");
    is_int(ops->set_timesteps(comp->self, 1001), MMP_EINVAL, "more steps than training steps");
    is_int(ops->set_timesteps(comp->self, 0), 0, "set_timesteps(0) uses num_inference_steps");
    const int64_t *ts;
    size_t n;
    ops->timesteps(comp->self, &ts, &n);
    is_int(n, 10, "10 timesteps");
    is_int(ops->step(comp->self, 10, x, x, NULL, &prev, &pred), MMP_EINVAL, "step past the end");
    /* the driver rejects model outputs of the wrong count */
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    mmp_tensormap_set(in, "sample", mmp_tensor_ref(x));
    mmp_tensormap_set(in, "model_outputs", mmp_tensor_full(cpu, MMP_F32, 5, shape5, 0.1));
    is_int(pipe_forward_scheduler(comp, 10, in, out), MMP_ESHAPE, "N differs from the timesteps");
    like(mmp_error_last(), "number of model calls", "message says why");
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    mmp_tensor_unref(x);
  }
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
}

/* step_noise says where diffusers' step() draws noise (4 steps, leading
 * spacing: timesteps 750, 500, 250, 0 + steps_offset) */
static void step_noise_table(void) {
  static const struct {
    const char *keys, *want; /* want: one 0/1 per step, "" = member absent */
  } cases[] = {
      {"name = \"ddpm\"; steps_offset = 1;", "1111"},
      {"name = \"ddpm\"; steps_offset = 0;", "1110"}, /* no draw at t = 0 */
      {"name = \"ddim\"; eta = 0.0;", "0000"},
      {"name = \"ddim\"; eta = 1.0;", "1111"},
      {"name = \"euler\";", "1111"}, /* drawn even with s_churn = 0 */
      {"name = \"euler_ancestral\";", "1111"},
      {"name = \"dpmpp_2m\";", "0000"},
      {"name = \"dpmpp_2m\"; algorithm_type = \"sde-dpmsolver++\";", "1111"},
      {"name = \"pndm\"; skip_prk_steps = true;", ""},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    char text[512];
    snprintf(text, sizeof text, "scheduler = { %s timestep_spacing = \"leading\"; };", cases[k].keys);
    mmp_config_t *cfg = mmp_config_parse(text, "x.cfg");
    mmp_context_t *ctx = NULL;
    mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
    if (!ok(comp != NULL, "step_noise: %s builds", cases[k].keys)) {
      diag("%s", mmp_error_last());
      mmp_config_free(cfg);
      continue;
    }
    const mmp_scheduler_ops_t *ops = ops_of(comp);
    bool has = ops->base.struct_size >= offsetof(mmp_scheduler_ops_t, step_noise) + sizeof ops->step_noise &&
               ops->step_noise;
    char got[8] = "";
    if (has) {
      is_int(ops->step_noise(comp->self, 0), MMP_EINVAL, "step_noise: %s before set_timesteps", cases[k].keys);
      ops->set_timesteps(comp->self, 4);
      for (size_t i = 0; i < 4; i++) got[i] = (char)('0' + ops->step_noise(comp->self, i));
      is_int(ops->step_noise(comp->self, 4), MMP_EINVAL, "step_noise: %s past the end", cases[k].keys);
    }
    is_str(got, cases[k].want, "step_noise: %s", cases[k].keys);
    mmp_component_free(comp);
    mmp_context_free(ctx);
    mmp_config_free(cfg);
  }
}

/* two instances interleaved, and a second run on one instance, give the
 * same results (state is per instance and reset by set_timesteps) */
static void instances(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/pndm_arldm_25_eps.cfg", fixdir);
  mmp_config_t *cfg = mmp_config_load(path);
  snprintf(path, sizeof path, "%s/pndm_arldm_25_eps.in.safetensors", fixdir);
  mmp_tensormap_t *in = load(path, true);
  snprintf(path, sizeof path, "%s/pndm_arldm_25_eps.out.safetensors", fixdir);
  mmp_tensormap_t *want = load(path, false);
  mmp_context_t *c1 = NULL, *c2 = NULL;
  mmp_component_t *a = cfg ? make(cfg, &c1) : NULL, *b = cfg ? make(cfg, &c2) : NULL;
  if (!a || !b || !in || !want) {
    ok(0, "two pndm instances: %s", mmp_error_last());
    goto done;
  }
  const mmp_scheduler_ops_t *ops = ops_of(a);
  mmp_tensor_t *mos = mmp_tensormap_get(in, "model_outputs");
  mmp_tensor_t *xa = mmp_tensor_ref(mmp_tensormap_get(in, "sample")), *xb = mmp_tensor_ref(xa);
  int good = 1;
  for (int round = 0; round < 2 && good; round++) {
    ops->set_timesteps(a->self, 25);
    ops->set_timesteps(b->self, 25);
    const int64_t *ts;
    size_t n;
    ops->timesteps(a->self, &ts, &n);
    mmp_tensor_unref(xa);
    mmp_tensor_unref(xb);
    xa = mmp_tensor_ref(mmp_tensormap_get(in, "sample"));
    xb = mmp_tensor_ref(xa);
    for (size_t i = 0; i < n && good; i++) {
      mmp_tensor_t *s = mmp_slice(mos, 0, (int64_t)i, (int64_t)i + 1, 1), *mo = mmp_squeeze(s, 0);
      mmp_tensor_t *pa = NULL, *pb = NULL;
      good = ops->step(a->self, i, mo, xa, NULL, &pa, NULL) == 0 &&
             ops->step(b->self, i, mo, xb, NULL, &pb, NULL) == 0;
      mmp_tensor_unref(s);
      mmp_tensor_unref(mo);
      mmp_tensor_unref(xa);
      mmp_tensor_unref(xb);
      xa = pa;
      xb = pb;
    }
    mmp_tensor_t *samples = mmp_tensormap_get(want, "samples");
    mmp_tensor_t *s = mmp_slice(samples, 0, samples->shape[0] - 1, samples->shape[0], 1);
    mmp_tensor_t *last = mmp_squeeze(s, 0);
    good = good && rows_close("interleaved a", "pndm", xa, last) &&
           rows_close("interleaved b", "pndm", xb, last);
    mmp_tensor_unref(s);
    mmp_tensor_unref(last);
  }
  mmp_tensor_unref(xa);
  mmp_tensor_unref(xb);
  ok(good, "two pndm instances interleaved, twice each: both match diffusers");
done:
  mmp_component_free(a);
  mmp_component_free(b);
  mmp_context_free(c1);
  mmp_context_free(c2);
  mmp_config_free(cfg);
  mmp_tensormap_free(in);
  mmp_tensormap_free(want);
}

/* stochastic steps without given noise: the instance's generator */
static mmp_tensor_t *run_seeded(const char *rng, int seed, mmp_tensormap_t *in, int repeats) {
  char text[512];
  snprintf(text, sizeof text,
           "scheduler = { name = \"ddim\"; num_inference_steps = 10; eta = 1.0; rng = \"%s\"; "
           "seed = %d; };",
           rng, seed);
  mmp_config_t *cfg = mmp_config_parse(text, "seeded.cfg");
  mmp_context_t *ctx = NULL;
  mmp_component_t *comp = cfg ? make(cfg, &ctx) : NULL;
  mmp_tensor_t *r = NULL;
  for (int k = 0; comp && k < repeats; k++) {
    mmp_tensormap_t *out = mmp_tensormap_new();
    if (pipe_forward_scheduler(comp, 10, in, out) == 0) {
      mmp_tensor_unref(r);
      r = mmp_tensor_ref(mmp_tensormap_get(out, "samples"));
    }
    mmp_tensormap_free(out);
  }
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  return r;
}

static bool identical(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  double mx;
  return a && b && mmp_tensor_same_shape(a, b) && row_err(a, b, -1, &mx) == 0.0;
}

static void generators(void) {
  char path[4200];
  snprintf(path, sizeof path, "%s/ddim_arldm_10_eps.in.safetensors", fixdir);
  mmp_tensormap_t *in = load(path, true);
  mmp_tensormap_t *in2 = mmp_tensormap_new();
  if (in) {
    mmp_tensormap_set(in2, "sample", mmp_tensor_ref(mmp_tensormap_get(in, "sample")));
    mmp_tensormap_set(in2, "model_outputs", mmp_tensor_ref(mmp_tensormap_get(in, "model_outputs")));
  }
  mmp_tensor_t *p1 = run_seeded("philox", 3, in2, 1), *p2 = run_seeded("philox", 3, in2, 1);
  mmp_tensor_t *p3 = run_seeded("philox", 4, in2, 1), *t1 = run_seeded("torch", 3, in2, 1);
  mmp_tensor_t *t2 = run_seeded("torch", 3, in2, 2);
  ok(identical(p1, p2), "philox: same seed, same samples in two instances");
  ok(p1 && p3 && !identical(p1, p3), "philox: another seed, other samples");
  ok(p1 && t1 && !identical(p1, t1), "torch and philox generators differ");
  ok(t1 && t2 && !identical(t1, t2), "a second run on one instance continues the generator");
  mmp_tensor_unref(p1);
  mmp_tensor_unref(p2);
  mmp_tensor_unref(p3);
  mmp_tensor_unref(t1);
  mmp_tensor_unref(t2);
  mmp_tensormap_free(in);
  mmp_tensormap_free(in2);
}

int main(void) {
  const char *src = getenv("MMP_TEST_SRCDIR"), *build = getenv("MMP_TEST_BUILDDIR");
  if (!src) src = ".";
  if (!build) build = ".";
  snprintf(fixdir, sizeof fixdir, "%s/tests/fixtures/schedulers", src);
  reg = mmp_registry_new();
  mmp_registry_set_search_path(reg, NULL);
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/plugins/schedulers/.libs", build);
  mmp_registry_add_dir(reg, dir);
  golden_cases();
  timestep_table();
  schedules();
  config_errors();
  runtime_errors();
  step_noise_table();
  instances();
  generators();
  mmp_registry_free(reg);
  return done_testing();
}
