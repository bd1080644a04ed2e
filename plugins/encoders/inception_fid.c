/* plugins/encoders/inception_fid.c - pytorch-fid's FID Inception-v3: images in [0, 1] -> pool3 features (and the 64/192/768 blocks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/checkpoint.h>
#include <mmpipe/safetensors.h>

/* BasicConv2d: conv (no bias) + BatchNorm(eps 0.001) folded into one conv
 * with bias at load time, then ReLU. */
typedef struct bconv {
  mmp_tensor_t *w, *b;
  int sh, sw, ph, pw;
} bconv_t;

/* One row of the network's conv table: weight prefix, expected kernel,
 * stride, padding. Channel counts come from the weights' shapes. */
typedef struct conv_spec {
  const char *name;
  int kh, kw, stride, ph, pw;
} conv_spec_t;

enum { BLK_A, BLK_B, BLK_C, BLK_D, BLK_E1, BLK_E2 };

/* Inception3 attribute names in the order the forward pass uses them. */
#define STEM_N 5
static const conv_spec_t stem[STEM_N] = {
    {"Conv2d_1a_3x3", 3, 3, 2, 0, 0}, {"Conv2d_2a_3x3", 3, 3, 1, 0, 0}, {"Conv2d_2b_3x3", 3, 3, 1, 1, 1},
    {"Conv2d_3b_1x1", 1, 1, 1, 0, 0}, {"Conv2d_4a_3x3", 3, 3, 1, 0, 0}};

typedef struct mixed_spec {
  const char *name;
  int kind;
} mixed_spec_t;

#define MIXED_N 11
static const mixed_spec_t mixed[MIXED_N] = {
    {"Mixed_5b", BLK_A}, {"Mixed_5c", BLK_A}, {"Mixed_5d", BLK_A}, {"Mixed_6a", BLK_B},
    {"Mixed_6b", BLK_C}, {"Mixed_6c", BLK_C}, {"Mixed_6d", BLK_C}, {"Mixed_6e", BLK_C},
    {"Mixed_7a", BLK_D}, {"Mixed_7b", BLK_E1}, {"Mixed_7c", BLK_E2}};

/* the branch convs of each block kind, in state-dict names */
static const conv_spec_t spec_a[] = {{"branch1x1", 1, 1, 1, 0, 0},      {"branch5x5_1", 1, 1, 1, 0, 0},
                                     {"branch5x5_2", 5, 5, 1, 2, 2},    {"branch3x3dbl_1", 1, 1, 1, 0, 0},
                                     {"branch3x3dbl_2", 3, 3, 1, 1, 1}, {"branch3x3dbl_3", 3, 3, 1, 1, 1},
                                     {"branch_pool", 1, 1, 1, 0, 0},    {NULL, 0, 0, 0, 0, 0}};
static const conv_spec_t spec_b[] = {{"branch3x3", 3, 3, 2, 0, 0},
                                     {"branch3x3dbl_1", 1, 1, 1, 0, 0},
                                     {"branch3x3dbl_2", 3, 3, 1, 1, 1},
                                     {"branch3x3dbl_3", 3, 3, 2, 0, 0},
                                     {NULL, 0, 0, 0, 0, 0}};
static const conv_spec_t spec_c[] = {
    {"branch1x1", 1, 1, 1, 0, 0},      {"branch7x7_1", 1, 1, 1, 0, 0},    {"branch7x7_2", 1, 7, 1, 0, 3},
    {"branch7x7_3", 7, 1, 1, 3, 0},    {"branch7x7dbl_1", 1, 1, 1, 0, 0}, {"branch7x7dbl_2", 7, 1, 1, 3, 0},
    {"branch7x7dbl_3", 1, 7, 1, 0, 3}, {"branch7x7dbl_4", 7, 1, 1, 3, 0}, {"branch7x7dbl_5", 1, 7, 1, 0, 3},
    {"branch_pool", 1, 1, 1, 0, 0},    {NULL, 0, 0, 0, 0, 0}};
