/* plugins/common/arldm.c - AR-LDM's contexts, masks, null context and
 * training step (see arldm.h), written once for the story task and training. */
#include "plugins/common/arldm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugins/common/sd_common.h"

#include <mmpipe/grad.h>

static int fwd(mmp_component_t *c, const char *method, const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)c->plugin; /* encoder/model/processor share the layout */
  return ops->forward(c->self, method, in, out);
}

mmp_tensor_t *arldm_call1(mmp_component_t *c, const char *method, const char *out_name, const char *n1, mmp_tensor_t *t1,
                          const char *n2, mmp_tensor_t *t2, const char *n3, mmp_tensor_t *t3) {
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *r = NULL;
  if (in && out && (!n1 || mmp_tensormap_set(in, n1, mmp_tensor_ref(t1)) == 0) &&
      (!n2 || mmp_tensormap_set(in, n2, mmp_tensor_ref(t2)) == 0) &&
      (!n3 || mmp_tensormap_set(in, n3, mmp_tensor_ref(t3)) == 0) && fwd(c, method, in, out) == 0) {
    r = mmp_tensormap_need(out, out_name);
    if (r) mmp_tensor_ref(r);
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return r;
}

/* "rng_rows" = {rows of the whole batch, first row} (the blip plugin's shard of a batch) */
static int set_rows(mmp_tensormap_t *in, const int64_t *rows) {
  int64_t two = 2;
  mmp_tensor_t *t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, &two, rows);
  return t ? mmp_tensormap_set(in, "rng_rows", t) : mmp_error_code();
}

/* BLIP multimodal (last_hidden_state). With p->blip_dropout, in train mode:
 * the generator's state goes in as "rng_state" and comes back advanced by
 * the dropout draws (the plugin boundary carries tensors only); @rows
 * (nullable): "rng_rows", the call's shard of a batch. */
static mmp_tensor_t *blip_call(const arldm_parts_t *p, mmp_tensor_t *px, mmp_tensor_t *ids, mmp_tensor_t *mask,
                               const int64_t *rows) {
  if (!p->blip_dropout)
    return arldm_call1(p->blip, "multimodal", "last_hidden_state", "pixel_values", px, "input_ids", ids,
                       mask ? "attention_mask" : NULL, mask);
  unsigned char st[MMP_RNG_STATE_SIZE];
  int64_t ns = MMP_RNG_STATE_SIZE;
  if (mmp_rng_get_state(p->blip_dropout, st, sizeof st) < 0) return NULL;
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *r = NULL, *rs = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 1, &ns, st);
  if (in && out && rs && mmp_tensormap_set(in, "rng_state", rs) == 0 &&
      mmp_tensormap_set(in, "pixel_values", mmp_tensor_ref(px)) == 0 &&
      mmp_tensormap_set(in, "input_ids", mmp_tensor_ref(ids)) == 0 &&
      (!mask || mmp_tensormap_set(in, "attention_mask", mmp_tensor_ref(mask)) == 0) &&
      (!rows || set_rows(in, rows) == 0) && fwd(p->blip, "multimodal", in, out) == 0) {
    const mmp_tensor_t *back = mmp_tensormap_get(out, "rng_state");
    r = mmp_tensormap_need(out, "last_hidden_state");
    if (r && (!back || mmp_tensor_to_host(back, st, sizeof st) < 0 || mmp_rng_set_state(p->blip_dropout, st, sizeof st) < 0)) {
      mmp_error_set(MMP_EPLUGIN, "the mm_encoder returned no generator state (rng_state): it does not run in train "
                                 "mode (a blip plugin)");
      r = NULL;
    }
    if (r) mmp_tensor_ref(r);
  } else if (!in || !out) {
    mmp_tensor_unref(rs); /* never handed to the map (which owns it once set, even when setting fails) */
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return r;
}

mmp_tensor_t *arldm_add_row(mmp_tensor_t *x, mmp_tensor_t *table, int64_t k) {
  if (!x) return NULL;
  mmp_tensor_t *row = mmp_slice(table, 0, k, k + 1, 1);
  mmp_tensor_t *b = row ? mmp_broadcast_to(row, x->ndim, x->shape) : NULL;
  mmp_tensor_t *c = b ? mmp_contiguous(b) : NULL;
  mmp_tensor_t *r = c ? mmp_add(x, c) : NULL;
  mmp_tensor_unref(row);
  mmp_tensor_unref(b);
  mmp_tensor_unref(c);
  return r;
}

