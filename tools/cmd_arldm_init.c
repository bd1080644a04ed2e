/* tools/cmd_arldm_init.c - pipeline arldm-init: one AR-LDM state dict from its
 * parts (an SD-1.5 diffusers folder, a BLIP checkpoint, seeded extras), as
 * AR-LDM's ARLDM.__init__ assembles it before training. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

#define CMD "arldm-init"

static void arldm_init_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline arldm-init --sd DIR --blip FILE --out OUT.safetensors --max-length S\n"
          "                           [--vocab-clip N] [--vocab-blip N] [--seed K] [options]\n\n"
          "Write the state dict AR-LDM's constructor builds before training, as one\n"
          ".safetensors file (written to a temporary file, then renamed):\n"
          "  text_encoder.*  DIR/text_encoder (CLIPTextModel); token table resized to\n"
          "                  --vocab-clip rows, position table to S rows (first rows kept,\n"
          "                  new rows N(0, 1) as a fresh nn.Embedding), position_ids = 0..S-1\n"
          "  mm_encoder.*    FILE (BLIP_Base), the tensors under --blip-prefix; word table\n"
          "                  resized to --vocab-blip rows (new rows N(0, 0.02), BLIP's init);\n"
          "                  only visual_encoder.* and text_encoder.* (BLIP_Base's modules)\n"
          "  unet.*, vae.*   DIR/unet, DIR/vae\n"
          "  modal_type_embeddings.weight [2, D], time_embeddings.weight [5, D]: N(0, 1)\n"
          "  clip_text_null_token, blip_text_null_token [1, S] i64: the empty caption\n"
          "                  ([bos, eos, pad...] and [cls, sep, pad...])\n"
          "  blip_image_null_token [1, 3, H, H] f32: a black image after CLIP normalisation\n"
          "Copied tensors keep their values and dtypes. Parts are .safetensors files or\n"
          "PyTorch checkpoints (model.safetensors, else pytorch_model.bin; for the unet and\n"
          "vae diffusion_pytorch_model.safetensors, else .bin). Random rows are drawn from\n"
          "the torch-compatible generator seeded with K, in the order listed above.\n\n"
          "  --sd DIR           diffusers SD folder (text_encoder/, unet/, vae/)\n"
          "  --blip FILE        BLIP weights (.pth checkpoint or .safetensors)\n"
          "  --blip-prefix P    the BLIP tensors' prefix in FILE, stripped (default \"\";\n"
          "                     BLIP's model_large.pth: \"model.\")\n"
          "  --out FILE         the AR-LDM .safetensors to write\n"
          "  --max-length S     caption length (dataset max_length; >= 2)\n"
          "  --vocab-clip N     CLIP token table rows (clip_embedding_tokens; 0 = keep)\n"
          "  --vocab-blip N     BLIP word table rows (blip_embedding_tokens; 0 = keep)\n"
          "  --clip-ids B,E,P   CLIP bos, eos, pad ids (default 49406,49407,49407)\n"
          "  --blip-ids C,S,P   BLIP cls, sep, pad ids (default 101,102,0)\n"
          "  --image-size H     BLIP image size (default 224)\n"
          "  --embed-dim D      width of the extras (default: the CLIP hidden size)\n"
          "  --seed K           seed (default 0)\n"
          "  -h, --help         this help\n");
}

static int parse_ll(const char *s, long long lo, long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || !end || end == s || *end || v < lo) return -1;
  *out = v;
  return 0;
}

static int parse_ids(const char *s, long long ids[3]) {
  if (sscanf(s, "%lld,%lld,%lld", &ids[0], &ids[1], &ids[2]) != 3) return -1;
  for (int i = 0; i < 3; i++)
    if (ids[i] < 0) return -1;
  return 0;
}

static int exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Every tensor of @path whose name starts with @strip into @out as
 * @add + (name without @strip), values and dtypes as stored; with @keep
 * (NULL-terminated), only the names (without @strip) starting with one of
 * them. */
/* AR-LDM pins diffusers 0.7.2, whose VAE attention block names its
 * projections query/key/value/proj_attn; diffusers >= 0.14 files (the SD
 * folders people download now) say to_q/to_k/to_v/to_out.0. @name is
 * rewritten in place to 0.7.2's names, so that AR-LDM's own load_state_dict
 * (strict) takes the file; names already old are left alone. */
