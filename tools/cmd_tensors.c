/* tools/cmd_tensors.c - pipeline tensors: list the tensors of a .safetensors file or a PyTorch checkpoint (with --stats, their statistics; --digest, a hash of their bytes). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void tensors_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline tensors FILE [--select PATH] [--stats] [--digest]\n\n"
          "List the tensors of FILE in file order: name, dtype and shape, one per line.\n"
          "FILE is a .safetensors file (then its __metadata__ entries follow as\n"
          "'# key = value') or a PyTorch checkpoint (.ckpt, .pth, .pt, .bin; read without\n"
          "running anything it names, see doc/checkpoint.md): its tensors by dotted path\n"
          "(state_dict.unet.conv_in.weight) with their stored size in bytes, then its\n"
          "plain values (epoch, global_step, ...) as '# path = value'. A malformed file\n"
          "is an error (exit 5) naming the tensor and the problem.\n\n"
          "  --select PATH   only the part of a checkpoint under PATH (a dotted path of\n"
          "                  nested dicts, e.g. state_dict), its names relative to it\n"
          "  -S, --stats     also print min, max, mean and std of each tensor (computed in\n"
          "                  double; std is the sample standard deviation, n-1, as torch.std)\n"
          "  -D, --digest    also print a 64-bit FNV-1a hash of each tensor's contiguous\n"
          "                  bytes (as mmpipe loads it): equal digests, equal tensors\n"
          "  -v, --verbose   more log output; -q, --quiet: errors only\n"
          "  -h, --help      this help\n");
}

static int print_digest(mmp_tensor_t *t) {
  if (!t) return mmp_error_code();
  size_t n = mmp_tensor_nbytes(t);
  unsigned char *b = malloc(n ? n : 1);
  if (!b) {
    mmp_tensor_unref(t);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  int rc = mmp_tensor_to_host(t, b, n);
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  if (rc == 0) printf("  fnv1a %016llx", (unsigned long long)h);
  free(b);
  mmp_tensor_unref(t);
  return rc;
}

static int print_stats(mmp_tensor_t *t) {
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

static void shape_text(int nd, const int64_t *shape, char *sh, size_t len) {
  size_t o = (size_t)snprintf(sh, len, "[");
  for (int d = 0; d < nd && o < len; d++) o += (size_t)snprintf(sh + o, len - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (o < len) snprintf(sh + o, len - o, "]");
}

static int list_checkpoint(const char *path, const char *select, int stats, int digest) {
  char prefix[1024] = "";
  if (select && *select) snprintf(prefix, sizeof prefix, "%s.", select);
  mmp_checkpoint_t *ck = mmp_checkpoint_open(path, prefix, 0);
  if (!ck) return mmp_error_code();
  size_t w = 4;
  for (size_t i = 0; i < mmp_checkpoint_count(ck); i++) {
    size_t l = strlen(mmp_checkpoint_name(ck, i));
    if (l > w) w = l;
  }
  if (w > 60) w = 60;
  int rc = 0;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  for (size_t i = 0; i < mmp_checkpoint_count(ck) && rc == 0; i++) {
    const char *name = mmp_checkpoint_name(ck, i);
    int nd;
    int64_t shape[MMP_MAX_DIMS];
    const char *stored;
    size_t nbytes;
    mmp_checkpoint_info(ck, name, NULL, &nd, shape, &stored, &nbytes);
    char sh[160];
    shape_text(nd, shape, sh, sizeof sh);
    printf("%-*s  %-4s  %-18s %12zu", (int)w, name, stored, sh, nbytes);
    if (stats) rc = print_stats(mmp_checkpoint_get(ck, name, cpu, MMP_F64));
    if (digest && rc == 0) rc = print_digest(mmp_checkpoint_get(ck, name, cpu, MMP_DTYPE_COUNT));
    printf("\n");
  }
  for (size_t i = 0; i < mmp_checkpoint_value_count(ck) && rc == 0; i++)
    printf("# %s = %s\n", mmp_checkpoint_value_name(ck, i), mmp_checkpoint_value_text(ck, i));
  mmp_checkpoint_close(ck);
  return rc;
}

int cmd_tensors(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"stats", no_argument, NULL, 'S'},
                                       {"digest", no_argument, NULL, 'D'},
                                       {"select", required_argument, NULL, 's'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {NULL, 0, NULL, 0}};
  int c, stats = 0, digest = 0;
  const char *select = NULL;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hSDvq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': tensors_help(stdout); return PIPE_EXIT_OK;
    case 'S': stats = 1; break;
    case 'D': digest = 1; break;
    case 's': select = optarg; break;
    default: return pipe_usage("tensors", "bad option");
    }
  }
  if (optind != argc - 1) return pipe_usage("tensors", "expected one FILE");
  if (mmp_checkpoint_sniff(argv[optind])) {
    int rc = list_checkpoint(argv[optind], select, stats, digest);
    return rc ? pipe_fail("tensors", rc) : PIPE_EXIT_OK;
  }
  if (select) return pipe_usage("tensors", "--select applies to PyTorch checkpoints only");
  mmp_safetensors_t *st = mmp_safetensors_open(argv[optind]);
  if (!st) return pipe_fail("tensors", mmp_error_code());
  size_t w = 4;
  for (size_t i = 0; i < mmp_safetensors_count(st); i++) {
    size_t l = strlen(mmp_safetensors_name(st, i));
    if (l > w) w = l;
  }
  if (w > 60) w = 60;
  int rc = 0;
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  for (size_t i = 0; i < mmp_safetensors_count(st) && rc == 0; i++) {
    const char *name = mmp_safetensors_name(st, i);
    mmp_dtype_t dt;
    int nd;
    int64_t shape[MMP_MAX_DIMS];
    mmp_safetensors_info(st, name, &dt, &nd, shape);
    char sh[160];
    shape_text(nd, shape, sh, sizeof sh);
    printf("%-*s  %-4s  %s", (int)w, name, mmp_dtype_name(dt), sh);
    if (stats) rc = print_stats(mmp_safetensors_get(st, name, cpu, MMP_F64));
    if (digest && rc == 0) rc = print_digest(mmp_safetensors_get(st, name, cpu, MMP_DTYPE_COUNT));
    printf("\n");
  }
  for (size_t i = 0; i < mmp_safetensors_metadata_count(st) && rc == 0; i++) {
    const char *k = mmp_safetensors_metadata_key(st, i);
    printf("# %s = %s\n", k, mmp_safetensors_metadata(st, k));
  }
  mmp_safetensors_close(st);
  return rc ? pipe_fail("tensors", rc) : PIPE_EXIT_OK;
}
