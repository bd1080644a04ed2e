/* bench/dataset.c - stories per second decoded and preprocessed by a story dataset, with 1 and 2 loader workers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mmpipe/loader.h>
#include <mmpipe/mmpipe.h>

/* Usage: bench/dataset [--dataset NAME] [--file F.h5] [--split S] [--stories N]
 *
 * Defaults: flintstones, the test fixture tests/fixtures/datasets/flintstones.h5,
 * split train (AR-LDM's train transform: 512x512 targets in [-1,1] plus five
 * 224x224 BLIP sources), 40 stories per measurement (epochs repeat). No
 * tokenizers (image work only: tokenizing is small next to it). Prints stories/s
 * for 1 and 2 workers; compare with the UNet's steps/s (one story per step at
 * batch size 1 keeps the sampler fed if stories/s >= steps/s). */

static double clock_s(clockid_t id) {
  struct timespec t;
  clock_gettime(id, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
static double now(void) { return clock_s(CLOCK_MONOTONIC); }
static double cpu(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

int main(int argc, char **argv) {
  const char *name = "flintstones", *split = "train";
  char file[4096];
  snprintf(file, sizeof file, "%s/tests/fixtures/datasets/flintstones.h5", MMP_ABS_BUILDDIR);
  int stories = 40;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--dataset")) name = argv[i + 1];
    else if (!strcmp(argv[i], "--file")) snprintf(file, sizeof file, "%s", argv[i + 1]);
    else if (!strcmp(argv[i], "--split")) split = argv[i + 1];
    else if (!strcmp(argv[i], "--stories")) stories = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: bench/dataset [--dataset NAME] [--file F.h5] [--split S] [--stories N]\n");
      return 2;
    }
  }
  FILE *probe = fopen(file, "rb");
  if (!probe) { /* out-of-tree build: look in the source tree */
    const char *src = getenv("MMP_TEST_SRCDIR");
    if (src) snprintf(file, sizeof file, "%s/tests/fixtures/datasets/flintstones.h5", src);
  } else {
    fclose(probe);
  }
  char text[8192];
  snprintf(text, sizeof text, "dataset = { name = \"%s\"; hdf5_file = \"%s\"; split = \"%s\"; };", name,
           file, split);
  mmp_registry_t *reg = mmp_registry_new();
  mmp_registry_add_dir(reg, MMP_ABS_BUILDDIR "/plugins/datasets/.libs");
  mmp_registry_add_dir(reg, MMP_ABS_BUILDDIR "/plugins/processors/.libs");
  mmp_config_t *cfg = mmp_config_parse(text, "bench");
  mmp_context_t *ctx = cfg ? mmp_context_new(reg, cfg) : NULL;
  mmp_component_t *ds = ctx ? mmp_component_create(ctx, MMP_KIND_DATASET, "dataset") : NULL;
  if (!ds) {
    fprintf(stderr, "bench/dataset: %s\n", mmp_error_last());
    return 1;
  }
  printf("dataset %s, %s split of %s, %d stories per run\n", name, split, file, stories);
  for (int w = 1; w <= 2; w++) {
    mmp_loader_options_t o = mmp_loader_defaults();
    o.workers = w;
    o.shuffle = true;
    mmp_loader_t *l = mmp_loader_new(ds, &o);
    if (!l) {
      fprintf(stderr, "bench/dataset: %s\n", mmp_error_last());
      return 1;
    }
    int done = 0, epoch = 0;
    double t0 = now(), c0 = cpu();
    while (done < stories) {
      mmp_tensormap_t *m = NULL;
      if (mmp_loader_next(l, &m) < 0) {
        fprintf(stderr, "bench/dataset: %s\n", mmp_error_last());
        return 1;
      }
      if (!m) {
        mmp_loader_set_epoch(l, ++epoch);
        continue;
      }
      mmp_tensormap_free(m);
      done++;
    }
    double dt = now() - t0, dc = cpu() - c0;
    /* CPU time per story tells the cost on a loaded machine, where wall
     * time mostly measures the other processes */
    printf("workers %d: %.2f stories/s (%.1f ms wall, %.1f ms CPU per story)\n", w, done / dt,
           1000.0 * dt / done, 1000.0 * dc / done);
    mmp_loader_free(l);
  }
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return 0;
}
