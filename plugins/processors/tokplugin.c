/* plugins/processors/tokplugin.c - config helpers and tensor packing shared
 * by the tokenizer plugins. */
#include "plugins/processors/tokplugin.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>
#include <mmpipe/tensor.h>

#include "plugins/processors/textcommon.h"

int mmp_tokp_cfg_error(const mmp_config_t *cfg, const char *key, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *file = n ? mmp_config_file(n) : NULL;
  if (file) return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", file, mmp_config_line(n), key, msg);
  return mmp_error_set(MMP_ECONFIG, "%s: %s", key, msg);
}

void mmp_tokp_free_strings(char **v, size_t n) {
  for (size_t i = 0; i < n; i++) free(v[i]);
  free(v);
}

int mmp_tokp_get_strings(const mmp_config_t *cfg, const char *key, char ***out, size_t *n) {
  *out = NULL;
  *n = 0;
  size_t cnt = 0;
  int rc = mmp_config_get_list_size(cfg, key, &cnt);
  if (rc == MMP_ENOENT) {
    mmp_error_clear();
    return 0;
  }
  if (rc < 0) return rc;
  char **v = calloc(cnt + 1, sizeof(char *));
  if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (size_t i = 0; i < cnt; i++) {
    const char *s = NULL;
    rc = mmp_config_get_list_string(cfg, key, i, &s);
    if (rc < 0 || !s) {
      mmp_tokp_free_strings(v, i);
      return mmp_tokp_cfg_error(cfg, key, "item %zu is not a string", i);
    }
    size_t l = strlen(s) + 1;
    v[i] = malloc(l);
    if (!v[i]) {
      mmp_tokp_free_strings(v, i);
      return mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    memcpy(v[i], s, l);
    mmp_ustr_t u = {0};
    rc = mmp_ustr_from_utf8(&u, s, l - 1);
    mmp_ustr_free(&u);
    if (rc < 0) {
      mmp_tokp_free_strings(v, i + 1);
      return mmp_tokp_cfg_error(cfg, key, "item %zu: %s", i, mmp_error_last());
    }
  }
  *out = v;
  *n = cnt;
  return 0;
}

int mmp_tokp_encode_batch(const void *engine, mmp_tokp_encode_cb encode,
                          const char *const *texts, size_t n, int64_t bos, int64_t eos,
                          int64_t pad, int64_t max_length, bool truncation,
                          mmp_tensormap_t *out) {
  if (max_length < 1) return mmp_error_set(MMP_EINVAL, "max_length must be positive");
  size_t cells = n * (size_t)max_length;
  int64_t *idbuf = malloc((cells ? cells : 1) * sizeof(int64_t));
  int64_t *mbuf = malloc((cells ? cells : 1) * sizeof(int64_t));
  int rc = 0;
  if (!idbuf || !mbuf) {
    rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (!texts[i]) {
      rc = mmp_error_set(MMP_EINVAL, "text %zu is NULL", i);
      goto out;
    }
    int64_t *ids = NULL;
    size_t nids = 0;
    rc = encode(engine, texts[i], strlen(texts[i]), &ids, &nids);
    if (rc < 0) {
      mmp_error_prefix("text %zu: ", i);
      goto out;
    }
    rc = mmp_tok_pack_row(ids, nids, bos, eos, pad, max_length, truncation, i,
                          idbuf + i * (size_t)max_length, mbuf + i * (size_t)max_length);
    free(ids);
    if (rc < 0) goto out;
  }
  {
    mmp_backend_t *cpu = mmp_backend_get("cpu");
    int64_t shape[2] = {(int64_t)n, max_length};
    mmp_tensor_t *ti = cpu ? mmp_tensor_from_data(cpu, MMP_I64, 2, shape, idbuf) : NULL;
    mmp_tensor_t *tm = cpu ? mmp_tensor_from_data(cpu, MMP_I64, 2, shape, mbuf) : NULL;
    if (!ti || !tm) {
      mmp_tensor_unref(ti);
      mmp_tensor_unref(tm);
      rc = mmp_error_code() < 0 ? mmp_error_code() : MMP_ENOMEM;
      goto out;
    }
    if ((rc = mmp_tensormap_set(out, "input_ids", ti)) < 0) {
      mmp_tensor_unref(tm);
      goto out;
    }
    rc = mmp_tensormap_set(out, "attention_mask", tm);
  }
out:
  free(idbuf);
  free(mbuf);
  return rc;
}

int mmp_tokp_forward(const void *engine, mmp_tokp_encode_cb encode, const char *name,
                     int64_t vocab_size, int64_t bos, int64_t eos, int64_t pad,
                     int64_t max_length, bool truncation, const char *method,
                     const mmp_tensormap_t *in, mmp_tensormap_t *out) {
  if (method && strcmp(method, "vocab_size") == 0) {
    mmp_backend_t *cpu = mmp_backend_get("cpu");
    int64_t shape[1] = {1};
    mmp_tensor_t *t = cpu ? mmp_tensor_from_data(cpu, MMP_I64, 1, shape, &vocab_size) : NULL;
    if (!t) return mmp_error_code() < 0 ? mmp_error_code() : MMP_ENOMEM;
    return mmp_tensormap_set(out, "vocab_size", t);
  }
  if (!method || strcmp(method, "encode") == 0) {
    const char *text = in ? mmp_tensormap_get_string(in, "text") : NULL;
    if (!text)
      return mmp_error_set(MMP_ENOENT, "%s: forward needs the string 'text' (or use encode_text)",
                           name);
    const char *texts[1] = {text};
    return mmp_tokp_encode_batch(engine, encode, texts, 1, bos, eos, pad, max_length, truncation,
                                 out);
  }
  return mmp_error_set(MMP_EUNSUPPORTED, "%s: unknown method '%s' (encode, vocab_size)", name,
                       method);
}