static const conv_spec_t spec_d[] = {{"branch3x3_1", 1, 1, 1, 0, 0},   {"branch3x3_2", 3, 3, 2, 0, 0},
                                     {"branch7x7x3_1", 1, 1, 1, 0, 0}, {"branch7x7x3_2", 1, 7, 1, 0, 3},
                                     {"branch7x7x3_3", 7, 1, 1, 3, 0}, {"branch7x7x3_4", 3, 3, 2, 0, 0},
                                     {NULL, 0, 0, 0, 0, 0}};
static const conv_spec_t spec_e[] = {
    {"branch1x1", 1, 1, 1, 0, 0},      {"branch3x3_1", 1, 1, 1, 0, 0},     {"branch3x3_2a", 1, 3, 1, 0, 1},
    {"branch3x3_2b", 3, 1, 1, 1, 0},   {"branch3x3dbl_1", 1, 1, 1, 0, 0},  {"branch3x3dbl_2", 3, 3, 1, 1, 1},
    {"branch3x3dbl_3a", 1, 3, 1, 0, 1}, {"branch3x3dbl_3b", 3, 1, 1, 1, 0}, {"branch_pool", 1, 1, 1, 0, 0},
    {NULL, 0, 0, 0, 0, 0}};

#define MAX_BRANCH 10

static const conv_spec_t *spec_of(int kind) {
  switch (kind) {
  case BLK_A: return spec_a;
  case BLK_B: return spec_b;
  case BLK_C: return spec_c;
  case BLK_D: return spec_d;
  default: return spec_e;
  }
}

typedef struct inception {
  mmp_backend_t *be;
  bool resize_input, normalize_input;
  int last_block;      /* highest block computed (0..3) */
  bool want_block[4];  /* blocks returned as "block<k>" */
  bconv_t stem[STEM_N];
  bconv_t mix[MIXED_N][MAX_BRANCH];
  int64_t features;    /* channels of the last block */
  mmp_tensormap_t *state;
} inception_t;

