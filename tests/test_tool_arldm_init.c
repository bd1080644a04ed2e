/* tests/test_tool_arldm_init.c - `pipeline arldm-init` on the tiny SD and BLIP
 * fixtures: copied tensors bit for bit, resized tables, seeded extras, null
 * buffers, errors. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/safetensors.h>

#include "tap.h"

static char pipe_bin[4096], src[4096], tmpdir[64];

static int run(const char *args) {
  char cmd[16384];
  snprintf(cmd, sizeof cmd,
           "'%s' arldm-init -q --sd '%s/tests/fixtures/sd/pipe' --blip '%s/tests/fixtures/blip/blip_base/model.safetensors' %s",
           pipe_bin, src, src, args);
  int rc = system(cmd);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static mmp_tensormap_t *load(const char *path) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (mmp_safetensors_load_map(path, mmp_backend_get("cpu"), false, m) < 0) {
    diag("%s: %s", path, mmp_error_last());
    mmp_tensormap_free(m);
    return NULL;
  }
  return m;
}

static int same_bytes(const mmp_tensor_t *a, const mmp_tensor_t *b, size_t nbytes) {
  return mmp_tensor_nbytes(a) >= nbytes && mmp_tensor_nbytes(b) >= nbytes &&
         memcmp(mmp_tensor_data(a), mmp_tensor_data(b), nbytes) == 0;
}

/* Every tensor of @part file must be in @out under @prefix + name (after
 * stripping @strip), equal bit for bit unless listed in @resized. */
static void check_part(const mmp_tensormap_t *out, const char *file, const char *strip, const char *prefix,
                       const char *const *resized, const mmp_tensormap_t **srcmap_out) {
  char path[8192];
  snprintf(path, sizeof path, "%s/%s", src, file);
  mmp_tensormap_t *p = load(path);
  if (!ok(p != NULL, "read %s", file)) return;
  size_t n = 0, same = 0;
  for (size_t i = 0; i < mmp_tensormap_size(p); i++) {
    const char *name = mmp_tensormap_name(p, i) + strlen(strip);
    char key[1024];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    if (!strcmp(prefix, "vae.")) { /* stored under diffusers 0.7.2's attention names, as AR-LDM has them */
      static const char *const from[4][2] = {{"to_q.", "query."}, {"to_k.", "key."}, {"to_v.", "value."},
                                            {"to_out.0.", "proj_attn."}};
      char *at = strstr(key, "mid_block.attentions.0.");
      for (int f = 0; at && f < 4; f++)
        if (!strncmp(at + 23, from[f][0], strlen(from[f][0]))) {
          char rest[512];
          snprintf(rest, sizeof rest, "%s", at + 23 + strlen(from[f][0]));
          snprintf(at + 23, sizeof key - (size_t)(at + 23 - key), "%s%s", from[f][1], rest);
        }
    }
    int skip = 0;
    for (const char *const *r = resized; *r; r++) skip |= strcmp(*r, key) == 0;
    if (skip) continue;
    n++;
    mmp_tensor_t *a = mmp_tensormap_at(p, i), *b = mmp_tensormap_get(out, key);
    if (b && a->dtype == b->dtype && mmp_tensor_same_shape(a, b) && same_bytes(a, b, mmp_tensor_nbytes(a)))
      same++;
    else
      diag("differs or missing: %s", key);
  }
  ok(n > 10 && same == n, "%s: %zu of %zu tensors copied bit for bit under %s", file, same, n, prefix);
  *srcmap_out = p;
}

static void check_resized(const mmp_tensormap_t *out, const mmp_tensormap_t *srcm, const char *src_name,
                          const char *name, int64_t rows, double want_std) {
  mmp_tensor_t *a = mmp_tensormap_get(srcm, src_name), *b = mmp_tensormap_get(out, name);
  if (!ok(a && b && b->ndim == 2 && b->shape[0] == rows && b->shape[1] == a->shape[1], "%s: [%lld, D]", name,
          (long long)rows)) return;
  ok(same_bytes(a, b, mmp_tensor_nbytes(a)), "%s: the first %lld rows are the source's", name, (long long)a->shape[0]);
  mmp_tensor_t *bf = mmp_convert(b, MMP_F32); /* the fixture's CLIP is bf16 */
  const float *v = (const float *)mmp_tensor_data(bf) + a->shape[0] * a->shape[1];
  int64_t k = (rows - a->shape[0]) * a->shape[1];
  double s2 = 0;
  for (int64_t i = 0; i < k; i++) s2 += (double)v[i] * v[i];
  double sd = sqrt(s2 / (double)k);
  mmp_tensor_unref(bf);
  ok(sd > want_std * 0.6 && sd < want_std * 1.4, "%s: new rows (%s) have rms %.4f (want about %.2f)", name, mmp_dtype_name(b->dtype), sd, want_std);
}

