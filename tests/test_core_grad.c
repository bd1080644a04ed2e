/* tests/test_core_grad.c - backward ops, AdamW, the LR schedule and a tiny training run against PyTorch.
 *
 * Fixtures: tests/gen_grad.py (torch.autograd gradients, torch.optim.AdamW,
 * the pl_bolts warmup + cosine rule, a 2-layer MLP trained for 6 steps).
 * Tolerances: gradients max |got - expected| <= 1e-4 * max |expected|;
 * AdamW alone 1e-6; the schedule 1e-12 (both compute it in double); the
 * MLP's losses and final weights 1e-4.
 *
 * Finite differences: for each backward case, the directional derivative
 * of L = sum(forward(inputs) * g) along a fixed +-1 direction d, taken as a
 * central difference (L(x + h d) - L(x - h d)) / 2h with L summed in double
 * on the host, must match <grad, d> within 2e-3 relative (the forward ops
 * compute in f32, so the difference quotient carries ~1e-4 of rounding).
 * This checks our gradients against our own forward ops, independently of
 * PyTorch.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/grad.h>
#include <mmpipe/log.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static mmp_backend_t *cpu;
static mmp_safetensors_t *st;

enum { IX, IW, IB, IA, IQ, IK, IV, IMASK, IIDS, NIN };
static const char *const in_names[NIN] = {"x", "w", "b", "a", "q", "k", "v", "mask", "ids"};

typedef struct io {
  mmp_tensor_t *t[NIN];
} io_t;

static void io_free(io_t *io) {
  for (int i = 0; i < NIN; i++) mmp_tensor_unref(io->t[i]);
  memset(io, 0, sizeof *io);
}

static mmp_tensor_t *fix(const char *cname, const char *name) {
  char full[256];
  snprintf(full, sizeof full, "%s/%s", cname, name);
  mmp_dtype_t dt;
  if (mmp_safetensors_info(st, full, &dt, NULL, NULL) < 0) return NULL;
  return mmp_safetensors_get(st, full, cpu, MMP_DTYPE_COUNT);
}

static double param(const char *desc, const char *key, double def) {
  char pat[64];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(desc, pat);
  return p ? strtod(p + strlen(pat), NULL) : def;
}

/* max |a - b| and max |b| over all elements */
static int compare(const mmp_tensor_t *got, const mmp_tensor_t *want, double *err, double *scale) {
  *err = *scale = 0;
  if (!got || !want || !mmp_tensor_same_shape(got, want)) return -1;
  int64_t n = mmp_tensor_numel(want);
  float *a = malloc((size_t)n * sizeof(float) + 1), *b = malloc((size_t)n * sizeof(float) + 1);
  mmp_tensor_t *wf = mmp_convert(want, MMP_F32);
  mmp_tensor_to_host(got, a, (size_t)n * sizeof(float));
  mmp_tensor_to_host(wf, b, (size_t)n * sizeof(float));
  mmp_tensor_unref(wf);
  int bad = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - b[i]);
    if (!isfinite(a[i])) bad = 1;
    if (d > *err) *err = d;
    if (fabs(b[i]) > *scale) *scale = fabs(b[i]);
  }
  free(a);
  free(b);
  return bad ? -1 : 0;
}

static void check_close(const mmp_tensor_t *got, const mmp_tensor_t *want, double rel, const char *what) {
  double err, scale;
  int rc = compare(got, want, &err, &scale);
  char buf[64];
  if (!ok(rc == 0 && err <= rel * (scale > 0 ? scale : 1), "%s (max err %.3g, rel %.3g)", what, err,
          scale > 0 ? err / scale : err))
    diag("  got %s: %s", got ? mmp_tensor_describe(got, buf, sizeof buf) : "NULL", got ? "" : mmp_error_last());
}

/* ------------------------------------------------------------------ the ops */