static const mmp_key_t inception_keys[] = {
    {"weights", MMP_TYPE_STRING, NULL,
     ".safetensors in pytorch-fid's key names (pt_inception-2015-12-05 converted)", MMP_KEY_REQUIRED | MMP_KEY_PATH, 0},
    {"blocks", MMP_TYPE_LIST, "[3]",
     "feature blocks returned as block<k>: 0 (64, first max pool), 1 (192), 2 (768), 3 (2048, pool3)", 0, 0},
    {"resize_input", MMP_TYPE_BOOL, "true", "bilinear resize to 299x299 (align_corners false)", 0, 0},
    {"normalize_input", MMP_TYPE_BOOL, "true", "scale inputs from [0, 1] to [-1, 1] (2x - 1)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

static void bconv_free(bconv_t *c) {
  mmp_tensor_unref(c->w);
  mmp_tensor_unref(c->b);
  c->w = c->b = NULL;
}

static void inception_destroy(void *self) {
  inception_t *m = self;
  if (!m) return;
  for (int i = 0; i < STEM_N; i++) bconv_free(&m->stem[i]);
  for (int i = 0; i < MIXED_N; i++)
    for (int j = 0; j < MAX_BRANCH; j++) bconv_free(&m->mix[i][j]);
  mmp_tensormap_free(m->state);
  free(m);
}

/* The weights file: safetensors, or a torch.save checkpoint (pytorch-fid's
 * pt_inception-2015-12-05-6726825d.pth as it is) through the core's
 * checkpoint reader. */
typedef struct wsrc {
  mmp_safetensors_t *st;
  mmp_checkpoint_t *ck;
} wsrc_t;

static size_t wsrc_count(const wsrc_t *w) { return w->ck ? mmp_checkpoint_count(w->ck) : mmp_safetensors_count(w->st); }

static const char *wsrc_name(const wsrc_t *w, size_t i) {
  return w->ck ? mmp_checkpoint_name(w->ck, i) : mmp_safetensors_name(w->st, i);
}

static int wsrc_info(const wsrc_t *w, const char *name, int *nd, int64_t *shape) {
  return w->ck ? mmp_checkpoint_info(w->ck, name, NULL, nd, shape, NULL, NULL)
               : mmp_safetensors_info(w->st, name, NULL, nd, shape);
}

static mmp_tensor_t *wsrc_get(wsrc_t *w, const char *name, mmp_backend_t *be) {
  return w->ck ? mmp_checkpoint_get(w->ck, name, be, MMP_F32) : mmp_safetensors_get(w->st, name, be, MMP_F32);
}

/* A tensor of the file with its expected rank (transfer full); records it in
 * the state map under its file name. */
static mmp_tensor_t *take(inception_t *m, wsrc_t *st, const char *path, const char *name, int ndim) {
  int nd = 0;
  int64_t shape[MMP_MAX_DIMS];
  if (wsrc_info(st, name, &nd, shape) < 0) {
    mmp_error_set(MMP_EDATA, "%s: tensor \"%s\" is missing", path, name);
    return NULL;
  }
  if (nd != ndim) {
    mmp_error_set(MMP_EDATA, "%s: tensor \"%s\" has %d dims, expected %d", path, name, nd, ndim);
    return NULL;
  }
  mmp_tensor_t *t = wsrc_get(st, name, m->be);
  if (t && mmp_tensormap_set(m->state, name, mmp_tensor_ref(t)) < 0) {
    mmp_tensor_unref(t);
    return NULL;
  }
  return t;
}

/* Load prefix.conv.weight and prefix.bn.* and fold the batch norm:
 * w' = w * g / sqrt(v + eps), b' = beta - mean * g / sqrt(v + eps). */
static int bconv_load(inception_t *m, wsrc_t *st, const char *path, const char *prefix,
                      const conv_spec_t *s, int64_t in_ch, bconv_t *out) {
  char n[256];
  snprintf(n, sizeof n, "%s.conv.weight", prefix);
  mmp_tensor_t *w = take(m, st, path, n, 4);
  if (!w) return mmp_error_code();
  if (w->shape[1] != in_ch || w->shape[2] != s->kh || w->shape[3] != s->kw || w->shape[0] < 1) {
    char d[64];
    int rc = mmp_error_set(MMP_EDATA, "%s: %s is %s, expected [out, %lld, %d, %d]", path, n,
                           mmp_tensor_describe(w, d, sizeof d), (long long)in_ch, s->kh, s->kw);
    mmp_tensor_unref(w);
    return rc;
  }
  int64_t C = w->shape[0];
  static const char *const bn[4] = {"weight", "bias", "running_mean", "running_var"};
  mmp_tensor_t *p[4] = {NULL};
  int rc = 0;
  for (int i = 0; i < 4 && rc == 0; i++) {
    snprintf(n, sizeof n, "%s.bn.%s", prefix, bn[i]);
    p[i] = take(m, st, path, n, 1);
    if (!p[i]) rc = mmp_error_code();
    else if (p[i]->shape[0] != C)
      rc = mmp_error_set(MMP_EDATA, "%s: %s has %lld entries, the conv has %lld outputs", path, n,
                         (long long)p[i]->shape[0], (long long)C);
  }
  if (rc == 0) {
    mmp_tensor_t *ve = mmp_scale(p[3], 1.0, 0.001); /* BatchNorm2d(eps=0.001) */
    mmp_tensor_t *sd = mmp_sqrt(ve);
    mmp_tensor_t *a = mmp_div(p[0], sd);
    int64_t s4[4] = {C, 1, 1, 1};
    mmp_tensor_t *a4 = mmp_reshape(a, 4, s4);
    mmp_tensor_t *ma = mmp_mul(p[2], a);
    out->w = mmp_mul(w, a4);
    out->b = mmp_sub(p[1], ma);
    mmp_tensor_unref(ve);
    mmp_tensor_unref(sd);
    mmp_tensor_unref(a);
    mmp_tensor_unref(a4);
    mmp_tensor_unref(ma);
    if (!out->w || !out->b) rc = mmp_error_prefix("%s: folding the batch norm of %s: ", path, prefix);
  }
  out->sh = out->sw = s->stride;
  out->ph = s->ph;
  out->pw = s->pw;
  for (int i = 0; i < 4; i++) mmp_tensor_unref(p[i]);
  mmp_tensor_unref(w);
  return rc;
}

static int64_t out_ch(const bconv_t *c) { return c->w->shape[0]; }

/* Load one Mixed block whose input has @in channels; returns its output
 * channels in *@out (0 on error). */
static int mixed_load(inception_t *m, wsrc_t *st, const char *path, int i, int64_t in, int64_t *out) {
  const conv_spec_t *sp = spec_of(mixed[i].kind);
  bconv_t *c = m->mix[i];
  char pre[128];
  /* each conv's input: the block input, or the previous conv in its branch */
  int rc = 0;
  for (int j = 0; sp[j].name && rc == 0; j++) {
    snprintf(pre, sizeof pre, "%s.%s", mixed[i].name, sp[j].name);
    int64_t cin = in;
    const char *nm = sp[j].name;
    size_t L = strlen(nm);
    char last = nm[L - 1];
    if (L >= 2 && nm[L - 2] == '_' && last >= '2' && last <= '9') cin = out_ch(&c[j - 1]);
    /* branch3x3_2a/2b and branch3x3dbl_3a/3b read the same previous conv */
    if (mixed[i].kind >= BLK_E1 && (strcmp(nm, "branch3x3_2a") == 0 || strcmp(nm, "branch3x3dbl_3a") == 0))
      cin = out_ch(&c[j - 1]);
    if (mixed[i].kind >= BLK_E1 && (strcmp(nm, "branch3x3_2b") == 0 || strcmp(nm, "branch3x3dbl_3b") == 0))
      cin = out_ch(&c[j - 2]);
    rc = bconv_load(m, st, path, pre, &sp[j], cin, &c[j]);
  }
  if (rc) return rc;
  switch (mixed[i].kind) {
  case BLK_A: *out = out_ch(&c[0]) + out_ch(&c[2]) + out_ch(&c[5]) + out_ch(&c[6]); break;
  case BLK_B: *out = out_ch(&c[0]) + out_ch(&c[3]) + in; break;
  case BLK_C: *out = out_ch(&c[0]) + out_ch(&c[3]) + out_ch(&c[8]) + out_ch(&c[9]); break;
  case BLK_D: *out = out_ch(&c[1]) + out_ch(&c[5]) + in; break;
  default:
    *out = out_ch(&c[0]) + out_ch(&c[2]) + out_ch(&c[3]) + out_ch(&c[6]) + out_ch(&c[7]) + out_ch(&c[8]);
    break;
  }
  return 0;
}

static bool ignored(const char *name) {
  const char *dot = strrchr(name, '.');
  return strncmp(name, "fc.", 3) == 0 || strncmp(name, "AuxLogits.", 10) == 0 ||
         (dot && strcmp(dot, ".num_batches_tracked") == 0);
}

static int load(inception_t *m, const char *path) {
  wsrc_t src = {NULL, NULL}, *st = &src;
  if (mmp_checkpoint_sniff(path)) src.ck = mmp_checkpoint_open(path, NULL, 0);
  else src.st = mmp_safetensors_open(path);
  if (!src.ck && !src.st) return mmp_error_code();
  int rc = 0;
  int64_t ch = 3;
  /* stem: blocks 0 (three convs) and 1 (two convs) */
  int nstem = m->last_block >= 1 ? 5 : 3;
  for (int i = 0; i < nstem && rc == 0; i++) {
    rc = bconv_load(m, st, path, stem[i].name, &stem[i], ch, &m->stem[i]);
    if (rc == 0) ch = out_ch(&m->stem[i]);
  }
  int nmix = m->last_block >= 3 ? MIXED_N : m->last_block >= 2 ? 8 : 0;
  for (int i = 0; i < nmix && rc == 0; i++) rc = mixed_load(m, st, path, i, ch, &ch);
  m->features = ch;
  /* every tensor of the file must be used or known to be unused */
  for (size_t i = 0; rc == 0 && i < wsrc_count(st); i++) {
    const char *n = wsrc_name(st, i);
    if (!ignored(n) && !mmp_tensormap_get(m->state, n)) {
      /* weights of blocks this instance does not compute */
      bool later = m->last_block < 3 && (strncmp(n, "Mixed_", 6) == 0 || strncmp(n, "Conv2d_", 7) == 0);
      if (!later) rc = mmp_error_set(MMP_EDATA, "%s: unexpected tensor \"%s\" (not a FID Inception weight)", path, n);
    }
  }
  mmp_safetensors_close(src.st);
  mmp_checkpoint_close(src.ck);
  return rc;
}

static int inception_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                            void **out_self) {
  (void)plugin;
  inception_t *m = calloc(1, sizeof *m);
  if (!m) return mmp_error_set(MMP_ENOMEM, "out of memory");
  m->be = ctx ? mmp_context_backend(ctx) : mmp_backend_get("cpu");
  m->resize_input = m->normalize_input = true;
  int rc = 0;
  if ((rc = mmp_config_get_bool(cfg, "resize_input", &m->resize_input)) < 0 && rc != MMP_ENOENT) goto fail;
  if ((rc = mmp_config_get_bool(cfg, "normalize_input", &m->normalize_input)) < 0 && rc != MMP_ENOENT) goto fail;
  size_t nb = 0;
  rc = mmp_config_get_list_size(cfg, "blocks", &nb);
  if (rc < 0 && rc != MMP_ENOENT) goto fail;
  if (rc == MMP_ENOENT || nb == 0) {
    m->want_block[3] = true;
    m->last_block = 3;
  }
  for (size_t i = 0; i < nb; i++) {
    int64_t b = -1;
    if ((rc = mmp_config_get_list_int(cfg, "blocks", i, &b)) < 0) goto fail;
    if (b < 0 || b > 3) {
      const mmp_config_t *n = mmp_config_lookup(cfg, "blocks");
      rc = mmp_error_set(MMP_ECONFIG, "%s:%d: inception_fid: blocks: %lld is not a block (0..3)",
                         n && mmp_config_file(n) ? mmp_config_file(n) : "(config)", n ? mmp_config_line(n) : 0,
                         (long long)b);
      goto fail;
    }
    m->want_block[b] = true;
    if (b > m->last_block) m->last_block = (int)b;
  }
  mmp_error_clear();
  char path[4096];
  if ((rc = mmp_config_get_path(cfg, "weights", path, sizeof path)) < 0) goto fail;
  if (!(m->state = mmp_tensormap_new())) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = load(m, path)) < 0) goto fail;
  *out_self = m;
  return 0;
