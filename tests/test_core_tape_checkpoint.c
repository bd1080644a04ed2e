/* tests/test_core_tape_checkpoint.c - checkpoint regions of the tape: the same gradients as without, random draws
 * replayed, nesting, less memory held, errors of the replay. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/rng.h>

#include "tap.h"

static mmp_backend_t *cpu;

typedef struct region {
  mmp_tensor_t *w; /* a parameter: lives until the backward */
  mmp_rng_t *rng;
  bool nested; /* the inner part as a region of its own */
  int *calls;  /* (nullable) counts the runs; fail_at: the run that fails */
  int fail_at;
} region_t;

/* tanh(b) * b */
static mmp_tensor_t *inner(void *user, int nin, mmp_tensor_t *const *in) {
  (void)user;
  (void)nin;
  mmp_tensor_t *t = mmp_tanh(in[0]);
  mmp_tensor_t *r = t ? mmp_mul(t, in[0]) : NULL;
  mmp_tensor_unref(t);
  return r;
}

/* inner(silu(x w^T) * noise), noise drawn from the region's generator */
static mmp_tensor_t *outer(void *user, int nin, mmp_tensor_t *const *in) {
  region_t *r = user;
  (void)nin;
  if (r->calls && ++*r->calls == r->fail_at) {
    mmp_error_set(MMP_EDATA, "region: failing on purpose at run %d", *r->calls);
    return NULL;
  }
  mmp_tensor_t *a = mmp_linear(in[0], r->w, NULL);
  mmp_tensor_t *s = a ? mmp_silu(a) : NULL;
  mmp_tensor_t *noise = s ? mmp_rng_randn(r->rng, cpu, s->ndim, s->shape) : NULL;
  mmp_tensor_t *b = noise ? mmp_mul(s, noise) : NULL;
  mmp_tensor_t *y = NULL;
  if (b) y = r->nested ? mmp_tape_checkpoint(inner, NULL, 0, 1, &b, NULL) : inner(NULL, 1, &b);
  mmp_tensor_unref(a);
  mmp_tensor_unref(s);
  mmp_tensor_unref(noise);
  mmp_tensor_unref(b);
  return y;
}

typedef struct result {
  mmp_tensormap_t *grads;
  size_t nodes, after_forward;
  uint64_t next_draw;
  int rc;
} result_t;

/* loss = mse(outer(x), 0) with the parameters from a fixed seed; @mode 0:
 * plain, 1: one region, 2: a region with a nested one. */
static result_t step(int mode, int fail_at) {
  int64_t xs[2] = {6, 8}, ws[2] = {8, 8};
  mmp_rng_t *init = mmp_rng_new(3, MMP_RNG_PHILOX);
  mmp_tensor_t *x = mmp_rng_randn(init, cpu, 2, xs), *w = mmp_rng_randn(init, cpu, 2, ws);
  mmp_rng_free(init);
  int calls = 0;
  region_t reg = {w, mmp_rng_new(11, MMP_RNG_PHILOX), mode == 2, fail_at ? &calls : NULL, fail_at};
  mmp_tape_t *tape = mmp_tape_new();
  mmp_tape_watch(tape, "x", x);
  mmp_tape_watch(tape, "w", w);
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  mmp_tensor_t *y = mode ? mmp_tape_checkpoint(outer, &reg, sizeof reg, 1, &x, reg.rng) : outer(&reg, 1, &x);
  mmp_tensor_t *zero = y ? mmp_tensor_full(cpu, MMP_F32, y->ndim, y->shape, 0.0) : NULL;
  mmp_tensor_t *loss = zero ? mmp_mse_loss(y, zero) : NULL;
  mmp_tape_set_current(prev);
  result_t r = {mmp_tensormap_new(), mmp_tape_size(tape), mmp_tape_saved_bytes(tape), 0, -1};
  r.rc = loss ? mmp_tape_backward(tape, loss, NULL, r.grads) : -1;
  r.next_draw = mmp_rng_u64(reg.rng);
  mmp_tensor_unref(y);
  mmp_tensor_unref(zero);
  mmp_tensor_unref(loss);
  mmp_tensor_unref(x);
  mmp_tensor_unref(w);
  mmp_rng_free(reg.rng);
  mmp_tape_free(tape);
  return r;
}