mmp_tensor_t *arldm_blip_context(const arldm_parts_t *p, mmp_tensor_t *px, mmp_tensor_t *ids, mmp_tensor_t *mask, int64_t j) {
  mmp_tensor_t *h = arldm_call1(p->blip, "multimodal", "last_hidden_state", "pixel_values", px, "input_ids", ids,
                                mask ? "attention_mask" : NULL, mask);
  h = sd_swap(h, arldm_add_row(h, p->type, 1));
  return sd_swap(h, arldm_add_row(h, p->time, j));
}

mmp_tensor_t *arldm_null_context(const arldm_parts_t *p, mmp_tensor_t *hc, mmp_tensor_t *hb, int64_t src_V) {
  mmp_tensor_t *c = arldm_add_row(hc, p->type, 0), *b = arldm_add_row(hb, p->type, 1), *r = NULL;
  mmp_tensor_t **parts = calloc((size_t)src_V + 1, sizeof *parts);
  if (c && b && parts) {
    parts[0] = c;
    int64_t j = 0;
    while (j < src_V && (parts[j + 1] = arldm_add_row(b, p->time, j))) j++;
    if (j == src_V) r = mmp_concat(parts, (int)src_V + 1, 1);
    for (int64_t k = 0; k < j; k++) mmp_tensor_unref(parts[k + 1]);
  } else if (!parts) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  free(parts);
  mmp_tensor_unref(c);
  mmp_tensor_unref(b);
  return r;
}

void arldm_mask_row(uint8_t *row, int64_t V, int64_t src_V, int64_t S, int64_t i, const float *cmask, const float *bmask) {
  int64_t L = (src_V + 1) * S;
  memset(row, 0, (size_t)L);
  if (cmask) {
    for (int64_t s = 0; s < S; s++) row[s] = cmask[s] == 0;
    for (int64_t j = 0; j < src_V; j++)
      for (int64_t s = 0; s < S; s++) row[(j + 1) * S + s] = bmask[j * S + s] == 0;
  }
  /* upper-triangular (diagonal included) over the last V blocks */
  for (int64_t k = i; k < V; k++)
    for (int64_t s = 0; s < S; s++) row[L - V * S + k * S + s] = 1;
}

/* ---------------------------------------------------------------- the file */

int arldm_file_open(arldm_file_t *a, const char *path) {
  memset(a, 0, sizeof *a);
  if (mmp_checkpoint_sniff(path)) {
    a->ck = mmp_checkpoint_open(path, "state_dict.", 0);
    if (!a->ck && mmp_error_code() == MMP_ENOENT) a->ck = mmp_checkpoint_open(path, NULL, 0);
    return a->ck ? 0 : mmp_error_code();
  }
  a->st = mmp_safetensors_open(path);
  return a->st ? 0 : mmp_error_code();
}

void arldm_file_close(arldm_file_t *a) {
  if (!a) return;
  mmp_safetensors_close(a->st);
  mmp_checkpoint_close(a->ck);
  memset(a, 0, sizeof *a);
}

size_t arldm_file_count(const arldm_file_t *a) {
  return a->ck ? mmp_checkpoint_count(a->ck) : a->st ? mmp_safetensors_count(a->st) : 0;
}

const char *arldm_file_name(const arldm_file_t *a, size_t i) {
  return a->ck ? mmp_checkpoint_name(a->ck, i) : a->st ? mmp_safetensors_name(a->st, i) : NULL;
}

int arldm_file_info(const arldm_file_t *a, const char *name, mmp_dtype_t *dtype, int *nd, int64_t *shape) {
  mmp_dtype_t dt;
  if (!dtype) dtype = &dt;
  if (a->ck) return mmp_checkpoint_info(a->ck, name, dtype, nd, shape, NULL, NULL);
  if (a->st) return mmp_safetensors_info(a->st, name, dtype, nd, shape);
  return MMP_ENOENT;
}

