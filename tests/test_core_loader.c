/* tests/test_core_loader.c - the dataset loader: order, shuffling, sharding, workers, batches, bad items. */
#include <stdlib.h>
#include <string.h>

#include <mmpipe/loader.h>
#include <mmpipe/mmpipe.h>

#include "tap.h"

/* A built-in dataset of N items: "value" = f32 [2] {i, -i}; items listed in
 * "bad" fail with MMP_EDATA. */
static const mmp_key_t keys[] = {
    {"n", MMP_TYPE_INT, "10", "items", 0, 0},
    {"bad", MMP_TYPE_LIST, "[]", "indices that fail", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct fake {
  int64_t n;
  int64_t bad[8];
  size_t nbad;
} fake_t;

static int fake_create(const mmp_plugin_t *p, const mmp_config_t *cfg, mmp_context_t *ctx, void **out) {
  (void)p;
  (void)ctx;
  fake_t *f = calloc(1, sizeof *f);
  mmp_config_get_int(cfg, "n", &f->n);
  mmp_config_get_list_size(cfg, "bad", &f->nbad);
  for (size_t i = 0; i < f->nbad && i < 8; i++) mmp_config_get_list_int(cfg, "bad", i, &f->bad[i]);
  *out = f;
  return 0;
}
static void fake_destroy(void *self) { free(self); }
static int64_t fake_size(void *self) { return ((fake_t *)self)->n; }
static int fake_get(void *self, int64_t i, mmp_tensormap_t *out) {
  fake_t *f = self;
  for (size_t k = 0; k < f->nbad; k++)
    if (f->bad[k] == i) return mmp_error_set(MMP_EDATA, "fake: story %lld is broken", (long long)i);
  float v[2] = {(float)i, (float)-i};
  int64_t shape[1] = {2};
  mmp_tensormap_set(out, "value", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 1, shape, v));
  return mmp_tensormap_set_string(out, "text", "hello");
}
static const mmp_dataset_ops_t fake_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_DATASET, mmp_dataset_ops_t, "fake", "1.0", "test data", keys,
                            fake_create, fake_destroy),
    .size = fake_size,
    .get = fake_get};

static mmp_registry_t *reg;

static mmp_component_t *make(const char *cfgtext, mmp_config_t **cfg, mmp_context_t **ctx) {
  *cfg = mmp_config_parse(cfgtext, "t.cfg");
  *ctx = mmp_context_new(reg, *cfg);
  return mmp_component_create(*ctx, MMP_KIND_DATASET, "dataset");
}

/* Drain an epoch: dataset indices into @idx (returns count, -1 on error). */
static int drain(mmp_loader_t *l, int64_t *idx, int max) {
  int n = 0;
  mmp_tensormap_t *m;
  while (mmp_loader_next(l, &m) == 0 && m) {
    mmp_tensor_t *ix = mmp_tensormap_get(m, "index");
    for (int64_t k = 0; ix && k < ix->shape[0] && n < max; k++) idx[n++] = ((int64_t *)mmp_tensor_data(ix))[k];
    mmp_tensormap_free(m);
  }
  return n;
}

