/* tools/commands.h - the sub-commands of `pipeline` and their shared helpers.
 *
 * Each command lives in tools/cmd_<name>.c, parses its own options
 * (getopt_long; argv[0] is the command's name), prints its own --help, and
 * returns a process exit code from the table below.
 */
#ifndef MMPIPE_TOOLS_COMMANDS_H
#define MMPIPE_TOOLS_COMMANDS_H

#include <stdarg.h>
#include <stdio.h>

#include <mmpipe/mmpipe.h>

/* Exit codes (documented in doc/pipeline.md). */
enum {
  PIPE_EXIT_OK = 0,
  PIPE_EXIT_RUNTIME = 1,  /* failure while running */
  PIPE_EXIT_USAGE = 2,    /* bad command line */
  PIPE_EXIT_CONFIG = 3,   /* configuration errors */
  PIPE_EXIT_PLUGIN = 4,   /* a plugin could not be found/loaded */
  PIPE_EXIT_DATA = 5,     /* malformed input data or files */
  PIPE_EXIT_CANCELED = 130
};

/* Map an MMP_E* status to an exit code. */
int pipe_exit_code(int status);
/* Print "pipeline CMD: <mmp_error_last()>" to stderr and return the exit code
 * for @status. */
int pipe_fail(const char *cmd, int status);

/* Print "pipeline CMD: message" and a hint to stderr; returns PIPE_EXIT_USAGE. */
int pipe_usage(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Handle -v (more verbose) and -q (quiet) from getopt; 1 if handled. */
int pipe_common_option(int c);
extern int pipe_quiet;
int pipe_version(const char *cmd);

/* -s KEY=VALUE overrides, in command-line order (strings borrowed from argv). */
typedef struct pipe_sets {
  const char **v;
  size_t n;
} pipe_sets_t;
int pipe_sets_add(pipe_sets_t *s, const char *kv);
void pipe_sets_free(pipe_sets_t *s);
/* Load a config file and apply the overrides. (transfer full) */
mmp_config_t *pipe_load_config(const char *path, const pipe_sets_t *sets);
/* Route SIGINT to mmp_context_cancel(ctx) (NULL restores the default). */
void pipe_catch_sigint(mmp_context_t *ctx);

typedef struct pipe_cmd {
  const char *name;
  const char *summary;
  int (*fn)(int argc, char **argv);
} pipe_cmd_t;

int cmd_run(int argc, char **argv);
int cmd_plugins(int argc, char **argv);
int cmd_describe(int argc, char **argv);
int cmd_config(int argc, char **argv);
int cmd_forward(int argc, char **argv);
int cmd_tensors(int argc, char **argv);   /* tools/cmd_tensors.c */
int cmd_randn(int argc, char **argv);     /* tools/cmd_randn.c */
int cmd_dataset(int argc, char **argv);   /* tools/cmd_dataset.c */
int cmd_init_weights(int argc, char **argv); /* tools/cmd_init_weights.c */
int cmd_arldm_init(int argc, char **argv); /* tools/cmd_arldm_init.c */
int cmd_fid(int argc, char **argv);       /* tools/cmd_fid.c */
int cmd_clipscore(int argc, char **argv); /* tools/cmd_clipscore.c */
int cmd_convert(int argc, char **argv);   /* tools/cmd_convert.c */

/* Run a scheduler over given model outputs for `pipeline forward`
 * (tools/forward_scheduler.c; tensor names in doc/forward.md). */
int pipe_forward_scheduler(mmp_component_t *sched, int64_t num_inference_steps,
                           const mmp_tensormap_t *in, mmp_tensormap_t *out);

#endif