static void vae_072_name(char *name, size_t len) {
  static const char *const from[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
  static const char *const to[4] = {".query.", ".key.", ".value.", ".proj_attn."};
  if (!strstr(name, ".attentions.")) return;
  for (int i = 0; i < 4; i++) {
    char *p = strstr(name, from[i]);
    if (!p) continue;
    char rest[1024];
    snprintf(rest, sizeof rest, "%s", p + strlen(from[i]));
    snprintf(p, len - (size_t)(p - name), "%s%s", to[i], rest); /* shorter or equal: fits */
  }
}

static int add_part(const char *path, const char *strip, const char *add, const char *const *keep,
                    void (*rename)(char *, size_t), mmp_tensormap_t *out) {
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (!m) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = mmp_checkpoint_sniff(path) ? mmp_checkpoint_load_map(path, strip, cpu, false, m)
                                      : mmp_safetensors_load_map(path, cpu, false, m);
  size_t sl = mmp_checkpoint_sniff(path) ? 0 : strlen(strip), n = 0;
  for (size_t i = 0; rc >= 0 && i < mmp_tensormap_size(m); i++) {
    const char *name = mmp_tensormap_name(m, i);
    if (strncmp(name, strip, sl) != 0) continue;
    int kept = !keep;
    for (const char *const *k = keep; k && *k && !kept; k++) kept = strncmp(name + sl, *k, strlen(*k)) == 0;
    if (!kept) continue;
    char key[1024];
    if ((size_t)snprintf(key, sizeof key, "%s%s", add, name + sl) >= sizeof key) {
      rc = mmp_error_set(MMP_EDATA, "%s: tensor name too long: %s", path, name);
      break;
    }
    if (rename) rename(key, sizeof key);
    if (mmp_tensormap_get(out, key)) {
      rc = mmp_error_set(MMP_EDATA, "%s: %s: name given twice", path, key);
      break;
    }
    rc = mmp_tensormap_set(out, key, mmp_tensor_ref(mmp_tensormap_at(m, i)));
    n++;
  }
  if (rc >= 0 && n == 0) rc = mmp_error_set(MMP_EDATA, "%s: no tensors under prefix '%s'", path, strip);
  if (rc < 0 && !strstr(mmp_error_last(), path)) mmp_error_prefix("%s: ", path);
  mmp_tensormap_free(m);
  return rc;
}

static int find_file(char *buf, size_t len, const char *dir, const char *sub, const char *a, const char *b) {
  snprintf(buf, len, "%s/%s/%s", dir, sub, a);
  if (exists(buf)) return 0;
  snprintf(buf, len, "%s/%s/%s", dir, sub, b);
  if (exists(buf)) return 0;
  return mmp_error_set(MMP_EIO, "%s/%s: neither %s nor %s", dir, sub, a, b);
}

/* Resize the float table @name [R, D] of @m to @rows rows: the first
 * min(R, rows) rows kept byte for byte, the others std * N(0, 1) from @g,
 * drawn in f32 and rounded to the table's dtype. rows 0 = keep. */
static int resize_table(mmp_tensormap_t *m, const char *name, int64_t rows, double std, mmp_rng_t *g) {
  mmp_tensor_t *t = mmp_tensormap_need(m, name);
  if (!t) return mmp_error_code();
  if (t->ndim != 2 || (t->dtype != MMP_F32 && t->dtype != MMP_F16 && t->dtype != MMP_BF16))
    return mmp_error_set(MMP_EDATA, "%s: want a float [rows, dim] table, got %s with %d dimensions", name,
                         mmp_dtype_name(t->dtype), t->ndim);
  if (rows == 0 || rows == t->shape[0]) return 0;
  int64_t d = t->shape[1], keep = rows < t->shape[0] ? rows : t->shape[0];
  int64_t shape[2] = {rows, d}, rshape[2] = {rows - keep, d};
  size_t es = mmp_dtype_size(t->dtype);
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensor_t *nt = mmp_tensor_new(cpu, t->dtype, 2, shape);
  mmp_tensor_t *c = mmp_contiguous(t);
  mmp_tensor_t *r = rows > keep ? mmp_rng_randn(g, cpu, 2, rshape) : NULL, *rc_t = NULL;
  int rc = 0;
  if (!nt || !c || (rows > keep && !r)) {
    rc = mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
    goto out;
  }
  memcpy(mmp_tensor_data(nt), mmp_tensor_data(c), (size_t)(keep * d) * es);
  if (r) {
    float *v = mmp_tensor_data(r);
    for (int64_t i = 0; i < (rows - keep) * d; i++) v[i] = (float)(v[i] * std);
    if (!(rc_t = t->dtype == MMP_F32 ? mmp_tensor_ref(r) : mmp_convert(r, t->dtype))) {
      rc = mmp_error_code();
      goto out;
    }
    memcpy((char *)mmp_tensor_data(nt) + (size_t)(keep * d) * es, mmp_tensor_data(rc_t),
           (size_t)((rows - keep) * d) * es);
  }
out:
  mmp_tensor_unref(c);
  mmp_tensor_unref(r);
  mmp_tensor_unref(rc_t);
  if (rc < 0) {
    mmp_tensor_unref(nt);
    return rc;
  }
  return mmp_tensormap_set(m, name, nt);
}

static int put_tokens(mmp_tensormap_t *m, const char *name, const long long ids[3], int64_t s) {
  int64_t shape[2] = {1, s};
  mmp_tensor_t *t = mmp_tensor_new(mmp_backend_get("cpu"), MMP_I64, 2, shape);
  if (!t) return mmp_error_code();
  int64_t *v = mmp_tensor_data(t);
  for (int64_t i = 0; i < s; i++) v[i] = i == 0 ? ids[0] : i == 1 ? ids[1] : ids[2];
  return mmp_tensormap_set(m, name, t);
}

static int put_randn(mmp_tensormap_t *m, const char *name, int64_t rows, int64_t d, mmp_rng_t *g) {
  int64_t shape[2] = {rows, d};
  mmp_tensor_t *t = mmp_rng_randn(g, mmp_backend_get("cpu"), 2, shape);
  if (!t) return mmp_error_code();
  return mmp_tensormap_set(m, name, t);
}

int cmd_arldm_init(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"sd", required_argument, NULL, 'd'},
                                       {"blip", required_argument, NULL, 'b'},
                                       {"blip-prefix", required_argument, NULL, 'p'},
                                       {"out", required_argument, NULL, 'o'},
                                       {"max-length", required_argument, NULL, 'L'},
                                       {"vocab-clip", required_argument, NULL, 'C'},
                                       {"vocab-blip", required_argument, NULL, 'B'},
                                       {"clip-ids", required_argument, NULL, 'c'},
                                       {"blip-ids", required_argument, NULL, 'i'},
                                       {"image-size", required_argument, NULL, 'I'},
                                       {"embed-dim", required_argument, NULL, 'E'},
                                       {"seed", required_argument, NULL, 'S'},
                                       {NULL, 0, NULL, 0}};
  const char *sd = NULL, *blip = NULL, *prefix = "", *out_path = NULL;
  long long max_len = 0, vclip = 0, vblip = 0, image = 224, dim = 0, seed = 0;
  long long clip_ids[3] = {49406, 49407, 49407}, blip_ids[3] = {101, 102, 0};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': arldm_init_help(stdout); return PIPE_EXIT_OK;
    case 'd': sd = optarg; break;
    case 'b': blip = optarg; break;
    case 'p': prefix = optarg; break;
    case 'o': out_path = optarg; break;
    case 'L':
      if (parse_ll(optarg, 2, &max_len) < 0 || max_len > 1 << 20) return pipe_usage(CMD, "--max-length needs an integer in [2, 1048576]");
      break;
    case 'C':
      if (parse_ll(optarg, 0, &vclip) < 0 || vclip > 1 << 24) return pipe_usage(CMD, "--vocab-clip needs an integer in [0, 16777216]");
      break;
    case 'B':
      if (parse_ll(optarg, 0, &vblip) < 0 || vblip > 1 << 24) return pipe_usage(CMD, "--vocab-blip needs an integer in [0, 16777216]");
      break;
    case 'c':
      if (parse_ids(optarg, clip_ids) < 0) return pipe_usage(CMD, "--clip-ids needs three ids >= 0: BOS,EOS,PAD");
      break;
    case 'i':
      if (parse_ids(optarg, blip_ids) < 0) return pipe_usage(CMD, "--blip-ids needs three ids >= 0: CLS,SEP,PAD");
      break;
    case 'I':
      if (parse_ll(optarg, 1, &image) < 0 || image > 8192) return pipe_usage(CMD, "--image-size needs an integer in [1, 8192]");
      break;
    case 'E':
      if (parse_ll(optarg, 1, &dim) < 0 || dim > 1 << 16) return pipe_usage(CMD, "--embed-dim needs an integer in [1, 65536]");
      break;
    case 'S':
      if (parse_ll(optarg, 0, &seed) < 0) return pipe_usage(CMD, "--seed needs an integer >= 0");
      break;
    default: return pipe_usage(CMD, "bad option");
    }
  }
  if (optind != argc) return pipe_usage(CMD, "unexpected argument '%s'", argv[optind]);
  if (!sd || !blip || !out_path || !max_len) return pipe_usage(CMD, "--sd, --blip, --out and --max-length are required");

  mmp_tensormap_t *m = mmp_tensormap_new();
  mmp_rng_t *g = mmp_rng_new((uint64_t)seed, MMP_RNG_TORCH);
  char path[4096];
  int rc = m && g ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc >= 0 && (rc = find_file(path, sizeof path, sd, "text_encoder", "model.safetensors", "pytorch_model.bin")) >= 0)
    rc = add_part(path, "", "text_encoder.", NULL, NULL, m);
  /* BLIP_Base has only these two modules; a BLIP checkpoint (model_large.pth)
   * also holds decoder, heads and momentum copies, which load_checkpoint
   * (strict=False) leaves out. */
  static const char *const blip_keep[] = {"visual_encoder.", "text_encoder.", NULL};
  if (rc >= 0) rc = add_part(blip, prefix, "mm_encoder.", blip_keep, NULL, m);
  if (rc >= 0 && (rc = find_file(path, sizeof path, sd, "unet", "diffusion_pytorch_model.safetensors",
                                 "diffusion_pytorch_model.bin")) >= 0)
    rc = add_part(path, "", "unet.", NULL, NULL, m);
  if (rc >= 0 && (rc = find_file(path, sizeof path, sd, "vae", "diffusion_pytorch_model.safetensors",
                                 "diffusion_pytorch_model.bin")) >= 0)
    rc = add_part(path, "", "vae.", NULL, vae_072_name, m);
  if (rc < 0) goto done;

  /* AR-LDM: resize_token_embeddings, then _get_resized_embeddings of the
   * position table; both new tables are bare nn.Embedding (N(0, 1)), BLIP's
   * _init_weights gives its new word table N(0, initializer_range = 0.02). */
  static const char *const ctok = "text_encoder.text_model.embeddings.token_embedding.weight";
  static const char *const cpos = "text_encoder.text_model.embeddings.position_embedding.weight";
  static const char *const cids = "text_encoder.text_model.embeddings.position_ids";
  static const char *const bword = "mm_encoder.text_encoder.embeddings.word_embeddings.weight";
  if ((rc = resize_table(m, ctok, vclip, 1.0, g)) < 0 || (rc = resize_table(m, cpos, max_len, 1.0, g)) < 0 ||
      (rc = resize_table(m, bword, vblip, 0.02, g)) < 0)
    goto done;
  if (mmp_tensormap_get(m, cids)) {
    int64_t shape[2] = {1, max_len};
    mmp_tensor_t *t = mmp_tensor_new(mmp_backend_get("cpu"), MMP_I64, 2, shape);
    if (!t) {
      rc = mmp_error_code();
      goto done;
    }
    int64_t *v = mmp_tensor_data(t);
    for (int64_t i = 0; i < max_len; i++) v[i] = i;
    if ((rc = mmp_tensormap_set(m, cids, t)) < 0) goto done;
  }
  if (!dim) dim = mmp_tensormap_get(m, ctok)->shape[1];
  for (int i = 0; i < 3; i++) {
    int64_t cv = mmp_tensormap_get(m, ctok)->shape[0], bv = mmp_tensormap_get(m, bword)->shape[0];
    if (clip_ids[i] >= cv || blip_ids[i] >= bv) {
      rc = mmp_error_set(MMP_EDATA, "null caption ids: --clip-ids %lld,%lld,%lld must be < %lld (CLIP token rows), "
                         "--blip-ids %lld,%lld,%lld < %lld (BLIP word rows)", clip_ids[0], clip_ids[1], clip_ids[2],
                         (long long)cv, blip_ids[0], blip_ids[1], blip_ids[2], (long long)bv);
      goto done;
    }
  }
  if ((rc = put_randn(m, "modal_type_embeddings.weight", 2, dim, g)) < 0 ||
      (rc = put_randn(m, "time_embeddings.weight", 5, dim, g)) < 0 ||
      (rc = put_tokens(m, "clip_text_null_token", clip_ids, max_len)) < 0 ||
      (rc = put_tokens(m, "blip_text_null_token", blip_ids, max_len)) < 0)
    goto done;
  {
    /* transforms.ToTensor gives 0 for black; Normalize: (0 - mean) / std in f32 */
    static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
    static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    int64_t shape[4] = {1, 3, image, image};
    mmp_tensor_t *t = mmp_tensor_new(mmp_backend_get("cpu"), MMP_F32, 4, shape);
    if (!t) {
      rc = mmp_error_code();
      goto done;
    }
    float *v = mmp_tensor_data(t);
    for (int ch = 0; ch < 3; ch++) {
      float x = (0.0f - mean[ch]) / std[ch];
      for (int64_t i = 0; i < image * image; i++) v[ch * image * image + i] = x;
    }
    if ((rc = mmp_tensormap_set(m, "blip_image_null_token", t)) < 0) goto done;
  }
  char seed_s[32];
  snprintf(seed_s, sizeof seed_s, "%lld", seed);
  const char *meta[] = {"format", "pt", "generator", "mmpipe arldm-init", "seed", seed_s, NULL};
  if ((rc = mmp_safetensors_save_map(out_path, m, meta)) < 0) goto done;
  if (!pipe_quiet)
    fprintf(stderr, "pipeline " CMD ": %s: %zu tensors (seed %lld)\n", out_path, mmp_tensormap_size(m), seed);
done:
  mmp_rng_free(g);
  mmp_tensormap_free(m);
  return rc < 0 ? pipe_fail(CMD, rc) : PIPE_EXIT_OK;
}
