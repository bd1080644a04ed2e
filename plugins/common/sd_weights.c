/* plugins/common/sd_weights.c - config.json access, part location and weight
 * loading with diffusers / old-diffusers / original-LDM name mapping. */
#include "plugins/common/sd_common.h"

#include <math.h>

#include <mmpipe/rng.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- json */

json_t *sd_json_load(const char *path) {
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j) {
    struct stat sb;
    if (stat(path, &sb) != 0)
      mmp_error_set(MMP_EIO, "%s: cannot open", path);
    else
      mmp_error_set(MMP_EDATA, "%s:%d: %s", path, err.line, err.text);
    return NULL;
  }
  if (!json_is_object(j)) {
    json_decref(j);
    mmp_error_set(MMP_EDATA, "%s: not a JSON object", path);
    return NULL;
  }
  return j;
}

int sd_json_int(const json_t *o, const char *key, int64_t def, int64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (json_is_integer(v)) {
    *out = json_integer_value(v);
    return 0;
  }
  /* a real with an integral value (2.0), inside int64's range before the
   * cast (481e300 found by fuzz_model_config: a cast out of range is UB) */
  double d = json_is_real(v) ? json_real_value(v) : 0.5;
  if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(int64_t)d) {
    *out = (int64_t)d;
    return 0;
  }
  return mmp_error_set(MMP_EDATA, "config.json: \"%s\" is not an integer", key);
}

int sd_json_float(const json_t *o, const char *key, double def, double *out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_number(v))
    return mmp_error_set(MMP_EDATA, "config.json: \"%s\" is not a number", key);
  *out = json_number_value(v);
  return 0;
}

int sd_json_bool(const json_t *o, const char *key, bool def, bool *out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_boolean(v))
    return mmp_error_set(MMP_EDATA, "config.json: \"%s\" is not a boolean", key);
  *out = json_is_true(v);
  return 0;
}

const char *sd_json_str(const json_t *o, const char *key, const char *def) {
  json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : def;
}

int sd_json_int_list(const json_t *o, const char *key, int64_t def, size_t n, int64_t *out) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v) || json_is_integer(v)) {
    int64_t x = def;
    if (v && json_is_integer(v)) x = json_integer_value(v);
    for (size_t i = 0; i < n; i++) out[i] = x;
    return 0;
  }
  if (!json_is_array(v) || json_array_size(v) != n)
    return mmp_error_set(MMP_EDATA, "config.json: \"%s\" must be an integer or a list of %zu integers",
                         key, n);
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(v, i);
    if (!json_is_integer(e))
      return mmp_error_set(MMP_EDATA, "config.json: \"%s\"[%zu] is not an integer", key, i);
    out[i] = json_integer_value(e);
  }
  return 0;
}

int sd_json_int_range(const json_t *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                      int64_t *out) {
  int rc = sd_json_int(o, key, def, out);
  if (rc) return rc;
  if (*out < lo || *out > hi)
    return mmp_error_set(MMP_EDATA, "config.json: \"%s\" is %lld, must be %lld..%lld", key,
                         (long long)*out, (long long)lo, (long long)hi);
  return 0;
}

int sd_json_int_list_range(const json_t *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                           size_t n, int64_t *out) {
  int rc = sd_json_int_list(o, key, def, n, out);
  if (rc) return rc;
  for (size_t i = 0; i < n; i++)
    if (out[i] < lo || out[i] > hi)
      return mmp_error_set(MMP_EDATA, "config.json: \"%s\"[%zu] is %lld, must be %lld..%lld", key, i,
                           (long long)out[i], (long long)lo, (long long)hi);
  return 0;
}

size_t sd_json_list_size(const json_t *o, const char *key) {
  json_t *v = json_object_get(o, key);
  return json_is_array(v) ? json_array_size(v) : 0;
}

const char *sd_json_list_str(const json_t *o, const char *key, size_t i) {
  json_t *v = json_object_get(o, key);
  json_t *e = json_is_array(v) ? json_array_get(v, i) : NULL;
  return json_is_string(e) ? json_string_value(e) : NULL;
}

/* ---------------------------------------------------------------- locate */

static bool file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool dir_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static const char *part_subdir(sd_part_t part) {
  switch (part) {
  case SD_PART_UNET: return "unet";
  case SD_PART_VAE: return "vae";
  default: return "text_encoder";
  }
}

static int key_error(const mmp_config_t *cfg, const char *key, const char *fmt, const char *arg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *file = n ? mmp_config_file(n) : NULL;
  char msg[1200];
  snprintf(msg, sizeof msg, fmt, arg);
  if (file)
    return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", file, mmp_config_line(n), key, msg);
  return mmp_error_set(MMP_ECONFIG, "%s: %s", key, msg);
}

