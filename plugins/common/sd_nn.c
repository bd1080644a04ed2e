/* plugins/common/sd_nn.c - building blocks of the diffusers/transformers
 * models (linear, conv, norms, ResnetBlock2D, attention, Transformer2DModel,
 * VAE attention, up/down sampling), all through the core tensor API. */
#include "plugins/common/sd_common.h"

#include <math.h>

#include <mmpipe/autograd.h>
#include <mmpipe/rng.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- leaves */

int sd_linear_load(sd_linear_t *l, sd_weights_t *w, const char *prefix, int64_t in,
                   int64_t out, bool bias) {
  int64_t ws[2] = {out, in}, bs[1] = {out};
  l->w = sd_w_mat(w, 2, ws, "%s.weight", prefix);
  l->b = bias ? sd_w(w, 1, bs, "%s.bias", prefix) : NULL;
  return 0;
}

int sd_conv_load(sd_conv_t *c, sd_weights_t *w, const char *prefix, int64_t in, int64_t out,
                 int k, int stride, int pad) {
  int64_t ws[4] = {out, in, k, k}, bs[1] = {out};
  c->w = sd_w_mat(w, 4, ws, "%s.weight", prefix);
  c->b = sd_w(w, 1, bs, "%s.bias", prefix);
  c->stride = stride;
  c->pad = pad;
  return 0;
}

int sd_norm_load(sd_norm_t *n, sd_weights_t *w, const char *prefix, int64_t ch, int groups,
                 double eps) {
  int64_t s[1] = {ch};
  n->w = sd_w(w, 1, s, "%s.weight", prefix);
  n->b = sd_w(w, 1, s, "%s.bias", prefix);
  n->groups = groups;
  n->eps = eps;
  return 0;
}

void sd_linear_free(sd_linear_t *l) {
  mmp_tensor_unref(l->w);
  mmp_tensor_unref(l->b);
  l->w = l->b = NULL;
}
void sd_conv_free(sd_conv_t *c) {
  mmp_tensor_unref(c->w);
  mmp_tensor_unref(c->b);
  c->w = c->b = NULL;
}
void sd_norm_free(sd_norm_t *n) {
  mmp_tensor_unref(n->w);
  mmp_tensor_unref(n->b);
  n->w = n->b = NULL;
}

mmp_tensor_t *sd_linear(const sd_linear_t *l, const mmp_tensor_t *x) {
  if (!x) return NULL;
  if (l->w && l->w->ndim == 4) { /* a 1x1 conv's [O, I, 1, 1] (proj_load) */
    int64_t s2[2] = {l->w->shape[0], l->w->shape[1]};
    mmp_tensor_t *w2 = mmp_reshape(l->w, 2, s2);
    mmp_tensor_t *r = w2 ? mmp_linear(x, w2, l->b) : NULL;
    mmp_tensor_unref(w2);
    return r;
  }
  return mmp_linear(x, l->w, l->b);
}

mmp_tensor_t *sd_conv(const sd_conv_t *c, const mmp_tensor_t *x) {
  if (!x) return NULL;
  return mmp_conv2d(x, c->w, c->b, c->stride, c->stride, c->pad, c->pad, 1, 1, 1);
}

mmp_tensor_t *sd_group_norm(const sd_norm_t *n, const mmp_tensor_t *x) {
  if (!x) return NULL;
  return mmp_group_norm(x, n->groups, n->w, n->b, n->eps);
}

mmp_tensor_t *sd_group_norm_silu(const sd_norm_t *n, const mmp_tensor_t *x) {
  if (!x) return NULL;
  return mmp_group_norm_silu(x, n->groups, n->w, n->b, n->eps);
}

mmp_tensor_t *sd_layer_norm(const sd_norm_t *n, const mmp_tensor_t *x) {
  if (!x) return NULL;
  return mmp_layer_norm(x, n->w, n->b, n->eps);
}

/* ---------------------------------------------------------------- resnet */

int sd_resnet_load(sd_resnet_t *r, sd_weights_t *w, const char *prefix, int64_t in,
                   int64_t out, int64_t temb_ch, int groups, double eps, double out_scale) {
  char p[256];
  memset(r, 0, sizeof *r);
  snprintf(p, sizeof p, "%s.norm1", prefix);
  sd_norm_load(&r->norm1, w, p, in, groups, eps);
  snprintf(p, sizeof p, "%s.conv1", prefix);
  sd_conv_load(&r->conv1, w, p, in, out, 3, 1, 1);
  if (temb_ch > 0) {
    snprintf(p, sizeof p, "%s.time_emb_proj", prefix);
    sd_linear_load(&r->temb, w, p, temb_ch, out, true);
  }
  snprintf(p, sizeof p, "%s.norm2", prefix);
  sd_norm_load(&r->norm2, w, p, out, groups, eps);
  snprintf(p, sizeof p, "%s.conv2", prefix);
  sd_conv_load(&r->conv2, w, p, out, out, 3, 1, 1);
  if (in != out) {
    snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
    sd_conv_load(&r->shortcut, w, p, in, out, 1, 1, 0);
  }
  r->out_scale = out_scale;
  return 0;
}