fail:
  inception_destroy(m);
  return rc;
}

static mmp_tensor_t *swap(mmp_tensor_t *old, mmp_tensor_t *neu) {
  mmp_tensor_unref(old);
  return neu;
}

static mmp_tensor_t *bconv(const bconv_t *c, const mmp_tensor_t *x) {
  return mmp_conv2d_relu(x, c->w, c->b, c->sh, c->sw, c->ph, c->pw, 1, 1, 1);
}

/* A chain of convs from @x: c[from..to]. */
static mmp_tensor_t *chain(const bconv_t *c, int from, int to, const mmp_tensor_t *x) {
  mmp_tensor_t *h = bconv(&c[from], x);
  for (int j = from + 1; j <= to && h; j++) h = swap(h, bconv(&c[j], h));
  return h;
}

static mmp_tensor_t *cat_free(mmp_tensor_t **parts, int n) {
  bool all = true;
  for (int i = 0; i < n; i++)
    if (!parts[i]) all = false;
  mmp_tensor_t *r = all ? mmp_concat(parts, n, 1) : NULL;
  for (int i = 0; i < n; i++) mmp_tensor_unref(parts[i]);
  return r;
}

/* The two-way split of InceptionE: [conv a (x), conv b (x)] on channels. */
static mmp_tensor_t *split2(const bconv_t *a, const bconv_t *b, mmp_tensor_t *x) {
  mmp_tensor_t *p[2] = {x ? bconv(a, x) : NULL, x ? bconv(b, x) : NULL};
  mmp_tensor_unref(x);
  return cat_free(p, 2);
}