mmp_tensor_t *arldm_file_get(arldm_file_t *a, const char *name, mmp_dtype_t dt, mmp_backend_t *be) {
  if (a->ck) return mmp_checkpoint_get(a->ck, name, be, dt);
  if (a->st) return mmp_safetensors_get(a->st, name, be, dt);
  mmp_error_set(MMP_EINVAL, "arldm: no file open");
  return NULL;
}

int arldm_extras_load(arldm_file_t *a, const char *label, mmp_backend_t *be, int64_t src_V, arldm_parts_t *p, int64_t *S,
                      int64_t *D) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensor_t *type = NULL, *time = NULL, *cnull = NULL, *bnull = NULL, *inull = NULL;
  int rc = 0;
  /* the tables live on the run's backend (they are added to encoder
   * outputs); the null ids and image are inputs the encoders convert */
  if (!(type = arldm_file_get(a, "modal_type_embeddings.weight", MMP_F32, be)) ||
      !(time = arldm_file_get(a, "time_embeddings.weight", MMP_F32, be)) ||
      !(cnull = arldm_file_get(a, "clip_text_null_token", MMP_I64, cpu)) ||
      !(bnull = arldm_file_get(a, "blip_text_null_token", MMP_I64, cpu)) ||
      !(inull = arldm_file_get(a, "blip_image_null_token", MMP_F32, cpu))) {
    rc = mmp_error_prefix("AR-LDM state dict: ");
    goto fail;
  }
  /* the shapes first, each message naming the tensors: a width that does
   * not match would otherwise surface as a broadcast error while adding the
   * tables to the encoders' outputs */
  char d1[96], d2[96];
  if (type->ndim != 2 || type->shape[0] != 2) {
    rc = mmp_error_set(MMP_ESHAPE, "%s: modal_type_embeddings.weight is %s, expected [2, D]", label,
                       mmp_tensor_describe(type, d1, sizeof d1));
    goto fail;
  }
  int64_t w = type->shape[1];
  if (time->ndim != 2 || time->shape[0] < src_V || time->shape[1] != w) {
    rc = mmp_error_set(MMP_ESHAPE, "%s: time_embeddings.weight is %s, expected [>= %lld, %lld] (the width D of "
                       "modal_type_embeddings.weight %s)", label, mmp_tensor_describe(time, d1, sizeof d1), (long long)src_V,
                       (long long)w, mmp_tensor_describe(type, d2, sizeof d2));
    goto fail;
  }
  if (cnull->ndim != 2 || cnull->shape[0] != 1 || bnull->ndim != 2 || bnull->shape[0] != 1 ||
      bnull->shape[1] != cnull->shape[1]) {
    rc = mmp_error_set(MMP_ESHAPE, "%s: clip_text_null_token is %s and blip_text_null_token %s, both must be [1, S]", label,
                       mmp_tensor_describe(cnull, d1, sizeof d1), mmp_tensor_describe(bnull, d2, sizeof d2));
    goto fail;
  }
  if (inull->ndim != 4 || inull->shape[0] != 1 || inull->shape[1] != 3) {
    rc = mmp_error_set(MMP_ESHAPE, "%s: blip_image_null_token is %s, expected [1, 3, H, W]", label,
                       mmp_tensor_describe(inull, d1, sizeof d1));
    goto fail;
  }
  if (S) *S = cnull->shape[1];
  if (D) *D = w;
  p->type = type;
  p->time = time;
  p->clip_null = cnull;
  p->blip_null = bnull;
  p->image_null = inull;
  return 0;
fail:
  mmp_tensor_unref(type);
  mmp_tensor_unref(time);
  mmp_tensor_unref(cnull);
  mmp_tensor_unref(bnull);
  mmp_tensor_unref(inull);
  return rc < 0 ? rc : MMP_ERUNTIME;
}

void arldm_draws_clear(arldm_draws_t *d) {
  if (!d) return;
  mmp_tensor_unref(d->cfg_uniform);
  mmp_tensor_unref(d->posterior_noise);
  mmp_tensor_unref(d->noise);
  mmp_tensor_unref(d->timesteps);
  memset(d, 0, sizeof *d);
}

/* ---------------------------------------------------------------- training */