void sd_resnet_free(sd_resnet_t *r) {
  sd_norm_free(&r->norm1);
  sd_norm_free(&r->norm2);
  sd_conv_free(&r->conv1);
  sd_conv_free(&r->conv2);
  sd_conv_free(&r->shortcut);
  sd_linear_free(&r->temb);
}

mmp_tensor_t *sd_resnet(const sd_resnet_t *r, const mmp_tensor_t *x, const mmp_tensor_t *temb) {
  if (!x) return NULL;
  mmp_tensor_t *h = sd_group_norm_silu(&r->norm1, x);
  h = sd_swap(h, sd_conv(&r->conv1, h));
  if (temb && r->temb.w) {
    mmp_tensor_t *t = mmp_silu(temb);
    t = sd_swap(t, sd_linear(&r->temb, t));
    if (t) {
      int64_t s[4] = {t->shape[0], t->shape[1], 1, 1};
      t = sd_swap(t, mmp_reshape(t, 4, s));
    }
    h = sd_swap(h, mmp_add(h, t));
    mmp_tensor_unref(t);
  }
  h = sd_swap(h, sd_group_norm_silu(&r->norm2, h));
  h = sd_swap(h, sd_conv(&r->conv2, h));
  mmp_tensor_t *sc = r->shortcut.w ? sd_conv(&r->shortcut, x) : mmp_tensor_ref((mmp_tensor_t *)x);
  h = sd_swap(h, mmp_add(sc, h));
  mmp_tensor_unref(sc);
  if (h && r->out_scale != 1.0) h = sd_swap(h, mmp_scale(h, 1.0 / r->out_scale, 0.0));
  return h;
}

/* ---------------------------------------------------------------- attention */

int sd_attn_load(sd_attn_t *a, sd_weights_t *w, const char *prefix, const char *const names[4],
                 int64_t qdim, int64_t kvdim, int64_t inner, int heads, bool qkv_bias) {
  char p[256];
  memset(a, 0, sizeof *a);
  snprintf(p, sizeof p, "%s.%s", prefix, names[0]);
  sd_linear_load(&a->q, w, p, qdim, inner, qkv_bias);
  snprintf(p, sizeof p, "%s.%s", prefix, names[1]);
  sd_linear_load(&a->k, w, p, kvdim, inner, qkv_bias);
  snprintf(p, sizeof p, "%s.%s", prefix, names[2]);
  sd_linear_load(&a->v, w, p, kvdim, inner, qkv_bias);
  snprintf(p, sizeof p, "%s.%s", prefix, names[3]);
  sd_linear_load(&a->o, w, p, inner, qdim, true);
  a->heads = heads;
  return 0;
}

void sd_attn_free(sd_attn_t *a) {
  sd_linear_free(&a->qkv);
  sd_linear_free(&a->q);
  sd_linear_free(&a->k);
  sd_linear_free(&a->v);
  sd_linear_free(&a->o);
}

/* [B, L, H*D] -> [B, H, L, D] view; consumes @x */
static mmp_tensor_t *split_heads(mmp_tensor_t *x, int heads) {
  if (!x) return NULL;
  int64_t s[4] = {x->shape[0], x->shape[1], heads, x->shape[2] / heads};
  mmp_tensor_t *r = mmp_reshape(x, 4, s);
  mmp_tensor_unref(x);
  static const int perm[4] = {0, 2, 1, 3};
  return sd_swap(r, r ? mmp_permute(r, perm) : NULL);
}

/* Projection @i (0 q, 1 k, 2 v) of @a applied to @x. A fused qkv that the
 * current tape tracks is sliced here (recorded views of the watched
 * tensor); otherwise the load-time views serve (the same numbers). */
static mmp_tensor_t *qkv_linear(const sd_attn_t *a, int i, const mmp_tensor_t *x) {
  const sd_linear_t *l = i == 0 ? &a->q : i == 1 ? &a->k : &a->v;
  mmp_tape_t *tape = a->qkv.w ? mmp_tape_current() : NULL;
  if (!x || !tape || !(mmp_tape_tracks(tape, a->qkv.w) || (a->qkv.b && mmp_tape_tracks(tape, a->qkv.b))))
    return sd_linear(l, x);
  int64_t d = a->qkv.w->shape[0] / 3;
  sd_linear_t s = {mmp_slice(a->qkv.w, 0, i * d, (i + 1) * d, 1), a->qkv.b ? mmp_slice(a->qkv.b, 0, i * d, (i + 1) * d, 1) : NULL};
  mmp_tensor_t *r = s.w && (s.b || !a->qkv.b) ? sd_linear(&s, x) : NULL;
  sd_linear_free(&s);
  return r;
}

/* Contiguous, as mmp_attention needs them: cached keys and values are then
 * not copied again by every call that attends to them. */