static mmp_tensor_t *forward(const char *op, const char *desc, const io_t *in) {
  mmp_tensor_t *const *t = in->t;
  if (!strcmp(op, "linear")) return mmp_linear(t[IX], t[IW], t[IB]);
  if (!strcmp(op, "matmul")) return mmp_matmul(t[IA], t[IB], param(desc, "ta", 0) != 0, param(desc, "tb", 0) != 0);
  if (!strcmp(op, "add")) return mmp_add(t[IA], t[IB]);
  if (!strcmp(op, "sub")) return mmp_sub(t[IA], t[IB]);
  if (!strcmp(op, "mul")) return mmp_mul(t[IA], t[IB]);
  if (!strcmp(op, "scale")) return mmp_scale(t[IX], param(desc, "alpha", 1), param(desc, "beta", 0));
  if (!strcmp(op, "concat")) {
    mmp_tensor_t *ts[2] = {t[IA], t[IB]};
    return mmp_concat(ts, 2, (int)param(desc, "dim", 0));
  }
  if (!strcmp(op, "slice")) {
    mmp_tensor_t *v = mmp_slice(t[IX], (int)param(desc, "dim", 0), (int64_t)param(desc, "start", 0),
                                (int64_t)param(desc, "end", 0), (int64_t)param(desc, "step", 1));
    mmp_tensor_t *c = mmp_contiguous(v);
    mmp_tensor_unref(v);
    return c;
  }
  if (!strcmp(op, "permute")) {
    int perm[4] = {0, 2, 3, 1};
    mmp_tensor_t *v = mmp_permute(t[IX], perm);
    mmp_tensor_t *c = mmp_contiguous(v);
    mmp_tensor_unref(v);
    return c;
  }
  if (!strcmp(op, "mse")) return mmp_mse_loss(t[IA], t[IB]);
  if (!strcmp(op, "silu")) return mmp_silu(t[IX]);
  if (!strcmp(op, "gelu")) return mmp_gelu(t[IX]);
  if (!strcmp(op, "gelu_tanh")) return mmp_gelu_tanh(t[IX]);
  if (!strcmp(op, "quick_gelu")) return mmp_quick_gelu(t[IX]);
  if (!strcmp(op, "sigmoid")) return mmp_sigmoid(t[IX]);
  if (!strcmp(op, "tanh")) return mmp_tanh(t[IX]);
  if (!strcmp(op, "relu")) return mmp_relu(t[IX]);
  if (!strcmp(op, "geglu")) return mmp_geglu(t[IX]);
  if (!strcmp(op, "softmax")) return mmp_softmax(t[IX], (int)param(desc, "dim", -1) < 0 ? t[IX]->ndim - 1 : (int)param(desc, "dim", -1));
  if (!strcmp(op, "layer_norm")) return mmp_layer_norm(t[IX], t[IW], t[IB], param(desc, "eps", 1e-5));
  if (!strcmp(op, "group_norm"))
    return mmp_group_norm(t[IX], (int)param(desc, "groups", 1), t[IW], t[IB], param(desc, "eps", 1e-5));
  if (!strcmp(op, "group_norm_silu"))
    return mmp_group_norm_silu(t[IX], (int)param(desc, "groups", 1), t[IW], t[IB], param(desc, "eps", 1e-5));
  if (!strcmp(op, "embedding")) return mmp_embedding(t[IW], t[IIDS]);
  if (!strcmp(op, "upsample_nearest2x")) return mmp_upsample_nearest2x(t[IX]);
  if (!strcmp(op, "conv2d")) {
    int s = (int)param(desc, "stride", 1), p = (int)param(desc, "pad", 0), d = (int)param(desc, "dil", 1);
    return mmp_conv2d(t[IX], t[IW], t[IB], s, s, p, p, d, d, (int)param(desc, "groups", 1));
  }
  if (!strcmp(op, "attention"))
    return mmp_attention(t[IQ], t[IK], t[IV], t[IMASK], param(desc, "causal", 0) != 0, param(desc, "scale", 0));
  return NULL;
}