/* numel, sum, sum of squares, max |x| of @t as f32 values, in f64 (as
 * tests/gen_arldm.py's tensor_stats) */
static void stats(const mmp_tensor_t *t, int64_t first, int64_t count, double st[4]) {
  mmp_tensor_t *f = mmp_convert(t, MMP_F32);
  const float *v = f ? (const float *)mmp_tensor_data(f) + first : NULL;
  st[0] = (double)count, st[1] = st[2] = st[3] = 0;
  for (int64_t i = 0; v && i < count; i++) {
    st[1] += v[i];
    st[2] += (double)v[i] * v[i];
    if (fabs(v[i]) > st[3]) st[3] = fabs(v[i]);
  }
  mmp_tensor_unref(f);
}

static bool stats_equal(const double a[4], const double *b) {
  double tol = 1e-9 * (sqrt(a[0] * a[2]) + 1);
  return a[0] == b[0] && fabs(a[1] - b[1]) <= tol && fabs(a[2] - b[2]) <= 1e-9 * (a[2] + 1) && a[3] == b[3];
}

static double stats_std(const double *s) { return s[0] > 0 ? sqrt(s[2] / s[0] - (s[1] / s[0]) * (s[1] / s[0])) : 0; }

/* arldm-init against ARLDM.__init__ itself (tests/gen_arldm.py make_init:
 * AR-LDM's constructor on the same tiny SD folder and BLIP checkpoint, S =
 * 85, tables of 919 and 101 rows, 768-wide extras): the same entries with
 * the same shapes; every copied tensor, the copied rows of the resized
 * tables, position_ids and the null buffers equal; the new rows and the
 * extras drawn like AR-LDM's (N(0, 1) for the CLIP tables and the extras,
 * N(0, 0.02) for BLIP's word table: AR-LDM's own draws come from its run's
 * generator after all other initialisation, so they are compared by
 * distribution). */
