/* bench/train.c - one UNet training step (forward, MSE against the noise, backward, AdamW) at SD-1.5 size on CPU,
 * beside PyTorch doing the same (bench/torch_train.py) in its own process. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>
#include <mmpipe/mmpipe.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>

typedef struct opts {
  const char *config, *weights, *srcdir;
  const char *moments_dir; /* --moments-on-disk DIR */
  int threads, steps, hw, tokens;
  bool checkpointing, compare_torch, torch_only, in_backward;
} opts_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* This process's bytes read from / written to storage so far (/proc/self/io; 0 without it). */
static void io_bytes(double *rd, double *wr) {
  *rd = *wr = 0;
  FILE *f = fopen("/proc/self/io", "r");
  char line[128];
  while (f && fgets(line, sizeof line, f)) {
    if (!strncmp(line, "read_bytes: ", 12)) *rd = strtod(line + 12, NULL);
    if (!strncmp(line, "write_bytes: ", 13)) *wr = strtod(line + 13, NULL);
  }
  if (f) fclose(f);
}

/* The high-water mark of the RSS since it was last reset (VmHWM; reset by writing 5 to
 * /proc/self/clear_refs), MB; -1 where Linux does not tell. */
static double hwm_rss_mb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[128];
  double kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) kb = strtod(line + 6, NULL);
  if (f) fclose(f);
  return kb < 0 ? -1 : kb / 1024.0;
}