/* The gradients of every float input into @d (slots of the inputs). */
static int backward(const char *op, const char *desc, const io_t *in, const mmp_tensor_t *g, const mmp_tensor_t *y,
                    io_t *d) {
  mmp_tensor_t *const *t = in->t;
  mmp_tensor_t **o = d->t;
  memset(d, 0, sizeof *d);
  if (!strcmp(op, "linear")) return mmp_linear_backward(g, t[IX], t[IW], &o[IX], &o[IW], t[IB] ? &o[IB] : NULL);
  if (!strcmp(op, "matmul"))
    return mmp_matmul_backward(g, t[IA], t[IB], param(desc, "ta", 0) != 0, param(desc, "tb", 0) != 0, &o[IA], &o[IB]);
  if (!strcmp(op, "add")) return mmp_add_backward(g, t[IA], t[IB], &o[IA], &o[IB]);
  if (!strcmp(op, "sub")) return mmp_sub_backward(g, t[IA], t[IB], &o[IA], &o[IB]);
  if (!strcmp(op, "mul")) return mmp_mul_backward(g, t[IA], t[IB], &o[IA], &o[IB]);
  if (!strcmp(op, "scale")) return (o[IX] = mmp_scale_backward(g, param(desc, "alpha", 1))) ? 0 : -1;
  if (!strcmp(op, "concat")) {
    int64_t sizes[2];
    int dim = (int)param(desc, "dim", 0);
    sizes[0] = t[IA]->shape[dim];
    sizes[1] = t[IB]->shape[dim];
    mmp_tensor_t *out[2];
    int rc = mmp_concat_backward(g, 2, sizes, dim, out);
    o[IA] = out[0];
    o[IB] = out[1];
    return rc;
  }
  if (!strcmp(op, "slice"))
    return (o[IX] = mmp_slice_backward(g, t[IX]->ndim, t[IX]->shape, (int)param(desc, "dim", 0),
                                       (int64_t)param(desc, "start", 0), (int64_t)param(desc, "end", 0),
                                       (int64_t)param(desc, "step", 1)))
               ? 0
               : -1;
  if (!strcmp(op, "permute")) {
    int perm[4] = {0, 2, 3, 1};
    return (o[IX] = mmp_permute_backward(g, perm)) ? 0 : -1;
  }
  if (!strcmp(op, "mse")) return mmp_mse_loss_backward(mmp_tensor_get(g, NULL), t[IA], t[IB], &o[IA], &o[IB]);
  mmp_tensor_t *(*act)(const mmp_tensor_t *, const mmp_tensor_t *) =
      !strcmp(op, "silu") ? mmp_silu_backward
      : !strcmp(op, "gelu") ? mmp_gelu_backward
      : !strcmp(op, "gelu_tanh") ? mmp_gelu_tanh_backward
      : !strcmp(op, "quick_gelu") ? mmp_quick_gelu_backward
      : !strcmp(op, "sigmoid") ? mmp_sigmoid_backward
      : !strcmp(op, "tanh") ? mmp_tanh_backward
      : !strcmp(op, "relu") ? mmp_relu_backward
      : !strcmp(op, "geglu") ? mmp_geglu_backward
      : NULL;
  if (act) return (o[IX] = act(g, t[IX])) ? 0 : -1;
  if (!strcmp(op, "softmax"))
    return (o[IX] = mmp_softmax_backward(g, y, (int)param(desc, "dim", -1) < 0 ? y->ndim - 1 : (int)param(desc, "dim", -1)))
               ? 0
               : -1;
  if (!strcmp(op, "layer_norm"))
    return mmp_layer_norm_backward(g, t[IX], t[IW], param(desc, "eps", 1e-5), &o[IX], t[IW] ? &o[IW] : NULL,
                                   t[IB] ? &o[IB] : NULL);
  if (!strcmp(op, "group_norm"))
    return mmp_group_norm_backward(g, t[IX], (int)param(desc, "groups", 1), t[IW], param(desc, "eps", 1e-5), &o[IX],
                                   &o[IW], &o[IB]);
  if (!strcmp(op, "group_norm_silu"))
    return mmp_group_norm_silu_backward(g, t[IX], (int)param(desc, "groups", 1), t[IW], t[IB],
                                        param(desc, "eps", 1e-5), &o[IX], &o[IW], &o[IB]);
  if (!strcmp(op, "embedding"))
    return (o[IW] = mmp_embedding_backward(g, t[IIDS], t[IW]->shape[0], (int64_t)param(desc, "padding_idx", -1))) ? 0
                                                                                                                  : -1;
  if (!strcmp(op, "upsample_nearest2x")) return (o[IX] = mmp_upsample_nearest2x_backward(g)) ? 0 : -1;
  if (!strcmp(op, "conv2d")) {
    int s = (int)param(desc, "stride", 1), p = (int)param(desc, "pad", 0), dl = (int)param(desc, "dil", 1);
    return mmp_conv2d_backward(g, t[IX], t[IW], s, s, p, p, dl, dl, (int)param(desc, "groups", 1), &o[IX], &o[IW],
                               &o[IB]);
  }
  if (!strcmp(op, "attention"))
    return mmp_attention_backward(g, t[IQ], t[IK], t[IV], y, t[IMASK], param(desc, "causal", 0) != 0,
                                  param(desc, "scale", 0), &o[IQ], &o[IK], &o[IV]);
  return -1;
}

