/* bench/sd_bench.h - shared driver of the latent-diffusion benchmarks
 * (bench/unet.c, bench/vae.c, bench/clip.c): build one part at SD-1.5 size
 * (random weights: in-process init_seed, or a file from `pipeline
 * init-weights`), time forward passes, report peak RSS, and optionally run
 * the same forward in diffusers/transformers in a subprocess. */
#ifndef MMPIPE_BENCH_SD_BENCH_H
#define MMPIPE_BENCH_SD_BENCH_H

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/mmpipe.h>

typedef struct bench_opts {
  const char *config;  /* part config.json */
  const char *weights; /* NULL: init_seed in-process */
  int threads, repeat, warmup;
  bool compare_torch;
  const char *srcdir;
  const char *dtypes; /* --weights-dtype list ("f32,bf16"), NULL: the default */
  const char *wdtype; /* this run's weights_dtype, NULL: not set */
  const char *cdtype; /* --compute-dtype (every run's compute_dtype), NULL: not set */
  int arldm_s;        /* bench/unet --arldm S: AR-LDM's 6 S-token context and key mask, 0: off */
  int frames, tokens; /* bench/blip --frames N --tokens S (default 5 x 91) */
  int tiled;          /* bench/vae --tiled[=N]: tile_sample_size N (0: untiled) */
} bench_opts_t;

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double bench_peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* @part: "unet", "vae", "text_encoder" (SD-1.5 size, bench/torch_sd.py),
 * "blip" (bench/torch_blip.py) or "retrieval" (bench/torch_retrieval.py). */
static inline void bench_usage(const char *prog, const char *part, const char *what) {
  const bool sd = strcmp(part, "blip") != 0 && strcmp(part, "retrieval") != 0;
  const char *script = sd ? "torch_sd.py" : !strcmp(part, "blip") ? "torch_blip.py" : "torch_retrieval.py";
  printf("Usage: %s [--config PART.json] [--weights W.safetensors] [--threads N] [--repeat N]\n"
         "          [--warmup N] [--compare-torch] [--weights-dtype f32,bf16,f16]\n"
         "          [--compute-dtype f32|bf16]%s\n\n"
         "%s %s,\n"
         "on CPU (fp32 unless --weights-dtype/--compute-dtype say otherwise): seconds and peak RSS.\n"
         "Without --weights the weights are made in-process (init_seed 0); with a file from\n"
         "`pipeline init-weights` they are memory-mapped. --compare-torch runs the same\n"
         "in PyTorch (bench/%s, PYTHONPATH from MMP_TORCH_PYTHONPATH,\n"
         "default /root/refenv/site) with the same thread count. --weights-dtype runs the\n"
         "bench once per listed weights_dtype (f32, f16, bf16), each in a child process\n"
         "so that each reports its own peak RSS, then prints the ratios to the first.\n"
         "--compute-dtype sets compute_dtype for every run: bf16 rounds the layer inputs\n"
         "to bf16 too and takes the AVX-512-BF16 dot products where the CPU has them\n"
         "(MMPIPE_CPU_ISA=avx512 or generic narrows the kernels; doc/tensor.md).\n%s",
         prog,
         !strcmp(part, "unet")   ? " [--arldm S]"
         : !strcmp(part, "blip") ? " [--frames N] [--tokens S]"
         : !strcmp(part, "vae")  ? " [--tiled[=N]]"
                                 : "",
         sd ? "One forward at SD-1.5 size of" : "The measures of doc/performance.md for", what, script,
         !strcmp(part, "retrieval") ? "MMP_BENCH_CANDIDATES (default 256) sets the ITM candidates per query.\n"
         : !strcmp(part, "unet")
             ? "--arldm S: one guided AR-LDM step instead: the context is AR-LDM's 6 x S tokens (caption +\n"
               "5 frames, visualization) with its cross-attention key mask (`encoder_attention_mask`) of\n"
               "target frame 2, batch 2 = [uncond, cond] (doc/performance.md, \"AR-LDM stories\");\n"
               "--compare-torch then runs AR-LDM's override UNet on diffusers 0.7.2 (default\n"
               "PYTHONPATH /root/refsrc/diffusers-0.7.2/src:/root/refenv/site; REFSRC, default\n"
               "/root/refsrc, holds ARLDM) on the same context and mask.\n"
         : !strcmp(part, "blip")
             ? "--frames N --tokens S: N frames (default 5) and S text tokens (default 91); AR-LDM's\n"
               "re-encode of a drawn frame is --frames 1 --tokens S.\n"
         : !strcmp(part, "vae")
             ? "--tiled[=N] decodes in tiles of N pixels (tiled = true, tile_sample_size = N;\n"
               "default 256: the config's sample_size 512 would not tile a 64x64 latent); with\n"
               "--compare-torch PyTorch decodes untiled (the reference) and then with\n"
               "enable_tiling() at the same tile size, each in its own process.\n"
             : "");
}