/* @t as host f32 values (malloc'd; NULL + error). */
static float *host_f32(const mmp_tensor_t *t) {
  int64_t n = mmp_tensor_numel(t);
  mmp_tensor_t *f = mmp_convert(t, MMP_F32);
  float *v = f ? malloc((size_t)(n > 0 ? n : 1) * sizeof *v) : NULL;
  if (f && !v) mmp_error_set(MMP_ENOMEM, "out of memory");
  if (v && mmp_tensor_to_host(f, v, (size_t)n * sizeof *v) < 0) {
    free(v);
    v = NULL;
  }
  mmp_tensor_unref(f);
  return v;
}

/* a view of @t with the shape given (transfer full) */
static mmp_tensor_t *view(mmp_tensor_t *t, int nd, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) {
  int64_t s[5] = {a, b, c, d, e};
  return mmp_reshape(t, nd, s);
}

static int check_batch(const arldm_parts_t *p, const arldm_batch_t *b, int64_t *B, int64_t *V, int64_t *src_V, int64_t *S) {
  char d1[96], d2[96];
  if (!p->clip || !p->blip || !p->unet || !p->vae || !p->sched || !p->type || !p->time || !p->clip_null || !p->blip_null ||
      !p->image_null)
    return mmp_error_set(MMP_EINVAL, "arldm step: every part is needed (text_encoder, mm_encoder, unet, vae, scheduler, "
                                     "modal_type_embeddings, time_embeddings, the three null buffers)");
  if (!b->images || !b->captions || !b->caption_mask || !b->source_images || !b->source_captions || !b->source_mask)
    return mmp_error_set(MMP_EINVAL, "arldm step: the batch needs images, captions, caption_mask, source_images, "
                                     "source_captions and source_mask");
  const mmp_tensor_t *c = b->captions, *sc = b->source_captions;
  if (c->ndim != 3 || sc->ndim != 3 || sc->shape[0] != c->shape[0] || sc->shape[2] != c->shape[2])
    return mmp_error_set(MMP_ESHAPE, "arldm step: captions %s and source_captions %s must be [B, V, S] and [B, src_V, S]",
                         mmp_tensor_describe(c, d1, sizeof d1), mmp_tensor_describe(sc, d2, sizeof d2));
  *B = c->shape[0], *V = c->shape[1], *S = c->shape[2], *src_V = sc->shape[1];
  if (*src_V != *V && *src_V != *V + 1)
    return mmp_error_set(MMP_ESHAPE, "arldm step: %lld source frames for %lld targets (V for visualization, V + 1 for "
                         "continuation)", (long long)*src_V, (long long)*V);
  if (!mmp_tensor_same_shape(c, b->caption_mask) || !mmp_tensor_same_shape(sc, b->source_mask))
    return mmp_error_set(MMP_ESHAPE, "arldm step: caption_mask %s / source_mask %s must be shaped like captions %s / "
                         "source_captions", mmp_tensor_describe(b->caption_mask, d1, sizeof d1),
                         mmp_tensor_describe(b->source_mask, d2, sizeof d2), mmp_tensor_describe(c, (char[96]){0}, 96));
  const mmp_tensor_t *im = b->images, *si = b->source_images;
  if (im->ndim != 5 || im->shape[0] != *B || im->shape[1] != *V || si->ndim != 5 || si->shape[0] != *B ||
      si->shape[1] != *src_V)
    return mmp_error_set(MMP_ESHAPE, "arldm step: images %s must be [B, V, 3, H, W] and source_images %s [B, src_V, 3, h, w] "
                         "(B = %lld, V = %lld, src_V = %lld)", mmp_tensor_describe(im, d1, sizeof d1),
                         mmp_tensor_describe(si, d2, sizeof d2), (long long)*B, (long long)*V, (long long)*src_V);
  if (p->time->ndim != 2 || p->time->shape[0] < *src_V)
    return mmp_error_set(MMP_ESHAPE, "arldm step: time_embeddings %s has fewer than src_V = %lld rows",
                         mmp_tensor_describe(p->time, d1, sizeof d1), (long long)*src_V);
  return 0;
}

