/* plugins/processors/tokplugin.h - what the tokenizer plugins share on the
 * plugin side: config helpers and packing ids into input_ids/attention_mask
 * tensors (part of libtextcommon). */
#ifndef MMPIPE_PLUGINS_TOKPLUGIN_H
#define MMPIPE_PLUGINS_TOKPLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/config.h>
#include <mmpipe/plugin.h>

/* MMP_ECONFIG "file:line: key: message" for the key's node in @cfg. */
int mmp_tokp_cfg_error(const mmp_config_t *cfg, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The list of strings at @key (absent or empty: none). *out holds copies
 * (free with mmp_tokp_free_strings). */
int mmp_tokp_get_strings(const mmp_config_t *cfg, const char *key, char ***out, size_t *n);
void mmp_tokp_free_strings(char **v, size_t n);

/* Encodes one text into ids without specials; *ids malloc'ed. */
typedef int (*mmp_tokp_encode_cb)(const void *engine, const char *text, size_t len,
                                  int64_t **ids, size_t *n);

/* Tokenizes @texts into i64 input_ids/attention_mask [n, max_length]
 * (CPU tensors) in @out. Errors name the text index. */
int mmp_tokp_encode_batch(const void *engine, mmp_tokp_encode_cb encode,
                          const char *const *texts, size_t n, int64_t bos, int64_t eos,
                          int64_t pad, int64_t max_length, bool truncation,
                          mmp_tensormap_t *out);

/* forward(): method "vocab_size" -> vocab_size (i64 [1]); method NULL or
 * "encode" with the string "text" in @in -> input_ids/attention_mask [1, L]. */
int mmp_tokp_forward(const void *engine, mmp_tokp_encode_cb encode, const char *name,
                     int64_t vocab_size, int64_t bos, int64_t eos, int64_t pad,
                     int64_t max_length, bool truncation, const char *method,
                     const mmp_tensormap_t *in, mmp_tensormap_t *out);

#endif
