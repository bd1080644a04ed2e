/* mmpipe/config.h - the merged, layered configuration tree and typed getters.
 *
 * A task file is read with libconfig; values then carry where they came
 * from: a plugin's declared default, a file brought in with @include, the
 * task file itself, or a `-s key.path=value` override. Plugins see only their
 * own group and read it through typed getters, only for keys they declared:
 *
 *   int64_t steps;
 *   if (mmp_config_get_int(cfg, "num_inference_steps", &steps) < 0)
 *     return mmp_error_code();     // message names file and line
 */
#ifndef MMPIPE_CONFIG_H
#define MMPIPE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mmp_type {
  MMP_TYPE_NONE = 0,
  MMP_TYPE_INT,
  MMP_TYPE_FLOAT,
  MMP_TYPE_BOOL,
  MMP_TYPE_STRING,
  MMP_TYPE_LIST,      /* a list of scalars (libconfig array or list) */
  MMP_TYPE_GROUP,     /* a free-form group */
  MMP_TYPE_COMPONENT  /* in key tables: a top-level group naming a plugin */
} mmp_type_t;

typedef enum mmp_layer {
  MMP_LAYER_DEFAULT = 0, /* a plugin's declared default */
  MMP_LAYER_INCLUDE,     /* a file brought in with @include */
  MMP_LAYER_FILE,        /* the task file */
  MMP_LAYER_OVERRIDE     /* -s on the command line */
} mmp_layer_t;

typedef struct mmp_config mmp_config_t; /* one node: group, list or scalar */

/* "int", "float", ... (transfer none) */
const char *mmp_type_name(mmp_type_t t);
const char *mmp_layer_name(mmp_layer_t l);

/* Read a libconfig file (with @include). Errors name file and line.
 * (transfer full) NULL + message on failure. */
mmp_config_t *mmp_config_load(const char *path);
/* Parse libconfig text from memory; @name is used in messages. */
mmp_config_t *mmp_config_parse(const char *text, const char *name);
/* An empty root group. (transfer full) */
mmp_config_t *mmp_config_new(void);
void mmp_config_free(mmp_config_t *root); /* NULL is a no-op */

/* Apply "a.b.c=value": value is typed by its syntax (42, 4.2, true,
 * "text" or bare text, [1, 2]); groups are created as needed. */
int mmp_config_override(mmp_config_t *root, const char *assignment);

/* Set a value from libconfig literal text at @path with the given layer
 * (creates groups as needed). */
int mmp_config_set_literal(mmp_config_t *root, const char *path,
                           const char *literal, mmp_layer_t layer,
                           const char *file, int line);

/* ---- navigation (transfer none; NULL when absent) ---- */
const mmp_config_t *mmp_config_lookup(const mmp_config_t *node, const char *path);
mmp_type_t mmp_config_type(const mmp_config_t *node);
const char *mmp_config_name(const mmp_config_t *node);   /* "" for root/list items */
size_t mmp_config_count(const mmp_config_t *node);       /* children of group/list */
const mmp_config_t *mmp_config_child(const mmp_config_t *node, size_t i);
const mmp_config_t *mmp_config_parent(const mmp_config_t *node);
/* Where the value came from; file is NULL for defaults and overrides. */
const char *mmp_config_file(const mmp_config_t *node);
int mmp_config_line(const mmp_config_t *node);
mmp_layer_t mmp_config_layer(const mmp_config_t *node);
/* Dotted path from the root, e.g. "scheduler.num_inference_steps". */
const char *mmp_config_path(const mmp_config_t *node, char *buf, size_t len);
/* The directory of the task file, for resolving relative paths ("." if none). */
const char *mmp_config_base_dir(const mmp_config_t *node);

/* ---- typed getters on a group ----
 * Return 0, MMP_ENOENT if the key is absent, MMP_ECONFIG (message with file
 * and line) on a type mismatch. An int is accepted where a float is asked. */
int mmp_config_get_int(const mmp_config_t *group, const char *key, int64_t *out);
int mmp_config_get_float(const mmp_config_t *group, const char *key, double *out);
int mmp_config_get_bool(const mmp_config_t *group, const char *key, bool *out);
/* (transfer none) valid while the tree lives */
int mmp_config_get_string(const mmp_config_t *group, const char *key, const char **out);
/* A path key: resolved against the task file's directory unless absolute;
 * writes into @buf. */
int mmp_config_get_path(const mmp_config_t *group, const char *key, char *buf, size_t len);
/* Lists: number of items, then each item (a scalar string also counts as a
 * one-item list for strings). */
int mmp_config_get_list_size(const mmp_config_t *group, const char *key, size_t *n);
int mmp_config_get_list_int(const mmp_config_t *group, const char *key, size_t i, int64_t *out);
int mmp_config_get_list_float(const mmp_config_t *group, const char *key, size_t i, double *out);
int mmp_config_get_list_string(const mmp_config_t *group, const char *key, size_t i, const char **out);

/* Scalar value of a node (same rules as the getters). */
int mmp_config_int(const mmp_config_t *node, int64_t *out);
int mmp_config_float(const mmp_config_t *node, double *out);
int mmp_config_bool(const mmp_config_t *node, bool *out);
const char *mmp_config_string(const mmp_config_t *node);

/* Write the tree as libconfig text; with @annotate each value is followed
 * by a comment naming its layer and origin. */
int mmp_config_write(const mmp_config_t *root, FILE *f, bool annotate);

#ifdef __cplusplus
}
#endif
#endif