static mmp_tensor_t *mixed_fwd(const inception_t *m, int i, const mmp_tensor_t *x) {
  const bconv_t *c = m->mix[i];
  mmp_tensor_t *p[4] = {NULL}, *pool;
  switch (mixed[i].kind) {
  case BLK_A:
    p[0] = bconv(&c[0], x);
    p[1] = chain(c, 1, 2, x);
    p[2] = chain(c, 3, 5, x);
    pool = mmp_avg_pool2d_ex(x, 3, 1, 1, false);
    p[3] = pool ? bconv(&c[6], pool) : NULL;
    mmp_tensor_unref(pool);
    return cat_free(p, 4);
  case BLK_B:
    p[0] = bconv(&c[0], x);
    p[1] = chain(c, 1, 3, x);
    p[2] = mmp_max_pool2d(x, 3, 2, 0);
    return cat_free(p, 3);
  case BLK_C:
    p[0] = bconv(&c[0], x);
    p[1] = chain(c, 1, 3, x);
    p[2] = chain(c, 4, 8, x);
    pool = mmp_avg_pool2d_ex(x, 3, 1, 1, false);
    p[3] = pool ? bconv(&c[9], pool) : NULL;
    mmp_tensor_unref(pool);
    return cat_free(p, 4);
  case BLK_D:
    p[0] = chain(c, 0, 1, x);
    p[1] = chain(c, 2, 5, x);
    p[2] = mmp_max_pool2d(x, 3, 2, 0);
    return cat_free(p, 3);
  default:
    p[0] = bconv(&c[0], x);
    p[1] = split2(&c[2], &c[3], bconv(&c[1], x));
    p[2] = split2(&c[6], &c[7], chain(c, 4, 5, x));
    /* FIDInceptionE_1 averages without the padding; E_2 max-pools */
    pool = mixed[i].kind == BLK_E1 ? mmp_avg_pool2d_ex(x, 3, 1, 1, false) : mmp_max_pool2d(x, 3, 1, 1);
    p[3] = pool ? bconv(&c[8], pool) : NULL;
    mmp_tensor_unref(pool);
    return cat_free(p, 4);
  }
}