/* the context of every row: [n, (src_V + 1) S, D] (transfer full) */
static mmp_tensor_t *train_context(const arldm_parts_t *p, const arldm_batch_t *b, int64_t B, int64_t V, int64_t src_V,
                                   int64_t S, const bool *drop, bool any) {
  int64_t n = B * V;
  mmp_tensor_t *ids = view(b->captions, 2, n, S, 0, 0, 0), *am = view(b->caption_mask, 2, n, S, 0, 0, 0);
  mmp_tensor_t *hc = ids && am ? arldm_call1(p->clip, NULL, "last_hidden_state", "input_ids", ids, "attention_mask", am, NULL,
                                             NULL) : NULL;
  mmp_tensor_unref(ids);
  mmp_tensor_unref(am);
  if (!hc) return (void)mmp_error_prefix("arldm step: text_encoder: "), NULL;
  const mmp_tensor_t *si = b->source_images;
  mmp_tensor_t *px = view(b->source_images, 4, B * src_V, si->shape[2], si->shape[3], si->shape[4], 0);
  mmp_tensor_t *sids = view(b->source_captions, 2, B * src_V, S, 0, 0, 0), *sam = view(b->source_mask, 2, B * src_V, S, 0, 0, 0);
  int64_t shard[2] = {p->draw_items * src_V, p->draw_off * src_V};
  mmp_tensor_t *hs = px && sids && sam ? blip_call(p, px, sids, sam, p->draw_items > 0 ? shard : NULL) : NULL;
  mmp_tensor_unref(px);
  mmp_tensor_unref(sids);
  mmp_tensor_unref(sam);
  if (!hs) {
    mmp_tensor_unref(hc);
    return (void)mmp_error_prefix("arldm step: mm_encoder: "), NULL;
  }
  int64_t D = hc->shape[2];
  /* the null encodings, as ARLDM.forward computes them (only when a row
   * uses them: otherwise they get no gradient and change nothing; but with
   * BLIP in train mode its dropout draws happen every step) */
  mmp_tensor_t *nc = NULL, *nb = NULL, *nsrc = NULL, *ctx = NULL;
  mmp_tensor_t **rows = calloc((size_t)n, sizeof *rows), **srows = calloc((size_t)(n > src_V ? n : src_V), sizeof *srows);
  mmp_tensor_t *cap = NULL, *src = NULL;
  if (!rows || !srows) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  if (any || p->blip_dropout) {
    nc = arldm_call1(p->clip, NULL, "last_hidden_state", "input_ids", p->clip_null, NULL, NULL, NULL, NULL);
    nb = nc ? blip_call(p, p->image_null, p->blip_null, NULL, NULL) : NULL; /* one row on every rank */
    if (!nc || !nb) {
      mmp_error_prefix("arldm step: the null context: ");
      goto done;
    }
  }
  if (any) {
    for (int64_t j = 0; j < src_V; j++) srows[j] = nb;
    nsrc = mmp_concat(srows, (int)src_V, 1); /* BLIP(null)[0].repeat(src_V, 1) */
    memset(srows, 0, (size_t)src_V * sizeof *srows);
    if (!nsrc) goto done;
  }
  int64_t k = 0;
  for (; k < n; k++) {
    rows[k] = drop[k] ? mmp_tensor_ref(nc) : mmp_slice(hc, 0, k, k + 1, 1);
    if (drop[k]) srows[k] = mmp_tensor_ref(nsrc);
    else {
      mmp_tensor_t *s = mmp_slice(hs, 0, (k / V) * src_V, (k / V + 1) * src_V, 1);
      srows[k] = s ? view(s, 3, 1, src_V * S, D, 0, 0) : NULL;
      mmp_tensor_unref(s);
    }
    if (!rows[k] || !srows[k]) break;
  }
  if (k == n) {
    cap = mmp_concat(rows, (int)n, 0);
    src = mmp_concat(srows, (int)n, 0);
  }
  for (int64_t r = 0; r < n; r++) {
    mmp_tensor_unref(rows[r]);
    mmp_tensor_unref(srows[r]);
  }
  /* caption += type 0; source += type 1; source += time[arange(src_V).repeat_interleave(S)] */
  cap = sd_swap(cap, arldm_add_row(cap, p->type, 0));
  src = sd_swap(src, arldm_add_row(src, p->type, 1));
  if (src) {
    mmp_tensor_t *t = mmp_slice(p->time, 0, 0, src_V, 1);
    mmp_tensor_t *t4 = t ? view(t, 4, 1, src_V, 1, D, 0) : NULL;
    int64_t bs[4] = {n, src_V, S, D};
    mmp_tensor_t *tb = t4 ? mmp_broadcast_to(t4, 4, bs) : NULL;
    mmp_tensor_t *tc = tb ? mmp_contiguous(tb) : NULL;
    mmp_tensor_t *t3 = tc ? view(tc, 3, n, src_V * S, D, 0, 0) : NULL;
    src = sd_swap(src, t3 ? mmp_add(src, t3) : NULL);
    mmp_tensor_unref(t);
    mmp_tensor_unref(t4);
    mmp_tensor_unref(tb);
    mmp_tensor_unref(tc);
    mmp_tensor_unref(t3);
  }
  if (cap && src) {
    mmp_tensor_t *both[2] = {cap, src};
    ctx = mmp_concat(both, 2, 1);
  }
  if (!ctx) mmp_error_prefix("arldm step: context: ");
done:
  free(rows);
  free(srows);
  mmp_tensor_unref(cap);
  mmp_tensor_unref(src);
  mmp_tensor_unref(nc);
  mmp_tensor_unref(nb);
  mmp_tensor_unref(nsrc);
  mmp_tensor_unref(hc);
  mmp_tensor_unref(hs);
  return ctx;
}

