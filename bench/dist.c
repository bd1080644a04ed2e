/* bench/dist.c - training steps of the tiny UNet alone or data-parallel (mpirun -np N bench/dist): seconds per step.
 *
 * Run from the source tree root (the model is tests/fixtures/sd/pipe/unet),
 * e.g. with one thread per rank:
 *   MMPIPE_THREADS=1 bench/dist --batch 4
 *   mpirun -np 2 --oversubscribe -x MMPIPE_THREADS=1 bench/dist --batch 2
 * Each step: forward under the tape, MSE, backward with the gradients
 * averaged over the ranks (dist.h), AdamW. Rank 0 prints the mean step time
 * after the warm-up steps (wall clock, and CPU time per rank: the cost on a
 * machine shared with other work), and how long the step waited for the
 * last buckets after the backward. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/autograd.h>
#include <mmpipe/dist.h>
#include <mmpipe/grad.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int watch_param(void *user, const char *name, mmp_tensor_t *p) {
  void **u = user; /* tape, optimizer or NULL */
  if (u[1] && mmp_adamw_add_param(u[1], name, p) < 0) return -1;
  return mmp_tape_watch(u[0], name, p);
}

static void usage(const char *prog) {
  printf("Usage: [mpirun -np N] %s [--batch B] [--hw H] [--steps N] [--warmup N]\n"
         "          [--bucket KIB] [--allreduce] [--srcdir DIR]\n\n"
         "Training steps (forward, MSE, backward, gradient averaging, AdamW) of the tiny SD UNet\n"
         "(tests/fixtures/sd/pipe/unet under --srcdir, default .) at B samples per rank\n"
         "(default 2) of HxH latents (default 32); prints seconds per step on rank 0 after\n"
         "--warmup (default 2) of --steps (default 10) steps. --bucket: gradient bucket size\n"
         "in KiB (default 4096); --allreduce: MPI_Iallreduce instead of the ordered reduction.\n",
         prog);
}

