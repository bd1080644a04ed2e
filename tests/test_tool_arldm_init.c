/* tests/test_tool_arldm_init.c - `pipeline arldm-init` on the tiny SD and BLIP
 * fixtures: copied tensors bit for bit, resized tables, seeded extras, null
 * buffers, errors. */
#include <math.h>
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