int sd_attn_kv(const sd_attn_t *a, const mmp_tensor_t *ctx, mmp_tensor_t **k, mmp_tensor_t **v) {
  *k = split_heads(qkv_linear(a, 1, ctx), a->heads);
  *k = sd_swap(*k, *k ? mmp_contiguous(*k) : NULL);
  *v = *k ? split_heads(qkv_linear(a, 2, ctx), a->heads) : NULL;
  *v = sd_swap(*v, *v ? mmp_contiguous(*v) : NULL);
  if (*k && *v) return 0;
  mmp_tensor_unref(*k);
  *k = NULL;
  return mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
}

/* Attention with its probabilities materialised and dropped out, as
 * med.py's BertSelfAttention in train mode: softmax(q k^T / sqrt(D) +
 * (key masked) * -10000) (med.py's extended mask), then F.dropout of the
 * probabilities [B, H, Lq, Lk] (one draw per element in that order, masked
 * keys included), then times v. q [B, H, Lq, D]; k, v [B or 1, H, Lk, D]. */
static mmp_tensor_t *attention_dropped(const mmp_tensor_t *q, const mmp_tensor_t *k, const mmp_tensor_t *v,
                                       const mmp_tensor_t *key_mask, const sd_dropout_t *dp) {
  mmp_tensor_t *s = mmp_matmul(q, k, false, true);
  s = sd_swap(s, s ? mmp_scale(s, 1.0 / sqrt((double)q->shape[3]), 0.0) : NULL);
  if (s && key_mask) {
    mmp_tensor_t *m = mmp_convert(key_mask, MMP_F32);
    int64_t bs[4] = {key_mask->shape[0], 1, 1, key_mask->shape[1]};
    m = sd_swap(m, m ? mmp_reshape(m, 4, bs) : NULL);
    m = sd_swap(m, m ? mmp_scale(m, -10000.0, 0.0) : NULL);
    s = sd_swap(s, m ? mmp_add(s, m) : NULL);
    mmp_tensor_unref(m);
  }
  s = sd_swap(s, s ? mmp_softmax(s, 3) : NULL);
  s = sd_swap(s, s ? sd_dropout_apply(dp, s, dp->attn) : NULL);
  return sd_swap(s, s ? mmp_matmul(s, v, false, false) : NULL);
}

/* sd_attn_cached, with dropout when @dp is given. */
static mmp_tensor_t *attn_run(const sd_attn_t *a, const mmp_tensor_t *x, const mmp_tensor_t *k, const mmp_tensor_t *v,
                              const mmp_tensor_t *key_mask, bool causal, const sd_dropout_t *dp) {
  if (!x || !k || !v) return NULL;
  if (dp && causal) {
    mmp_error_set(MMP_EUNSUPPORTED, "attention: dropout with a causal mask");
    return NULL;
  }
  int64_t B = x->shape[0], L = x->shape[1];
  /* One context for B query sequences: without a causal mask every query
   * row attends on its own, so the B sequences are one of B*L rows against
   * the single K/V (a broadcast that copies nothing). With dropout the
   * probabilities keep torch's [B, H, Lq, Lk] order instead (the matmul
   * broadcasts the K/V). */
  bool fold = k->shape[0] == 1 && B > 1 && !dp;
  if (fold && (causal || (key_mask && key_mask->shape[0] != 1))) {
    mmp_error_set(MMP_ESHAPE, "attention: one cached key/value for %lld queries needs no causal mask and a "
                  "[1, Lk] key mask", (long long)B);
    return NULL;
  }
  mmp_tensor_t *q = qkv_linear(a, 0, x);
  if (fold && q) {
    int64_t s[3] = {1, B * L, q->shape[2]};
    q = sd_swap(q, mmp_reshape(q, 3, s));
  }
  q = split_heads(q, a->heads);
  mmp_tensor_t *o = !q ? NULL : dp ? attention_dropped(q, k, v, key_mask, dp) : mmp_attention(q, k, v, key_mask, causal, 0.0);
  mmp_tensor_unref(q);
  if (!o) return NULL;
  /* [B, H, L, D] -> [B, L, H*D] */
  static const int perm[4] = {0, 2, 1, 3};
  o = sd_swap(o, mmp_permute(o, perm));
  if (o) {
    int64_t s[3] = {B, L, o->shape[2] * o->shape[3]};
    o = sd_swap(o, mmp_reshape(o, 3, s));
  }
  return sd_swap(o, sd_linear(&a->o, o));
}

mmp_tensor_t *sd_attn_cached(const sd_attn_t *a, const mmp_tensor_t *x, const mmp_tensor_t *k,
                             const mmp_tensor_t *v, const mmp_tensor_t *key_mask, bool causal) {
  return attn_run(a, x, k, v, key_mask, causal, NULL);
}

static mmp_tensor_t *attn_full(const sd_attn_t *a, const mmp_tensor_t *x, const mmp_tensor_t *ctx,
                               const mmp_tensor_t *key_mask, bool causal, const sd_dropout_t *dp) {
  if (!x) return NULL;
  mmp_tensor_t *k, *v;
  if (sd_attn_kv(a, ctx ? ctx : x, &k, &v)) return NULL;
  mmp_tensor_t *o = attn_run(a, x, k, v, key_mask, causal, dp);
  mmp_tensor_unref(k);
  mmp_tensor_unref(v);
  return o;
}

