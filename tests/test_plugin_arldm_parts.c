/* tests/test_plugin_arldm_parts.c - the parts of AR-LDM read by prefix out of one
 * AR-LDM state dict (fixtures from tests/gen_arldm.py, AR-LDM's own classes on
 * diffusers 0.7.2): the override UNet with and without its cross-attention
 * key mask (-inf fill), the resized CLIP text encoder (token table grown to the
 * tokenizer, position table grown to S), and the 0.7.2 VAE decoding sample()'s
 * final latents into its uint8 frames. */
#include "sd_test.h"

#define ARLDM_FILE "%s/../arldm/arldm_tiny.safetensors"

static mmp_tensormap_t *arldm_load(const char *name) {
  char p[64];
  snprintf(p, sizeof p, "../arldm/%s", name);
  return sd_load(p);
}

static mmp_tensor_t *run(mmp_kind_t kind, const char *cfg, const char *method, const mmp_tensormap_t *in,
                         const char *out_name, const char *what) {
  sd_env_t e;
  mmp_component_t *c = sd_component(&e, kind, "part", cfg);
  if (!ok(c != NULL, "%s: create", what)) {
    diag("%s", mmp_error_last());
    sd_env_close(&e);
    return NULL;
  }
  mmp_tensormap_t *out = mmp_tensormap_new();
  int rc = sd_forward(c, method, in, out);
  if (!ok(rc == 0, "%s: forward", what)) diag("%s", mmp_error_last());
  mmp_tensor_t *s = mmp_tensormap_get(out, out_name);
  if (s) mmp_tensor_ref(s);
  mmp_tensormap_free(out);
  mmp_component_free(c);
  sd_env_close(&e);
  return s;
}

/* 0.7.2's UNet with AR-LDM's mask (True = do not attend) */
static void check_unet(void) {
  static const char *const in_plain[] = {"sample", "timestep", "encoder_hidden_states", NULL};
  static const char *const in_mask[] = {"sample", "timestep", "encoder_hidden_states", "encoder_attention_mask",
                                        NULL};
  const char *cfg = "part = { name = \"unet2d_condition\"; config = \"%s/../arldm/unet/config.json\";"
                    " weights = \"" ARLDM_FILE "\"; weights_prefix = \"unet.\"; };";
  mmp_tensormap_t *io = arldm_load("unet_io.safetensors");
  if (!ok(io != NULL, "unet fixture")) return;
  mmp_tensormap_t *a = sd_pick(io, in_plain), *b = sd_pick(io, in_mask);
  mmp_tensor_t *pa = run(MMP_KIND_MODEL, cfg, NULL, a, "sample", "AR-LDM unet, no mask");
  mmp_tensor_t *pb = run(MMP_KIND_MODEL, cfg, NULL, b, "sample", "AR-LDM unet, masked");
  sd_check(pa, mmp_tensormap_get(io, "out_sample"), "override unet (unet.* of the AR-LDM file)");
  sd_check(pb, mmp_tensormap_get(io, "out_sample_masked"), "override unet with its cross-attention mask");
  diag("  relative errors %.2g (plain), %.2g (masked)", sd_relerr(pa, mmp_tensormap_get(io, "out_sample")),
       sd_relerr(pb, mmp_tensormap_get(io, "out_sample_masked")));
  ok(sd_relerr(pa, pb) > 1e-2, "the mask changes the output");
  mmp_tensor_unref(pa);
  mmp_tensor_unref(pb);
  mmp_tensormap_free(a);
  mmp_tensormap_free(b);
  mmp_tensormap_free(io);
}

/* CLIP with 44 token rows (40 + added tokens) and S = 8 position rows */
static void check_clip(void) {
  static const char *const in[] = {"input_ids", "attention_mask", NULL};
  const char *cfg = "part = { name = \"clip_text\"; config = \"%s/../arldm/text_encoder/config.json\";"
                    " weights = \"" ARLDM_FILE "\"; weights_prefix = \"text_encoder.\"; };";
  mmp_tensormap_t *io = arldm_load("clip_io.safetensors");
  if (!ok(io != NULL, "clip fixture")) return;
  mmp_tensormap_t *m = sd_pick(io, in);
  mmp_tensor_t *h = run(MMP_KIND_ENCODER, cfg, NULL, m, "last_hidden_state", "AR-LDM clip text");
  sd_check(h, mmp_tensormap_get(io, "last_hidden_state"), "resized clip text (text_encoder.* of the AR-LDM file)");
  diag("  relative error %.2g", sd_relerr(h, mmp_tensormap_get(io, "last_hidden_state")));
  mmp_tensor_unref(h);
  mmp_tensormap_free(m);
  mmp_tensormap_free(io);
}