/* sum(forward(in) * g) in double */
static double loss_of(const char *op, const char *desc, const io_t *in, const mmp_tensor_t *g) {
  mmp_tensor_t *y = forward(op, desc, in);
  if (!y) return NAN;
  int64_t n = mmp_tensor_numel(y);
  float *a = malloc((size_t)n * sizeof(float) + 1), *b = malloc((size_t)n * sizeof(float) + 1);
  mmp_tensor_to_host(y, a, (size_t)n * sizeof(float));
  mmp_tensor_to_host(g, b, (size_t)n * sizeof(float));
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  free(a);
  free(b);
  mmp_tensor_unref(y);
  return s;
}

/* a fixed +-1 direction */
static mmp_tensor_t *direction(const mmp_tensor_t *like, unsigned seed) {
  int64_t n = mmp_tensor_numel(like);
  float *d = malloc((size_t)n * sizeof(float) + 1);
  uint32_t s = 2463534242u + seed;
  for (int64_t i = 0; i < n; i++) {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;
    d[i] = (s >> 7) & 1 ? 1.0f : -1.0f;
  }
  mmp_tensor_t *t = mmp_tensor_from_data(cpu, MMP_F32, like->ndim, like->shape, d);
  free(d);
  return t;
}

static double dot(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  int64_t n = mmp_tensor_numel(a);
  float *x = malloc((size_t)n * sizeof(float) + 1), *y = malloc((size_t)n * sizeof(float) + 1);
  mmp_tensor_to_host(a, x, (size_t)n * sizeof(float));
  mmp_tensor_to_host(b, y, (size_t)n * sizeof(float));
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)x[i] * y[i];
  free(x);
  free(y);
  return s;
}

static void finite_difference(const char *cname, const char *op, const char *desc, const io_t *in, const mmp_tensor_t *g,
                              const io_t *d) {
  if (!strcmp(op, "relu")) return; /* kink at 0: central differences straddle it */
  /* the padding row is read by the forward but gets no gradient by
   * definition (torch's padding_idx), so the derivative is not the gradient */
  if (param(desc, "padding_idx", -1) >= 0) return;
  for (int i = 0; i < NIN; i++) {
    if (!d->t[i] || !in->t[i] || in->t[i]->dtype != MMP_F32) continue;
    const double h = 1e-2;
    mmp_tensor_t *dir = direction(in->t[i], (unsigned)i * 7919u + (unsigned)strlen(cname));
    io_t p = *in, m = *in;
    p.t[i] = mmp_axpby(1.0, in->t[i], h, dir);
    m.t[i] = mmp_axpby(1.0, in->t[i], -h, dir);
    double fd = (loss_of(op, desc, &p, g) - loss_of(op, desc, &m, g)) / (2 * h);
    double an = dot(d->t[i], dir);
    /* scale: the sum of |terms| of the analytic dot product bounds what
     * rounding of the forward can do */
    double ref = fabs(an) > 1 ? fabs(an) : 1;
    ok(fabs(fd - an) <= 2e-3 * ref, "%s: finite difference d%s (fd %.6g, analytic %.6g)", cname, in_names[i], fd, an);
    mmp_tensor_unref(p.t[i]);
    mmp_tensor_unref(m.t[i]);
    mmp_tensor_unref(dir);
  }
}

static void run_cases(void) {
  for (size_t ci = 0; ci < mmp_safetensors_metadata_count(st); ci++) {
    const char *cname = mmp_safetensors_metadata_key(st, ci);
    const char *desc = mmp_safetensors_metadata(st, cname);
    char op[64];
    sscanf(desc, "%63s", op);
    if (!strcmp(op, "adamw") || !strcmp(op, "schedule") || !strcmp(op, "mlp")) continue;
    io_t in = {{0}}, d;
    for (int i = 0; i < NIN; i++) in.t[i] = fix(cname, in_names[i]);
    mmp_tensor_t *g = fix(cname, "g"), *want_y = fix(cname, "y");
    mmp_tensor_t *y = forward(op, desc, &in);
    char what[128];
    snprintf(what, sizeof what, "%s: forward", cname);
    check_close(y, want_y, 1e-5, what);
    int rc = backward(op, desc, &in, g, y, &d);
    if (!ok(rc == 0, "%s: backward runs", cname)) diag("  %s", mmp_error_last());
    for (int i = 0; i < NIN && rc == 0; i++) {
      char dn[16];
      snprintf(dn, sizeof dn, "d%s", in_names[i]);
      mmp_tensor_t *want = fix(cname, dn);
      if (!want) continue;
      snprintf(what, sizeof what, "%s: %s = torch", cname, dn);
      check_close(d.t[i], want, 1e-4, what);
      mmp_tensor_unref(want);
    }
    if (rc == 0) finite_difference(cname, op, desc, &in, g, &d);
    io_free(&d);
    io_free(&in);
    mmp_tensor_unref(g);
    mmp_tensor_unref(want_y);
    mmp_tensor_unref(y);
  }
}