static inline int bench_parse(int argc, char **argv, bench_opts_t *o, const char *part, const char *what) {
  static const struct option opts[] = {{"config", required_argument, NULL, 'c'}, {"weights", required_argument, NULL, 'w'},
                                       {"threads", required_argument, NULL, 't'}, {"repeat", required_argument, NULL, 'r'},
                                       {"warmup", required_argument, NULL, 'W'}, {"compare-torch", no_argument, NULL, 'T'},
                                       {"weights-dtype", required_argument, NULL, 'D'},
                                       {"compute-dtype", required_argument, NULL, 'C'},
                                       {"arldm", required_argument, NULL, 'A'},  {"frames", required_argument, NULL, 'F'},
                                       {"tokens", required_argument, NULL, 'K'},
                                       {"tiled", optional_argument, NULL, 'L'},
                                       {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
  static char cfg[4096];
  const char *src = getenv("MMP_BENCH_SRCDIR");
  o->srcdir = src ? src : ".";
  snprintf(cfg, sizeof cfg, "%s/bench/sd15/%s/config.json", o->srcdir, part);
  o->config = cfg;
  o->weights = NULL;
  o->threads = 0;
  o->repeat = 1;
  o->warmup = 0;
  o->compare_torch = false;
  o->dtypes = o->wdtype = o->cdtype = NULL;
  o->arldm_s = 0;
  o->frames = 5;
  o->tokens = 91;
  o->tiled = 0;
  bool bad = false;
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': o->config = optarg; break;
    case 'w': o->weights = optarg; break;
    case 't': o->threads = atoi(optarg); break;
    case 'r': o->repeat = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
    case 'W': o->warmup = atoi(optarg); break;
    case 'T': o->compare_torch = true; break;
    case 'D': o->dtypes = optarg; break;
    case 'C': o->cdtype = optarg; break;
    case 'A': o->arldm_s = atoi(optarg); bad |= strcmp(part, "unet") != 0 || o->arldm_s < 1; break;
    case 'F': o->frames = atoi(optarg); bad |= strcmp(part, "blip") != 0 || o->frames < 1; break;
    case 'K': o->tokens = atoi(optarg); bad |= strcmp(part, "blip") != 0 || o->tokens < 2; break;
    case 'L': o->tiled = optarg ? atoi(optarg) : 256; bad |= strcmp(part, "vae") != 0 || o->tiled < 1; break;
    case 'h': bench_usage(argv[0], part, what); exit(0);
    default: bench_usage(argv[0], part, what); exit(2);
    }
  }
  if (bad || optind < argc) {
    fprintf(stderr, "%s: --arldm is for bench/unet (S >= 1), --frames and --tokens for bench/blip (N >= 1, S >= 2), "
                    "--tiled for bench/vae (N >= 1); "
                    "no operands\n", argv[0]);
    exit(2);
  }
  mmp_threads_set(o->threads);
  o->threads = mmp_threads_get();
  return 0;
}

/* The component under test and what owns it. */
typedef struct bench_env {
  mmp_registry_t *reg;
  mmp_config_t *cfg;
  mmp_context_t *ctx;
  mmp_component_t *c;
} bench_env_t;

