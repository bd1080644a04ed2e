/* mmpipe/core.h - the host side: registry and module loader, run context.
 *
 * What the `pipeline` program does, an embedding application can do too:
 *
 *   mmp_registry_t *reg = mmp_registry_new();
 *   mmp_config_t *cfg = mmp_config_load("task.cfg");
 *   mmp_registry_set_search_path(reg, cfg);
 *   mmp_context_t *ctx = mmp_context_new(reg, cfg);
 *   int rc = mmp_context_run_task(ctx);   // validates everything first
 *   mmp_context_free(ctx); mmp_config_free(cfg); mmp_registry_free(reg);
 */
#ifndef MMPIPE_CORE_H
#define MMPIPE_CORE_H

#include <stdbool.h>
#include <stddef.h>

#include <mmpipe/config.h>
#include <mmpipe/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- registry and loader ---- */
mmp_registry_t *mmp_registry_new(void); /* (transfer full) */
/* Modules stay loaded until the registry is freed. NULL ok. */
void mmp_registry_free(mmp_registry_t *reg);

/* The search path, in order: $MMPIPE_PLUGIN_PATH (colon-separated), the
 * config's top-level `plugin_path` (string or list; @cfg nullable), the build
 * tree when running uninstalled, then the installed plugin directory. */
int mmp_registry_set_search_path(mmp_registry_t *reg, const mmp_config_t *cfg);
/* Append one directory to the search path. */
int mmp_registry_add_dir(mmp_registry_t *reg, const char *dir);
size_t mmp_registry_dir_count(const mmp_registry_t *reg);
const char *mmp_registry_dir(const mmp_registry_t *reg, size_t i);

/* Load one module file (.so or .la) and call its entry symbol. Errors name
 * the file and the reason (MMP_EPLUGIN, MMP_EABI, MMP_EEXIST). */
int mmp_registry_load_module(mmp_registry_t *reg, const char *path);
/* Load every module on the search path. Failures are logged as warnings and
 * counted in *failures (nullable); returns 0 unless no directory exists. */
int mmp_registry_load_all(mmp_registry_t *reg, int *failures);

size_t mmp_registry_count(const mmp_registry_t *reg);
/* (transfer none) */
const mmp_plugin_t *mmp_registry_at(const mmp_registry_t *reg, size_t i);
/* The module file an implementation came from ("(built-in)" for those
 * registered by the application). (transfer none) */
const char *mmp_registry_module_of(const mmp_registry_t *reg, const mmp_plugin_t *p);

/* ---- configuration checks ---- */
/* Check @group against @keys: undeclared keys (with the nearest declared
 * one suggested), wrong types, missing required keys. Every problem is
 * appended to @errors (one per line, "file:line: message"). Returns the
 * number of problems. */
int mmp_config_check_keys(const mmp_config_t *group, const mmp_key_t *keys,
                          const char *what, char **errors);
/* Add the declared defaults of @keys that @group lacks (layer DEFAULT). */
int mmp_config_merge_defaults(mmp_config_t *group, const mmp_key_t *keys);

/* ---- run context ---- */
/* @cfg is borrowed and must outlive the context; the context may add
 * defaults to it. (transfer full) */
mmp_context_t *mmp_context_new(mmp_registry_t *reg, mmp_config_t *cfg);
void mmp_context_free(mmp_context_t *ctx); /* NULL ok */
/* Resolve the task and every component group it declares, check all keys
 * and merge defaults. All problems are reported in one message. */
int mmp_context_validate(mmp_context_t *ctx);
/* Validate a configuration that holds one component group at @path (the
 * form `pipeline forward` uses) instead of a task. */
int mmp_context_validate_component(mmp_context_t *ctx, mmp_kind_t kind, const char *path);
/* validate, create the task, run it, destroy it. */
int mmp_context_run_task(mmp_context_t *ctx);
/* Ask the run to stop (async-signal-safe). */
void mmp_context_cancel(mmp_context_t *ctx);
/* Progress display: auto (bar on a terminal, lines otherwise), or off. */
void mmp_context_set_progress(mmp_context_t *ctx, bool enabled);

#ifdef __cplusplus
}
#endif
#endif