/* ------------------------------------------------------------- optimizers */

static void test_adamw(void) {
  mmp_tensor_t *p0 = fix("adamw", "p0");
  mmp_tensor_t *p = mmp_clone(p0);
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 0.01;
  hp.weight_decay = 0.1;
  mmp_adamw_t *o = mmp_adamw_new(&hp);
  is_int(mmp_adamw_add_param(o, "p", p), 0, "adamw: parameter added");
  is_int(mmp_adamw_add_param(o, "p", p), MMP_EEXIST, "adamw: a name twice is refused");
  ok(mmp_adamw_add_param(o, "ro", p0) == MMP_EINVAL, "adamw: a read-only (mapped) tensor is refused");
  for (int i = 0; i < 3; i++) {
    char n[8];
    snprintf(n, sizeof n, "g%d", i);
    mmp_tensormap_t *gm = mmp_tensormap_new();
    mmp_tensormap_set(gm, "p", fix("adamw", n));
    is_int(mmp_adamw_step(o, gm), 0, "adamw: step %d", i + 1);
    mmp_tensormap_free(gm);
  }
  mmp_tensor_t *m, *v;
  int64_t step;
  mmp_adamw_state(o, 0, NULL, NULL, &m, &v, &step);
  is_int(step, 3, "adamw: step count");
  mmp_tensor_t *wp = fix("adamw", "p"), *wm = fix("adamw", "m"), *wv = fix("adamw", "v");
  check_close(p, wp, 1e-6, "adamw: parameter after 3 steps = torch");
  check_close(m, wm, 1e-6, "adamw: exp_avg = torch");
  check_close(v, wv, 1e-6, "adamw: exp_avg_sq = torch");
  /* a wrong-shaped gradient changes nothing */
  int64_t s1 = 3;
  mmp_tensormap_t *bad = mmp_tensormap_new();
  mmp_tensormap_set(bad, "p", mmp_tensor_zeros(cpu, MMP_F32, 1, &s1));
  is_int(mmp_adamw_step(o, bad), MMP_ESHAPE, "adamw: wrong-shaped gradient refused");
  mmp_adamw_state(o, 0, NULL, NULL, NULL, NULL, &step);
  is_int(step, 3, "adamw: nothing updated by the refused step");
  mmp_tensormap_free(bad);
  bad = mmp_tensormap_new();
  mmp_tensormap_set(bad, "q", mmp_tensor_zeros(cpu, MMP_F32, 1, &s1));
  is_int(mmp_adamw_step(o, bad), MMP_ENOENT, "adamw: gradient of an unknown parameter refused");
  mmp_tensormap_free(bad);
  hp.beta1 = 1.0;
  ok(mmp_adamw_new(&hp) == NULL, "adamw: beta1 = 1 refused");
  mmp_adamw_free(o);
  mmp_tensor_unref(p);
  mmp_tensor_unref(p0);
  mmp_tensor_unref(wp);
  mmp_tensor_unref(wm);
  mmp_tensor_unref(wv);
}

static void test_schedule(void) {
  mmp_tensor_t *want = fix("sched", "lr");
  mmp_lr_warmup_cosine_t s;
  is_int(mmp_lr_warmup_cosine_init(&s, 1e-3, 4, 12, 0, 0), 0, "schedule: init");
  double worst = 0;
  int64_t n = want ? want->shape[0] : 0, i0 = 0;
  for (int64_t i = 0; i < n; i++) {
    double w = mmp_tensor_get(want, &i), e = fabs(s.lr - w);
    if (e > worst) worst = e, i0 = i;
    mmp_lr_warmup_cosine_step(&s);
  }
  ok(n == 30 && worst <= 1e-12 * 1e-3, "schedule: %lld rates = torch (max err %.3g at step %lld)", (long long)n, worst,
     (long long)i0);
  ok(mmp_lr_warmup_cosine_init(&s, 1e-3, 5, 5, 0, 0) == MMP_EINVAL, "schedule: max_steps <= warmup refused");
  mmp_tensor_unref(want);
}

