/* tools/cmd_tensors.c - pipeline tensors: list the tensors of a .safetensors file (with --stats, their statistics). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void tensors_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline tensors FILE.safetensors [--stats]\n\n"
          "List the tensors of FILE in file order: name, dtype and shape, one per line,\n"
          "then the __metadata__ entries as '# key = value'. The header is validated in\n"
          "full first; a malformed file is an error (exit 5) naming the tensor and the\n"
          "problem.\n\n"
          "  -S, --stats     also print min, max, mean and std of each tensor (computed in\n"
          "                  double; std is the sample standard deviation, n-1, as torch.std)\n"
          "  -v, --verbose   more log output; -q, --quiet: errors only\n"
          "  -h, --help      this help\n");
}

static int print_stats(mmp_safetensors_t *st, const char *name) {
  mmp_tensor_t *t = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_F64);
  if (!t) return mmp_error_code();
  int64_t n = mmp_tensor_numel(t);
  const double *v = mmp_tensor_data(t);
  if (n == 0) {
    printf("  (empty)");
  } else {
    double mn = INFINITY, mx = -INFINITY, sum = 0, ss = 0;
    int64_t nan = 0;
    for (int64_t i = 0; i < n; i++) {
      if (isnan(v[i])) {
        nan++;
        continue;
      }
      if (v[i] < mn) mn = v[i];
      if (v[i] > mx) mx = v[i];
      sum += v[i];
    }
    int64_t m = n - nan;
    double mean = m ? sum / (double)m : NAN;
    for (int64_t i = 0; i < n; i++)
      if (!isnan(v[i])) ss += (v[i] - mean) * (v[i] - mean);
    double sd = m > 1 ? sqrt(ss / (double)(m - 1)) : NAN;
    printf("  min %.6g  max %.6g  mean %.6g  std %.6g", mn, mx, mean, sd);
    if (nan) printf("  nan %lld", (long long)nan);
  }
  mmp_tensor_unref(t);
  return 0;
}

int cmd_tensors(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"stats", no_argument, NULL, 'S'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {NULL, 0, NULL, 0}};
  int c, stats = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hSvq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': tensors_help(stdout); return PIPE_EXIT_OK;
    case 'S': stats = 1; break;
    default: return pipe_usage("tensors", "bad option");
    }
  }
  if (optind != argc - 1) return pipe_usage("tensors", "expected one FILE.safetensors");
  mmp_safetensors_t *st = mmp_safetensors_open(argv[optind]);
  if (!st) return pipe_fail("tensors", mmp_error_code());
  size_t w = 4;
  for (size_t i = 0; i < mmp_safetensors_count(st); i++) {
    size_t l = strlen(mmp_safetensors_name(st, i));
    if (l > w) w = l;
  }
  if (w > 60) w = 60;
  int rc = 0;
  for (size_t i = 0; i < mmp_safetensors_count(st) && rc == 0; i++) {
    const char *name = mmp_safetensors_name(st, i);
    mmp_dtype_t dt;
    int nd;
    int64_t shape[MMP_MAX_DIMS];
    mmp_safetensors_info(st, name, &dt, &nd, shape);
    char sh[160] = "[";
    size_t o = 1;
    for (int d = 0; d < nd; d++) o += (size_t)snprintf(sh + o, sizeof sh - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    snprintf(sh + o, sizeof sh - o, "]");
    printf("%-*s  %-4s  %s", (int)w, name, mmp_dtype_name(dt), sh);
    if (stats) rc = print_stats(st, name);
    printf("\n");
  }
  for (size_t i = 0; i < mmp_safetensors_metadata_count(st) && rc == 0; i++) {
    const char *k = mmp_safetensors_metadata_key(st, i);
    printf("# %s = %s\n", k, mmp_safetensors_metadata(st, k));
  }
  mmp_safetensors_close(st);
  return rc ? pipe_fail("tensors", rc) : PIPE_EXIT_OK;
}
