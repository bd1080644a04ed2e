/* tools/cmd_core.c - pipeline run, config, plugins and describe. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/commands.h"

#define COMMON_LONG                                                     \
  {"help", no_argument, NULL, 'h'}, {"verbose", no_argument, NULL, 'v'}, \
      {"quiet", no_argument, NULL, 'q'}, {"version", no_argument, NULL, 'V'}

/* Registry with the search path of @cfg (nullable). */
static mmp_registry_t *open_registry(const mmp_config_t *cfg) {
  mmp_registry_t *reg = mmp_registry_new();
  if (reg && mmp_registry_set_search_path(reg, cfg) < 0) {
    mmp_registry_free(reg);
    return NULL;
  }
  return reg;
}

/* ---- run ---- */

static void run_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline run TASK.cfg [-s KEY.PATH=VALUE]... [OPTIONS]\n\n"
          "Run the task a configuration file describes. Every key of every component is\n"
          "checked first; all configuration errors are reported together and nothing runs.\n\n"
          "  -s, --set KEY=VALUE   override a value (typed by its syntax: 3, 0.5, true,\n"
          "                        \"text\" or text, [1, 2]); repeatable, applied in order\n"
          "      --threads N       CPU threads (same as -s threads=N)\n"
          "      --no-progress     no progress display\n"
          "  -v, --verbose         more log output (repeatable)\n"
          "  -q, --quiet           errors only, no progress\n"
          "  -h, --help            this help\n\n"
          "Ctrl-C stops at the next safe point; finished outputs stay complete and nothing\n"
          "half-written is left under its final name. Exit codes: see 'pipeline --help'.\n");
}

int cmd_run(int argc, char **argv) {
  static const struct option opts[] = {COMMON_LONG,
                                       {"set", required_argument, NULL, 's'},
                                       {"threads", required_argument, NULL, 't'},
                                       {"no-progress", no_argument, NULL, 'P'},
                                       {NULL, 0, NULL, 0}};
  pipe_sets_t sets = {0};
  char threads_kv[64] = "";
  int progress = 1, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "+hvqVs:", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': run_help(stdout); pipe_sets_free(&sets); return PIPE_EXIT_OK;
    case 'V': pipe_sets_free(&sets); return pipe_version("run");
    case 's': pipe_sets_add(&sets, optarg); break;
    case 't': snprintf(threads_kv, sizeof threads_kv, "threads=%s", optarg); pipe_sets_add(&sets, threads_kv); break;
    case 'P': progress = 0; break;
    default: pipe_sets_free(&sets); return pipe_usage("run", "bad option");
    }
  }
  /* options may also follow the file name */
  const char *file = NULL;
  while (optind < argc) {
    if (!file && argv[optind][0] != '-') {
      file = argv[optind++];
      continue;
    }
    if (argv[optind][0] == '-') {
      while ((c = getopt_long(argc, argv, "+hvqVs:", opts, NULL)) != -1) {
        if (pipe_common_option(c)) continue;
        if (c == 's') pipe_sets_add(&sets, optarg);
        else if (c == 't') { snprintf(threads_kv, sizeof threads_kv, "threads=%s", optarg); pipe_sets_add(&sets, threads_kv); }
        else if (c == 'P') progress = 0;
        else if (c == 'h') { run_help(stdout); pipe_sets_free(&sets); return PIPE_EXIT_OK; }
        else { pipe_sets_free(&sets); return pipe_usage("run", "bad option"); }
      }
      continue;
    }
    pipe_sets_free(&sets);
    return pipe_usage("run", "unexpected argument '%s'", argv[optind]);
  }
  if (!file) {
    pipe_sets_free(&sets);
    return pipe_usage("run", "missing TASK.cfg");
  }
  mmp_config_t *cfg = pipe_load_config(file, &sets);
  pipe_sets_free(&sets);
  if (!cfg) return pipe_fail("run", mmp_error_code());
  mmp_registry_t *reg = open_registry(cfg);
  mmp_context_t *ctx = reg ? mmp_context_new(reg, cfg) : NULL;
  int rc;
  if (!ctx) {
    rc = mmp_error_code();
  } else {
    mmp_context_set_progress(ctx, progress && !pipe_quiet);
    pipe_catch_sigint(ctx);
    rc = mmp_context_run_task(ctx);
    pipe_catch_sigint(NULL);
  }
  int code = rc < 0 ? pipe_fail("run", rc) : PIPE_EXIT_OK;
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return code;
}

/* ---- config ---- */

static void config_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline config TASK.cfg [-s KEY.PATH=VALUE]... [--no-defaults]\n\n"
          "Print the fully merged configuration: the plugins' declared defaults, files\n"
          "brought in with @include, the task file and -s overrides, lowest first. Each\n"
          "value is followed by a comment naming the layer (and file:line) it came from.\n"
          "The configuration is checked as 'run' would; errors exit with code 3.\n\n"
          "  -s, --set KEY=VALUE   override a value (repeatable)\n"
          "      --no-defaults     do not resolve plugins; print only what the files say\n"
          "      --plain           no origin comments (a valid libconfig file)\n"
          "  -h, --help            this help\n");
}