mmp_tensor_t *sd_attn(const sd_attn_t *a, const mmp_tensor_t *x, const mmp_tensor_t *ctx,
                      const mmp_tensor_t *key_mask, bool causal) {
  return attn_full(a, x, ctx, key_mask, causal, NULL);
}

/* ---------------------------------------------------------------- transformer */

static void proj_load(sd_linear_t *l, sd_weights_t *w, const char *prefix, int64_t in, int64_t out, bool linear) {
  if (linear) {
    sd_linear_load(l, w, prefix, in, out, true);
    return;
  }
  /* kept as the state-dict tensor itself (sd_linear views it as [O, I] per
   * call), so that a tape watching the parameter sees its uses */
  int64_t ws[4] = {out, in, 1, 1}, bs[1] = {out};
  l->w = sd_w_mat(w, 4, ws, "%s.weight", prefix);
  l->b = sd_w(w, 1, bs, "%s.bias", prefix);
}

static const char *const diffusers_attn_names[4] = {"to_q", "to_k", "to_v", "to_out.0"};

int sd_transformer_load(sd_transformer_t *t, sd_weights_t *w, const char *prefix, int64_t ch,
                        int heads, int64_t cross_dim, int layers, int groups, bool linear_proj) {
  char p[256];
  memset(t, 0, sizeof *t);
  int64_t inner = ch; /* heads * (ch / heads) */
  t->inner = inner;
  t->linear_proj = linear_proj;
  snprintf(p, sizeof p, "%s.norm", prefix);
  sd_norm_load(&t->norm, w, p, ch, groups, 1e-6);
  /* proj_in/proj_out: 1x1 convs ([O, I, 1, 1]) in SD-1.x, linears with
   * use_linear_projection (SD-2.x); files of either kind are accepted, the
   * shape asked for decides what init-weights writes. Computed as linears. */
  snprintf(p, sizeof p, "%s.proj_in", prefix);
  proj_load(&t->proj_in, w, p, ch, inner, linear_proj);
  snprintf(p, sizeof p, "%s.proj_out", prefix);
  proj_load(&t->proj_out, w, p, inner, ch, linear_proj);
  t->blocks = calloc((size_t)layers, sizeof *t->blocks);
  if (!t->blocks) return mmp_error_set(MMP_ENOMEM, "out of memory");
  t->n_blocks = layers;
  for (int i = 0; i < layers; i++) {
    sd_tblock_t *b = &t->blocks[i];
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.norm1", prefix, i);
    sd_norm_load(&b->norm1, w, p, inner, 0, 1e-5);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.norm2", prefix, i);
    sd_norm_load(&b->norm2, w, p, inner, 0, 1e-5);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.norm3", prefix, i);
    sd_norm_load(&b->norm3, w, p, inner, 0, 1e-5);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.attn1", prefix, i);
    sd_attn_load(&b->attn1, w, p, diffusers_attn_names, inner, inner, inner, heads, false);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.attn2", prefix, i);
    sd_attn_load(&b->attn2, w, p, diffusers_attn_names, inner, cross_dim, inner, heads, false);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.ff.net.0.proj", prefix, i);
    sd_linear_load(&b->ff_in, w, p, inner, inner * 4 * 2, true);
    snprintf(p, sizeof p, "%s.transformer_blocks.%d.ff.net.2", prefix, i);
    sd_linear_load(&b->ff_out, w, p, inner * 4, inner, true);
  }
  return 0;
}

void sd_transformer_free(sd_transformer_t *t) {
  sd_norm_free(&t->norm);
  sd_linear_free(&t->proj_in);
  sd_linear_free(&t->proj_out);
  for (int i = 0; i < t->n_blocks; i++) {
    sd_tblock_t *b = &t->blocks[i];
    sd_norm_free(&b->norm1);
    sd_norm_free(&b->norm2);
    sd_norm_free(&b->norm3);
    sd_attn_free(&b->attn1);
    sd_attn_free(&b->attn2);
    sd_linear_free(&b->ff_in);
    sd_linear_free(&b->ff_out);
  }
  free(t->blocks);
  t->blocks = NULL;
  t->n_blocks = 0;
}

/* h = h + f(h) helper */
static mmp_tensor_t *residual(mmp_tensor_t *h, mmp_tensor_t *delta) {
  mmp_tensor_t *r = mmp_add(h, delta);
  mmp_tensor_unref(h);
  mmp_tensor_unref(delta);
  return r;
}

/* GEGLU feed-forward, ff_out(geglu(ff_in(x))), over blocks of rows (as
 * diffusers' forward chunking): the [rows, 2 x inner] projection is the
 * largest activation of a UNet step (84 MB at 64x64, batch 2), and rows are
 * independent, so the numbers are the same with a fraction of the memory. */
#define FF_CHUNK_FLOATS ((int64_t)4 << 20) /* ff_in output per block */

