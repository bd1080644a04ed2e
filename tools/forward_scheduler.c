/* tools/forward_scheduler.c - the scheduler driver of `pipeline forward`: a denoising loop over given model outputs.
 *
 * Inputs (doc/schedulers.md): sample (x_T), model_outputs [N, ...] (the
 * model output of call i), optional noise [N, ...] (the noise stochastic
 * call i uses; else the scheduler's own generator), optional x0 +
 * add_noise_noise + add_noise_timesteps (i64 [B]) for add_noise.
 * Outputs: timesteps (i64 [N]), samples [N, ...] (the sample after each
 * call), pred_original_samples [N, ...] where the scheduler defines it,
 * model_timesteps (f32 [N]) where the scheduler's model timesteps are
 * fractional, noisy when add_noise inputs were given.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "tools/commands.h"

/* Row i of a [N, ...] tensor as a tensor of the remaining dims. (transfer full) */
static mmp_tensor_t *row(mmp_tensor_t *t, int64_t i) {
  mmp_tensor_t *s = mmp_slice(t, 0, i, i + 1, 1);
  mmp_tensor_t *r = mmp_squeeze(s, 0);
  mmp_tensor_unref(s);
  return r;
}

/* Stack n tensors of one shape into [n, ...] f32. (transfer full) */
static mmp_tensor_t *stack(mmp_tensor_t **ts, size_t n) {
  mmp_tensor_t **u = calloc(n ? n : 1, sizeof *u);
  mmp_tensor_t *r = NULL;
  if (!u) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  size_t k = 0;
  for (; k < n; k++) {
    mmp_tensor_t *f = ts[k]->dtype == MMP_F32 ? mmp_tensor_ref(ts[k]) : mmp_convert(ts[k], MMP_F32);
    u[k] = mmp_unsqueeze(f, 0);
    mmp_tensor_unref(f);
    if (!u[k]) break;
  }
  if (k == n) r = n == 1 ? mmp_contiguous(u[0]) : mmp_concat(u, (int)n, 0);
  for (size_t j = 0; j < k; j++) mmp_tensor_unref(u[j]);
  free(u);
  return r;
}

static bool same_tail(const mmp_tensor_t *rows, const mmp_tensor_t *sample) {
  if (rows->ndim != sample->ndim + 1) return false;
  for (int d = 0; d < sample->ndim; d++)
    if (rows->shape[d + 1] != sample->shape[d]) return false;
  return true;
}