static inline void bench_close(bench_env_t *e) {
  mmp_component_free(e->c);
  mmp_context_free(e->ctx);
  mmp_config_free(e->cfg);
  mmp_registry_free(e->reg);
  *e = (bench_env_t){0};
}

/* Create plugin @name in config group @group (+ @extra keys) from the
 * weights file or seeded random weights; prints the load time. On failure
 * prints "@prog: message", frees everything and returns -1. */
static inline int bench_open(const bench_opts_t *o, mmp_kind_t kind, const char *group, const char *name,
                             const char *extra, const char *prog, bench_env_t *e) {
  char text[12000];
  *e = (bench_env_t){0};
  char wd[160] = "";
  if (o->wdtype) snprintf(wd, sizeof wd, "weights_dtype = \"%s\";", o->wdtype);
  if (o->cdtype) snprintf(wd + strlen(wd), sizeof wd - strlen(wd), " compute_dtype = \"%s\";", o->cdtype);
  if (o->weights)
    snprintf(text, sizeof text, "%s = { name = \"%s\"; config = \"%s\"; weights = \"%s\"; %s %s };", group, name,
             o->config, o->weights, extra, wd);
  else
    snprintf(text, sizeof text, "%s = { name = \"%s\"; config = \"%s\"; init_seed = 0; %s %s };", group, name,
             o->config, extra, wd);
  e->reg = mmp_registry_new();
  e->cfg = mmp_config_parse(text, "bench");
  if (e->reg && e->cfg && mmp_registry_set_search_path(e->reg, e->cfg) == 0) {
    e->ctx = mmp_context_new(e->reg, e->cfg);
    double t0 = bench_now();
    e->c = e->ctx ? mmp_component_create(e->ctx, kind, group) : NULL;
    if (e->c) {
      printf("%-22s %8.2f s  (%s)\n", "load", bench_now() - t0, o->weights ? "mapped file" : "random in-process");
      return 0;
    }
  }
  fprintf(stderr, "%s: %s\n", prog, mmp_error_last());
  bench_close(e);
  return -1;
}

/* User + system CPU seconds of this process so far. */
static inline double bench_cpu_s(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

/* In a child of bench_fork_dtypes: hand the parent the seconds per call,
 * the peak RSS and the CPU seconds per call. */
static inline void bench_report(double secs, double cpu) {
  const char *fd = getenv("MMP_BENCH_REPORT_FD");
  if (!fd) return;
  FILE *f = fdopen(atoi(fd), "w");
  if (!f) return;
  fprintf(f, "%.6f %.1f %.6f\n", secs, bench_peak_rss_mb(), cpu);
  fclose(f);
}

/* Time @repeat forwards after @warmup; prints and returns seconds per call.
 * Also prints the CPU seconds (user + system) per call, the warm-up
 * included: on a shared machine they are what compares. */
static inline double bench_run(const bench_opts_t *o, mmp_component_t *c, const char *method, const mmp_tensormap_t *in,
                               const char *label) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin;
  double best = 1e30, tot = 0, cpu0 = bench_cpu_s();
  for (int i = 0; i < o->warmup + o->repeat; i++) {
    mmp_tensormap_t *out = mmp_tensormap_new();
    double t0 = bench_now();
    int rc = ops->forward(c->self, method, in, out);
    double dt = bench_now() - t0;
    mmp_tensormap_free(out);
    if (rc < 0) {
      fprintf(stderr, "forward failed: %s\n", mmp_error_last());
      return -1;
    }
    if (i < o->warmup) continue;
    tot += dt;
    if (dt < best) best = dt;
  }
  printf("%-22s %8.2f s  (best of %d: %.2f s, %d threads)\n", label, tot / o->repeat, o->repeat, best, o->threads);
  double cpu = (bench_cpu_s() - cpu0) / (o->warmup + o->repeat);
  printf("%-22s %8.2f s  (user + system per forward, %d forwards)\n", "cpu time", cpu, o->warmup + o->repeat);
  printf("%-22s %8.0f MB\n", "peak RSS", bench_peak_rss_mb());
  bench_report(tot / o->repeat, cpu);
  return tot / o->repeat;
}