static mmp_tensor_t *feed_forward(const sd_tblock_t *b, const mmp_tensor_t *x, int64_t chunk_rows) {
  if (!x) return NULL;
  int64_t C = x->shape[x->ndim - 1], rows = mmp_tensor_numel(x) / (C ? C : 1);
  int64_t wide = b->ff_in.w->shape[0]; /* 2 x inner */
  int64_t step = chunk_rows;
  if (step == 0) {
    step = FF_CHUNK_FLOATS / (wide ? wide : 1);
    step = step < 64 ? 64 : step / 64 * 64;
  } else if (step < 0) {
    step = rows;
  }
  /* the blocks are written in place, which a tape cannot differentiate */
  if (mmp_tape_current()) step = rows;
  if (rows <= step) {
    mmp_tensor_t *f = sd_linear(&b->ff_in, x);
    f = sd_swap(f, f ? mmp_geglu(f) : NULL);
    return sd_swap(f, sd_linear(&b->ff_out, f));
  }
  int64_t s2[2] = {rows, C};
  mmp_tensor_t *x2 = mmp_reshape((mmp_tensor_t *)x, 2, s2);
  int64_t os[2] = {rows, b->ff_out.w->shape[0]};
  mmp_tensor_t *out = x2 ? mmp_tensor_new(mmp_tensor_backend(x), MMP_F32, 2, os) : NULL;
  for (int64_t r = 0; out && r < rows; r += step) {
    int64_t e = r + step < rows ? r + step : rows;
    mmp_tensor_t *xs = mmp_slice(x2, 0, r, e, 1);
    mmp_tensor_t *f = sd_linear(&b->ff_in, xs);
    mmp_tensor_unref(xs);
    f = sd_swap(f, f ? mmp_geglu(f) : NULL);
    f = sd_swap(f, sd_linear(&b->ff_out, f));
    mmp_tensor_t *dst = f ? mmp_slice(out, 0, r, e, 1) : NULL;
    int rc = dst ? mmp_copy_into(dst, f) : -1;
    mmp_tensor_unref(dst);
    mmp_tensor_unref(f);
    if (rc < 0) out = sd_swap(out, NULL);
  }
  mmp_tensor_unref(x2);
  if (!out) return NULL;
  int64_t s3[MMP_MAX_DIMS];
  for (int d = 0; d < x->ndim; d++) s3[d] = x->shape[d];
  s3[x->ndim - 1] = os[1];
  return sd_swap(out, mmp_reshape(out, x->ndim, s3));
}

mmp_tensor_t *sd_transformer(const sd_transformer_t *t, const mmp_tensor_t *x,
                             const mmp_tensor_t *ctx, const mmp_tensor_t *mask) {
  if (!x) return NULL;
  int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  static const int to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
  mmp_tensor_t *h = sd_group_norm(&t->norm, x);
  /* [B, C, H, W] -> [B, HW, C]; a 1x1 conv and a linear projection are the
   * same product, so both layouts go through mmp_linear. */
  h = sd_swap(h, mmp_permute(h, to_nhwc));
  int64_t s3[3] = {B, H * W, C};
  h = sd_swap(h, mmp_reshape(h, 3, s3));
  h = sd_swap(h, sd_linear(&t->proj_in, h));
  for (int i = 0; i < t->n_blocks && h; i++) {
    const sd_tblock_t *b = &t->blocks[i];
    mmp_tensor_t *n = sd_layer_norm(&b->norm1, h);
    h = residual(h, sd_attn(&b->attn1, n, NULL, NULL, false));
    mmp_tensor_unref(n);
    n = sd_layer_norm(&b->norm2, h);
    h = residual(h, sd_attn(&b->attn2, n, ctx, mask, false));
    mmp_tensor_unref(n);
    n = sd_layer_norm(&b->norm3, h);
    mmp_tensor_t *f = feed_forward(b, n, t->ff_chunk_rows);
    mmp_tensor_unref(n);
    h = residual(h, f);
  }
  h = sd_swap(h, sd_linear(&t->proj_out, h));
  int64_t s4[4] = {B, H, W, C};
  h = sd_swap(h, mmp_reshape(h, 4, s4));
  h = sd_swap(h, mmp_permute(h, to_nchw));
  return residual(h, mmp_tensor_ref((mmp_tensor_t *)x));
}

/* ---------------------------------------------------------------- VAE attention */

int sd_vae_attn_load(sd_vae_attn_t *a, sd_weights_t *w, const char *prefix, int64_t ch,
                     int groups, double eps) {
  char p[256];
  snprintf(p, sizeof p, "%s.group_norm", prefix);
  sd_norm_load(&a->norm, w, p, ch, groups, eps);
  return sd_attn_load(&a->attn, w, prefix, diffusers_attn_names, ch, ch, ch, 1, true);
}

void sd_vae_attn_free(sd_vae_attn_t *a) {
  sd_norm_free(&a->norm);
  sd_attn_free(&a->attn);
}