static void check_constructor(void) {
  char fx[8192], out[300], args[4096];
  snprintf(fx, sizeof fx, "%s/tests/fixtures/arldm/arldm_init.safetensors", src);
  mmp_tensormap_t *ref = load(fx);
  if (!ok(ref != NULL, "ARLDM.__init__ fixture")) return;
  mmp_tensor_t *cfg = mmp_tensormap_get(ref, "config");
  const int64_t *c = cfg ? (const int64_t *)mmp_tensor_data(cfg) : NULL;
  snprintf(out, sizeof out, "%s/ctor.safetensors", tmpdir);
  snprintf(args, sizeof args,
           "--blip-prefix mm_encoder. --max-length %lld --vocab-clip %lld --vocab-blip %lld --clip-ids 912,913,913 "
           "--blip-ids 1,2,0 --embed-dim 768 --seed 5 --out '%s'",
           c ? (long long)c[0] : 0, c ? (long long)c[1] : 0, c ? (long long)c[2] : 0, out);
  is_int(run(args), 0, "arldm-init with AR-LDM's constructor's settings (S 85, 919 and 101 rows, 768-wide extras)");
  mmp_tensormap_t *got = load(out);
  if (!ok(got != NULL, "its output")) {
    mmp_tensormap_free(ref);
    return;
  }
  static const char *const randomish[] = {"text_encoder.text_model.embeddings.token_embedding.weight",
                                          "text_encoder.text_model.embeddings.position_embedding.weight",
                                          "mm_encoder.text_encoder.embeddings.word_embeddings.weight",
                                          "modal_type_embeddings.weight", "time_embeddings.weight", NULL};
  size_t n_ref = 0, n_missing = 0, n_shape = 0, n_equal = 0, n_det = 0;
  for (size_t i = 0; i < mmp_tensormap_size(ref); i++) {
    const char *rk = mmp_tensormap_name(ref, i);
    if (strncmp(rk, "shape.", 6) != 0) continue;
    const char *k = rk + 6;
    n_ref++;
    /* the same names: the VAE attention under diffusers 0.7.2's
     * query/key/value/proj_attn although the SD folder says to_q/... */
    char name[1024], sk[1100];
    snprintf(name, sizeof name, "%s", k);
    mmp_tensor_t *g = mmp_tensormap_get(got, name), *sh = mmp_tensormap_at(ref, i);
    if (!g) {
      /* BertEmbeddings' position_ids buffer: in model_large.pth (and copied
       * from it), not in the tiny BLIP fixture */
      if (strcmp(k, "mm_encoder.text_encoder.embeddings.position_ids") != 0) {
        n_missing++;
        diag("missing: %s", name);
      }
      continue;
    }
    bool same_shape = g->ndim == (int)mmp_tensor_numel(sh);
    for (int d = 0; same_shape && d < g->ndim; d++) same_shape = g->shape[d] == ((const int64_t *)mmp_tensor_data(sh))[d];
    if (same_shape) n_shape++;
    else diag("shape differs: %s", name);
    bool rnd = false;
    for (const char *const *r = randomish; *r; r++) rnd |= strcmp(*r, k) == 0;
    if (rnd || !same_shape) continue;
    n_det++;
    snprintf(sk, sizeof sk, "stat.%s", k);
    double st[4];
    stats(g, 0, mmp_tensor_numel(g), st);
    mmp_tensor_t *want = mmp_tensormap_get(ref, sk);
    if (want && stats_equal(st, (const double *)mmp_tensor_data(want))) n_equal++;
    else diag("values differ: %s", name);
  }
  ok(n_ref > 100 && n_missing == 0, "every one of AR-LDM's %zu state-dict entries is in the file (%zu missing)", n_ref, n_missing);
  ok(mmp_tensormap_size(got) == n_ref - 1, "and nothing else (%zu entries; the BLIP fixture has no BERT position_ids)",
     mmp_tensormap_size(got));
  ok(n_shape == n_ref - 1, "with AR-LDM's shapes (%zu of %zu)", n_shape, n_ref - 1);
  ok(n_det > 100 && n_equal == n_det, "copied tensors, position_ids and null buffers equal AR-LDM's (%zu of %zu)", n_equal, n_det);
  /* the resized tables: the copied rows exactly, the new ones by distribution */
  static const struct {
    const char *name;
    double std;
  } tabs[] = {{"text_encoder.text_model.embeddings.token_embedding.weight", 1.0},
              {"text_encoder.text_model.embeddings.position_embedding.weight", 1.0},
              {"mm_encoder.text_encoder.embeddings.word_embeddings.weight", 0.02},
              {"modal_type_embeddings.weight", 1.0},
              {"time_embeddings.weight", 1.0}};
  for (int k = 0; k < 5; k++) {
    char hk[300], tk[300];
    mmp_tensor_t *g = mmp_tensormap_get(got, tabs[k].name);
    snprintf(hk, sizeof hk, "head.%s", tabs[k].name);
    snprintf(tk, sizeof tk, "%s.%s", k < 3 ? "tail" : "stat", tabs[k].name);
    mmp_tensor_t *h = mmp_tensormap_get(ref, hk), *t = mmp_tensormap_get(ref, tk);
    if (!ok(g && t && (k >= 3 || h), "%s present", tabs[k].name)) continue;
    const double *hs = h ? (const double *)mmp_tensor_data(h) : NULL, *ts = (const double *)mmp_tensor_data(t);
    int64_t head = hs ? (int64_t)hs[0] : 0;
    double st[4];
    if (hs) {
      stats(g, 0, head, st);
      ok(stats_equal(st, hs), "%s: the first %lld values (the source's rows) equal AR-LDM's", tabs[k].name, (long long)head);
    }
    stats(g, head, mmp_tensor_numel(g) - head, st);
    double s_got = stats_std(st), s_ref = stats_std(ts);
    ok(st[0] == ts[0] && s_got > 0.75 * s_ref && s_got < 1.33 * s_ref && fabs(st[1] / st[0]) < 4 * tabs[k].std / sqrt(st[0]),
       "%s: %lld new values, std %.4f (AR-LDM's %.4f, its init %.2f), mean %.4f", tabs[k].name, (long long)st[0], s_got, s_ref,
       tabs[k].std, st[1] / st[0]);
  }
  /* the null buffers */
  static const char *const toks[2] = {"clip_text_null_token", "blip_text_null_token"};
  for (int k = 0; k < 2; k++) {
    mmp_tensor_t *a = mmp_tensormap_get(got, toks[k]), *b = mmp_tensormap_get(ref, toks[k]);
    ok(a && b && a->dtype == MMP_I64 && b->dtype == MMP_I64 && mmp_tensor_same_shape(a, b) &&
           memcmp(mmp_tensor_data(a), mmp_tensor_data(b), mmp_tensor_nbytes(a)) == 0,
       "%s: AR-LDM's tokenizers' empty caption, [1, %lld] i64", toks[k], c ? (long long)c[0] : 0);
  }
  mmp_tensor_t *im = mmp_tensormap_get(got, "blip_image_null_token");
  mmp_tensor_t *lo = mmp_tensormap_get(ref, "blip_image_null_token.channel_min");
  mmp_tensor_t *hi = mmp_tensormap_get(ref, "blip_image_null_token.channel_max");
  bool same = im && lo && hi && im->dtype == MMP_F32 && im->ndim == 4 && im->shape[1] == 3;
  for (int64_t i = 0; same && i < mmp_tensor_numel(im); i++) {
    int64_t ch = i / (im->shape[2] * im->shape[3]);
    float v = ((const float *)mmp_tensor_data(im))[i];
    same = v == ((const float *)mmp_tensor_data(lo))[ch] && v == ((const float *)mmp_tensor_data(hi))[ch];
  }
  ok(same, "blip_image_null_token: AR-LDM's processor on a black 224x224 image, every value equal");
  mmp_tensormap_free(got);
  mmp_tensormap_free(ref);
  remove(out);
}

