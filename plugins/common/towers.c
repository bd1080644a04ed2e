/* plugins/common/towers.c - configuration plumbing shared by the tower
 * plugins (vit, bert, blip): locating files, typed getters with defaults,
 * hidden-state outputs. */
#include "plugins/common/towers.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static bool is_file(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

int sd_cfg_bad(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

/* A getter's code, an absent key counted as success: *out then keeps the
 * default (the core's getters leave it untouched). */
static int or_default(int rc) {
  if (rc != MMP_ENOENT) return rc;
  mmp_error_clear();
  return 0;
}

int sd_cfg_str(const mmp_config_t *cfg, const char *key, const char *def, const char **out) {
  *out = def;
  return or_default(mmp_config_get_string(cfg, key, out));
}

int sd_cfg_int(const mmp_config_t *cfg, const char *key, int64_t def, int64_t *out) {
  *out = def;
  return or_default(mmp_config_get_int(cfg, key, out));
}

int sd_cfg_bool(const mmp_config_t *cfg, const char *key, bool def, bool *out) {
  *out = def;
  return or_default(mmp_config_get_bool(cfg, key, out));
}

int sd_cfg_float(const mmp_config_t *cfg, const char *key, double def, double *out) {
  *out = def;
  return or_default(mmp_config_get_float(cfg, key, out));
}

int sd_tower_locate(const mmp_config_t *cfg, bool need_config, char *cpath, size_t cplen, char *wpath,
                    size_t wplen) {
  char dir[4096] = "", tmp[4200];
  int64_t seed;
  int rc;
  cpath[0] = wpath[0] = '\0';
  if ((rc = sd_cfg_int(cfg, "init_seed", -1, &seed))) return rc;
  if (mmp_config_get_path(cfg, "model_dir", dir, sizeof dir) != 0) dir[0] = '\0';
  mmp_error_clear();
  if (dir[0]) {
    snprintf(tmp, sizeof tmp, "%s/config.json", dir);
    if (is_file(tmp)) snprintf(cpath, cplen, "%s", tmp);
    /* transformers' file names: safetensors first, else the torch.save one */
    snprintf(tmp, sizeof tmp, "%s/model.safetensors", dir);
    if (!is_file(tmp)) snprintf(tmp, sizeof tmp, "%s/pytorch_model.bin", dir);
    if (is_file(tmp)) snprintf(wpath, wplen, "%s", tmp);
    else if (seed < 0) return sd_cfg_bad(cfg, "model_dir", "no model.safetensors (nor pytorch_model.bin) in this folder");
  }
  if (mmp_config_get_path(cfg, "config", tmp, sizeof tmp) == 0 && tmp[0]) snprintf(cpath, cplen, "%s", tmp);
  if (mmp_config_get_path(cfg, "weights", tmp, sizeof tmp) == 0 && tmp[0]) snprintf(wpath, wplen, "%s", tmp);
  mmp_error_clear();
  if (cpath[0] && !is_file(cpath)) return sd_cfg_bad(cfg, "config", "no such file");
  if (need_config && !cpath[0]) return sd_cfg_bad(cfg, "config", "give `model_dir` or `config` (the config.json)");
  if (seed >= 0) {
    wpath[0] = '\0';
    return 0;
  }
  if (!wpath[0]) return sd_cfg_bad(cfg, "weights", "give `model_dir` or `weights` (a .safetensors file)");
  if (!is_file(wpath)) return sd_cfg_bad(cfg, "weights", "no such file");
  return 0;
}

int sd_put_hidden(mmp_tensormap_t *out, mmp_tensor_t **hidden, int64_t n) {
  int rc = 0;
  char name[64];
  for (int64_t k = 0; k < n; k++) {
    if (!hidden[k]) continue;
    snprintf(name, sizeof name, "hidden_states.%lld", (long long)k);
    if (rc == 0) rc = mmp_tensormap_set(out, name, hidden[k]);
    else mmp_tensor_unref(hidden[k]);
    hidden[k] = NULL;
  }
  return rc;
}