int cmd_config(int argc, char **argv) {
  static const struct option opts[] = {COMMON_LONG,
                                       {"set", required_argument, NULL, 's'},
                                       {"no-defaults", no_argument, NULL, 'D'},
                                       {"plain", no_argument, NULL, 'p'},
                                       {NULL, 0, NULL, 0}};
  pipe_sets_t sets = {0};
  int defaults = 1, annotate = 1, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvqVs:", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': config_help(stdout); pipe_sets_free(&sets); return PIPE_EXIT_OK;
    case 'V': pipe_sets_free(&sets); return pipe_version("config");
    case 's': pipe_sets_add(&sets, optarg); break;
    case 'D': defaults = 0; break;
    case 'p': annotate = 0; break;
    default: pipe_sets_free(&sets); return pipe_usage("config", "bad option");
    }
  }
  if (optind != argc - 1) {
    pipe_sets_free(&sets);
    return pipe_usage("config", "expected one TASK.cfg");
  }
  mmp_config_t *cfg = pipe_load_config(argv[optind], &sets);
  pipe_sets_free(&sets);
  if (!cfg) return pipe_fail("config", mmp_error_code());
  int rc = 0;
  mmp_registry_t *reg = NULL;
  mmp_context_t *ctx = NULL;
  if (defaults) {
    reg = open_registry(cfg);
    ctx = reg ? mmp_context_new(reg, cfg) : NULL;
    if (!ctx) {
      rc = mmp_error_code();
    } else if (mmp_config_lookup(cfg, "task")) {
      rc = mmp_context_validate(ctx);
    } else {
      /* a component file (as for 'forward'): validate its one group */
      static const char *kinds[] = {"scheduler", "encoder", "model", "processor", "dataset"};
      rc = mmp_error_set(MMP_ECONFIG, "%s: no 'task' group (and no component group)", argv[optind]);
      for (size_t i = 0; i < 5; i++) {
        if (!mmp_config_lookup(cfg, kinds[i])) continue;
        mmp_kind_t k;
        mmp_kind_parse(kinds[i], &k);
        rc = mmp_context_validate_component(ctx, k, kinds[i]);
        break;
      }
    }
  }
  int code = PIPE_EXIT_OK;
  if (rc < 0)
    code = pipe_fail("config", rc);
  else
    mmp_config_write(cfg, stdout, annotate);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return code;
}

/* ---- plugins ---- */

static void plugins_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline plugins [KIND] [--path DIR]...\n\n"
          "Load every module on the plugin path and list its implementations: kind, name,\n"
          "version, module file and description. KIND (dataset, processor, encoder,\n"
          "scheduler, model, task) limits the list. Modules that fail to load are reported\n"
          "on stderr and the exit code is 4.\n\n"
          "Plugin path, in order: $MMPIPE_PLUGIN_PATH, --path DIRs, the build tree when run\n"
          "uninstalled, then the installed plugin directory.\n\n"
          "  -p, --path DIR   also search DIR (repeatable)\n"
          "      --dirs       print the search path and exit\n"
          "  -h, --help       this help\n");
}

int cmd_plugins(int argc, char **argv) {
  static const struct option opts[] = {COMMON_LONG,
                                       {"path", required_argument, NULL, 'p'},
                                       {"dirs", no_argument, NULL, 'd'},
                                       {NULL, 0, NULL, 0}};
  const char *paths[32];
  int npaths = 0, dirs_only = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvqVp:", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': plugins_help(stdout); return PIPE_EXIT_OK;
    case 'V': return pipe_version("plugins");
    case 'p': if (npaths < 32) paths[npaths++] = optarg; break;
    case 'd': dirs_only = 1; break;
    default: return pipe_usage("plugins", "bad option");
    }
  }
  int filter = -1;
  if (optind < argc) {
    mmp_kind_t k;
    if (mmp_kind_parse(argv[optind], &k) < 0) {
      fprintf(stderr, "pipeline plugins: %s\n", mmp_error_last());
      return PIPE_EXIT_USAGE;
    }
    filter = (int)k;
    optind++;
  }
  if (optind < argc) return pipe_usage("plugins", "unexpected argument '%s'", argv[optind]);
  mmp_registry_t *reg = mmp_registry_new();
  if (!reg) return pipe_fail("plugins", mmp_error_code());
  const char *env = getenv("MMPIPE_PLUGIN_PATH");
  /* --path dirs come after $MMPIPE_PLUGIN_PATH, as the config's plugin_path would */
  if (env && *env) {
    char *copy = strdup(env);
    for (char *save = NULL, *t = strtok_r(copy, ":", &save); t; t = strtok_r(NULL, ":", &save))
      mmp_registry_add_dir(reg, t);
    free(copy);
  }
  for (int i = 0; i < npaths; i++) mmp_registry_add_dir(reg, paths[i]);
  unsetenv("MMPIPE_PLUGIN_PATH");
  mmp_registry_set_search_path(reg, NULL);
  if (env) setenv("MMPIPE_PLUGIN_PATH", env, 1);
  if (dirs_only) {
    for (size_t i = 0; i < mmp_registry_dir_count(reg); i++) printf("%s\n", mmp_registry_dir(reg, i));
    mmp_registry_free(reg);
    return PIPE_EXIT_OK;
  }
  int fails = 0;
  mmp_registry_load_all(reg, &fails);
  size_t n = mmp_registry_count(reg);
  /* sort by kind, then name */
  const mmp_plugin_t **v = calloc(n ? n : 1, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = mmp_registry_at(reg, i);
  for (size_t i = 1; i < n; i++)
    for (size_t j = i; j > 0; j--) {
      const mmp_plugin_t *a = v[j - 1], *b = v[j];
      if (a->kind < b->kind || (a->kind == b->kind && strcmp(a->name, b->name) <= 0)) break;
      v[j - 1] = b;
      v[j] = a;
    }
  printf("%-10s %-20s %-8s %-40s %s\n", "KIND", "NAME", "VERSION", "MODULE", "DESCRIPTION");
  for (size_t i = 0; i < n; i++) {
    if (filter >= 0 && (int)v[i]->kind != filter) continue;
    const char *mod = mmp_registry_module_of(reg, v[i]);
    const char *slash = mod ? strrchr(mod, '/') : NULL;
    printf("%-10s %-20s %-8s %-40s %s\n", mmp_kind_name(v[i]->kind), v[i]->name, v[i]->version,
           mmp_log_get_level() >= MMP_LOG_INFO || !slash ? (mod ? mod : "?") : slash + 1,
           v[i]->description);
  }
  free(v);
  mmp_registry_free(reg);
  if (fails) {
    fprintf(stderr, "pipeline plugins: %d module%s failed to load (see the warnings above)\n", fails,
            fails == 1 ? "" : "s");
    return PIPE_EXIT_PLUGIN;
  }
  return PIPE_EXIT_OK;
}