/* sample()'s last step: image = round(clamp(vae.decode(z / 0.18215) / 2 + 0.5, 0, 1) * 255) */
static void check_vae(const char *story) {
  const char *cfg = "part = { name = \"vae\"; config = \"%s/../arldm/vae/config.json\";"
                    " weights = \"" ARLDM_FILE "\"; weights_prefix = \"vae.\"; mode = \"decode\"; };";
  mmp_tensormap_t *io = arldm_load(story);
  if (!ok(io != NULL, "%s", story)) return;
  int worst = 0, frames = 0;
  for (int f = 0; f < 5; f++) {
    char k[64];
    snprintf(k, sizeof k, "frame%d.latents_final", f);
    mmp_tensor_t *z = mmp_tensormap_get(io, k);
    snprintf(k, sizeof k, "frame%d.image", f);
    mmp_tensor_t *img = mmp_tensormap_get(io, k);
    if (!z || !img) break;
    mmp_tensor_t *zs = mmp_scale(z, 1.0 / 0.18215, 0.0);
    mmp_tensormap_t *in = mmp_tensormap_new();
    mmp_tensormap_set(in, "latents", zs);
    mmp_tensor_t *x = run(MMP_KIND_ENCODER, cfg, "decode", in, "sample", "AR-LDM vae decode");
    mmp_tensormap_free(in);
    int64_t n = mmp_tensor_numel(img);
    float *xv = malloc((size_t)n * sizeof *xv);
    uint8_t *iv = malloc((size_t)n);
    mmp_tensor_t *u8 = mmp_convert(img, MMP_F32);
    float *uf = malloc((size_t)n * sizeof *uf);
    if (x && xv && iv && uf && u8 && mmp_tensor_numel(x) == n && mmp_tensor_to_host(x, xv, (size_t)n * 4) == 0 &&
        mmp_tensor_to_host(u8, uf, (size_t)n * 4) == 0) {
      /* x is [1, 3, H, W], the image [1, H, W, 3] */
      int64_t H = x->shape[2], W = x->shape[3];
      for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < H * W; i++) {
          double v = xv[c * H * W + i] / 2 + 0.5;
          v = v < 0 ? 0 : v > 1 ? 1 : v;
          int d = abs((int)lrint(v * 255) - (int)uf[i * 3 + c]);
          if (d > worst) worst = d;
        }
      frames++;
    }
    free(xv);
    free(iv);
    free(uf);
    mmp_tensor_unref(u8);
    mmp_tensor_unref(x);
  }
  ok(frames >= 4, "%s: decoded %d frames", story, frames);
  if (!ok(worst <= 2, "%s: vae.* of the AR-LDM file decodes sample()'s frames within 2/255", story))
    diag("  worst difference %d/255", worst);
  else
    diag("  worst difference %d/255", worst);
  mmp_tensormap_free(io);
}

/* rows [r0, r0 + n) of @ctx[b] (a [2B, L, D] context) minus the table row
 * @a[ia] and (when @t) @t[it], against @got [1, n, D] */
static double slot_err(const mmp_tensor_t *ctx, int64_t b, int64_t r0, const mmp_tensor_t *a, int64_t ia,
                       const mmp_tensor_t *t, int64_t it, const mmp_tensor_t *got) {
  int64_t L = ctx->shape[1], D = ctx->shape[2], n = got ? got->shape[1] : 0;
  if (!got || got->shape[2] != D) return -1;
  float *c = malloc((size_t)mmp_tensor_numel(ctx) * 4), *ta = malloc((size_t)mmp_tensor_numel(a) * 4),
        *tt = t ? malloc((size_t)mmp_tensor_numel(t) * 4) : NULL, *g = malloc((size_t)n * D * 4);
  mmp_tensor_t *fa = mmp_convert(a, MMP_F32), *ft = t ? mmp_convert(t, MMP_F32) : NULL;
  double me = 0, mx = 0;
  if (c && ta && g && (!t || tt) && mmp_tensor_to_host(ctx, c, (size_t)mmp_tensor_numel(ctx) * 4) == 0 &&
      mmp_tensor_to_host(fa, ta, (size_t)mmp_tensor_numel(a) * 4) == 0 &&
      (!t || mmp_tensor_to_host(ft, tt, (size_t)mmp_tensor_numel(t) * 4) == 0) &&
      mmp_tensor_to_host(got, g, (size_t)n * D * 4) == 0) {
    for (int64_t r = 0; r < n; r++)
      for (int64_t d = 0; d < D; d++) {
        double want = c[(b * L + r0 + r) * D + d] - ta[ia * D + d] - (t ? tt[it * D + d] : 0.0);
        double e = fabs(want - g[r * D + d]);
        if (e > me || e != e) me = e != e ? INFINITY : e;
        if (fabs(want) > mx) mx = fabs(want);
      }
  } else {
    me = -1;
  }
  free(c);
  free(ta);
  free(tt);
  free(g);
  mmp_tensor_unref(fa);
  mmp_tensor_unref(ft);
  return me < 0 ? -1 : mx > 0 ? me / mx : me;
}