static bool same(const mmp_tensor_t *a, const mmp_tensor_t *b) {
  return a && b && mmp_tensor_nbytes(a) == mmp_tensor_nbytes(b) &&
         memcmp(mmp_tensor_data((mmp_tensor_t *)a), mmp_tensor_data((mmp_tensor_t *)b), mmp_tensor_nbytes(a)) == 0;
}

static mmp_tensor_t *plain(void *user, int nin, mmp_tensor_t *const *in) {
  (void)user;
  (void)nin;
  return mmp_scale(in[0], 2.0, 1.0);
}

int main(void) {
  cpu = mmp_backend_get("cpu");
  result_t ref = step(0, 0), one = step(1, 0), nest = step(2, 0);
  ok(ref.rc == 0 && one.rc == 0 && nest.rc == 0, "backward through plain ops, a region and nested regions");
  for (int k = 0; k < 2; k++) {
    const char *name = k ? "w" : "x";
    mmp_tensor_t *g = mmp_tensormap_get(ref.grads, name);
    ok(same(mmp_tensormap_get(one.grads, name), g), "gradient of %s through a region, bit for bit", name);
    ok(same(mmp_tensormap_get(nest.grads, name), g), "gradient of %s through nested regions, bit for bit", name);
  }
  ok(one.next_draw == ref.next_draw && nest.next_draw == ref.next_draw,
     "the replay drew the region's noise again and left the generator where the forward left it");
  ok(one.nodes == 2 && ref.nodes > 5, "one node for the region (+ the loss): %zu against %zu", one.nodes, ref.nodes);
  ok(one.after_forward < ref.after_forward, "the tape holds %zu bytes after the forward instead of %zu",
     one.after_forward, ref.after_forward);

  /* a replay that fails: the error comes out of the backward */
  result_t bad = step(1, 2);
  ok(bad.rc == MMP_EDATA && strstr(mmp_error_last(), "checkpoint") && strstr(mmp_error_last(), "on purpose"),
     "a failing replay fails the backward: %s", mmp_error_last());

  /* no tape: the region is a plain call */
  int64_t s[1] = {3};
  mmp_tensor_t *v = mmp_tensor_full(cpu, MMP_F32, 1, s, 1.0);
  mmp_tensor_t *r = mmp_tape_checkpoint(plain, NULL, 0, 1, &v, NULL);
  ok(r && mmp_tensor_get(r, (int64_t[]){2}) == 3.0, "without a tape the region runs once, plainly");
  mmp_tensor_unref(r);
  /* reading nothing tracked: nothing recorded */
  mmp_tape_t *t = mmp_tape_new();
  mmp_tape_t *prev = mmp_tape_set_current(t);
  r = mmp_tape_checkpoint(plain, NULL, 0, 1, &v, NULL);
  mmp_tape_set_current(prev);
  ok(r && mmp_tape_size(t) == 0 && !mmp_tape_tracks(t, r), "a region of untracked tensors records nothing");
  mmp_tensor_unref(r);
  mmp_tape_free(t);
  ok(mmp_tape_checkpoint(NULL, NULL, 0, 1, &v, NULL) == NULL && mmp_error_code() == MMP_EINVAL,
     "no function: MMP_EINVAL");
  mmp_tensor_unref(v);

  mmp_tensormap_free(ref.grads);
  mmp_tensormap_free(one.grads);
  mmp_tensormap_free(nest.grads);
  mmp_tensormap_free(bad.grads);
  return done_testing();
}