/* the key masks [n, (src_V + 1) S] u8 (transfer full) */
static mmp_tensor_t *train_mask(const arldm_batch_t *b, int64_t B, int64_t V, int64_t src_V, int64_t S, const bool *drop) {
  int64_t n = B * V, L = (src_V + 1) * S;
  float *cm = host_f32(b->caption_mask), *bm = cm ? host_f32(b->source_mask) : NULL;
  uint8_t *m = bm ? malloc((size_t)(n * L)) : NULL;
  mmp_tensor_t *t = NULL;
  if (bm && !m) mmp_error_set(MMP_ENOMEM, "out of memory");
  if (m) {
    for (int64_t k = 0; k < n; k++)
      arldm_mask_row(m + k * L, V, src_V, S, k % V, drop[k] ? NULL : cm + k * S, bm + (k / V) * src_V * S);
    int64_t shape[2] = {n, L};
    t = mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 2, shape, m);
  }
  free(cm);
  free(bm);
  free(m);
  return t;
}

/* randn shaped like @like ([B V, ...]), drawn for the whole batch's
 * draw_items V rows and cut to this one's (transfer full) */
static mmp_tensor_t *draw_randn(const arldm_parts_t *p, mmp_rng_t *rng, const mmp_tensor_t *like, int64_t V) {
  if (p->draw_items <= 0) return mmp_rng_randn(rng, mmp_tensor_backend(like), like->ndim, like->shape);
  return mmp_rng_randn_rows(rng, mmp_tensor_backend(like), like->ndim, like->shape, p->draw_items * V, p->draw_off * V);
}

/* VAE posterior sample of the targets x 0.18215 (the posterior noise drawn
 * when not given) (transfer full) */
