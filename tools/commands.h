/* tools/commands.h - the sub-commands of `pipeline` and their shared helpers.
 *
 * Each command lives in tools/cmd_<name>.c, parses its own options
 * (getopt_long; argv[0] is the command's name), prints its own --help, and
 * returns a process exit code from the table below.
 */
#ifndef MMPIPE_TOOLS_COMMANDS_H
#define MMPIPE_TOOLS_COMMANDS_H

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

/* Common options every command accepts: -v/--verbose, -q/--quiet,
 * -s/--set KEY=VALUE (collected), --threads N. Returns 0 or PIPE_EXIT_USAGE. */

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

#endif