int sd_locate_part(const mmp_config_t *cfg, sd_part_t part, char *config_path,
                   size_t cplen, char *weights_path, size_t wplen) {
  char dir[4096];
  config_path[0] = weights_path[0] = '\0';
  bool have_dir = mmp_config_get_path(cfg, "model_dir", dir, sizeof dir) == 0 && dir[0];
  char tmp[4096];
  if (mmp_config_get_path(cfg, "config", tmp, sizeof tmp) == 0 && tmp[0])
    snprintf(config_path, cplen, "%s", tmp);
  if (mmp_config_get_path(cfg, "weights", tmp, sizeof tmp) == 0 && tmp[0])
    snprintf(weights_path, wplen, "%s", tmp);
  mmp_error_clear();
  int64_t seed = -1;
  if (mmp_config_get_int(cfg, "init_seed", &seed) < 0) seed = -1;
  mmp_error_clear();
  bool random = seed >= 0;
  if (have_dir) {
    if (!dir_exists(dir)) return key_error(cfg, "model_dir", "no such directory: %s", dir);
    char pdir[4200];
    snprintf(pdir, sizeof pdir, "%s/config.json", dir);
    if (file_exists(pdir))
      snprintf(pdir, sizeof pdir, "%s", dir);
    else
      snprintf(pdir, sizeof pdir, "%s/%s", dir, part_subdir(part));
    if (!config_path[0]) snprintf(config_path, cplen, "%s/config.json", pdir);
    if (!weights_path[0] && !random) {
      static const char *const names[] = {
          "diffusion_pytorch_model.safetensors", "model.safetensors",
          "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
          "diffusion_pytorch_model.bin", "pytorch_model.bin", NULL};
      for (int i = 0; names[i]; i++) {
        snprintf(weights_path, wplen, "%s/%s", pdir, names[i]);
        if (file_exists(weights_path)) break;
        weights_path[0] = '\0';
      }
      if (!weights_path[0])
        return key_error(cfg, "model_dir", "no .safetensors (or .bin) weights in %s", pdir);
    }
  }
  if (!config_path[0])
    return key_error(cfg, "config", "%s", "give `model_dir` or `config` (the part's config.json)");
  if (!file_exists(config_path)) return key_error(cfg, "config", "no such file: %s", config_path);
  if (random) return 0;
  if (!weights_path[0])
    return key_error(cfg, "weights", "%s", "give `model_dir` or `weights` (a .safetensors, .ckpt, .pth, .pt or .bin file)");
  if (!file_exists(weights_path)) return key_error(cfg, "weights", "no such file: %s", weights_path);
  return 0;
}

static void set_dtypes(sd_weights_t *w, mmp_dtype_t mat, mmp_dtype_t compute);

/* @key's value among @names (NULL-terminated; "" is the first), its index
 * in *@out; a config error naming the file and line otherwise */
static int dtype_key(const mmp_config_t *cfg, const char *key, const char *const *names, const char *choices,
                     int *out) {
  const char *v = NULL;
  if (mmp_config_get_string(cfg, key, &v) < 0) v = NULL;
  mmp_error_clear();
  *out = 0;
  if (!v || !*v) return 0;
  for (int i = 0; names[i]; i++)
    if (strcmp(v, names[i]) == 0) {
      *out = i;
      return 0;
    }
  char fmt[256];
  snprintf(fmt, sizeof fmt, "\"%%s\" is not one of %s", choices);
  return key_error(cfg, key, fmt, v);
}

sd_weights_t *sd_weights_for(const mmp_config_t *cfg, const char *wpath, const sd_ldm_map_t *map,
                             mmp_backend_t *be) {
  /* the default is f32, converted at load, as diffusers and transformers
   * load a half-precision file by default (the parity fixtures' setting);
   * half-precision weights are asked for by name, or "file": as stored
   * (doc/tensor.md) */
  static const char *const wnames[] = {"f32", "f16", "bf16", "file", NULL};
  static const mmp_dtype_t wdts[] = {MMP_F32, MMP_F16, MMP_BF16, MMP_DTYPE_COUNT};
  static const char *const cnames[] = {"f32", "bf16", NULL};
  int wi, ci;
  if (dtype_key(cfg, "weights_dtype", wnames, "\"f32\", \"f16\", \"bf16\", \"file\"", &wi) < 0 ||
      dtype_key(cfg, "compute_dtype", cnames, "\"f32\", \"bf16\"", &ci) < 0)
    return NULL;
  int64_t seed = -1;
  if (mmp_config_get_int(cfg, "init_seed", &seed) < 0) seed = -1;
  mmp_error_clear();
  sd_weights_t *w;
  if (seed >= 0) {
    w = sd_weights_random(map, be, (uint64_t)seed);
  } else {
    const char *prefix = NULL;
    if (mmp_config_get_string(cfg, "weights_prefix", &prefix) < 0) prefix = NULL;
    mmp_error_clear();
    w = sd_weights_open(wpath, prefix, map, be);
  }
  if (!w) return NULL;
  set_dtypes(w, wdts[wi], ci == 1 ? MMP_BF16 : MMP_F32);
  /* `trainable` is declared only by the plugins that can be trained */
  bool trainable = false;
  if (mmp_config_get_bool(cfg, "trainable", &trainable) < 0) trainable = false;
  mmp_error_clear();
  if (trainable) {
    if (wdts[wi] != MMP_F32 || ci != 0) {
      key_error(cfg, wdts[wi] != MMP_F32 ? "weights_dtype" : "compute_dtype", "%s",
                "trainable weights are f32: leave weights_dtype and compute_dtype unset or \"f32\"");
      sd_weights_free(w);
      return NULL;
    }
    sd_weights_set_trainable(w, true);
  }
  return w;
}