static mmp_tensor_t *train_latents(const arldm_parts_t *p, const arldm_batch_t *b, int64_t n, mmp_rng_t *rng, arldm_draws_t *d) {
  const mmp_tensor_t *im = b->images;
  mmp_tensor_t *x = view(b->images, 4, n, im->shape[2], im->shape[3], im->shape[4], 0);
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  mmp_tensor_t *z = NULL;
  char d1[96], d2[96];
  if (!x || !in || !out || mmp_tensormap_set(in, "sample", mmp_tensor_ref(x)) < 0 || fwd(p->vae, "encode", in, out) < 0) {
    mmp_error_prefix("arldm step: vae encode: ");
    goto done;
  }
  mmp_tensor_t *mean = mmp_tensormap_need(out, "latent_mean"), *logvar = mmp_tensormap_need(out, "latent_logvar");
  if (!mean || !logvar) goto done;
  if (!d->posterior_noise) {
    if (!rng) {
      mmp_error_set(MMP_EINVAL, "arldm step: no posterior_noise and no generator");
      goto done;
    }
    if (!(d->posterior_noise = draw_randn(p, rng, mean, im->shape[1]))) goto done;
  }
  if (!mmp_tensor_same_shape(d->posterior_noise, mean)) {
    mmp_error_set(MMP_ESHAPE, "arldm step: posterior_noise is %s, the VAE's latent_mean %s",
                  mmp_tensor_describe(d->posterior_noise, d1, sizeof d1), mmp_tensor_describe(mean, d2, sizeof d2));
    goto done;
  }
  /* DiagonalGaussianDistribution.sample(): mean + exp(0.5 logvar) * eps */
  mmp_tensor_t *sd = mmp_scale(logvar, 0.5, 0.0);
  sd = sd_swap(sd, sd ? mmp_exp(sd) : NULL);
  mmp_tensor_t *e = sd ? mmp_mul(sd, d->posterior_noise) : NULL;
  z = e ? mmp_add(mean, e) : NULL;
  mmp_tensor_unref(sd);
  mmp_tensor_unref(e);
  z = sd_swap(z, z ? mmp_scale(z, 0.18215, 0.0) : NULL);
done:
  mmp_tensor_unref(x);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return z;
}

int arldm_train_step(const arldm_parts_t *p, const arldm_batch_t *b, mmp_rng_t *rng, arldm_draws_t *d, mmp_tensor_t **loss) {
  *loss = NULL;
  int64_t B = 0, V = 0, src_V = 0, S = 0;
  int rc = check_batch(p, b, &B, &V, &src_V, &S);
  if (rc < 0) return rc;
  int64_t n = B * V;
  char d1[96], d2[96];
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  /* 1. the CFG drop (np.random.rand(B * V) < 0.1), drawn first */
  if (!d->cfg_uniform) {
    if (!rng) return mmp_error_set(MMP_EINVAL, "arldm step: no cfg_uniform and no generator");
    double *u = malloc((size_t)n * sizeof *u);
    if (!u) return mmp_error_set(MMP_ENOMEM, "out of memory");
    for (int64_t k = 0; k < n; k++) u[k] = mmp_rng_uniform(rng);
    d->cfg_uniform = mmp_tensor_from_data(cpu, MMP_F64, 1, &n, u);
    free(u);
    if (!d->cfg_uniform) return mmp_error_code();
  }
  if (d->cfg_uniform->ndim != 1 || d->cfg_uniform->shape[0] != n)
    return mmp_error_set(MMP_ESHAPE, "arldm step: cfg_uniform is %s, expected %lld = B * V values",
                         mmp_tensor_describe(d->cfg_uniform, d1, sizeof d1), (long long)n);
  bool *drop = malloc((size_t)n * sizeof *drop), any = false;
  if (!drop) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t k = 0; k < n; k++) {
    int64_t ix[1] = {k};
    any |= (drop[k] = mmp_tensor_get(d->cfg_uniform, d->cfg_uniform->ndim ? ix : NULL) < 0.1);
  }
  /* 2. the context and its mask (every row, the dropped ones the null context) */
  mmp_tensor_t *ctx = train_context(p, b, B, V, src_V, S, drop, any);
  mmp_tensor_t *mask = ctx ? train_mask(b, B, V, src_V, S, drop) : NULL;
  free(drop);
  /* 3. latents (posterior noise drawn), then noise and t, in that order */
  mmp_tensor_t *z = mask ? train_latents(p, b, n, rng, d) : NULL, *xt = NULL, *pred = NULL;
  if (!z) goto fail;
  if (!d->noise) {
    if (!rng) {
      rc = mmp_error_set(MMP_EINVAL, "arldm step: no noise and no generator");
      goto fail;
    }
    if (!(d->noise = draw_randn(p, rng, z, V))) goto fail;
  }
  if (!d->timesteps) {
    if (!rng) {
      rc = mmp_error_set(MMP_EINVAL, "arldm step: no timesteps and no generator");
      goto fail;
    }
    if (!(d->timesteps = mmp_rng_randint_rows(rng, cpu, 0, p->num_train_timesteps > 0 ? p->num_train_timesteps : 1000, 1, &n,
                                              p->draw_items > 0 ? p->draw_items * V : n, p->draw_items > 0 ? p->draw_off * V : 0)))
      goto fail;
  }
  if (!mmp_tensor_same_shape(d->noise, z) || mmp_tensor_numel(d->timesteps) != n) {
    rc = mmp_error_set(MMP_ESHAPE, "arldm step: noise %s must be shaped like the latents %s, with %lld timesteps",
                       mmp_tensor_describe(d->noise, d1, sizeof d1), mmp_tensor_describe(z, d2, sizeof d2), (long long)n);
    goto fail;
  }
  /* 4. x_t = add_noise(z, noise, t) by the scheduler (DDPM's alphas_cumprod) */
  const mmp_scheduler_ops_t *so = (const mmp_scheduler_ops_t *)p->sched->plugin;
  if (!so->add_noise) {
    rc = mmp_error_set(MMP_EUNSUPPORTED, "arldm step: the scheduler has no add_noise");
    goto fail;
  }
  if ((rc = so->add_noise(p->sched->self, z, d->noise, d->timesteps, &xt)) < 0) {
    mmp_error_prefix("arldm step: add_noise: ");
    goto fail;
  }
  /* 5. the UNet on the masked context; MSE against the noise (the mean of
   * per-row means is the mean: every row has C h w elements) */
  {
    mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
    if (in && out && mmp_tensormap_set(in, "sample", mmp_tensor_ref(xt)) == 0 &&
        mmp_tensormap_set(in, "timestep", mmp_tensor_ref(d->timesteps)) == 0 &&
        mmp_tensormap_set(in, "encoder_hidden_states", mmp_tensor_ref(ctx)) == 0 &&
        mmp_tensormap_set(in, "encoder_attention_mask", mmp_tensor_ref(mask)) == 0 && fwd(p->unet, NULL, in, out) == 0) {
      pred = mmp_tensormap_need(out, "sample");
      if (pred) mmp_tensor_ref(pred);
    }
    mmp_tensormap_free(in);
    mmp_tensormap_free(out);
  }
  if (!pred) {
    mmp_error_prefix("arldm step: unet on the context %s: ", mmp_tensor_describe(ctx, d1, sizeof d1));
    goto fail;
  }
  *loss = mmp_mse_loss(pred, d->noise);
  if (!*loss) mmp_error_prefix("arldm step: loss: ");