int main(int argc, char **argv) {
  int batch = 2, hw = 32, steps = 10, warmup = 2, bucket_kib = 4096, allreduce = 0;
  const char *srcdir = ".";
  static const struct option lo[] = {{"batch", 1, 0, 'b'}, {"hw", 1, 0, 'w'},        {"steps", 1, 0, 's'},
                                     {"warmup", 1, 0, 'W'}, {"bucket", 1, 0, 'k'},   {"allreduce", 0, 0, 'a'},
                                     {"srcdir", 1, 0, 'S'}, {"help", 0, 0, 'h'},     {0, 0, 0, 0}};
  for (int c; (c = getopt_long(argc, argv, "h", lo, NULL)) != -1;) {
    switch (c) {
    case 'b': batch = atoi(optarg); break;
    case 'w': hw = atoi(optarg); break;
    case 's': steps = atoi(optarg); break;
    case 'W': warmup = atoi(optarg); break;
    case 'k': bucket_kib = atoi(optarg); break;
    case 'a': allreduce = 1; break;
    case 'S': srcdir = optarg; break;
    case 'h': usage(argv[0]); return 0;
    default: usage(argv[0]); return 2;
    }
  }
  if (batch < 1 || hw < 8 || hw % 8 || steps <= warmup || warmup < 0 || bucket_kib < 1) {
    usage(argv[0]);
    return 2;
  }
  mmp_dist_t *d = mmp_dist_init();
  if (!d) {
    fprintf(stderr, "dist/init: %s\n", mmp_error_last());
    return 1;
  }
  mmp_dist_set_bucket_bytes(d, (size_t)bucket_kib << 10);
  mmp_dist_set_reduce(d, allreduce ? MMP_DIST_ALLREDUCE : MMP_DIST_ORDERED);
  char text[8192];
  snprintf(text, sizeof text,
           "model = { name = \"unet2d_condition\"; model_dir = \"%s/tests/fixtures/sd/pipe\"; trainable = true; };",
           srcdir);
  mmp_registry_t *reg = mmp_registry_new();
  static const char *const kinds[] = {"models", "encoders", "schedulers"};
  for (int i = 0; i < 3; i++) {
    char dir[4200];
    snprintf(dir, sizeof dir, "plugins/%s/.libs", kinds[i]);
    mmp_registry_add_dir(reg, dir);
  }
  mmp_config_t *cfg = mmp_config_parse(text, "bench");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  mmp_component_t *c = ctx ? mmp_component_create(ctx, MMP_KIND_MODEL, "model") : NULL;
  int rc = c ? 0 : -1;
  const mmp_model_ops_t *ops = c ? (const mmp_model_ops_t *)c->plugin : NULL;
  if (rc == 0) rc = ops->parameters(c->self, mmp_dist_broadcast_param_cb, d);

  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 1e-4;
  mmp_adamw_t *opt = mmp_adamw_new(&hp);
  mmp_tape_t *tape = mmp_tape_new();
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(7 + (uint64_t)mmp_dist_rank(d), MMP_RNG_TORCH);
  int64_t ss[4] = {batch, 4, hw, hw}, es[3] = {batch, 7, 32}, ts = batch;
  int64_t *t = calloc((size_t)batch, sizeof *t);
  for (int i = 0; t && i < batch; i++) t[i] = 100 + 97 * i;
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_rng_randn(g, cpu, 4, ss));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_rng_randn(g, cpu, 3, es));
  mmp_tensormap_set(in, "timestep", t ? mmp_tensor_from_data(cpu, MMP_I64, 1, &ts, t) : NULL);
  mmp_tensor_t *target = mmp_rng_randn(g, cpu, 4, ss);
  free(t);
  double t_all = 0, t_wait = 0, t_cpu = 0;
  mmp_dist_stats_t st = {0};
  for (int step = 0; step < steps && rc == 0; step++) {
    if (step == warmup) rc = mmp_dist_barrier(d);
    double t0 = now_s(), c0 = cpu_s();
    void *u[2] = {tape, step == 0 ? opt : NULL};
    if (rc == 0) rc = ops->parameters(c->self, watch_param, u);
    mmp_tensormap_t *out = mmp_tensormap_new(), *grads = mmp_tensormap_new();
    mmp_tensor_t *loss = NULL;
    if (rc == 0) {
      mmp_tape_t *prev = mmp_tape_set_current(tape);
      rc = ops->forward(c->self, NULL, in, out);
      loss = rc == 0 ? mmp_mse_loss(mmp_tensormap_get(out, "sample"), target) : NULL;
      mmp_tape_set_current(prev);
      if (!loss) rc = -1;
    }
    if (rc == 0) rc = mmp_dist_grads_begin(d, tape);
    if (rc == 0) rc = mmp_tape_backward(tape, loss, NULL, grads);
    int erc = mmp_dist_grads_end(d, grads);
    if (rc == 0) rc = erc;
    if (rc == 0) rc = mmp_adamw_step(opt, grads);
    mmp_dist_stats(d, &st);
    if (step >= warmup) {
      t_all += now_s() - t0;
      t_cpu += cpu_s() - c0;
      t_wait += st.wait_s;
    }
    mmp_tensor_unref(loss);
    mmp_tensormap_free(out);
    mmp_tensormap_free(grads);
  }
  if (rc < 0) fprintf(stderr, "dist (rank %d): %s\n", mmp_dist_rank(d), mmp_error_last());
  double v[3] = {t_all, t_wait, t_cpu};
  if (rc == 0) rc = mmp_dist_average(d, v, 3);
  int n = steps - warmup;
  if (rc == 0 && mmp_dist_is_root(d))
    printf("%d rank(s) x batch %d, %dx%d latents, %s: %.1f ms/step, %.1f ms CPU/step per rank (%.1f ms waiting for the last buckets), "
                 "%zu buckets (%zu sent during the backward), %.2f M floats\n",
                 mmp_dist_size(d), batch, hw, hw, allreduce ? "allreduce" : "ordered", 1e3 * v[0] / n,
                 1e3 * v[2] / n, 1e3 * v[1] / n, st.buckets, st.early, (double)st.floats / 1e6);
  mmp_rng_free(g);
  mmp_tensor_unref(target);
  mmp_tensormap_free(in);
  mmp_tape_free(tape);
  mmp_adamw_free(opt);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  mmp_dist_finalize(d);
  return rc < 0;
}
