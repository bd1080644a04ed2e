/* tools/pipeline.c - the `pipeline` command: dispatch and shared helpers. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "tools/commands.h"

static const pipe_cmd_t commands[] = {
    {"run", "run a task file", cmd_run},
    {"config", "print the merged configuration of a task file, with where each value came from", cmd_config},
    {"plugins", "list the implementations found on the plugin path", cmd_plugins},
    {"describe", "show an implementation's keys, types, defaults and docs", cmd_describe},
    {"forward", "run one component on named tensors (for checks against PyTorch)", cmd_forward},
    {"tensors", "list the tensors of a .safetensors file or a PyTorch checkpoint", cmd_tensors},
    {"convert", "write a PyTorch checkpoint's tensors (or a part) to a .safetensors file", cmd_convert},
    {"randn", "write seeded normal random numbers to a .safetensors file", cmd_randn},
    {"dataset", "inspect story datasets: info, show, dump", cmd_dataset},
    {"init-weights", "write seeded random weights for a unet/vae/text-encoder config.json", cmd_init_weights},
    {"arldm-init", "assemble an AR-LDM state dict from SD, BLIP and seeded extras (.safetensors)", cmd_arldm_init},
    {"fid", "Frechet Inception Distance of two image sets (pytorch-fid / AR-LDM)", cmd_fid},
    {"clipscore", "CLIP-T and CLIP-I of generated stories (a CLIPModel checkpoint)", cmd_clipscore},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

int pipe_exit_code(int status) {
  switch (status) {
  case MMP_OK: return PIPE_EXIT_OK;
  case MMP_ECONFIG: return PIPE_EXIT_CONFIG;
  case MMP_EPLUGIN:
  case MMP_EABI:
  case MMP_EEXIST: return PIPE_EXIT_PLUGIN;
  case MMP_EDATA:
  case MMP_EIO: return PIPE_EXIT_DATA;
  case MMP_ECANCELED: return PIPE_EXIT_CANCELED;
  default: return PIPE_EXIT_RUNTIME;
  }
}

int pipe_fail(const char *cmd, int status) {
  const char *msg = mmp_error_last();
  fprintf(stderr, "pipeline %s: %s\n", cmd, *msg ? msg : mmp_strerror(status));
  return pipe_exit_code(status);
}

int pipe_usage(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "pipeline %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'pipeline %s --help'.\n", cmd);
  return PIPE_EXIT_USAGE;
}

int pipe_common_option(int c) {
  switch (c) {
  case 'v': {
    mmp_log_level_t l = mmp_log_get_level();
    if (l < MMP_LOG_DEBUG) mmp_log_set_level((mmp_log_level_t)(l + 1));
    return 1;
  }
  case 'q': mmp_log_set_level(MMP_LOG_ERROR); pipe_quiet = 1; return 1;
  default: return 0;
  }
}

int pipe_quiet = 0;

int pipe_version(const char *cmd) {
  printf("pipeline%s%s (mmpipe) %s, plugin ABI %d.%d\n", cmd ? " " : "", cmd ? cmd : "",
         PACKAGE_VERSION, MMP_ABI_MAJOR, MMP_ABI_MINOR);
  return PIPE_EXIT_OK;
}

/* ---- overrides collected from -s ---- */
int pipe_sets_add(pipe_sets_t *s, const char *kv) {
  const char **v = realloc(s->v, (s->n + 1) * sizeof *v);
  if (!v) return -1;
  s->v = v;
  s->v[s->n++] = kv;
  return 0;
}

void pipe_sets_free(pipe_sets_t *s) {
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

mmp_config_t *pipe_load_config(const char *path, const pipe_sets_t *sets) {
  mmp_config_t *cfg = mmp_config_load(path);
  if (!cfg) return NULL;
  for (size_t i = 0; sets && i < sets->n; i++) {
    if (mmp_config_override(cfg, sets->v[i]) < 0) {
      mmp_config_free(cfg);
      return NULL;
    }
  }
  return cfg;
}

/* ---- SIGINT: stop at the next safe point; a second one kills ---- */
static mmp_context_t *volatile sig_ctx;

static void on_sigint(int sig) {
  (void)sig;
  if (sig_ctx) mmp_context_cancel(sig_ctx);
  signal(SIGINT, SIG_DFL);
}

void pipe_catch_sigint(mmp_context_t *ctx) {
  sig_ctx = ctx;
  signal(SIGINT, ctx ? on_sigint : SIG_DFL);
}

static void usage(FILE *f) {
  fprintf(f,
          "Usage: pipeline [-v|-q] COMMAND [ARGS...]\n"
          "       pipeline --help | --version\n\n"
          "mmpipe: multimodal generation pipelines built from plugins.\n\nCommands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  %-13s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "\nEach command takes --help. Common options: -v/--verbose (repeat for more), "
          "-q/--quiet.\n\n"
          "Exit codes: 0 ok, 1 runtime error, 2 usage error, 3 configuration error,\n"
          "4 plugin error, 5 data error, 130 interrupted.\n\n"
          "Environment: MMPIPE_PLUGIN_PATH (colon-separated plugin directories searched first),\n"
          "MMPIPE_THREADS (CPU threads).\nDocumentation: doc/pipeline.md\n");
}

int main(int argc, char **argv) {
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return PIPE_EXIT_OK;
    }
    if (!strcmp(a, "--version") || !strcmp(a, "-V")) return pipe_version(NULL);
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) pipe_common_option('v');
    else if (!strcmp(a, "-vv")) { pipe_common_option('v'); pipe_common_option('v'); }
    else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) pipe_common_option('q');
    else {
      fprintf(stderr, "pipeline: unknown option '%s'\n", a);
      usage(stderr);
      return PIPE_EXIT_USAGE;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return PIPE_EXIT_USAGE;
  }
  for (size_t c = 0; c < NCOMMANDS; c++)
    if (strcmp(argv[i], commands[c].name) == 0) return commands[c].fn(argc - i, argv + i);
  const char *names[NCOMMANDS];
  for (size_t c = 0; c < NCOMMANDS; c++) names[c] = commands[c].name;
  fprintf(stderr, "pipeline: unknown command '%s'", argv[i]);
  size_t best = 0, bestd = (size_t)-1;
  for (size_t c = 0; c < NCOMMANDS; c++) {
    /* cheap prefix/suffix similarity for the suggestion */
    size_t d = 0;
    const char *x = argv[i], *y = names[c];
    size_t lx = strlen(x), ly = strlen(y);
    for (size_t k = 0; k < (lx > ly ? lx : ly); k++) d += (k >= lx || k >= ly || x[k] != y[k]);
    if (d < bestd) { bestd = d; best = c; }
  }
  if (bestd <= 2) fprintf(stderr, " (did you mean '%s'?)", names[best]);
  fprintf(stderr, "\n");
  usage(stderr);
  return PIPE_EXIT_USAGE;
}