static void test_freeze(void) {
  const char *fr[] = {"unet.*", NULL}, *tr[] = {"unet.*attentions*", NULL};
  ok(!mmp_param_trainable("unet.down_blocks.0.resnets.0.conv1.weight", fr, tr), "freeze: a UNet resnet is frozen");
  ok(mmp_param_trainable("unet.down_blocks.0.attentions.0.proj_in.weight", fr, tr), "freeze: UNet attentions train");
  ok(mmp_param_trainable("vae.encoder.conv_in.weight", fr, tr), "freeze: what no pattern names trains");
  const char *fc[] = {"text_encoder.*", NULL}, *tc[] = {"*.token_embedding.*", NULL};
  ok(mmp_param_trainable("text_encoder.text_model.embeddings.token_embedding.weight", fc, tc),
     "freeze_clip: the token embedding trains");
  ok(!mmp_param_trainable("text_encoder.text_model.encoder.layers.0.mlp.fc1.weight", fc, tc),
     "freeze_clip: the rest is frozen");
  ok(mmp_param_trainable("x", NULL, NULL), "freeze: no patterns, everything trains");
}

/* The tiny run of gen_grad.py: MLP 5 -> 16 -> 3 (GELU), MSE, AdamW under
 * the schedule, clip 1.0, two micro-batches per step. */
static void test_mlp(void) {
  const char *names[4] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
  mmp_tensor_t *P[4];
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 0.05;
  hp.weight_decay = 1e-2;
  mmp_adamw_t *o = mmp_adamw_new(&hp);
  for (int i = 0; i < 4; i++) {
    char n[64];
    snprintf(n, sizeof n, "init/%s", names[i]);
    mmp_tensor_t *t = fix("mlp", n);
    P[i] = mmp_clone(t);
    mmp_tensor_unref(t);
    mmp_adamw_add_param(o, names[i], P[i]);
  }
  mmp_tensor_t *X = fix("mlp", "x"), *Y = fix("mlp", "y"), *L = fix("mlp", "loss");
  const int steps = 6, accum = 2, mb = 4;
  mmp_lr_warmup_cosine_t s;
  mmp_lr_warmup_cosine_init(&s, hp.lr, 2, steps, 0, 0);
  double worst_loss = 0;
  int fails = 0;
  for (int st_i = 0; st_i < steps; st_i++) {
    mmp_adamw_set_lr(o, s.lr);
    mmp_tensormap_t *acc = mmp_tensormap_new();
    for (int a = 0; a < accum; a++) {
      int64_t i0 = (int64_t)(st_i * accum + a) * mb, li = st_i * accum + a;
      mmp_tensor_t *x = mmp_slice(X, 0, i0, i0 + mb, 1), *y = mmp_slice(Y, 0, i0, i0 + mb, 1);
      mmp_tensor_t *h = mmp_linear(x, P[0], P[1]);
      mmp_tensor_t *act = mmp_gelu(h);
      mmp_tensor_t *out = mmp_linear(act, P[2], P[3]);
      mmp_tensor_t *loss = mmp_mse_loss(out, y);
      double lv = mmp_tensor_get(loss, NULL), lw = mmp_tensor_get(L, &li);
      double rel = fabs(lv - lw) / fabs(lw);
      if (!(rel <= worst_loss)) worst_loss = rel; /* NaN sticks */
      mmp_tensor_t *gout, *gact, *gh, *G[4];
      fails += mmp_mse_loss_backward(1.0 / accum, out, y, &gout, NULL) != 0;
      fails += mmp_linear_backward(gout, act, P[2], &gact, &G[2], &G[3]) != 0;
      gh = mmp_gelu_backward(gact, h);
      fails += mmp_linear_backward(gh, x, P[0], NULL, &G[0], &G[1]) != 0;
      mmp_tensormap_t *gm = mmp_tensormap_new();
      for (int i = 0; i < 4; i++) mmp_tensormap_set(gm, names[i], G[i]);
      fails += mmp_grad_accumulate(acc, gm) != 0;
      mmp_tensormap_free(gm);
      mmp_tensor_t *tmp[] = {x, y, h, act, out, loss, gout, gact, gh};
      for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) mmp_tensor_unref(tmp[i]);
    }
    double norm;
    fails += mmp_clip_grad_norm(acc, 1.0, &norm) != 0;
    fails += mmp_adamw_step(o, acc) != 0;
    mmp_tensormap_free(acc);
    mmp_lr_warmup_cosine_step(&s);
  }
  is_int(fails, 0, "mlp: every step runs");
  ok(worst_loss <= 1e-4, "mlp: %d micro-batch losses = torch (max rel err %.3g)", steps * accum, worst_loss);
  for (int i = 0; i < 4; i++) {
    char n[64], what[96];
    snprintf(n, sizeof n, "final/%s", names[i]);
    mmp_tensor_t *w = fix("mlp", n);
    snprintf(what, sizeof what, "mlp: %s after %d steps = torch", names[i], steps);
    check_close(P[i], w, 1e-4, what);
    mmp_tensor_unref(w);
    mmp_tensor_unref(P[i]);
  }
  mmp_adamw_free(o);
  mmp_tensor_unref(X);
  mmp_tensor_unref(Y);
  mmp_tensor_unref(L);
}