mmp_tensor_t *sd_vae_attn(const sd_vae_attn_t *a, const mmp_tensor_t *x) {
  if (!x) return NULL;
  int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  mmp_tensor_t *h = sd_group_norm(&a->norm, x);
  int64_t s3[3] = {B, C, H * W};
  h = sd_swap(h, mmp_reshape(h, 3, s3));
  h = sd_swap(h, mmp_transpose(h, 1, 2));
  h = sd_swap(h, sd_attn(&a->attn, h, NULL, NULL, false));
  h = sd_swap(h, mmp_transpose(h, 1, 2));
  int64_t s4[4] = {B, C, H, W};
  h = sd_swap(h, mmp_reshape(h, 4, s4));
  return residual(h, mmp_tensor_ref((mmp_tensor_t *)x));
}

/* ---------------------------------------------------------------- resampling */

mmp_tensor_t *sd_downsample(const sd_conv_t *c, const mmp_tensor_t *x) {
  if (!x) return NULL;
  if (c->pad > 0) return sd_conv(c, x);
  /* diffusers' Downsample2D with padding 0: F.pad(x, (0, 1, 0, 1)) */
  mmp_backend_t *be = mmp_tensor_backend(x);
  int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
  int64_t zr[4] = {N, C, H, 1}, zb[4] = {N, C, 1, W + 1};
  mmp_tensor_t *z1 = mmp_tensor_zeros(be, MMP_F32, 4, zr);
  mmp_tensor_t *z2 = mmp_tensor_zeros(be, MMP_F32, 4, zb);
  mmp_tensor_t *p = NULL;
  if (z1 && z2) {
    mmp_tensor_t *a[2] = {(mmp_tensor_t *)x, z1};
    p = mmp_concat(a, 2, 3);
    if (p) {
      mmp_tensor_t *b[2] = {p, z2};
      p = sd_swap(p, mmp_concat(b, 2, 2));
    }
  }
  mmp_tensor_unref(z1);
  mmp_tensor_unref(z2);
  mmp_tensor_t *y = sd_conv(c, p);
  mmp_tensor_unref(p);
  return y;
}

mmp_tensor_t *sd_upsample(const sd_conv_t *c, const mmp_tensor_t *x) {
  if (!x) return NULL;
  mmp_tensor_t *u = mmp_upsample_nearest2x(x);
  mmp_tensor_t *y = sd_conv(c, u);
  mmp_tensor_unref(u);
  return y;
}

/* ---------------------------------------------------------------- inputs */

mmp_tensor_t *sd_input_f32(const mmp_tensor_t *t, mmp_backend_t *be) {
  if (!t) return NULL;
  mmp_tensor_t *a = mmp_tensor_backend(t) == be ? mmp_tensor_ref((mmp_tensor_t *)t)
                                                : mmp_to_backend(t, be);
  if (a && a->dtype != MMP_F32) a = sd_swap(a, mmp_convert(a, MMP_F32));
  if (a) a = sd_swap(a, mmp_contiguous(a));
  return a;
}

mmp_tensor_t *sd_input_mask(const mmp_tensor_t *t, mmp_backend_t *be, bool invert) {
  if (!t) return NULL;
  /* Masks are small host-side inputs: normalise any dtype to u8 0/1 here
   * (input conversion, not model math). */
  mmp_tensor_t *f = sd_input_f32(t, mmp_backend_get("cpu"));
  if (!f) return NULL;
  int64_t n = mmp_tensor_numel(f);
  float *src = malloc((size_t)(n ? n : 1) * sizeof *src);
  uint8_t *dst = malloc((size_t)(n ? n : 1));
  mmp_tensor_t *r = NULL;
  if (src && dst && mmp_tensor_to_host(f, src, (size_t)n * sizeof *src) == 0) {
    for (int64_t i = 0; i < n; i++) dst[i] = (uint8_t)((src[i] != 0.0f) != invert);
    r = mmp_tensor_from_data(be, MMP_U8, f->ndim, f->shape, dst);
  } else if (!src || !dst) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  free(src);
  free(dst);
  mmp_tensor_unref(f);
  return r;
}

/* ---------------------------------------------------------------- tables */

mmp_tensor_t *sd_grow_rows(mmp_tensor_t *t, int64_t rows, double std, uint64_t seed) {
  if (!t) return NULL;
  if (t->ndim != 2 || rows < t->shape[0]) {
    mmp_error_set(MMP_EINVAL, "resize: %lld rows asked of a table of %lld", (long long)rows,
                  (long long)(t->ndim ? t->shape[0] : 0));
    mmp_tensor_unref(t);
    return NULL;
  }
  if (rows == t->shape[0]) return t;
  /* a half-precision table (weights_dtype) grows in f32 and is rounded back */
  const mmp_dtype_t dt = t->dtype;
  if (dt != MMP_F32) t = sd_swap(t, mmp_convert(t, MMP_F32));
  if (!t) return NULL;
  int64_t s[2] = {rows - t->shape[0], t->shape[1]};
  mmp_rng_t *g = mmp_rng_new(seed, MMP_RNG_PHILOX);
  mmp_tensor_t *r = g ? mmp_rng_randn(g, mmp_tensor_backend(t), 2, s) : NULL;
  mmp_rng_free(g);
  r = sd_swap(r, r ? mmp_scale(r, std, 0.0) : NULL);
  mmp_tensor_t *out = NULL;
  if (r) {
    mmp_tensor_t *parts[2] = {t, r};
    out = mmp_concat(parts, 2, 0);
  }
  mmp_tensor_unref(r);
  mmp_tensor_unref(t);
  if (out && dt != MMP_F32) out = sd_swap(out, mmp_convert(out, dt));
  return out;
}