int main(void) {
  const char *b = getenv("MMP_TEST_BUILDDIR");
  snprintf(src, sizeof src, "%s", tap_srcdir());
  snprintf(pipe_bin, sizeof pipe_bin, "%s/tools/pipeline", b ? b : ".");
  snprintf(tmpdir, sizeof tmpdir, "/tmp/mmp-arldminit-XXXXXX");
  if (!mkdtemp(tmpdir)) skip_all("no temporary directory");
  mmp_error_clear();

  /* source sizes */
  char p[8192];
  snprintf(p, sizeof p, "%s/tests/fixtures/sd/pipe/text_encoder/model.safetensors", src);
  mmp_tensormap_t *te = load(p);
  snprintf(p, sizeof p, "%s/tests/fixtures/blip/blip_base/model.safetensors", src);
  mmp_tensormap_t *bl = load(p);
  if (!te || !bl) skip_all("fixtures missing");
  mmp_tensor_t *tok = mmp_tensormap_get(te, "text_model.embeddings.token_embedding.weight");
  mmp_tensor_t *pos = mmp_tensormap_get(te, "text_model.embeddings.position_embedding.weight");
  mmp_tensor_t *wrd = mmp_tensormap_get(bl, "mm_encoder.text_encoder.embeddings.word_embeddings.weight");
  if (!tok || !pos || !wrd) skip_all("fixture tables missing");
  int64_t vclip = tok->shape[0] + 5, vblip = wrd->shape[0] + 3, S = pos->shape[0] + 8, D = tok->shape[1];

  char args[8192], out1[256], out2[256], out3[256], out4[256];
  snprintf(out1, sizeof out1, "%s/a.safetensors", tmpdir);
  snprintf(out2, sizeof out2, "%s/b.safetensors", tmpdir);
  snprintf(out3, sizeof out3, "%s/c.safetensors", tmpdir);
  snprintf(out4, sizeof out4, "%s/d.safetensors", tmpdir);
  snprintf(args, sizeof args,
           "--blip-prefix mm_encoder. --max-length %lld --vocab-clip %lld --vocab-blip %lld --clip-ids 38,39,39 "
           "--blip-ids 1,2,0 --image-size 16 --seed 3 --out '%s'",
           (long long)S, (long long)vclip, (long long)vblip, out1);
  is_int(run(args), 0, "arldm-init on the tiny parts");
  snprintf(args + strlen(args) - strlen(out1) - 2, 300, "'%s'", out2);
  is_int(run(args), 0, "again with the same seed");
  char *sp = strstr(args, "--seed 3");
  sp[7] = '4';
  snprintf(args + strlen(args) - strlen(out2) - 2, 300, "'%s'", out4);
  is_int(run(args), 0, "again with seed 4");
  snprintf(args, sizeof args,
           "--blip-prefix mm_encoder. --max-length %lld --vocab-clip 49408 --vocab-blip 30524 --seed 4 --out '%s'",
           (long long)S, out3);
  is_int(run(args), 0, "with another seed, SD-1.5/BERT sizes and the default ids");

  mmp_tensormap_t *o1 = load(out1), *o2 = load(out2), *o3 = load(out3), *o4 = load(out4);
  if (!ok(o1 && o2 && o3 && o4, "outputs readable")) return done_testing();

  static const char *const resized[] = {"text_encoder.text_model.embeddings.token_embedding.weight",
                                        "text_encoder.text_model.embeddings.position_embedding.weight",
                                        "text_encoder.text_model.embeddings.position_ids",
                                        "mm_encoder.text_encoder.embeddings.word_embeddings.weight", NULL};
  const mmp_tensormap_t *s_te = NULL, *s_bl = NULL, *s_un = NULL, *s_va = NULL;
  check_part(o1, "tests/fixtures/sd/pipe/text_encoder/model.safetensors", "", "text_encoder.", resized, &s_te);
  check_part(o1, "tests/fixtures/blip/blip_base/model.safetensors", "mm_encoder.", "mm_encoder.", resized, &s_bl);
  check_part(o1, "tests/fixtures/sd/pipe/unet/diffusion_pytorch_model.safetensors", "", "unet.", resized, &s_un);
  check_part(o1, "tests/fixtures/sd/pipe/vae/diffusion_pytorch_model.safetensors", "", "vae.", resized, &s_va);
  size_t want_n = 5;
  for (const mmp_tensormap_t *const *q = (const mmp_tensormap_t *const[]){s_te, s_bl, s_un, s_va}, *const *e = q + 4;
       q < e; q++)
    want_n += *q ? mmp_tensormap_size(*q) : 0;
  is_int((long long)mmp_tensormap_size(o1), (long long)want_n, "no other tensors (parts + 5 extras)");

  check_resized(o1, te, "text_model.embeddings.token_embedding.weight",
                "text_encoder.text_model.embeddings.token_embedding.weight", vclip, 1.0);
  check_resized(o1, te, "text_model.embeddings.position_embedding.weight",
                "text_encoder.text_model.embeddings.position_embedding.weight", S, 1.0);
  check_resized(o1, bl, "mm_encoder.text_encoder.embeddings.word_embeddings.weight",
                "mm_encoder.text_encoder.embeddings.word_embeddings.weight", vblip, 0.02);
  mmp_tensor_t *pid = mmp_tensormap_get(o1, "text_encoder.text_model.embeddings.position_ids");
  if (mmp_tensormap_get(te, "text_model.embeddings.position_ids")) {
    int good = pid && pid->dtype == MMP_I64 && pid->ndim == 2 && pid->shape[1] == S;
    for (int64_t i = 0; good && i < S; i++) good = ((const int64_t *)mmp_tensor_data(pid))[i] == i;
    ok(good, "position_ids = 0..S-1");
  }

  mmp_tensor_t *mt = mmp_tensormap_get(o1, "modal_type_embeddings.weight");
  mmp_tensor_t *tt = mmp_tensormap_get(o1, "time_embeddings.weight");
  ok(mt && mt->dtype == MMP_F32 && mt->ndim == 2 && mt->shape[0] == 2 && mt->shape[1] == D,
     "modal_type_embeddings.weight f32[2, D]");
  ok(tt && tt->dtype == MMP_F32 && tt->ndim == 2 && tt->shape[0] == 5 && tt->shape[1] == D,
     "time_embeddings.weight f32[5, D]");
  /* same seed: identical tensors; another seed: only the random rows differ */
  int same = 1, differ = 0;
  for (size_t i = 0; i < mmp_tensormap_size(o1); i++) {
    const char *n = mmp_tensormap_name(o1, i);
    mmp_tensor_t *a = mmp_tensormap_at(o1, i), *c2 = mmp_tensormap_get(o2, n), *c4 = mmp_tensormap_get(o4, n);
    same &= c2 && same_bytes(a, c2, mmp_tensor_nbytes(a)) && mmp_tensor_nbytes(a) == mmp_tensor_nbytes(c2);
    if (!strcmp(n, "time_embeddings.weight") || !strcmp(n, "modal_type_embeddings.weight") ||
        strstr(n, "token_embedding.weight") || strstr(n, "position_embedding.weight") ||
        strstr(n, "word_embeddings.weight"))
      differ += c4 && !same_bytes(a, c4, mmp_tensor_nbytes(a));
    else
      same &= c4 && same_bytes(a, c4, mmp_tensor_nbytes(a));
  }
  ok(same, "the same seed gives the same tensors; another seed the same non-random ones");
  is_int(differ, 5, "another seed gives other random rows in the 3 resized tables and the 2 extras");

  mmp_tensor_t *cn = mmp_tensormap_get(o1, "clip_text_null_token"), *bn = mmp_tensormap_get(o1, "blip_text_null_token");
  int good = cn && bn && cn->dtype == MMP_I64 && bn->dtype == MMP_I64 && cn->ndim == 2 && cn->shape[0] == 1 &&
             cn->shape[1] == S && bn->ndim == 2 && bn->shape[1] == S;
  for (int64_t i = 0; good && i < S; i++) {
    good = ((const int64_t *)mmp_tensor_data(cn))[i] == (i == 0 ? 38 : 39) &&
           ((const int64_t *)mmp_tensor_data(bn))[i] == (i == 0 ? 1 : i == 1 ? 2 : 0);
  }
  ok(good, "null caption tokens: [bos, eos, eos...] and [cls, sep, pad...], [1, S] i64");
  cn = mmp_tensormap_get(o3, "clip_text_null_token");
  ok(cn && ((const int64_t *)mmp_tensor_data(cn))[0] == 49406 && ((const int64_t *)mmp_tensor_data(cn))[S - 1] == 49407,
     "default CLIP ids are SD-1.5's (49406, 49407)");

  mmp_tensor_t *im = mmp_tensormap_get(o1, "blip_image_null_token");
  good = im && im->dtype == MMP_F32 && im->ndim == 4 && im->shape[0] == 1 && im->shape[1] == 3 && im->shape[2] == 16 &&
         im->shape[3] == 16;
  static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, sd[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  for (int c = 0; good && c < 3; c++)
    for (int i = 0; good && i < 256; i++) good = ((const float *)mmp_tensor_data(im))[c * 256 + i] == -mean[c] / sd[c];
  ok(good, "blip_image_null_token: f32[1, 3, 16, 16] of -mean/std per channel");
  im = mmp_tensormap_get(o3, "blip_image_null_token");
  ok(im && im->shape[2] == 224 && im->shape[3] == 224, "default image size 224");

  /* errors */
  snprintf(args, sizeof args, "--blip-prefix nothing. --max-length 8 --out '%s/x.safetensors' 2>/dev/null", tmpdir);
  is_int(run(args), 5, "BLIP prefix that selects nothing: data error (exit 5)");
  snprintf(args, sizeof args, "--blip-prefix mm_encoder. --max-length 1 --out '%s/x.safetensors' 2>/dev/null", tmpdir);
  is_int(run(args), 2, "--max-length 1: usage error");
  snprintf(args, sizeof args, "--blip-prefix mm_encoder. --max-length 8 --blip-ids 1,2,%lld --out '%s/x.safetensors' 2>/dev/null",
           (long long)wrd->shape[0], tmpdir);
  is_int(run(args), 5, "a BLIP pad id past the word table: data error (exit 5)");
  snprintf(p, sizeof p, "%s/x.safetensors", tmpdir);
  ok(access(p, F_OK) != 0, "nothing written on errors");

  check_constructor();

  mmp_tensormap_free(o1);
  mmp_tensormap_free(o2);
  mmp_tensormap_free(o3);
  mmp_tensormap_free(o4);
  mmp_tensormap_free((mmp_tensormap_t *)s_te);
  mmp_tensormap_free((mmp_tensormap_t *)s_bl);
  mmp_tensormap_free((mmp_tensormap_t *)s_un);
  mmp_tensormap_free((mmp_tensormap_t *)s_va);
  mmp_tensormap_free(te);
  mmp_tensormap_free(bl);
  remove(out1);
  remove(out2);
  remove(out3);
  remove(out4);
  rmdir(tmpdir);
  return done_testing();
}