/* ---- describe ---- */

static void describe_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline describe KIND NAME\n\n"
          "Show an implementation: its description, version, module and every key it\n"
          "accepts with type, default and documentation. Component keys name other\n"
          "groups of the configuration (e.g. a task's scheduler).\n"
          "  -h, --help   this help\n");
}

int cmd_describe(int argc, char **argv) {
  static const struct option opts[] = {COMMON_LONG, {NULL, 0, NULL, 0}};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvqV", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    if (c == 'h') { describe_help(stdout); return PIPE_EXIT_OK; }
    if (c == 'V') return pipe_version("describe");
    return pipe_usage("describe", "bad option");
  }
  if (argc - optind != 2) return pipe_usage("describe", "expected KIND NAME");
  mmp_kind_t kind;
  if (mmp_kind_parse(argv[optind], &kind) < 0) {
    fprintf(stderr, "pipeline describe: %s\n", mmp_error_last());
    return PIPE_EXIT_USAGE;
  }
  mmp_registry_t *reg = open_registry(NULL);
  if (!reg) return pipe_fail("describe", mmp_error_code());
  const mmp_plugin_t *p = mmp_registry_find(reg, kind, argv[optind + 1]);
  if (!p) {
    int code = pipe_fail("describe", mmp_error_code());
    mmp_registry_free(reg);
    return code == PIPE_EXIT_RUNTIME ? PIPE_EXIT_PLUGIN : code;
  }
  printf("%s %s %s\n  %s\n  module: %s\n\n", mmp_kind_name(p->kind), p->name, p->version,
         p->description, mmp_registry_module_of(reg, p));
  printf("  %-28s %-9s %-22s %s\n", "KEY", "TYPE", "DEFAULT", "DESCRIPTION");
  printf("  %-28s %-9s %-22s the implementation (\"%s\" selects this one)\n", "name", "string",
         "(required)", p->name);
  for (const mmp_key_t *k = p->keys; k->name; k++) {
    char type[48];
    if (k->flags & MMP_KEY_IGNORED) continue; /* listed below */
    if (k->type == MMP_TYPE_COMPONENT)
      snprintf(type, sizeof type, "%s", mmp_kind_name(k->component_kind));
    else
      snprintf(type, sizeof type, "%s", mmp_type_name(k->type));
    const char *def = k->default_value ? k->default_value
                      : (k->flags & MMP_KEY_REQUIRED) ? "(required)" : "(unset)";
    printf("  %-28s %-9s %-22s %s%s\n", k->name, type, def, k->doc,
           k->type == MMP_TYPE_COMPONENT ? " [a top-level group]" : "");
  }
  int nign = 0;
  for (const mmp_key_t *k = p->keys; k->name; k++) {
    if (!(k->flags & MMP_KEY_IGNORED)) continue;
    int own = 0; /* a name declared earlier for real is not "ignored" */
    for (const mmp_key_t *q = p->keys; q < k; q++) own |= strcmp(q->name, k->name) == 0;
    if (own) continue;
    printf("%s%s", nign++ ? ", " : "\n  Accepted and ignored (keys of other implementations, so that one\n  configuration serves them all): ", k->name);
  }
  if (nign) printf("\n");
  mmp_registry_free(reg);
  return PIPE_EXIT_OK;
}