fail:
  mmp_tensor_unref(ctx);
  mmp_tensor_unref(mask);
  mmp_tensor_unref(z);
  mmp_tensor_unref(xt);
  mmp_tensor_unref(pred);
  if (*loss) return 0;
  return rc < 0 ? rc : (mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME);
}

/* ---------------------------------------------------------------- parameters */

typedef struct prefixed {
  const char *prefix;
  mmp_param_cb cb;
  void *user;
} prefixed_t;

static int prefixed_cb(void *user, const char *name, mmp_tensor_t *param) {
  prefixed_t *pp = user;
  char full[512];
  if ((size_t)snprintf(full, sizeof full, "%s%s", pp->prefix, name) >= sizeof full)
    return mmp_error_set(MMP_EINVAL, "arldm: parameter name too long: %s%s", pp->prefix, name);
  return pp->cb(pp->user, full, param);
}

int arldm_parameters(const arldm_parts_t *p, mmp_param_cb cb, void *user) {
  struct {
    mmp_component_t *c;
    const char *prefix;
  } parts[3] = {{p->clip, "text_encoder."}, {p->blip, "mm_encoder."}, {p->unet, "unet."}};
  for (int i = 0; i < 3; i++) {
    if (!parts[i].c) continue;
    const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)parts[i].c->plugin; /* models share the layout */
    if (!MMP_OPS_HAS(ops, mmp_encoder_ops_t, parameters) || !ops->parameters) continue;
    prefixed_t pp = {parts[i].prefix, cb, user};
    int rc = ops->parameters(parts[i].c->self, prefixed_cb, &pp);
    if (rc) return rc;
  }
  int rc = 0;
  if (p->type && (rc = cb(user, "modal_type_embeddings.weight", p->type))) return rc;
  if (p->time && (rc = cb(user, "time_embeddings.weight", p->time))) return rc;
  return 0;
}