/* --weights-dtype A,B,...: the rest of main runs once per dtype, each in a
 * child process (its own peak RSS), one after the other. Returns 0 in each
 * child (o->wdtype set; it reports over a pipe), and 1 in the parent once
 * all are done, after printing the seconds and peak RSS of each relative
 * to the first (the caller then runs only the PyTorch comparison). Returns
 * 0 without forking when no list was given. */
static inline int bench_fork_dtypes(bench_opts_t *o) {
  if (!o->dtypes) return 0;
  static char list[256];
  snprintf(list, sizeof list, "%s", o->dtypes);
  char *names[8] = {0};
  int n = 0;
  for (char *t = strtok(list, ","); t && n < 8; t = strtok(NULL, ",")) names[n++] = t;
  if (n == 0) return 0; /* an empty list: the default weights_dtype, in this process */
  double secs[8] = {0}, rss[8] = {0}, cpu[8] = {0};
  for (int i = 0; i < n; i++) {
    int fd[2];
    if (pipe(fd) != 0) return 1;
    printf("== weights_dtype %s%s%s ==\n", names[i], o->cdtype ? ", compute_dtype " : "", o->cdtype ? o->cdtype : "");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      close(fd[0]);
      o->wdtype = names[i];
      o->compare_torch = false;
      o->dtypes = NULL;
      static char fdname[32];
      snprintf(fdname, sizeof fdname, "%d", fd[1]);
      setenv("MMP_BENCH_REPORT_FD", fdname, 1);
      return 0;
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    if (f) {
      if (fscanf(f, "%lf %lf %lf", &secs[i], &rss[i], &cpu[i]) != 3) secs[i] = rss[i] = cpu[i] = 0;
      fclose(f);
    }
    int st = 0;
    if (pid > 0) waitpid(pid, &st, 0);
  }
  printf("== weights_dtype summary (relative to %s%s%s) ==\n", names[0], o->cdtype ? ", compute_dtype " : "",
         o->cdtype ? o->cdtype : "");
  for (int i = 0; i < n; i++)
    printf("%-6s %8.2f s (x%.2f speed)  %8.2f CPU s (x%.2f)  %8.0f MB peak RSS (x%.2f)\n", names[i], secs[i],
           secs[i] > 0 ? secs[0] / secs[i] : 0.0, cpu[i], cpu[i] > 0 ? cpu[0] / cpu[i] : 0.0, rss[i],
           rss[0] > 0 ? rss[i] / rss[0] : 0.0);
  return 1;
}

/* Run bench/torch_sd.py PART CONFIG THREADS [ARLDM_S | TILE] and echo its report
 * (--arldm: AR-LDM's override UNet, diffusers 0.7.2 first on the path; --tiled: twice,
 * untiled (the reference) and tiled). */
static inline void bench_torch(const bench_opts_t *o, const char *part) {
  if (!o->compare_torch) return;
  const char *pp = getenv("MMP_TORCH_PYTHONPATH");
  if (!pp) pp = o->arldm_s ? "/root/refsrc/diffusers-0.7.2/src:/root/refenv/site" : "/root/refenv/site";
  for (int pass = 0; pass < (o->tiled ? 2 : 1); pass++) {
    char cmd[12000], s[32] = "";
    if (o->arldm_s) snprintf(s, sizeof s, " %d", o->arldm_s);
    if (pass) snprintf(s, sizeof s, " %d", o->tiled);
    snprintf(cmd, sizeof cmd,
             "PYTHONPATH='%s' LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread OMP_NUM_THREADS=%d "
             "/usr/bin/python3 '%s/bench/torch_sd.py' %s '%s' %d%s",
             pp, o->threads, o->srcdir, part, o->config, o->threads, s);
    printf("-- PyTorch (subprocess%s) --\n", pass ? ", enable_tiling()" : "");
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0) printf("PyTorch comparison failed (exit %d)\n", rc);
  }
}

#endif
