/* tests/test_core_dist.c - data parallelism (dist.h): 2 ranks at per-rank batch b train the tiny UNet like 1 process at 2b.
 *
 * Run by tests/test_core_dist.sh under `mpirun -np 2`; rank 0 prints TAP.
 * Rank 0 first trains alone at the global batch of 4 (the reference),
 * then both ranks train from the same file weights on their shards (items
 * rank, rank + 2: the loader's rule) with gradients averaged by dist.h:
 * with the ordered reduction in one bucket, again in small buckets (sent
 * during the backward), and with MPI_Iallreduce. Every run takes 3 AdamW
 * steps on a new random batch each step; the global losses and the final
 * parameters must equal the reference within 1e-5 relative, the ranks'
 * parameters must be bit-identical, and the ordered runs must be
 * bit-identical to each other whatever the bucket size. */
#include <mmpipe/autograd.h>
#include <mmpipe/dist.h>
#include <mmpipe/grad.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>

#include "sd_test.h"

#define NSTEPS 3
#define GLOBAL_BATCH 4

static const char *const CFG = "model = { name = \"unet2d_condition\"; model_dir = \"%s/pipe\"; trainable = true; };";

typedef struct run {
  mmp_tensormap_t *params; /* final parameters (clones) */
  double loss[NSTEPS];     /* global mean loss of each step */
  size_t buckets, early;   /* of the last step */
  size_t handed, handed_early; /* in the backward: gradients handed to the optimizer (last step), before end */
} run_t;

/* mmp_dist_grads_begin_cb's callback: AdamW on the averaged gradient at once */
typedef struct in_bwd {
  mmp_adamw_t *opt;
  run_t *r;
  bool ending; /* inside mmp_dist_grads_end */
} in_bwd_t;

static int on_averaged(void *user, const char *name, mmp_tensor_t *grad) {
  in_bwd_t *ib = user;
  ib->r->handed++;
  if (!ib->ending) ib->r->handed_early++;
  return mmp_adamw_step_one(ib->opt, name, grad);
}

typedef struct watch_ctx {
  mmp_tape_t *tape;
  mmp_tensormap_t *params;
} watch_ctx_t;

static int watch_param(void *user, const char *name, mmp_tensor_t *p) {
  watch_ctx_t *w = user;
  if (w->params) mmp_tensormap_set(w->params, name, mmp_tensor_ref(p));
  return mmp_tape_watch(w->tape, name, p);
}

/* The global batch of step @step (the same on every rank), or items
 * rank, rank + size, ... of it. */
static int make_batch(int step, int rank, int size, mmp_tensormap_t *in, mmp_tensor_t **target) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(1000 + (uint64_t)step, MMP_RNG_TORCH);
  int64_t ss[4] = {GLOBAL_BATCH, 4, 8, 8}, es[3] = {GLOBAL_BATCH, 7, 32}, ts = GLOBAL_BATCH, ms[2] = {GLOBAL_BATCH, 7};
  mmp_tensor_t *full[5];
  full[0] = mmp_rng_randn(g, cpu, 4, ss);
  full[1] = mmp_rng_randn(g, cpu, 3, es);
  full[2] = mmp_rng_randn(g, cpu, 4, ss);
  int64_t t[GLOBAL_BATCH];
  uint8_t m[GLOBAL_BATCH * 7];
  for (int i = 0; i < GLOBAL_BATCH; i++) {
    t[i] = (37 * (i + 1) + 211 * step) % 1000;
    for (int k = 0; k < 7; k++) m[i * 7 + k] = k < 7 - (i + step) % 3; /* some keys masked */
  }
  full[3] = mmp_tensor_from_data(cpu, MMP_I64, 1, &ts, t);
  full[4] = mmp_tensor_from_data(cpu, MMP_U8, 2, ms, m);
  mmp_rng_free(g);
  static const char *const names[5] = {"sample", "encoder_hidden_states", "target", "timestep",
                                       "encoder_attention_mask"};
  int rc = 0;
  for (int k = 0; k < 5; k++) {
    mmp_tensor_t *s = full[k] ? mmp_slice(full[k], 0, rank, GLOBAL_BATCH, size) : NULL;
    mmp_tensor_t *c = s ? mmp_contiguous(s) : NULL;
    mmp_tensor_unref(s);
    mmp_tensor_unref(full[k]);
    if (!c) rc = -1;
    else if (k == 2) *target = c;
    else mmp_tensormap_set(in, names[k], c);
  }
  return rc;
}

static int param_cb_copy(void *user, const char *name, mmp_tensor_t *p) {
  return mmp_tensormap_set(user, name, mmp_clone(p));
}

/* Train NSTEPS AdamW steps; @d NULL: alone at the global batch. @in_bwd:
 * each parameter updated in the backward once its bucket is averaged. */