/* ---------------------------------------------------------------- fused qkv */

int sd_attn_load_fused(sd_attn_t *a, sd_weights_t *w, const char *qkv, const char *out, int64_t dim,
                       int heads, bool qkv_bias) {
  memset(a, 0, sizeof *a);
  sd_linear_t f = {0};
  sd_linear_load(&f, w, qkv, dim, 3 * dim, qkv_bias);
  sd_linear_t *dst[3] = {&a->q, &a->k, &a->v};
  /* Row slices of a contiguous [3D, D] matrix are contiguous views. */
  for (int i = 0; i < 3; i++) {
    dst[i]->w = f.w ? mmp_slice(f.w, 0, i * dim, (i + 1) * dim, 1) : NULL;
    dst[i]->b = f.b ? mmp_slice(f.b, 0, i * dim, (i + 1) * dim, 1) : NULL;
  }
  a->qkv = f; /* the parameter itself, for a tape (qkv_linear) */
  sd_linear_load(&a->o, w, out, dim, dim, true);
  a->heads = heads;
  return 0;
}

/* ---------------------------------------------------------------- act, mlp, block */

int sd_act_parse(const char *name, sd_act_t *out) {
  if (!strcmp(name, "gelu")) *out = SD_ACT_GELU;
  else if (!strcmp(name, "gelu_new") || !strcmp(name, "gelu_pytorch_tanh")) *out = SD_ACT_GELU_TANH;
  else if (!strcmp(name, "quick_gelu")) *out = SD_ACT_QUICK_GELU;
  else if (!strcmp(name, "relu")) *out = SD_ACT_RELU;
  else return mmp_error_set(MMP_EUNSUPPORTED, "hidden_act %s is not supported (gelu, gelu_new, quick_gelu, relu)", name);
  return 0;
}

mmp_tensor_t *sd_act(sd_act_t a, const mmp_tensor_t *x) {
  if (!x) return NULL;
  switch (a) {
  case SD_ACT_GELU: return mmp_gelu(x);
  case SD_ACT_GELU_TANH: return mmp_gelu_tanh(x);
  case SD_ACT_QUICK_GELU: return mmp_quick_gelu(x);
  default: return mmp_relu(x);
  }
}

int sd_mlp_load(sd_mlp_t *m, sd_weights_t *w, const char *fc1, const char *fc2, int64_t dim, int64_t hidden,
                sd_act_t act) {
  sd_linear_load(&m->fc1, w, fc1, dim, hidden, true);
  sd_linear_load(&m->fc2, w, fc2, hidden, dim, true);
  m->act = act;
  return 0;
}

void sd_mlp_free(sd_mlp_t *m) {
  sd_linear_free(&m->fc1);
  sd_linear_free(&m->fc2);
}

mmp_tensor_t *sd_mlp(const sd_mlp_t *m, const mmp_tensor_t *x) {
  mmp_tensor_t *h = sd_linear(&m->fc1, x);
  h = sd_swap(h, sd_act(m->act, h));
  return sd_swap(h, sd_linear(&m->fc2, h));
}

void sd_block_free(sd_block_t *b) {
  sd_norm_free(&b->ln_attn);
  sd_norm_free(&b->ln_cross);
  sd_norm_free(&b->ln_mlp);
  sd_attn_free(&b->attn);
  sd_attn_free(&b->cross);
  sd_mlp_free(&b->mlp);
}

mmp_tensor_t *sd_dropout_apply(const sd_dropout_t *dp, mmp_tensor_t *x, double p) {
  if (!x) return NULL;
  return dp->rows_total ? mmp_dropout_rows(dp->rng, x, p, dp->rows_total, dp->rows_off) : mmp_dropout(dp->rng, x, p);
}

mmp_tensor_t *sd_drop_path_apply(const sd_dropout_t *dp, mmp_tensor_t *x, double p) {
  if (!x) return NULL;
  return mmp_drop_path_rows(dp->rng, x, p, dp->path_draws, dp->rows_total ? dp->rows_total : x->ndim ? x->shape[0] : 0,
                            dp->rows_total ? dp->rows_off : 0);
}

/* One sub-layer: x + f(ln(x)) (pre-norm) or ln(x + f(x)) (post-norm);
 * with @dp: ln(x + dropout(f(x))), f's attention probabilities dropped out
 * too (BertSelfOutput, BertOutput in train mode), or x + drop_path(f(ln(x)))
 * (timm's Block in train mode).
 * The cross-attention reads @ctx, or its keys and values @ck, @cv when
 * given. Consumes @x. */
