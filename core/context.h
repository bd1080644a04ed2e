/* core/context.h - the run context's insides, shared by core files (not installed). */
#ifndef MMPIPE_CORE_CONTEXT_H
#define MMPIPE_CORE_CONTEXT_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <mmpipe/core.h>

struct mmp_context {
  mmp_registry_t *reg;
  mmp_config_t *cfg;
  mmp_backend_t *backend;
  volatile sig_atomic_t cancelled;
  char **slots; /* component groups validated so far */
  size_t nslots;
  /* progress */
  bool progress_on, is_tty;
  char label[128];
  int64_t total, done;
  double t0, last_print;
};

/* Remember that the group @path was validated; returns 1 if it already was. */
int context_mark_slot(mmp_context_t *ctx, const char *path);
/* Validate the group at @path (and the slots it declares); returns the
 * number of problems, described in *errors (free()). */
int context_validate_component(mmp_context_t *ctx, mmp_kind_t kind, const char *path,
                               char **errors);

#endif