static int train(mmp_dist_t *d, mmp_dist_reduce_t mode, size_t bucket_bytes, bool in_bwd, run_t *r) {
  memset(r, 0, sizeof *r);
  int rank = d ? mmp_dist_rank(d) : 0, size = d ? mmp_dist_size(d) : 1;
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, MMP_KIND_MODEL, "model", CFG);
  if (!c) return -1;
  const mmp_model_ops_t *ops = (const mmp_model_ops_t *)c->plugin;
  int rc = 0;
  if (d) {
    mmp_dist_set_reduce(d, mode);
    mmp_dist_set_bucket_bytes(d, bucket_bytes);
    rc = ops->parameters(c->self, mmp_dist_broadcast_param_cb, d); /* rank 0's weights everywhere */
  }
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 1e-3;
  hp.eps = 1e-5;
  hp.weight_decay = 0.01;
  mmp_adamw_t *opt = mmp_adamw_new(&hp);
  mmp_tape_t *tape = mmp_tape_new();
  for (int step = 0; step < NSTEPS && rc == 0; step++) {
    mmp_tensormap_t *params = step == 0 ? mmp_tensormap_new() : NULL;
    watch_ctx_t w = {tape, params};
    rc = ops->parameters(c->self, watch_param, &w);
    for (size_t i = 0; params && i < mmp_tensormap_size(params) && rc == 0; i++)
      rc = mmp_adamw_add_param(opt, mmp_tensormap_name(params, i), mmp_tensormap_at(params, i));
    mmp_tensormap_free(params);
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new(), *grads = mmp_tensormap_new();
    mmp_tensor_t *target = NULL, *loss = NULL;
    if (rc == 0) rc = make_batch(step, rank, size, in, &target);
    if (rc == 0) {
      mmp_tape_t *prev = mmp_tape_set_current(tape);
      rc = ops->forward(c->self, NULL, in, out);
      loss = rc == 0 ? mmp_mse_loss(mmp_tensormap_get(out, "sample"), target) : NULL;
      mmp_tape_set_current(prev);
      if (!loss) rc = -1;
    }
    in_bwd_t ib = {opt, r, false};
    r->handed = r->handed_early = 0;
    if (rc == 0 && d) rc = in_bwd ? mmp_dist_grads_begin_cb(d, tape, on_averaged, &ib) : mmp_dist_grads_begin(d, tape);
    if (rc == 0) rc = mmp_tape_backward(tape, loss, NULL, grads);
    if (d) {
      ib.ending = true;
      int erc = mmp_dist_grads_end(d, grads);
      if (rc == 0) rc = erc;
      mmp_dist_stats_t st;
      mmp_dist_stats(d, &st);
      r->buckets = st.buckets;
      r->early = st.early;
    }
    if (rc == 0 && !in_bwd) rc = mmp_adamw_step(opt, grads);
    if (rc == 0) {
      r->loss[step] = mmp_tensor_get(loss, NULL);
      if (d) rc = mmp_dist_average(d, &r->loss[step], 1);
    }
    mmp_tensor_unref(loss);
    mmp_tensor_unref(target);
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
    mmp_tensormap_free(grads);
  }
  if (rc == 0) {
    r->params = mmp_tensormap_new();
    rc = ops->parameters(c->self, param_cb_copy, r->params);
  }
  if (rc < 0) diag("rank %d: %s", rank, mmp_error_last());
  mmp_tape_free(tape);
  mmp_adamw_free(opt);
  mmp_component_free(c);
  sd_env_close(&e);
  return rc;
}

/* max over parameters of max|a - b| / max|b|; -1 on a mismatch of names. */
static double params_relerr(const mmp_tensormap_t *a, const mmp_tensormap_t *b) {
  if (!a || !b || mmp_tensormap_size(a) != mmp_tensormap_size(b)) return -1;
  double worst = 0;
  for (size_t i = 0; i < mmp_tensormap_size(b); i++) {
    double r = sd_relerr(mmp_tensormap_get(a, mmp_tensormap_name(b, i)), mmp_tensormap_at(b, i));
    if (r < 0) return -1;
    if (r > worst) worst = r;
  }
  return worst;
}

/* Number of parameters whose bytes differ between @a and @b. */
static int params_differ(const mmp_tensormap_t *a, const mmp_tensormap_t *b) {
  int n = 0;
  for (size_t i = 0; i < mmp_tensormap_size(b); i++) {
    mmp_tensor_t *x = mmp_tensormap_get(a, mmp_tensormap_name(b, i)), *y = mmp_tensormap_at(b, i);
    if (!x || mmp_tensor_nbytes(x) != mmp_tensor_nbytes(y) ||
        memcmp(mmp_tensor_data(x), mmp_tensor_data(y), mmp_tensor_nbytes(x)))
      n++;
  }
  return n;
}

