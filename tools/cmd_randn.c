/* tools/cmd_randn.c - pipeline randn: write seeded normal random numbers to a .safetensors file. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void randn_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline randn --seed S --shape D0,D1,... [--torch] --output FILE.safetensors\n\n"
          "Write standard normal f32 numbers of the given shape (at most 5 dims) as tensor\n"
          "'randn' (metadata: seed, mode, shape), written atomically. The default generator\n"
          "is Philox4x32-10 (the n-th number depends only on seed and n; the same on every\n"
          "machine and backend). With --torch the numbers equal, bit for bit,\n"
          "  torch.randn(D0, D1, ..., generator=torch.Generator().manual_seed(S))\n"
          "on the CPU (torch 1.13), so a seed can be compared with PyTorch pipelines.\n\n"
          "  -s, --seed S        seed (unsigned 64-bit integer)\n"
          "  -d, --shape LIST    comma-separated sizes, e.g. 1,4,64,64\n"
          "  -t, --torch         torch-compatible generator (mt19937 + Box-Muller as torch)\n"
          "  -o, --output FILE   where to write\n"
          "  -v, --verbose       more log output; -q, --quiet: errors only\n"
          "  -h, --help          this help\n");
}

static int parse_shape(const char *s, int *nd, int64_t *shape) {
  *nd = 0;
  const char *p = s;
  while (*p) {
    char *end;
    errno = 0;
    long long v = strtoll(p, &end, 10);
    if (end == p || errno || v < 0 || *nd >= MMP_MAX_DIMS) return -1;
    shape[(*nd)++] = v;
    if (*end == ',' || *end == 'x') {
      p = end + 1;
      if (!*p) return -1;
    } else if (*end == '\0') {
      p = end;
    } else {
      return -1;
    }
  }
  return *nd > 0 ? 0 : -1;
}

int cmd_randn(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},         {"seed", required_argument, NULL, 's'},
                                       {"shape", required_argument, NULL, 'd'},  {"torch", no_argument, NULL, 't'},
                                       {"output", required_argument, NULL, 'o'}, {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},        {NULL, 0, NULL, 0}};
  const char *seed_s = NULL, *shape_s = NULL, *out = NULL;
  int c, torch = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hs:d:to:vq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': randn_help(stdout); return PIPE_EXIT_OK;
    case 's': seed_s = optarg; break;
    case 'd': shape_s = optarg; break;
    case 't': torch = 1; break;
    case 'o': out = optarg; break;
    default: return pipe_usage("randn", "bad option");
    }
  }
  if (optind != argc) return pipe_usage("randn", "unexpected argument '%s'", argv[optind]);
  if (!seed_s || !shape_s || !out) return pipe_usage("randn", "--seed, --shape and --output are required");
  char *end;
  errno = 0;
  if (seed_s[0] == '-') return pipe_usage("randn", "--seed '%s' is not an unsigned integer", seed_s);
  uint64_t seed = strtoull(seed_s, &end, 0);
  if (errno || end == seed_s || *end) return pipe_usage("randn", "--seed '%s' is not an unsigned integer", seed_s);
  int nd;
  int64_t shape[MMP_MAX_DIMS];
  if (parse_shape(shape_s, &nd, shape) < 0)
    return pipe_usage("randn", "--shape '%s' must be 1 to %d comma-separated sizes", shape_s, MMP_MAX_DIMS);

  mmp_rng_t *g = mmp_rng_new(seed, torch ? MMP_RNG_TORCH : MMP_RNG_PHILOX);
  mmp_tensor_t *t = g ? mmp_rng_randn(g, mmp_backend_get("cpu"), nd, shape) : NULL;
  mmp_rng_free(g);
  if (!t) return pipe_fail("randn", mmp_error_code());
  mmp_tensormap_t *m = mmp_tensormap_new();
  int rc = mmp_tensormap_set(m, "randn", t);
  char seed_buf[32];
  snprintf(seed_buf, sizeof seed_buf, "%" PRIu64, seed);
  const char *md[] = {"seed", seed_buf, "mode", torch ? "torch" : "philox", "shape", shape_s, NULL};
  if (rc == 0) rc = mmp_safetensors_save_map(out, m, md);
  mmp_tensormap_free(m);
  return rc < 0 ? pipe_fail("randn", rc) : PIPE_EXIT_OK;
}