/* The unconditional context of sample() is made of the parts alone:
 * CLIP(clip_text_null_token) + type 0, then BLIP(blip_image_null_token,
 * blip_text_null_token) + type 1 + time j for each source frame j. */
static void check_null_context(void) {
  const char *clip = "part = { name = \"clip_text\"; config = \"%s/../arldm/text_encoder/config.json\";"
                     " weights = \"" ARLDM_FILE "\"; weights_prefix = \"text_encoder.\"; };";
  const char *blip = "part = { name = \"blip\"; config = \"%s/../arldm/med_config.json\"; weights = \"" ARLDM_FILE
                     "\"; weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; mode = \"multimodal\"; };";
  mmp_tensormap_t *w = arldm_load("arldm_tiny.safetensors"), *io = arldm_load("story_visualization_ddim.safetensors");
  if (!ok(w && io, "AR-LDM file and story fixture")) goto out;
  mmp_tensor_t *ctx = mmp_tensormap_get(io, "frame0.context"), *type = mmp_tensormap_get(w, "modal_type_embeddings.weight"),
               *time = mmp_tensormap_get(w, "time_embeddings.weight");
  mmp_tensormap_t *cin = mmp_tensormap_new(), *bin = mmp_tensormap_new();
  mmp_tensormap_set(cin, "input_ids", mmp_tensor_ref(mmp_tensormap_get(w, "clip_text_null_token")));
  mmp_tensormap_set(bin, "input_ids", mmp_tensor_ref(mmp_tensormap_get(w, "blip_text_null_token")));
  mmp_tensormap_set(bin, "pixel_values", mmp_tensor_ref(mmp_tensormap_get(w, "blip_image_null_token")));
  mmp_tensor_t *hc = run(MMP_KIND_ENCODER, clip, NULL, cin, "last_hidden_state", "clip of the null caption");
  mmp_tensor_t *hb = run(MMP_KIND_ENCODER, blip, NULL, bin, "last_hidden_state", "blip of the null image and caption");
  int64_t S = hc ? hc->shape[1] : 0;
  double e = slot_err(ctx, 0, 0, type, 0, NULL, 0, hc);
  if (!ok(e >= 0 && e <= 1e-5, "null caption slot = CLIP(null) + type 0 within 1e-5")) diag("  relative error %.3g", e);
  double worst = 0;
  for (int64_t j = 0; j < 5; j++) {
    double ej = slot_err(ctx, 0, (j + 1) * S, type, 1, time, j, hb);
    if (ej < 0 || ej > worst) worst = ej < 0 ? INFINITY : ej;
  }
  if (!ok(worst <= 1e-5, "null frame slots = BLIP(black, null) + type 1 + time j within 1e-5"))
    diag("  relative error %.3g", worst);
  else
    diag("  clip %.2g, blip %.2g relative", e, worst);
  mmp_tensor_unref(hc);
  mmp_tensor_unref(hb);
  mmp_tensormap_free(cin);
  mmp_tensormap_free(bin);
out:
  mmp_tensormap_free(w);
  mmp_tensormap_free(io);
}

int main(void) {
  mmp_tensormap_t *probe = arldm_load("unet_io.safetensors");
  if (!probe) skip_all("fixtures missing");
  mmp_tensormap_free(probe);
  check_unet();
  check_clip();
  check_null_context();
  check_vae("story_visualization_ddim.safetensors");
  check_vae("story_continuation_pndm.safetensors");
  /* a prefix that names nothing in the file: every tensor missing, and said so */
  {
    sd_env_t e;
    mmp_component_t *c = sd_component(&e, MMP_KIND_MODEL, "part",
                                      "part = { name = \"unet2d_condition\"; config = \"%s/../arldm/unet/config.json\";"
                                      " weights = \"" ARLDM_FILE "\"; weights_prefix = \"unet_typo.\"; };");
    ok(c == NULL, "a wrong prefix is refused");
    like(mmp_error_last(), "no tensor under the weights_prefix 'unet_typo.'", "names the prefix that selects nothing");
    mmp_component_free(c);
    sd_env_close(&e);
  }
  return done_testing();
}