typedef enum { SUB_ATTN, SUB_CROSS, SUB_MLP } sub_t;
static mmp_tensor_t *sublayer(const sd_block_t *b, sub_t which, mmp_tensor_t *x, const mmp_tensor_t *mask,
                              bool causal, const mmp_tensor_t *ctx, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                              const mmp_tensor_t *ctx_mask, const sd_dropout_t *dp) {
  if (!x) return NULL;
  if (dp && (b->post_norm ? dp->path != 0.0 : dp->hidden != 0.0 || dp->attn != 0.0)) {
    mmp_tensor_unref(x);
    mmp_error_set(MMP_EUNSUPPORTED, "transformer block: %s", b->post_norm ? "drop path is implemented for pre-norm (ViT) layers only"
                                                                          : "dropout is implemented for post-norm (BERT) layers only");
    return NULL;
  }
  const sd_norm_t *ln = which == SUB_ATTN ? &b->ln_attn : which == SUB_CROSS ? &b->ln_cross : &b->ln_mlp;
  mmp_tensor_t *in = b->post_norm ? mmp_tensor_ref(x) : sd_layer_norm(ln, x), *f;
  /* a pre-norm layer's attention has no dropout: the fused path */
  const sd_dropout_t *adp = b->post_norm ? dp : NULL;
  if (which == SUB_ATTN) f = attn_full(&b->attn, in, NULL, mask, causal, adp);
  else if (which == SUB_CROSS && ck) f = attn_run(&b->cross, in, ck, cv, ctx_mask, false, adp);
  else if (which == SUB_CROSS) f = attn_full(&b->cross, in, ctx, ctx_mask, false, adp);
  else f = sd_mlp(&b->mlp, in);
  mmp_tensor_unref(in);
  if (dp && f) f = sd_swap(f, b->post_norm ? sd_dropout_apply(dp, f, dp->hidden) : sd_drop_path_apply(dp, f, dp->path));
  mmp_tensor_t *h = f ? mmp_add(x, f) : NULL;
  mmp_tensor_unref(f);
  mmp_tensor_unref(x);
  return b->post_norm ? sd_swap(h, sd_layer_norm(ln, h)) : h;
}

mmp_tensor_t *sd_block_dropout(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                               const mmp_tensor_t *ctx, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                               const mmp_tensor_t *ctx_mask, const sd_dropout_t *dp) {
  if (!x) return NULL;
  if ((ck || cv) && (!ck || !cv || !b->cross.q.w)) {
    mmp_error_set(MMP_EINVAL, "cached cross-attention keys for a layer without cross-attention");
    return NULL;
  }
  if (dp && !dp->rng) dp = NULL;
  mmp_tensor_t *h = sublayer(b, SUB_ATTN, mmp_tensor_ref((mmp_tensor_t *)x), mask, causal, NULL, NULL, NULL, NULL, dp);
  if ((ctx || ck) && b->cross.q.w) h = sublayer(b, SUB_CROSS, h, NULL, false, ctx, ck, cv, ctx_mask, dp);
  return sublayer(b, SUB_MLP, h, NULL, false, NULL, NULL, NULL, NULL, dp);
}

/* A layer as a checkpoint region: in = x, mask, ctx, ck, cv, ctx_mask. */
typedef struct block_region {
  const sd_block_t *b;
  bool causal, has_dp;
  sd_dropout_t dp;
} block_region_t;

static mmp_tensor_t *block_region_run(void *user, int nin, mmp_tensor_t *const *in) {
  const block_region_t *r = user;
  (void)nin;
  return sd_block_dropout(r->b, in[0], in[1], r->causal, in[2], in[3], in[4], in[5], r->has_dp ? &r->dp : NULL);
}

mmp_tensor_t *sd_block_train(const sd_block_t *b, bool ckpt, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                             const mmp_tensor_t *ctx, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                             const mmp_tensor_t *ctx_mask, const sd_dropout_t *dp) {
  if (dp && !dp->rng) dp = NULL;
  if (!ckpt || !mmp_tape_current() || !x) return sd_block_dropout(b, x, mask, causal, ctx, ck, cv, ctx_mask, dp);
  block_region_t r = {b, causal, dp != NULL, dp ? *dp : (sd_dropout_t){0}};
  mmp_tensor_t *in[6] = {(mmp_tensor_t *)x, (mmp_tensor_t *)mask, (mmp_tensor_t *)ctx, (mmp_tensor_t *)ck,
                         (mmp_tensor_t *)cv, (mmp_tensor_t *)ctx_mask};
  return mmp_tape_checkpoint(block_region_run, &r, sizeof r, 6, in, dp ? dp->rng : NULL);
}

mmp_tensor_t *sd_block(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                       const mmp_tensor_t *ctx, const mmp_tensor_t *ctx_mask) {
  return sd_block_dropout(b, x, mask, causal, ctx, NULL, NULL, ctx_mask, NULL);
}

mmp_tensor_t *sd_block_cached(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                              const mmp_tensor_t *ck, const mmp_tensor_t *cv, const mmp_tensor_t *ctx_mask) {
  if (!x) return NULL;
  if (!b->cross.q.w) {
    mmp_error_set(MMP_EINVAL, "cached cross-attention keys for a layer without cross-attention");
    return NULL;
  }
  return sd_block_dropout(b, x, mask, causal, NULL, ck, cv, ctx_mask, NULL);
}