/* [N, C, H, W] -> [N, C] mean over H, W (adaptive_avg_pool2d to 1x1). */
static mmp_tensor_t *global_pool(const mmp_tensor_t *x) {
  int64_t s3[3] = {x->shape[0], x->shape[1], x->shape[2] * x->shape[3]};
  mmp_tensor_t *r = mmp_reshape((mmp_tensor_t *)x, 3, s3);
  return swap(r, mmp_mean(r, 2, false));
}

static int inception_encode(inception_t *m, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_tensor_t *xs = mmp_tensormap_need(in, "sample");
  if (!xs) return mmp_error_prefix("inception_fid: ");
  if (xs->ndim != 4 || xs->shape[1] != 3 || xs->shape[0] < 1) {
    char d[64];
    return mmp_error_set(MMP_ESHAPE, "inception_fid: sample is %s, expected [N, 3, H, W] in [0, 1]",
                         mmp_tensor_describe(xs, d, sizeof d));
  }
  mmp_tensor_t *h = mmp_to_backend(xs, m->be);
  if (h && h->dtype != MMP_F32) h = swap(h, mmp_convert(h, MMP_F32));
  if (h && m->resize_input) h = swap(h, mmp_resize_bilinear(h, 299, 299, false));
  if (h && m->normalize_input) h = swap(h, mmp_scale(h, 2.0, -1.0));
  if (h && (h->shape[2] < 75 || h->shape[3] < 75)) {
    mmp_tensor_unref(h);
    return mmp_error_set(MMP_ESHAPE, "inception_fid: inputs of %lldx%lld are too small without resize_input (75x75 at least)",
                         (long long)xs->shape[2], (long long)xs->shape[3]);
  }
  int rc = 0;
  mmp_tensor_t *last = NULL;
  for (int b = 0; b <= m->last_block && h; b++) {
    switch (b) {
    case 0:
      for (int i = 0; i < 3 && h; i++) h = swap(h, bconv(&m->stem[i], h));
      if (h) h = swap(h, mmp_max_pool2d(h, 3, 2, 0));
      break;
    case 1:
      for (int i = 3; i < 5 && h; i++) h = swap(h, bconv(&m->stem[i], h));
      if (h) h = swap(h, mmp_max_pool2d(h, 3, 2, 0));
      break;
    case 2:
      for (int i = 0; i < 8 && h; i++) h = swap(h, mixed_fwd(m, i, h));
      break;
    default:
      for (int i = 8; i < MIXED_N && h; i++) h = swap(h, mixed_fwd(m, i, h));
      if (h) {
        int64_t s4[4] = {h->shape[0], h->shape[1], 1, 1};
        mmp_tensor_t *g = global_pool(h);
        h = swap(h, g ? mmp_reshape(g, 4, s4) : NULL);
        mmp_tensor_unref(g);
      }
      break;
    }
    if (h && m->want_block[b]) {
      char name[16];
      snprintf(name, sizeof name, "block%d", b);
      if ((rc = mmp_tensormap_set(out, name, mmp_tensor_ref(h))) < 0) break;
      mmp_tensor_unref(last);
      last = mmp_tensor_ref(h);
    }
  }
  mmp_tensor_unref(h);
  if (rc == 0 && !last) rc = mmp_error_prefix("inception_fid: ");
  if (rc == 0) {
    /* "features": the highest requested block averaged over space, as
     * pytorch-fid's get_activations does for blocks other than pool3 */
    mmp_tensor_t *f = global_pool(last);
    rc = f ? mmp_tensormap_set(out, "features", f) : mmp_error_prefix("inception_fid: ");
  }
  mmp_tensor_unref(last);
  return rc;
}