int main(void) {
  reg = mmp_registry_new();
  ok(mmp_registry_add(reg, &fake_ops.base) == 0, "register the fake dataset");
  mmp_config_t *cfg;
  mmp_context_t *ctx;
  mmp_component_t *ds = make("dataset = { name = \"fake\"; n = 23; };", &cfg, &ctx);
  if (!ok(ds != NULL, "create")) {
    diag("%s", mmp_error_last());
    return done_testing();
  }
  int64_t got[64], ref[64];
  for (int w = 0; w <= 3; w++) {
    mmp_loader_options_t o = mmp_loader_defaults();
    o.workers = w;
    mmp_loader_t *l = mmp_loader_new(ds, &o);
    int n = drain(l, got, 64);
    int inorder = n == 23;
    for (int i = 0; inorder && i < n; i++) inorder = got[i] == i;
    ok(inorder, "%d workers: 23 items in dataset order", w);
    mmp_loader_free(l);
  }
  /* shuffled: a permutation, the same for a seed whatever the workers */
  mmp_loader_options_t o = mmp_loader_defaults();
  o.shuffle = true;
  o.seed = 5;
  mmp_loader_t *l = mmp_loader_new(ds, &o);
  int n = drain(l, ref, 64);
  int seen[23] = {0}, perm = n == 23, moved = 0;
  for (int i = 0; i < n; i++) {
    if (ref[i] < 0 || ref[i] >= 23 || seen[ref[i]]++) perm = 0;
    moved += ref[i] != i;
  }
  ok(perm && moved > 0, "shuffle gives a permutation");
  ok(mmp_loader_set_epoch(l, 1) == 0, "set_epoch");
  n = drain(l, got, 64);
  ok(n == 23 && memcmp(got, ref, sizeof(int64_t) * 23) != 0, "epoch 1 has another order");
  ok(mmp_loader_set_epoch(l, 0) == 0 && drain(l, got, 64) == 23 && memcmp(got, ref, sizeof(int64_t) * 23) == 0,
     "back to epoch 0: same order");
  mmp_loader_free(l);
  o.workers = 3;
  l = mmp_loader_new(ds, &o);
  n = drain(l, got, 64);
  ok(n == 23 && memcmp(got, ref, sizeof(int64_t) * 23) == 0, "3 workers: same shuffled order");
  mmp_loader_free(l);

  /* sharding: disjoint, complete */
  int cover[23] = {0}, total = 0;
  for (int r = 0; r < 3; r++) {
    o = mmp_loader_defaults();
    o.shuffle = true;
    o.seed = 9;
    o.rank = r;
    o.world_size = 3;
    o.workers = 2;
    l = mmp_loader_new(ds, &o);
    is_int(mmp_loader_items(l), r < 2 ? 8 : 7, "rank %d holds its share", r);
    n = drain(l, got, 64);
    for (int i = 0; i < n; i++) cover[got[i]]++;
    total += n;
    mmp_loader_free(l);
  }
  int once = total == 23;
  for (int i = 0; i < 23; i++) once = once && cover[i] == 1;
  ok(once, "3 shards cover every item once");
  o = mmp_loader_defaults();
  o.rank = 2;
  o.world_size = 2;
  ok(mmp_loader_new(ds, &o) == NULL, "rank >= world_size is refused");

  /* batches */
  o = mmp_loader_defaults();
  o.batch_size = 5;
  o.workers = 2;
  l = mmp_loader_new(ds, &o);
  mmp_tensormap_t *b = NULL;
  ok(mmp_loader_next(l, &b) == 0 && b, "first batch");
  mmp_tensor_t *v = b ? mmp_tensormap_get(b, "value") : NULL;
  ok(v && v->ndim == 2 && v->shape[0] == 5 && v->shape[1] == 2, "value stacked to [5, 2]");
  if (v) {
    int64_t at[2] = {3, 1};
    is_close(mmp_tensor_get(v, at), -3.0, 0, "batch item 3 is dataset item 3");
  }
  mmp_tensormap_free(b);
  int batches = 1, last = 0;
  while (mmp_loader_next(l, &b) == 0 && b) {
    batches++;
    last = (int)mmp_tensormap_get(b, "index")->shape[0];
    mmp_tensormap_free(b);
  }
  ok(batches == 5 && last == 3, "23 items: 5 batches, the last of 3");
  mmp_loader_free(l);
  o.drop_last = true;
  l = mmp_loader_new(ds, &o);
  ok(drain(l, got, 64) == 20, "drop_last drops the short batch");
  mmp_loader_free(l);
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_config_free(cfg);

  /* bad items */
  ds = make("dataset = { name = \"fake\"; n = 6; bad = [2, 4]; };", &cfg, &ctx);
  for (int w = 0; w <= 2; w += 2) {
    o = mmp_loader_defaults();
    o.workers = w;
    l = mmp_loader_new(ds, &o);
    mmp_tensormap_t *m = NULL;
    int k = 0, rc = 0;
    while ((rc = mmp_loader_next(l, &m)) == 0 && m) {
      k++;
      mmp_tensormap_free(m);
    }
    ok(rc == MMP_EDATA && k == 2, "%d workers: the error of item 2 comes after items 0 and 1", w);
    like(mmp_error_last(), "item 2: fake: story 2 is broken", "message names the item");
    ok(mmp_loader_next(l, &m) == 0 && m == NULL, "then the epoch is over");
    mmp_loader_free(l);
    o.skip_bad = true;
    l = mmp_loader_new(ds, &o);
    ok(drain(l, got, 64) == 4 && got[2] == 3 && got[3] == 5, "%d workers: skip_bad skips 2 and 4", w);
    mmp_loader_free(l);
  }
  mmp_component_free(ds);
  mmp_context_free(ctx);
  mmp_config_free(cfg);
  mmp_registry_free(reg);
  return done_testing();
}