int pipe_forward_scheduler(mmp_component_t *sched, int64_t num_inference_steps,
                           const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_scheduler_ops_t *ops = (const mmp_scheduler_ops_t *)sched->plugin;
  void *self = sched->self;
  char a[128], b[128];
  if (num_inference_steps < 0 || num_inference_steps > 0x7fffffff)
    return mmp_error_set(MMP_EINVAL, "num_inference_steps %lld out of range",
                         (long long)num_inference_steps);
  int rc = ops->set_timesteps(self, (int)num_inference_steps);
  if (rc < 0) return rc;
  const int64_t *ts;
  size_t n;
  if ((rc = ops->timesteps(self, &ts, &n)) < 0) return rc;

  mmp_tensor_t *sample = mmp_tensormap_need(in, "sample");
  mmp_tensor_t *mos = mmp_tensormap_need(in, "model_outputs");
  if (!sample || !mos) return MMP_ENOENT;
  mmp_tensor_t *noise = mmp_tensormap_get(in, "noise");
  if (mos->ndim < 1 || mos->shape[0] != (int64_t)n)
    return mmp_error_set(MMP_ESHAPE,
                         "model_outputs is %s: its first dimension must be the number of model "
                         "calls of the schedule (%zu)",
                         mmp_tensor_describe(mos, a, sizeof a), n);
  if (mos->ndim != sample->ndim + 1)
    return mmp_error_set(MMP_ESHAPE, "model_outputs is %s, sample %s: expected [N, ...sample shape]",
                         mmp_tensor_describe(mos, a, sizeof a),
                         mmp_tensor_describe(sample, b, sizeof b));
  if (noise && (noise->shape[0] != (int64_t)n || !same_tail(noise, sample)))
    return mmp_error_set(MMP_ESHAPE, "noise is %s, sample %s: expected [%zu, ...sample shape]",
                         mmp_tensor_describe(noise, a, sizeof a),
                         mmp_tensor_describe(sample, b, sizeof b), n);

  mmp_tensor_t **prevs = calloc(n ? n : 1, sizeof *prevs);
  mmp_tensor_t **preds = calloc(n ? n : 1, sizeof *preds);
  mmp_tensor_t *x = mmp_tensor_ref(sample);
  size_t done = 0, npred = 0;
  if (!prevs || !preds) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  for (size_t i = 0; rc == 0 && i < n; i++) {
    mmp_tensor_t *mo = row(mos, (int64_t)i);
    mmp_tensor_t *z = noise ? row(noise, (int64_t)i) : NULL;
    if (!mo || (noise && !z)) {
      mmp_tensor_unref(mo);
      mmp_tensor_unref(z);
      rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      break;
    }
    mmp_tensor_t *prev = NULL, *pred = NULL;
    rc = ops->step(self, i, mo, x, z, &prev, &pred);
    mmp_tensor_unref(mo);
    mmp_tensor_unref(z);
    if (rc < 0) {
      mmp_error_prefix("step %zu (timestep %lld): ", i, (long long)ts[i]);
      break;
    }
    prevs[i] = prev;
    preds[i] = pred;
    if (pred) npred++;
    done++;
    mmp_tensor_unref(x);
    x = mmp_tensor_ref(prev);
  }
  mmp_tensor_unref(x);

  if (rc == 0) {
    int64_t shape1[1] = {(int64_t)n};
    mmp_tensor_t *tt = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, shape1, ts);
    if (!tt || (rc = mmp_tensormap_set(out, "timesteps", tt)) < 0) rc = mmp_error_code();
  }
  if (rc == 0 && n > 0) {
    mmp_tensor_t *st = stack(prevs, n);
    if (!st || (rc = mmp_tensormap_set(out, "samples", st)) < 0) rc = mmp_error_code();
  }
  if (rc == 0 && n > 0 && npred == n) {
    mmp_tensor_t *st = stack(preds, n);
    if (!st || (rc = mmp_tensormap_set(out, "pred_original_samples", st)) < 0) rc = mmp_error_code();
  }
  if (rc == 0 && ops->base.struct_size >= offsetof(mmp_scheduler_ops_t, model_timesteps) +
                                              sizeof ops->model_timesteps &&
      ops->model_timesteps) {
    const double *mt;
    size_t mn;
    if ((rc = ops->model_timesteps(self, &mt, &mn)) == 0 && mn == n) {
      float *f = malloc((n ? n : 1) * sizeof *f);
      bool fractional = false;
      for (size_t i = 0; f && i < n; i++) {
        f[i] = (float)mt[i];
        if (mt[i] != (double)ts[i]) fractional = true;
      }
      if (f && fractional) {
        int64_t shape1[1] = {(int64_t)n};
        mmp_tensor_t *tt = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 1, shape1, f);
        if (!tt || (rc = mmp_tensormap_set(out, "model_timesteps", tt)) < 0) rc = mmp_error_code();
      }
      free(f);
    }
  }
  mmp_tensor_t *x0 = mmp_tensormap_get(in, "x0");
  if (rc == 0 && x0) {
    mmp_tensor_t *nz = mmp_tensormap_need(in, "add_noise_noise");
    mmp_tensor_t *at = mmp_tensormap_need(in, "add_noise_timesteps");
    mmp_tensor_t *noisy = NULL;
    if (!nz || !at)
      rc = MMP_ENOENT;
    else if ((rc = ops->add_noise(self, x0, nz, at, &noisy)) == 0)
      rc = mmp_tensormap_set(out, "noisy", noisy);
    if (rc < 0) mmp_error_prefix("add_noise: ");
  }
  for (size_t i = 0; i < done; i++) {
    mmp_tensor_unref(prevs[i]);
    mmp_tensor_unref(preds[i]);
  }
  free(prevs);
  free(preds);
  return rc;
}