static int inception_forward(void *self, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  inception_t *m = self;
  if (!method || !*method || strcmp(method, "encode") == 0) return inception_encode(m, in, out);
  if (strcmp(method, "state_dict") == 0) {
    for (size_t i = 0; i < mmp_tensormap_size(m->state); i++) {
      int rc = mmp_tensormap_set(out, mmp_tensormap_name(m->state, i), mmp_tensor_ref(mmp_tensormap_at(m->state, i)));
      if (rc < 0) return rc;
    }
    return 0;
  }
  if (strcmp(method, "info") == 0) {
    int64_t one[1] = {1};
    mmp_tensor_t *s = mmp_tensor_full(mmp_backend_get("cpu"), MMP_F32, 1, one, (double)m->features);
    return s ? mmp_tensormap_set(out, "feature_dim", s) : mmp_error_code();
  }
  return mmp_error_set(MMP_EINVAL, "inception_fid: unknown method \"%s\" (encode, info, state_dict)", method);
}

static const mmp_encoder_ops_t inception_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_ENCODER, mmp_encoder_ops_t, "inception_fid", "1.0",
                            "pytorch-fid's FID Inception-v3: images in [0, 1] -> 2048-d pool3 features",
                            inception_keys, inception_create, inception_destroy),
    .forward = inception_forward,
};

MMP_EXPORT int mmp_plugin_encoder_inception_fid_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_encoder_inception_fid_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &inception_ops.base);
}