/* ------------------------------------------------------------ edge cases */

static void test_edges(void) {
  /* attention rows whose every key is masked: zero gradients (output 0) */
  int64_t sq[4] = {1, 1, 2, 4}, sm[2] = {1, 3}, sk[4] = {1, 1, 3, 4};
  mmp_tensor_t *q = mmp_tensor_full(cpu, MMP_F32, 4, sq, 0.5), *k = mmp_tensor_full(cpu, MMP_F32, 4, sk, 0.25);
  mmp_tensor_t *mask = mmp_tensor_full(cpu, MMP_U8, 2, sm, 1);
  mmp_tensor_t *out = mmp_attention(q, k, k, mask, false, 0), *g = mmp_tensor_full(cpu, MMP_F32, 4, sq, 1.0);
  mmp_tensor_t *gq, *gk, *gv;
  is_int(mmp_attention_backward(g, q, k, k, out, mask, false, 0, &gq, &gk, &gv), 0, "attention: fully masked backward");
  mmp_tensor_t *z = mmp_tensor_zeros(cpu, MMP_F32, 4, sq), *zk = mmp_tensor_zeros(cpu, MMP_F32, 4, sk);
  check_close(gq, z, 0, "attention: fully masked rows give dq = 0");
  check_close(gk, zk, 0, "attention: and dk = 0");
  mmp_tensor_t *list[] = {q, k, mask, out, g, gq, gk, gv, z, zk};
  for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) mmp_tensor_unref(list[i]);

  /* shape errors leave outputs NULL */
  int64_t s23[2] = {2, 3}, s24[2] = {2, 4}, s43[2] = {4, 3};
  mmp_tensor_t *x = mmp_tensor_zeros(cpu, MMP_F32, 2, s23), *w = mmp_tensor_zeros(cpu, MMP_F32, 2, s43);
  mmp_tensor_t *gbad = mmp_tensor_zeros(cpu, MMP_F32, 2, s23), *gx = (mmp_tensor_t *)1, *gw = (mmp_tensor_t *)1;
  is_int(mmp_linear_backward(gbad, x, w, &gx, &gw, NULL), MMP_ESHAPE, "linear_backward: wrong gradient shape refused");
  ok(gx == NULL && gw == NULL, "linear_backward: outputs NULL on error");
  like(mmp_error_last(), "linear_backward", "message names the op");
  /* embedding ids out of range */
  int64_t ids[3] = {0, 5, 1}, s3 = 3;
  mmp_tensor_t *it = mmp_tensor_from_data(cpu, MMP_I64, 1, &s3, ids);
  mmp_tensor_t *ge = mmp_tensor_zeros(cpu, MMP_F32, 2, (int64_t[2]){3, 4});
  ok(mmp_embedding_backward(ge, it, 4, -1) == NULL && mmp_error_code() == MMP_EINVAL,
     "embedding_backward: id 5 of 4 rows refused");
  like(mmp_error_last(), "id 5", "message names the id");
  mmp_tensor_t *g24 = mmp_tensor_zeros(cpu, MMP_F32, 2, s24);
  ok(mmp_silu_backward(g24, x) == NULL && mmp_error_code() == MMP_ESHAPE, "silu_backward: shape mismatch refused");
  mmp_tensor_t *list2[] = {x, w, gbad, it, ge, g24};
  for (size_t i = 0; i < sizeof list2 / sizeof list2[0]; i++) mmp_tensor_unref(list2[i]);
}

/* The documented claim: gradients do not depend on the thread count (every
 * accumulation runs in one fixed order). Every case's gradients with 1 and
 * with 4 threads must be bit-identical. */