/* Parameters of every rank that differ from rank 0's (on rank 0; 0 elsewhere). */
static int ranks_differ(mmp_dist_t *d, const mmp_tensormap_t *p) {
  mmp_tensormap_t *r0 = mmp_tensormap_new();
  int rc = 0;
  for (size_t i = 0; i < mmp_tensormap_size(p) && rc == 0; i++) {
    mmp_tensor_t *x = mmp_clone(mmp_tensormap_at(p, i));
    rc = x ? mmp_dist_broadcast(d, x) : -1;
    if (x) mmp_tensormap_set(r0, mmp_tensormap_name(p, i), x);
  }
  double nd = rc < 0 ? 1e9 : params_differ(r0, p);
  mmp_tensormap_free(r0);
  if (mmp_dist_average(d, &nd, 1) < 0) return -1;
  return (int)(nd * mmp_dist_size(d) + 0.5);
}

int main(void) {
  mmp_dist_t *d = mmp_dist_init();
  if (!d) {
    printf("Bail out! dist_init: %s\n", mmp_error_last());
    return 1;
  }
  if (mmp_dist_size(d) != 2) {
    mmp_dist_finalize(d);
    skip_all("run by test_core_dist.sh under mpirun -np 2");
  }
  int rank = mmp_dist_rank(d);
  if (rank != 0 && !freopen("/dev/null", "w", stdout)) return 1; /* one TAP stream */

  run_t ref = {0};
  if (rank == 0) {
    int rc = train(NULL, MMP_DIST_ORDERED, 0, false, &ref);
    ok(rc == 0, "one process, batch %d: %d AdamW steps of the tiny UNet", GLOBAL_BATCH, NSTEPS);
  }
  static const struct {
    mmp_dist_reduce_t mode;
    size_t bucket;
    const char *what;
    bool in_bwd;
  } runs[4] = {{MMP_DIST_ORDERED, 0, "ordered, one bucket", false},
               {MMP_DIST_ORDERED, 16 << 10, "ordered, 16 KiB buckets", false},
               {MMP_DIST_ALLREDUCE, 64 << 10, "MPI_Iallreduce, 64 KiB buckets", false},
               {MMP_DIST_ORDERED, 16 << 10, "ordered, 16 KiB buckets, AdamW in the backward as each bucket completes", true}};
  run_t rr[4] = {{0}};
  for (int k = 0; k < 4; k++) {
    int rc = train(d, runs[k].mode, runs[k].bucket, runs[k].in_bwd, &rr[k]);
    double f = rc < 0;
    mmp_dist_average(d, &f, 1);
    if (!ok(f == 0, "2 ranks, batch %d each (%s): %zu buckets, %zu sent during the backward", GLOBAL_BATCH / 2,
            runs[k].what, rr[k].buckets, rr[k].early))
      continue;
    double worst = 0;
    for (int s = 0; s < NSTEPS; s++) {
      double e = fabs(rr[k].loss[s] - ref.loss[s]) / fabs(ref.loss[s]);
      if (e > worst) worst = e;
    }
    ok(rank != 0 || worst <= 1e-5, "  every step's global loss equals one process's (worst %.3g relative)", worst);
    double pe = rank == 0 ? params_relerr(rr[k].params, ref.params) : 0;
    ok(pe >= 0 && pe <= 1e-5, "  final parameters equal one process's (worst %.3g relative)", pe);
    int nd = ranks_differ(d, rr[k].params);
    ok(nd == 0, "  both ranks hold bit-identical parameters (%d differ)", nd);
  }
  ok(rr[1].buckets > 1 && rr[1].early > 0, "small buckets leave during the backward (%zu of %zu)", rr[1].early,
     rr[1].buckets);
  int nd = rr[0].params && rr[1].params ? params_differ(rr[0].params, rr[1].params) : -1;
  ok(nd == 0, "the ordered reduction is bit-reproducible whatever the bucket size (%d parameters differ)", nd);

  size_t np = rr[1].params ? mmp_tensormap_size(rr[1].params) : 0;
  ok(rr[3].handed == np && np > 0, "in the backward: every parameter's averaged gradient handed over once (%zu of %zu)",
     rr[3].handed, np);
  ok(rr[3].handed_early > 0, "  %zu of them during the backward, as their buckets completed", rr[3].handed_early);
  nd = rr[3].params && rr[1].params ? params_differ(rr[3].params, rr[1].params) : -1;
  ok(nd == 0, "  the same parameters, bit for bit, as the optimizer after the backward (%d differ)", nd);

  /* a non-f32 gradient fails the same way on every rank, before any MPI call */
  mmp_tensormap_t *bad = mmp_tensormap_new();
  int64_t two = 2;
  mmp_tensormap_set(bad, "x", mmp_tensor_full(mmp_backend_get("cpu"), MMP_F16, 1, &two, 1.0));
  int brc = mmp_dist_allreduce_grads(d, bad);
  ok(brc == MMP_EINVAL && strstr(mmp_error_last(), "f32"), "a non-f32 gradient is refused: %s", mmp_error_last());
  mmp_tensormap_free(bad);

  for (int k = 0; k < 4; k++) mmp_tensormap_free(rr[k].params);
  mmp_tensormap_free(ref.params);
  int rc = done_testing();
  double f = rc;
  mmp_dist_average(d, &f, 1);
  mmp_dist_finalize(d);
  return f != 0;
}