static bool reset_hwm(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  bool done = f && fputs("5", f) >= 0;
  if (f && fclose(f) != 0) done = false;
  return done;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

static void usage(const char *prog) {
  printf("Usage: %s [--config UNET.json] [--weights W.safetensors] [--threads N] [--steps N]\n"
         "          [--hw H] [--tokens S] [--small] [--checkpointing] [--optimizer-in-backward]\n"
         "          [--moments-on-disk DIR] [--compare-torch] [--torch-only]\n\n"
         "Training steps of the UNet (default bench/sd15/unet, SD-1.5 size) on CPU in fp32: forward at\n"
         "batch 1 on HxH latents (default 64), MSE against the noise, backward, one AdamW step over\n"
         "every weight. The context is AR-LDM's 6 x S tokens (default S = 91: 546 tokens, 768 wide)\n"
         "with the cross-attention key mask of one training frame (target frame 2 of a visualization:\n"
         "the caption's and the two earlier frames' padding masked, the later frames masked).\n"
         "Prints seconds of each part per step, CPU seconds (user + system) and peak RSS (of the\n"
         "process, and of the steps alone where Linux lets the high-water mark be reset).\n"
         "Without --weights the weights are made in-process (init_seed 0, trainable copies).\n"
         "--checkpointing: gradient_checkpointing = true (doc/plugins/unet2d_condition.md).\n"
         "--optimizer-in-backward: each weight's AdamW update runs from the tape's grad-ready hook\n"
         "as soon as its gradient is final, and the gradient is freed at once (the train task's\n"
         "optimizer_in_backward): the gradients never all exist; AdamW's time is then part of the\n"
         "backward's. PyTorch keeps its ordinary step.\n"
         "--moments-on-disk DIR: AdamW's moments in a temporary file in DIR, each weight's read for\n"
         "its update and dropped from memory and the page cache after it (mmp_adamw_moments_to_file);\n"
         "each step then also prints the bytes this process read from and wrote to storage.\n"
         "--small: the tiny test UNet (tests/fixtures/sd/pipe/unet), 16x16, S = 4: a quick check.\n"
         "--compare-torch: afterwards the same steps in diffusers 0.19.3 (bench/torch_train.py,\n"
         "/usr/bin/python3, PYTHONPATH from MMP_TORCH_PYTHONPATH, default /root/refenv/site) in\n"
         "its own process, with unet.enable_gradient_checkpointing() under --checkpointing;\n"
         "--torch-only runs only that side. Both sides use --threads (default 2).\n"
         "Run from the source tree root (MMP_BENCH_SRCDIR points elsewhere).\n",
         prog);
}

/* cross_attention_dim of a diffusers config (an int; 768 when absent). */
static int64_t context_dim(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return 768;
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strstr(buf, "\"cross_attention_dim\"");
  if (!p || !(p = strchr(p, ':'))) return 768;
  long long v = strtoll(p + 1, NULL, 10);
  return v > 0 ? v : 768;
}

/* The key mask of one AR-LDM training frame (1 = do not attend): block 0
 * the caption, block 1 + j the BLIP features of source frame j, target
 * frame i = 2, so blocks 1 + j for j >= 2 are masked (ARLDM.forward's
 * triangular square_mask); the padding of block k is masked too, its
 * caption having min(S, 12 + 7 k) tokens (bench/unet.c's stand-in for real
 * caption lengths, its conditional row). bench/torch_train.py builds the same. */
static mmp_tensor_t *frame_mask(mmp_backend_t *be, int64_t S) {
  int64_t L = 6 * S, shape[2] = {1, L}, open = 0;
  uint8_t *m = calloc((size_t)L, 1);
  if (!m) return NULL;
  for (int64_t k = 0; k < 6; k++) {
    int64_t n = 12 + 7 * k < S ? 12 + 7 * k : S;
    for (int64_t s = 0; s < S; s++) m[k * S + s] = k >= 1 + 2 || s >= n;
  }
  for (int64_t j = 0; j < L; j++) open += !m[j];
  printf("context %lld tokens, keys attended %lld\n", (long long)L, (long long)open);
  mmp_tensor_t *t = mmp_tensor_from_data(be, MMP_U8, 2, shape, m);
  free(m);
  return t;
}

static int add_param(void *user, const char *name, mmp_tensor_t *p) { return mmp_adamw_add_param(user, name, p); }
static int watch_param(void *user, const char *name, mmp_tensor_t *p) { return mmp_tape_watch(user, name, p); }

/* --optimizer-in-backward: the grad-ready hook */
typedef struct in_backward {
  mmp_adamw_t *opt;
  mmp_tensormap_t *grads;
} in_backward_t;

static int step_in_backward(void *user, const char *name, mmp_tensor_t *grad) {
  in_backward_t *ib = user;
  int rc = mmp_adamw_step_one(ib->opt, name, grad);
  mmp_tensormap_remove(ib->grads, name);
  return rc;
}

static int run_mmpipe(const opts_t *o) {
  char text[8192];
  snprintf(text, sizeof text,
           "model = { name = \"unet2d_condition\"; config = \"%s\"; %s%s%s trainable = true; %s };",
           o->config, o->weights ? "weights = \"" : "init_seed = 0;", o->weights ? o->weights : "",
           o->weights ? "\";" : "", o->checkpointing ? "gradient_checkpointing = true;" : "");
  mmp_registry_t *reg = mmp_registry_new();
  mmp_config_t *cfg = mmp_config_parse(text, "bench");
  int rc = reg && cfg ? mmp_registry_set_search_path(reg, cfg) : -1;
  mmp_context_t *ctx = rc == 0 ? mmp_context_new(reg, cfg) : NULL;
  double t0 = now_s();
  mmp_component_t *c = ctx ? mmp_component_create(ctx, MMP_KIND_MODEL, "model") : NULL;
  if (!c) rc = -1;
  else printf("%-24s %8.2f s  (%s)\n", "load", now_s() - t0, o->weights ? "file, trainable copies" : "random in-process");
  const mmp_model_ops_t *ops = c ? (const mmp_model_ops_t *)c->plugin : NULL;
  mmp_adamw_params_t hp;
  mmp_adamw_defaults(&hp);
  hp.lr = 1e-5; /* AR-LDM's */
  hp.weight_decay = 1e-4;
  mmp_adamw_t *opt = mmp_adamw_new(&hp);
  if (rc == 0) rc = ops->parameters(c->self, add_param, opt);
  if (rc == 0 && o->moments_dir) rc = mmp_adamw_moments_to_file(opt, o->moments_dir);
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_rng_t *g = mmp_rng_new(0, MMP_RNG_PHILOX);
  int64_t xs[4] = {1, 4, o->hw, o->hw}, es[3] = {1, 6 * (int64_t)o->tokens, context_dim(o->config)}, ts = 1;
  int64_t t = 500;
  mmp_tensormap_t *in = mmp_tensormap_new();
  mmp_tensormap_set(in, "sample", mmp_rng_randn(g, cpu, 4, xs));
  mmp_tensormap_set(in, "encoder_hidden_states", mmp_rng_randn(g, cpu, 3, es));
  mmp_tensormap_set(in, "timestep", mmp_tensor_from_data(cpu, MMP_I64, 1, &ts, &t));
  mmp_tensormap_set(in, "encoder_attention_mask", frame_mask(cpu, o->tokens));
  mmp_tensor_t *noise = mmp_rng_randn(g, cpu, 4, xs);
  /* the steps' own peak, apart from the load's (which may be higher: weights made, then copied) */
  bool hwm = reset_hwm();
  double tf = 0, tb = 0, to = 0, tcpu = 0;
  for (int step = 0; step < o->steps && rc == 0; step++) {
    mmp_tape_t *tape = mmp_tape_new();
    mmp_tensormap_t *out = mmp_tensormap_new(), *grads = mmp_tensormap_new();
    mmp_tensor_t *loss = NULL;
    double c0 = cpu_s(), t1 = now_s(), rd0, wr0, rd1, wr1;
    io_bytes(&rd0, &wr0);
    rc = tape ? ops->parameters(c->self, watch_param, tape) : -1;
    if (rc == 0) {
      mmp_tape_t *prev = mmp_tape_set_current(tape);
      rc = ops->forward(c->self, NULL, in, out);
      loss = rc == 0 ? mmp_mse_loss(mmp_tensormap_get(out, "sample"), noise) : NULL;
      mmp_tape_set_current(prev);
      if (!loss) rc = -1;
    }
    mmp_tensormap_free(out);
    double t2 = now_s();
    size_t peak = mmp_tape_peak_bytes(tape);
    in_backward_t ib = {opt, grads};
    if (o->in_backward) mmp_tape_on_grad_ready(tape, step_in_backward, &ib);
    if (rc == 0) rc = mmp_tape_backward(tape, loss, NULL, grads);
    double t3 = now_s();
    if (rc == 0 && !o->in_backward) rc = mmp_adamw_step(opt, grads);
    double t4 = now_s(), c1 = cpu_s();
    io_bytes(&rd1, &wr1);
    if (rc == 0) {
      printf("step %d: loss %.6f, forward %.2f s, backward %.2f s%s, AdamW %.2f s, total %.2f s, %.2f CPU s; "
             "tape held %.0f MB after the forward, %.0f MB at its peak\n",
             step, mmp_tensor_get(loss, NULL), t2 - t1, t3 - t2, o->in_backward ? " (with AdamW)" : "", t4 - t3,
             t4 - t1, c1 - c0, (double)peak / 1048576.0, (double)mmp_tape_peak_bytes(tape) / 1048576.0);
      if (o->moments_dir)
        printf("step %d: %.0f MB read from and %.0f MB written to storage\n", step, (rd1 - rd0) / 1048576.0,
               (wr1 - wr0) / 1048576.0);
      fflush(stdout);
      if (step > 0 || o->steps == 1) {
        tf += t2 - t1;
        tb += t3 - t2;
        to += t4 - t3;
        tcpu += c1 - c0;
      }
    }
    mmp_tensor_unref(loss);
    mmp_tensormap_free(grads);
    mmp_tape_free(tape);
  }
  if (rc == 0) {
    int n = o->steps > 1 ? o->steps - 1 : 1;
    printf("%-24s %8.2f s  (forward %.2f + backward %.2f + AdamW %.2f; mean of %d step%s%s, %d threads)\n",
           "mmpipe step", (tf + tb + to) / n, tf / n, tb / n, to / n, n, n > 1 ? "s" : "",
           o->steps > 1 ? " after the first" : "", mmp_threads_get());
    printf("%-24s %8.2f s  (user + system per step)\n", "mmpipe cpu time", tcpu / n);
    printf("%-24s %8.0f MB\n", "mmpipe peak RSS", peak_rss_mb());
    if (hwm) printf("%-24s %8.0f MB  (the steps alone: VmHWM reset after the load)\n", "mmpipe steps' peak RSS",
                    hwm_rss_mb());
  } else {
    fprintf(stderr, "bench/train: %s\n", mmp_error_last());
  }
  mmp_tensor_unref(noise);
  mmp_tensormap_free(in);
  mmp_rng_free(g);
  mmp_adamw_free(opt);
  mmp_component_free(c);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return rc < 0;
}

static int run_torch(const opts_t *o) {
  const char *pp = getenv("MMP_TORCH_PYTHONPATH");
  char cmd[12000];
  snprintf(cmd, sizeof cmd,
           "PYTHONPATH='%s' LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
           "/usr/bin/python3 '%s/bench/torch_train.py' '%s' %d %d %d %d %d",
           pp ? pp : "/root/refenv/site", o->threads, o->srcdir, o->config, o->threads, o->steps, o->hw, o->tokens,
           o->checkpointing ? 1 : 0);
  printf("-- PyTorch (subprocess%s) --\n", o->checkpointing ? ", enable_gradient_checkpointing()" : "");
  fflush(stdout);
  int rc = system(cmd);
  if (rc != 0) printf("PyTorch comparison failed (exit %d)\n", rc);
  return rc != 0;
}

int main(int argc, char **argv) {
  static const struct option lo[] = {
      {"config", 1, 0, 'c'},        {"weights", 1, 0, 'w'},       {"threads", 1, 0, 't'},
      {"steps", 1, 0, 's'},         {"hw", 1, 0, 'H'},            {"tokens", 1, 0, 'S'},
      {"small", 0, 0, 'm'},         {"checkpointing", 0, 0, 'k'}, {"compare-torch", 0, 0, 'T'},
      {"torch-only", 0, 0, 'O'},    {"optimizer-in-backward", 0, 0, 'B'}, {"moments-on-disk", 1, 0, 'D'},
      {"help", 0, 0, 'h'},          {0, 0, 0, 0}};
  static char cfg[4096];
  opts_t o = {.threads = 2, .steps = 1, .hw = 64, .tokens = 91};
  const char *src = getenv("MMP_BENCH_SRCDIR");
  o.srcdir = src ? src : ".";
  bool small = false;
  for (int c; (c = getopt_long(argc, argv, "h", lo, NULL)) != -1;) {
    switch (c) {
    case 'c': o.config = optarg; break;
    case 'w': o.weights = optarg; break;
    case 't': o.threads = atoi(optarg); break;
    case 's': o.steps = atoi(optarg); break;
    case 'H': o.hw = atoi(optarg); break;
    case 'S': o.tokens = atoi(optarg); break;
    case 'm': small = true; break;
    case 'k': o.checkpointing = true; break;
    case 'T': o.compare_torch = true; break;
    case 'O': o.compare_torch = o.torch_only = true; break;
    case 'B': o.in_backward = true; break;
    case 'D': o.moments_dir = optarg; break;
    case 'h': usage(argv[0]); return 0;
    default: usage(argv[0]); return 2;
    }
  }
  if (small) {
    if (!o.config) {
      snprintf(cfg, sizeof cfg, "%s/tests/fixtures/sd/pipe/unet/config.json", o.srcdir);
      o.config = cfg;
    }
    o.hw = 16;
    o.tokens = 4;
  }
  if (!o.config) {
    snprintf(cfg, sizeof cfg, "%s/bench/sd15/unet/config.json", o.srcdir);
    o.config = cfg;
  }
  if (optind < argc || o.threads < 1 || o.steps < 1 || o.hw < 8 || o.hw % 8 || o.tokens < 1) {
    usage(argv[0]);
    return 2;
  }
  printf("UNet training step: %s, latent %dx%d, batch 1, context 6 x %d tokens, fp32, %d threads, "
         "gradient checkpointing %s, optimizer %s the backward, moments %s\n",
         o.config, o.hw, o.hw, o.tokens, o.threads, o.checkpointing ? "on" : "off", o.in_backward ? "in" : "after",
         o.moments_dir ? "on disk" : "in memory");
  fflush(stdout);
  int rc = 0;
  /* each side in its own process, one after the other: each peak RSS is its own */
  if (!o.torch_only) {
    pid_t pid = fork();
    if (pid == 0) {
      mmp_threads_set(o.threads); /* here: the parent starts no worker threads before fork */
      int crc = run_mmpipe(&o);
      fflush(stdout);
      _exit(crc);
    }
    int st = 1;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
  }
  if (o.compare_torch) rc |= run_torch(&o);
  return rc;
}