static void test_threads(void) {
  int saved = mmp_threads_get(), cases = 0, diffs = 0;
  for (size_t ci = 0; ci < mmp_safetensors_metadata_count(st); ci++) {
    const char *cname = mmp_safetensors_metadata_key(st, ci);
    const char *desc = mmp_safetensors_metadata(st, cname);
    char op[64];
    sscanf(desc, "%63s", op);
    if (!strcmp(op, "adamw") || !strcmp(op, "schedule") || !strcmp(op, "mlp")) continue;
    io_t in = {{0}}, d1, d4;
    for (int i = 0; i < NIN; i++) in.t[i] = fix(cname, in_names[i]);
    mmp_tensor_t *g = fix(cname, "g"), *y = forward(op, desc, &in);
    mmp_threads_set(1);
    int rc1 = backward(op, desc, &in, g, y, &d1);
    mmp_threads_set(4);
    int rc4 = backward(op, desc, &in, g, y, &d4);
    cases++;
    for (int i = 0; i < NIN; i++) {
      if (rc1 || rc4) {
        diffs++;
        break;
      }
      if (!d1.t[i]) continue;
      double err, scale;
      if (compare(d4.t[i], d1.t[i], &err, &scale) < 0 || err != 0) {
        diag("  %s: d%s differs by %g between 1 and 4 threads", cname, in_names[i], err);
        diffs++;
      }
    }
    io_free(&d1);
    io_free(&d4);
    io_free(&in);
    mmp_tensor_unref(g);
    mmp_tensor_unref(y);
  }
  /* and sizes where sgemm and the kernels do split work between threads */
  mmp_rng_t *r = mmp_rng_new(5, MMP_RNG_PHILOX);
  int64_t sx[4] = {2, 32, 24, 24}, sw[4] = {48, 32, 3, 3}, sq[4] = {2, 4, 200, 32};
  mmp_tensor_t *x = mmp_rng_randn(r, cpu, 4, sx), *w = mmp_rng_randn(r, cpu, 4, sw);
  mmp_tensor_t *q = mmp_rng_randn(r, cpu, 4, sq), *k = mmp_rng_randn(r, cpu, 4, sq), *v = mmp_rng_randn(r, cpu, 4, sq);
  mmp_tensor_t *yc = mmp_conv2d(x, w, NULL, 2, 2, 1, 1, 1, 1, 1), *gc = mmp_rng_randn(r, cpu, 4, yc->shape);
  mmp_tensor_t *ya = mmp_attention(q, k, v, NULL, true, 0), *ga = mmp_rng_randn(r, cpu, 4, sq);
  mmp_tensor_t *o1[5], *o4[5];
  for (int pass = 0; pass < 2; pass++) {
    mmp_tensor_t **o = pass ? o4 : o1;
    mmp_threads_set(pass ? 4 : 1);
    mmp_conv2d_backward(gc, x, w, 2, 2, 1, 1, 1, 1, 1, &o[0], &o[1], NULL);
    mmp_attention_backward(ga, q, k, v, ya, NULL, true, 0, &o[2], &o[3], &o[4]);
  }
  for (int i = 0; i < 5; i++) {
    double err, scale;
    cases++;
    if (compare(o4[i], o1[i], &err, &scale) < 0 || err != 0) {
      diag("  large case %d differs by %g between 1 and 4 threads", i, err);
      diffs++;
    }
    mmp_tensor_unref(o1[i]);
    mmp_tensor_unref(o4[i]);
  }
  mmp_tensor_t *tmp[] = {x, w, q, k, v, yc, gc, ya, ga};
  for (size_t i = 0; i < sizeof tmp / sizeof tmp[0]; i++) mmp_tensor_unref(tmp[i]);
  mmp_rng_free(r);
  mmp_threads_set(saved);
  ok(cases > 30 && diffs == 0, "%d cases: gradients with 1 and 4 threads are bit-identical (%d differ)", cases, diffs);
}

int main(void) {
  char path[1024];
  mmp_log_set_level(MMP_LOG_ERROR);
  cpu = mmp_backend_get("cpu");
  snprintf(path, sizeof path, "%s/tests/fixtures/grad/grad.safetensors", tap_srcdir());
  st = mmp_safetensors_open(path);
  if (!st) {
    printf("Bail out! cannot open %s: %s\n", path, mmp_error_last());
    return 1;
  }
  run_cases();
  test_adamw();
  test_schedule();
  test_freeze();
  test_mlp();
  test_edges();
  test_threads();
  mmp_safetensors_close(st);
  return done_testing();
}