int sd_state_dict(const mmp_tensormap_t *state, mmp_tensormap_t *out) {
  for (size_t i = 0; state && i < mmp_tensormap_size(state); i++) {
    int rc = mmp_tensormap_set(out, mmp_tensormap_name(state, i), mmp_tensor_ref(mmp_tensormap_at(state, i)));
    if (rc < 0) return rc;
  }
  return 0;
}

/* ---------------------------------------------------------------- LDM names */

static const char *const resnet_map[][2] = {
    {"norm1.", "in_layers.0."},        {"conv1.", "in_layers.2."},
    {"norm2.", "out_layers.0."},       {"conv2.", "out_layers.3."},
    {"time_emb_proj.", "emb_layers.1."}, {"conv_shortcut.", "skip_connection."},
    {NULL, NULL}};

static int map_resnet_rest(const char *rest, char *out, size_t n) {
  for (int i = 0; resnet_map[i][0]; i++) {
    size_t l = strlen(resnet_map[i][0]);
    if (strncmp(rest, resnet_map[i][0], l) == 0) {
      snprintf(out, n, "%s%s", resnet_map[i][1], rest + l);
      return 0;
    }
  }
  return MMP_ENOENT;
}

static int ldm_unet(const sd_ldm_map_t *m, const char *name, char *buf, size_t n) {
  static const char *const fixed[][2] = {
      {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
      {"conv_in.", "input_blocks.0.0."},            {"conv_norm_out.", "out.0."},
      {"conv_out.", "out.2."},                      {NULL, NULL}};
  const char *P = "model.diffusion_model.";
  char rest[512];
  int L = m->layers_per_block;
  for (int i = 0; fixed[i][0]; i++) {
    size_t l = strlen(fixed[i][0]);
    if (strncmp(name, fixed[i][0], l) == 0) {
      snprintf(buf, n, "%s%s%s", P, fixed[i][1], name + l);
      return 0;
    }
  }
  int bi, j, off = 0;
  if (sscanf(name, "down_blocks.%d.resnets.%d.%n", &bi, &j, &off) == 2 && off) {
    if (map_resnet_rest(name + off, rest, sizeof rest)) return MMP_ENOENT;
    snprintf(buf, n, "%sinput_blocks.%d.0.%s", P, bi * (L + 1) + j + 1, rest);
    return 0;
  }
  off = 0;
  if (sscanf(name, "down_blocks.%d.attentions.%d.%n", &bi, &j, &off) == 2 && off) {
    snprintf(buf, n, "%sinput_blocks.%d.1.%s", P, bi * (L + 1) + j + 1, name + off);
    return 0;
  }
  off = 0;
  if (sscanf(name, "down_blocks.%d.downsamplers.0.conv.%n", &bi, &off) == 1 && off) {
    snprintf(buf, n, "%sinput_blocks.%d.0.op.%s", P, (bi + 1) * (L + 1), name + off);
    return 0;
  }
  off = 0;
  if (sscanf(name, "up_blocks.%d.resnets.%d.%n", &bi, &j, &off) == 2 && off) {
    if (map_resnet_rest(name + off, rest, sizeof rest)) return MMP_ENOENT;
    snprintf(buf, n, "%soutput_blocks.%d.0.%s", P, bi * (L + 1) + j, rest);
    return 0;
  }
  off = 0;
  if (sscanf(name, "up_blocks.%d.attentions.%d.%n", &bi, &j, &off) == 2 && off) {
    snprintf(buf, n, "%soutput_blocks.%d.1.%s", P, bi * (L + 1) + j, name + off);
    return 0;
  }
  off = 0;
  if (sscanf(name, "up_blocks.%d.upsamplers.0.%n", &bi, &off) == 1 && off) {
    bool attn = bi >= 0 && bi < 8 && m->up_has_attn[bi];
    snprintf(buf, n, "%soutput_blocks.%d.%d.%s", P, bi * (L + 1) + L, attn ? 2 : 1, name + off);
    return 0;
  }
  off = 0;
  if (sscanf(name, "mid_block.resnets.%d.%n", &j, &off) == 1 && off) {
    if (map_resnet_rest(name + off, rest, sizeof rest)) return MMP_ENOENT;
    snprintf(buf, n, "%smiddle_block.%d.%s", P, 2 * j, rest);
    return 0;
  }
  off = 0;
  if (sscanf(name, "mid_block.attentions.0.%n", &off) == 0 && off) {
    snprintf(buf, n, "%smiddle_block.1.%s", P, name + off);
    return 0;
  }
  return MMP_ENOENT;
}

static int ldm_vae(const sd_ldm_map_t *m, const char *name, char *buf, size_t n) {
  const char *P = "first_stage_model.";
  char tmp[512];
  int bi, j, off = 0;
  const char *part = strncmp(name, "encoder.", 8) == 0 ? "encoder" :
                     strncmp(name, "decoder.", 8) == 0 ? "decoder" : NULL;
  const char *r = part ? name + 8 : name;
  if (!part) {
    snprintf(buf, n, "%s%s", P, name); /* quant_conv, post_quant_conv */
    return 0;
  }
  if (sscanf(r, "down_blocks.%d.resnets.%d.%n", &bi, &j, &off) == 2 && off)
    snprintf(tmp, sizeof tmp, "down.%d.block.%d.%s", bi, j, r + off);
  else if (off = 0, sscanf(r, "down_blocks.%d.downsamplers.0.%n", &bi, &off) == 1 && off)
    snprintf(tmp, sizeof tmp, "down.%d.downsample.%s", bi, r + off);
  else if (off = 0, sscanf(r, "up_blocks.%d.resnets.%d.%n", &bi, &j, &off) == 2 && off)
    snprintf(tmp, sizeof tmp, "up.%d.block.%d.%s", m->n_blocks - 1 - bi, j, r + off);
  else if (off = 0, sscanf(r, "up_blocks.%d.upsamplers.0.%n", &bi, &off) == 1 && off)
    snprintf(tmp, sizeof tmp, "up.%d.upsample.%s", m->n_blocks - 1 - bi, r + off);
  else if (off = 0, sscanf(r, "mid_block.resnets.%d.%n", &j, &off) == 1 && off)
    snprintf(tmp, sizeof tmp, "mid.block_%d.%s", j + 1, r + off);
  else if (strncmp(r, "mid_block.attentions.0.", 23) == 0) {
    static const char *const am[][2] = {{"group_norm.", "norm."}, {"to_q.", "q."},
                                        {"to_k.", "k."},          {"to_v.", "v."},
                                        {"to_out.0.", "proj_out."}, {NULL, NULL}};
    const char *a = r + 23;
    int k;
    for (k = 0; am[k][0]; k++)
      if (strncmp(a, am[k][0], strlen(am[k][0])) == 0) break;
    if (!am[k][0]) return MMP_ENOENT;
    snprintf(tmp, sizeof tmp, "mid.attn_1.%s%s", am[k][1], a + strlen(am[k][0]));
  } else if (strncmp(r, "conv_norm_out.", 14) == 0)
    snprintf(tmp, sizeof tmp, "norm_out.%s", r + 14);
  else
    snprintf(tmp, sizeof tmp, "%s", r);
  char *cs = strstr(tmp, "conv_shortcut.");
  if (cs) {
    char t2[512];
    snprintf(t2, sizeof t2, "%.*snin_shortcut.%s", (int)(cs - tmp), tmp, cs + 14);
    snprintf(tmp, sizeof tmp, "%s", t2);
  }
  snprintf(buf, n, "%s%s.%s", P, part, tmp);
  return 0;
}

int sd_ldm_name(const sd_ldm_map_t *map, const char *name, char *buf, size_t n) {
  switch (map->part) {
  case SD_PART_UNET: return ldm_unet(map, name, buf, n);
  case SD_PART_VAE: return ldm_vae(map, name, buf, n);
  case SD_PART_CLIP: snprintf(buf, n, "cond_stage_model.transformer.%s", name); return 0;
  default: return MMP_ENOENT;
  }
}

static const char *ldm_prefix(sd_part_t p) {
  return p == SD_PART_UNET ? "model.diffusion_model." :
         p == SD_PART_VAE ? "first_stage_model." :
         p == SD_PART_CLIP ? "cond_stage_model.transformer." : NULL;
}

/* ---------------------------------------------------------------- weights */

struct sd_weights {
  char *path;
  /* the source: a .safetensors file or a PyTorch checkpoint (either is
   * "open" when src_open is set; names are after the weights_prefix) */
  mmp_safetensors_t *st;
  mmp_checkpoint_t *ck;
  bool src_open;
  char *src_prefix;    /* safetensors: the weights_prefix, stripped from names */
  size_t *st_index;    /* safetensors with a prefix: the file index of name i */
  mmp_backend_t *be;
  sd_ldm_map_t map;
  bool single;
  size_t n;
  bool *used;
  char *problems; /* one per line */
  size_t plen, pcap;
  int nproblems;
  int nmatched;
  char **ignore;
  size_t nignore;
  mmp_rng_t *rng;              /* random mode when set (st == NULL) */
  mmp_tensormap_t *collected;  /* diffusers name -> tensor handed out */
  char *prefix;                /* prepended to every name (nullable) */
  char **scope;                /* finish() checks only names under these */
  size_t nscope;
  mmp_dtype_t mat_dtype;       /* of sd_w_mat(): f32, f16, bf16, or MMP_DTYPE_COUNT: as the file
                                * stores it (f16/bf16; anything else f32) */
  mmp_dtype_t compute_dtype;   /* of sd_w_mat()'s weights (mmp_tensor_set_compute_dtype) */
  bool trainable;              /* every weight an owned, writable f32 copy */
};

#define SD_MAX_LISTED 200
static void add_problem(sd_weights_t *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(sd_weights_t *w, const char *fmt, ...) {
  char line[1024];
  /* Keep the message readable when a file is entirely wrong: the first
   * SD_MAX_LISTED problems are listed, the rest counted. */
  if (w->nproblems >= SD_MAX_LISTED) {
    w->nproblems++;
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  size_t l = strlen(line);
  /* "\n  " + line + its NUL */
  const size_t need = w->plen + 3 + l + 1;
  if (need > w->pcap) {
    size_t cap = need * 2;
    char *p = realloc(w->problems, cap);
    if (!p) return;
    w->problems = p;
    w->pcap = cap;
  }
  memcpy(w->problems + w->plen, "\n  ", 3);
  memcpy(w->problems + w->plen + 3, line, l + 1);
  w->plen += l + 3;
  w->nproblems++;
}

/* ---- the source (safetensors or checkpoint) behind the names ---- */
static const char *src_name(const sd_weights_t *w, size_t i) {
  if (w->ck) return mmp_checkpoint_name(w->ck, i);
  return mmp_safetensors_name(w->st, w->st_index ? w->st_index[i] : i) + (w->src_prefix ? strlen(w->src_prefix) : 0);
}

static int src_info(const sd_weights_t *w, const char *name, mmp_dtype_t *dt, int *nd, int64_t *shape) {
  if (w->ck) return mmp_checkpoint_info(w->ck, name, dt, nd, shape, NULL, NULL);
  char full[1024];
  snprintf(full, sizeof full, "%s%s", w->src_prefix ? w->src_prefix : "", name);
  return mmp_safetensors_info(w->st, full, dt, nd, shape);
}

static mmp_tensor_t *src_get(sd_weights_t *w, const char *name, mmp_dtype_t want) {
  if (w->ck) return mmp_checkpoint_get(w->ck, name, w->be, want);
  char full[1024];
  snprintf(full, sizeof full, "%s%s", w->src_prefix ? w->src_prefix : "", name);
  return mmp_safetensors_get(w->st, full, w->be, want);
}

sd_weights_t *sd_weights_open(const char *path, const char *prefix, const sd_ldm_map_t *map, mmp_backend_t *be) {
  if (prefix && !*prefix) prefix = NULL;
  mmp_safetensors_t *st = NULL;
  mmp_checkpoint_t *ck = NULL;
  /* by content: torch.save writes a zip archive or a pickle */
  if (mmp_checkpoint_sniff(path))
    ck = mmp_checkpoint_open(path, prefix, 0);
  else
    st = mmp_safetensors_open(path);
  if (!st && !ck) return NULL;
  sd_weights_t *w = calloc(1, sizeof *w);
  if (!w) {
    mmp_safetensors_close(st);
    mmp_checkpoint_close(ck);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  w->path = strdup(path);
  w->mat_dtype = MMP_F32;
  w->compute_dtype = MMP_F32;
  w->st = st;
  w->ck = ck;
  w->src_open = true;
  w->be = be;
  w->map = *map;
  if (ck) {
    w->n = mmp_checkpoint_count(ck);
  } else if (prefix) {
    size_t all = mmp_safetensors_count(st), pl = strlen(prefix);
    w->src_prefix = strdup(prefix);
    w->st_index = calloc(all ? all : 1, sizeof *w->st_index);
    for (size_t i = 0; w->st_index && i < all; i++)
      if (strncmp(mmp_safetensors_name(st, i), prefix, pl) == 0) w->st_index[w->n++] = i;
    if (w->st_index && w->src_prefix && w->n == 0) {
      mmp_error_set(MMP_ENOENT, "%s: no tensor under the weights_prefix '%s'", path, prefix);
      sd_weights_free(w);
      return NULL;
    }
  } else {
    w->n = mmp_safetensors_count(st);
  }
  w->used = calloc(w->n ? w->n : 1, sizeof *w->used);
  const char *pre = ldm_prefix(map->part);
  for (size_t i = 0; pre && w->used && i < w->n; i++)
    if (strncmp(src_name(w, i), pre, strlen(pre)) == 0) {
      w->single = true;
      break;
    }
  if (!w->path || !w->used || (prefix && !ck && (!w->src_prefix || !w->st_index))) {
    sd_weights_free(w);
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  return w;
}

bool sd_weights_is_single_file(sd_weights_t *w) { return w->single; }

sd_weights_t *sd_weights_random(const sd_ldm_map_t *map, mmp_backend_t *be, uint64_t seed) {
  sd_weights_t *w = calloc(1, sizeof *w);
  if (!w) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  w->path = strdup("(random)");
  w->mat_dtype = MMP_F32;
  w->compute_dtype = MMP_F32;
  w->be = be;
  w->map = *map;
  w->rng = mmp_rng_new(seed, MMP_RNG_PHILOX);
  w->used = calloc(1, sizeof *w->used);
  if (!w->path || !w->rng || !w->used) {
    sd_weights_free(w);
    if (!mmp_error_code()) mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  return w;
}

mmp_tensormap_t *sd_weights_take_collected(sd_weights_t *w) {
  mmp_tensormap_t *m = w->collected;
  w->collected = NULL;
  if (!m) m = mmp_tensormap_new();
  return m;
}

static void collect(sd_weights_t *w, const char *name, mmp_tensor_t *t) {
  if (!t) return;
  if (!w->collected) w->collected = mmp_tensormap_new();
  if (w->collected) mmp_tensormap_set(w->collected, name, mmp_tensor_ref(t));
}

static mmp_tensor_t *random_weight(sd_weights_t *w, const char *name, int ndim, const int64_t *shape) {
  size_t l = strlen(name);
  bool bias = l > 5 && strcmp(name + l - 5, ".bias") == 0;
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) {
      add_problem(w, "random init: %s has no fixed shape", name);
      return NULL;
    }
  if (bias) return mmp_tensor_zeros(w->be, MMP_F32, ndim, shape);
  if (ndim == 1) return mmp_tensor_full(w->be, MMP_F32, ndim, shape, 1.0);
  int64_t fan_in = 1;
  for (int i = 1; i < ndim; i++) fan_in *= shape[i];
  double std = strstr(name, "embedding") ? 0.02 : 1.0 / sqrt((double)(fan_in > 0 ? fan_in : 1));
  mmp_tensor_t *r = mmp_rng_randn(w->rng, w->be, ndim, shape);
  return r ? sd_swap(r, mmp_scale(r, std, 0.0)) : NULL;
}

void sd_weights_ignore_suffix(sd_weights_t *w, const char *suffix) {
  char **p = realloc(w->ignore, (w->nignore + 1) * sizeof *p);
  if (!p) return;
  w->ignore = p;
  w->ignore[w->nignore++] = strdup(suffix);
}

static long find_index(sd_weights_t *w, const char *name) {
  for (size_t i = 0; i < w->n; i++)
    if (strcmp(src_name(w, i), name) == 0) return (long)i;
  return -1;
}

/* The stored name of a diffusers name, or -1. */
static long resolve(sd_weights_t *w, const char *name, char *stored, size_t n) {
  if (w->single) {
    if (sd_ldm_name(&w->map, name, stored, n) != 0) return -1;
    return find_index(w, stored);
  }
  snprintf(stored, n, "%s%s", w->prefix ? w->prefix : "", name);
  long i = find_index(w, stored);
  if (i >= 0 || w->map.part != SD_PART_VAE) return i;
  /* diffusers < 0.14 names of the VAE mid-block attention */
  static const char *const alt[][2] = {{".to_q.", ".query."}, {".to_k.", ".key."},
                                       {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."},
                                       {NULL, NULL}};
  for (int k = 0; alt[k][0]; k++) {
    const char *p = strstr(name, alt[k][0]);
    if (!p) continue;
    snprintf(stored, n, "%s%.*s%s%s", w->prefix ? w->prefix : "", (int)(p - name), name, alt[k][1],
             p + strlen(alt[k][0]));
    i = find_index(w, stored);
    if (i >= 0) return i;
  }
  snprintf(stored, n, "%s", name);
  return -1;
}

static void shape_str(int nd, const int64_t *s, char *buf, size_t n) {
  size_t o = 0;
  o += snprintf(buf + o, n - o, "[");
  for (int i = 0; i < nd && o < n; i++)
    o += snprintf(buf + o, n - o, i ? ", %lld" : "%lld", (long long)s[i]);
  if (o < n) snprintf(buf + o, n - o, "]");
}

static bool shapes_match(int end, const int64_t *es, int fnd, const int64_t *fs) {
  /* [O, I] and [O, I, 1, 1] are the same weight (linear vs 1x1 conv). */
  if (end == 2 && fnd == 4 && fs[2] == 1 && fs[3] == 1) fnd = 2;
  if (end == 4 && fnd == 2 && es[2] == 1 && es[3] == 1) end = 2;
  if (end != fnd) return false;
  for (int i = 0; i < end; i++)
    if (es[i] >= 0 && es[i] != fs[i]) return false;
  return true;
}

int sd_w_info(sd_weights_t *w, const char *name, int *ndim, int64_t *shape) {
  char stored[512];
  if (!w->src_open) return MMP_ENOENT;
  mmp_dtype_t dt;
  if (resolve(w, name, stored, sizeof stored) < 0) return MMP_ENOENT;
  return src_info(w, stored, &dt, ndim, shape);
}

void sd_weights_set_trainable(sd_weights_t *w, bool on) { w->trainable = on; }

static void set_dtypes(sd_weights_t *w, mmp_dtype_t mat, mmp_dtype_t compute) {
  w->mat_dtype = mat;
  w->compute_dtype = compute;
}

/* @mat: a linear/conv2d weight, kept in the store's weights dtype and
 * marked with its compute dtype */
static mmp_tensor_t *get_weight(sd_weights_t *w, bool mat, int ndim, const int64_t *shape, const char *name);

mmp_tensor_t *sd_w(sd_weights_t *w, int ndim, const int64_t *shape, const char *fmt, ...) {
  char name[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return get_weight(w, false, ndim, shape, name);
}

mmp_tensor_t *sd_w_mat(sd_weights_t *w, int ndim, const int64_t *shape, const char *fmt, ...) {
  char name[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  return get_weight(w, true, ndim, shape, name);
}

static mmp_tensor_t *get_weight(sd_weights_t *w, bool mat, int ndim, const int64_t *shape, const char *name) {
  char stored[512], es[128], fs[128];
  if (!w->src_open) {
    mmp_tensor_t *r = random_weight(w, name, ndim, shape);
    /* random weights are f32: "file" keeps them so */
    if (r && mat && !w->trainable && w->mat_dtype != MMP_DTYPE_COUNT && w->mat_dtype != MMP_F32)
      r = sd_swap(r, mmp_convert(r, w->mat_dtype));
    if (r && mat && w->compute_dtype != MMP_F32 && mmp_tensor_set_compute_dtype(r, w->compute_dtype) < 0)
      r = sd_swap(r, NULL);
    if (!r && w->nproblems == 0) add_problem(w, "random init: %s: %s", name, mmp_error_last());
    collect(w, name, r);
    return r;
  }
  long idx = resolve(w, name, stored, sizeof stored);
  shape_str(ndim, shape, es, sizeof es);
  if (idx < 0) {
    if (w->single)
      add_problem(w, "missing: %s (%s) %s", stored, name, es);
    else
      add_problem(w, "missing: %s %s", stored, es);
    return NULL;
  }
  w->used[idx] = true;
  w->nmatched++;
  mmp_dtype_t dt;
  int fnd;
  int64_t fsh[MMP_MAX_DIMS];
  if (src_info(w, stored, &dt, &fnd, fsh) < 0) {
    add_problem(w, "unreadable: %s: %s", stored, mmp_error_last());
    return NULL;
  }
  shape_str(fnd, fsh, fs, sizeof fs);
  if (!shapes_match(ndim, shape, fnd, fsh)) {
    add_problem(w, "shape mismatch: %s expected %s found %s", stored, es, fs);
    return NULL;
  }
  if (dt != MMP_F32 && dt != MMP_F16 && dt != MMP_BF16 && dt != MMP_F64) {
    add_problem(w, "dtype: %s is %s, expected a floating-point type", stored, mmp_dtype_name(dt));
    return NULL;
  }
  mmp_dtype_t want = MMP_F32;
  if (mat) /* half precision as stored (zero copy) or converted once, here */
    want = w->mat_dtype != MMP_DTYPE_COUNT ? w->mat_dtype : (dt == MMP_F16 || dt == MMP_BF16) ? dt : MMP_F32;
  if (w->trainable) want = MMP_F32;
  mmp_tensor_t *t = src_get(w, stored, want);
  /* a weight read without conversion is a read-only mapping of the file:
   * training updates an owned copy in place */
  if (t && w->trainable) t = sd_swap(t, mmp_clone(t));
  if (!t) {
    add_problem(w, "unreadable: %s: %s", stored, mmp_error_last());
    return NULL;
  }
  if (fnd != ndim) {
    int64_t s[MMP_MAX_DIMS];
    for (int i = 0; i < ndim; i++) s[i] = shape[i] >= 0 ? shape[i] : fsh[i];
    t = sd_swap(t, mmp_reshape(t, ndim, s));
    if (!t) add_problem(w, "reshape: %s: %s", stored, mmp_error_last());
  }
  if (t && mat && w->compute_dtype != MMP_F32 && mmp_tensor_set_compute_dtype(t, w->compute_dtype) < 0) {
    add_problem(w, "compute dtype: %s: %s", stored, mmp_error_last());
    t = sd_swap(t, NULL);
  }
  collect(w, name, t);
  return t;
}

int sd_weights_set_prefix(sd_weights_t *w, const char *prefix) {
  char *p = strdup(prefix ? prefix : "");
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  free(w->prefix);
  w->prefix = p;
  return 0;
}

int sd_weights_add_scope(sd_weights_t *w, const char *scope) {
  char **p = realloc(w->scope, (w->nscope + 1) * sizeof *p);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory");
  w->scope = p;
  size_t n = strlen(w->prefix ? w->prefix : "") + strlen(scope) + 1;
  if (!(w->scope[w->nscope] = malloc(n))) return mmp_error_set(MMP_ENOMEM, "out of memory");
  snprintf(w->scope[w->nscope++], n, "%s%s", w->prefix ? w->prefix : "", scope);
  return 0;
}

int64_t sd_weights_count_unused(sd_weights_t *w, const char *scope) {
  char full[1024];
  snprintf(full, sizeof full, "%s%s", w->prefix ? w->prefix : "", scope);
  size_t fl = strlen(full);
  int64_t c = 0;
  for (size_t i = 0; w->src_open && i < w->n; i++)
    if (!w->used[i] && strncmp(src_name(w, i), full, fl) == 0) c++;
  return c;
}

bool sd_weights_has(sd_weights_t *w, const char *name) {
  char stored[512];
  return w->src_open && resolve(w, name, stored, sizeof stored) >= 0;
}

/* Whether a stored tensor nothing asked for is a problem: it must lie under
 * the part (single file), the prefix and one of the scopes. */
static bool in_scope(const sd_weights_t *w, const char *nm) {
  const char *pre = ldm_prefix(w->map.part);
  if (w->single && pre && strncmp(nm, pre, strlen(pre)) != 0) return false;
  if (w->prefix && strncmp(nm, w->prefix, strlen(w->prefix)) != 0) return false;
  for (size_t k = 0; k < w->nscope; k++)
    if (strncmp(nm, w->scope[k], strlen(w->scope[k])) == 0) return true;
  return w->nscope == 0;
}

int sd_weights_finish(sd_weights_t *w, const char *what) {
  for (size_t i = 0; w->src_open && i < w->n; i++) {
    if (w->used[i]) continue;
    const char *nm = src_name(w, i);
    if (!in_scope(w, nm)) continue;
    bool ign = false;
    for (size_t k = 0; k < w->nignore && !ign; k++) {
      size_t a = strlen(nm), b = strlen(w->ignore[k]);
      ign = a >= b && strcmp(nm + a - b, w->ignore[k]) == 0;
    }
    if (ign) continue;
    mmp_dtype_t dt;
    int nd;
    int64_t s[MMP_MAX_DIMS];
    char fs[128] = "";
    if (src_info(w, nm, &dt, &nd, s) == 0) shape_str(nd, s, fs, sizeof fs);
    add_problem(w, "unexpected: %s %s", nm, fs);
  }
  int rc = 0;
  if (w->nproblems) {
    char more[160] = "";
    if (w->nproblems > SD_MAX_LISTED)
      snprintf(more, sizeof more, "\n  ... and %d more", w->nproblems - SD_MAX_LISTED);
    if (w->src_open && w->nmatched == 0)
      snprintf(more + strlen(more), sizeof more - strlen(more),
               "\n  (no tensor matched: is this the weight file of this part?)");
    rc = mmp_error_set(MMP_EDATA, "%s: weights %s (%s layout) do not fit the config: %d problem%s:%s%s",
                       what, w->path, w->single ? "single-file" : w->map.part == SD_PART_PLAIN ? "stored names" : "diffusers", w->nproblems,
                       w->nproblems == 1 ? "" : "s", w->problems ? w->problems : "", more);
  }
  sd_weights_free(w);
  return rc;
}

void sd_weights_free(sd_weights_t *w) {
  if (!w) return;
  mmp_safetensors_close(w->st);
  mmp_checkpoint_close(w->ck);
  free(w->src_prefix);
  free(w->st_index);
  mmp_rng_free(w->rng);
  mmp_tensormap_free(w->collected);
  for (size_t k = 0; k < w->nignore; k++) free(w->ignore[k]);
  free(w->ignore);
  for (size_t k = 0; k < w->nscope; k++) free(w->scope[k]);
  free(w->scope);
  free(w->prefix);
  free(w->used);
  free(w->problems);
  free(w->path);
  free(w);
}
