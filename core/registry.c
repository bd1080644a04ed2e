/* core/registry.c - the registry of implementations and the libltdl module loader. */
#include <dirent.h>
#include <limits.h>
#include <ltdl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/core.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>

#include "core/util.h"

typedef struct reg_entry {
  const mmp_plugin_t *plugin;
  char *module; /* file it came from, or "(built-in)" */
} reg_entry_t;

struct mmp_registry {
  reg_entry_t *e;
  size_t n, cap;
  char **dirs;
  size_t ndirs;
  char **loaded; /* module base names already loaded (or tried) */
  size_t nloaded;
  lt_dlhandle *handles;
  size_t nhandles;
  const char *loading; /* module file whose entry symbol is running */
  int loaded_all;
};

static const char *kind_names[MMP_KIND_COUNT] = {"dataset", "processor", "encoder",
                                                 "scheduler", "model", "task"};
static const char *kind_dirs[MMP_KIND_COUNT] = {"datasets", "processors", "encoders",
                                                "schedulers", "models", "tasks"};

const char *mmp_kind_name(mmp_kind_t k) {
  return ((unsigned)k < MMP_KIND_COUNT) ? kind_names[k] : "unknown";
}

int mmp_kind_parse(const char *s, mmp_kind_t *out) {
  for (int k = 0; k < MMP_KIND_COUNT; k++) {
    if (strcmp(s, kind_names[k]) == 0 || strcmp(s, kind_dirs[k]) == 0) {
      *out = (mmp_kind_t)k;
      return 0;
    }
  }
  const char *near = mmp_nearest(s, kind_names, MMP_KIND_COUNT);
  return mmp_error_set(MMP_ENOENT,
                       "unknown plugin kind '%s'%s%s%s (kinds: dataset, processor, encoder, "
                       "scheduler, model, task)",
                       s, near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
}

mmp_registry_t *mmp_registry_new(void) {
  mmp_registry_t *reg = mmp_xcalloc(1, sizeof *reg);
  if (!reg) return NULL;
  if (lt_dlinit() != 0) {
    mmp_error_set(MMP_EPLUGIN, "libltdl initialisation failed: %s", lt_dlerror());
    free(reg);
    return NULL;
  }
  return reg;
}

void mmp_registry_free(mmp_registry_t *reg) {
  if (!reg) return;
  for (size_t i = 0; i < reg->n; i++) free(reg->e[i].module);
  free(reg->e);
  for (size_t i = 0; i < reg->ndirs; i++) free(reg->dirs[i]);
  free(reg->dirs);
  for (size_t i = 0; i < reg->nloaded; i++) free(reg->loaded[i]);
  free(reg->loaded);
  /* Modules stay resident until the registry goes: instances are gone now. */
  for (size_t i = reg->nhandles; i > 0; i--) lt_dlclose(reg->handles[i - 1]);
  free(reg->handles);
  lt_dlexit();
  free(reg);
}

/* ---- registration ---- */

static int bad(const mmp_registry_t *reg, const mmp_plugin_t *p, const char *what) {
  return mmp_error_set(MMP_EPLUGIN, "%s: plugin descriptor %s%s%s%s", reg->loading ? reg->loading : "(built-in)",
                       p->name && *p->name ? "'" : "", p->name && *p->name ? p->name : "",
                       p->name && *p->name ? "' " : "", what);
}

/* Does the module's vtable (of struct_size bytes) include a non-NULL member
 * at @offset? */
#define HAS_MEMBER(p, type, member)                                                  \
  ((p)->struct_size >= offsetof(type, member) + sizeof(((type *)0)->member) &&        \
   ((const type *)(p))->member != NULL)

static int check_kind_members(const mmp_registry_t *reg, const mmp_plugin_t *p) {
  switch (p->kind) {
  case MMP_KIND_ENCODER:
    if (!HAS_MEMBER(p, mmp_encoder_ops_t, forward)) return bad(reg, p, "has no forward()");
    break;
  case MMP_KIND_MODEL:
    if (!HAS_MEMBER(p, mmp_model_ops_t, forward)) return bad(reg, p, "has no forward()");
    break;
  case MMP_KIND_PROCESSOR:
    if (!HAS_MEMBER(p, mmp_processor_ops_t, forward) &&
        !HAS_MEMBER(p, mmp_processor_ops_t, encode_text))
      return bad(reg, p, "has neither forward() nor encode_text()");
    break;
  case MMP_KIND_SCHEDULER:
    if (!HAS_MEMBER(p, mmp_scheduler_ops_t, set_timesteps)) return bad(reg, p, "has no set_timesteps()");
    if (!HAS_MEMBER(p, mmp_scheduler_ops_t, timesteps)) return bad(reg, p, "has no timesteps()");
    if (!HAS_MEMBER(p, mmp_scheduler_ops_t, step)) return bad(reg, p, "has no step()");
    if (!HAS_MEMBER(p, mmp_scheduler_ops_t, add_noise)) return bad(reg, p, "has no add_noise()");
    break;
  case MMP_KIND_DATASET:
    if (!HAS_MEMBER(p, mmp_dataset_ops_t, size)) return bad(reg, p, "has no size()");
    if (!HAS_MEMBER(p, mmp_dataset_ops_t, get)) return bad(reg, p, "has no get()");
    break;
  case MMP_KIND_TASK:
    if (!HAS_MEMBER(p, mmp_task_ops_t, run)) return bad(reg, p, "has no run()");
    break;
  default:
    break;
  }
  return 0;
}

static int check_keys_table(const mmp_registry_t *reg, const mmp_plugin_t *p) {
  for (const mmp_key_t *k = p->keys; k->name; k++) {
    char what[300];
    if (!*k->name) return bad(reg, p, "has a key with an empty name");
    if (k->type <= MMP_TYPE_NONE || k->type > MMP_TYPE_COMPONENT) {
      snprintf(what, sizeof what, "declares key '%s' with an invalid type", k->name);
      return bad(reg, p, what);
    }
    if (!k->doc || !*k->doc) {
      snprintf(what, sizeof what, "declares key '%s' without a description", k->name);
      return bad(reg, p, what);
    }
    if (k->type == MMP_TYPE_COMPONENT && (unsigned)k->component_kind >= MMP_KIND_COUNT) {
      snprintf(what, sizeof what, "declares component key '%s' with an invalid kind", k->name);
      return bad(reg, p, what);
    }
    if (strcmp(k->name, "name") == 0) return bad(reg, p, "declares the reserved key 'name'");
  }
  return 0;
}

int mmp_registry_add(mmp_registry_t *reg, const mmp_plugin_t *p) {
  if (!reg || !p) return mmp_error_set(MMP_EINVAL, "mmp_registry_add: NULL argument");
  const char *mod = reg->loading ? reg->loading : "(built-in)";
  if (p->abi_major != MMP_ABI_MAJOR || p->abi_minor > MMP_ABI_MINOR)
    return mmp_error_set(MMP_EABI,
                         "%s: plugin '%s' was built for plugin ABI %u.%u, but this mmpipe "
                         "provides ABI %d.%d; rebuild the plugin against this mmpipe",
                         mod, p->name ? p->name : "?", (unsigned)p->abi_major,
                         (unsigned)p->abi_minor, MMP_ABI_MAJOR, MMP_ABI_MINOR);
  if (p->struct_size < sizeof(mmp_plugin_t)) return bad(reg, p, "has a struct_size smaller than mmp_plugin_t");
  if ((unsigned)p->kind >= MMP_KIND_COUNT) return bad(reg, p, "has an invalid kind");
  if (!p->name || !*p->name) return bad(reg, p, "has no name");
  for (const char *c = p->name; *c; c++)
    if (!(('a' <= *c && *c <= 'z') || ('0' <= *c && *c <= '9') || *c == '_'))
      return bad(reg, p, "has a name that is not lower-case letters, digits and '_'");
  if (!p->version || !*p->version) return bad(reg, p, "has no version");
  if (!p->description || !*p->description) return bad(reg, p, "has no description");
  if (!p->keys) return bad(reg, p, "has no key table");
  if (!p->create) return bad(reg, p, "has no create()");
  if (!p->destroy) return bad(reg, p, "has no destroy()");
  int rc = check_kind_members(reg, p);
  if (rc < 0) return rc;
  if ((rc = check_keys_table(reg, p)) < 0) return rc;
  for (size_t i = 0; i < reg->n; i++) {
    const mmp_plugin_t *q = reg->e[i].plugin;
    if (q->kind == p->kind && strcmp(q->name, p->name) == 0)
      return mmp_error_set(MMP_EEXIST, "%s: %s '%s' is already registered by %s", mod,
                           mmp_kind_name(p->kind), p->name, reg->e[i].module);
  }
  if (reg->n == reg->cap) {
    size_t cap = reg->cap ? reg->cap * 2 : 32;
    reg_entry_t *e = realloc(reg->e, cap * sizeof *e);
    if (!e) return mmp_error_set(MMP_ENOMEM, "out of memory growing the registry");
    reg->e = e;
    reg->cap = cap;
  }
  reg->e[reg->n].plugin = p;
  reg->e[reg->n].module = mmp_xstrdup(mod);
  if (!reg->e[reg->n].module) return MMP_ENOMEM;
  reg->n++;
  return 0;
}

size_t mmp_registry_count(const mmp_registry_t *reg) { return reg ? reg->n : 0; }

const mmp_plugin_t *mmp_registry_at(const mmp_registry_t *reg, size_t i) {
  return (reg && i < reg->n) ? reg->e[i].plugin : NULL;
}

const char *mmp_registry_module_of(const mmp_registry_t *reg, const mmp_plugin_t *p) {
  for (size_t i = 0; reg && i < reg->n; i++)
    if (reg->e[i].plugin == p) return reg->e[i].module;
  return NULL;
}

/* ---- search path ---- */

int mmp_registry_add_dir(mmp_registry_t *reg, const char *dir) {
  if (!reg || !dir || !*dir) return mmp_error_set(MMP_EINVAL, "mmp_registry_add_dir: empty directory");
  for (size_t i = 0; i < reg->ndirs; i++)
    if (strcmp(reg->dirs[i], dir) == 0) return 0;
  char **d = realloc(reg->dirs, (reg->ndirs + 1) * sizeof *d);
  if (!d) return mmp_error_set(MMP_ENOMEM, "out of memory");
  reg->dirs = d;
  if (!(reg->dirs[reg->ndirs] = mmp_xstrdup(dir))) return MMP_ENOMEM;
  reg->ndirs++;
  return 0;
}

size_t mmp_registry_dir_count(const mmp_registry_t *reg) { return reg ? reg->ndirs : 0; }
const char *mmp_registry_dir(const mmp_registry_t *reg, size_t i) {
  return (reg && i < reg->ndirs) ? reg->dirs[i] : NULL;
}

static int add_dir_list(mmp_registry_t *reg, const char *list) {
  char *copy = mmp_xstrdup(list);
  if (!copy) return MMP_ENOMEM;
  int rc = 0;
  for (char *save = NULL, *tok = strtok_r(copy, ":", &save); tok && rc == 0;
       tok = strtok_r(NULL, ":", &save))
    rc = mmp_registry_add_dir(reg, tok);
  free(copy);
  return rc;
}

/* Running from the build tree (uninstalled)? Then its plugin folders come
 * before the installed directory. */
static int running_uninstalled(void) {
  char exe[PATH_MAX], build[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return 0;
  exe[n] = '\0';
  if (!realpath(MMP_ABS_BUILDDIR, build)) return 0;
  size_t bl = strlen(build);
  return strncmp(exe, build, bl) == 0 && exe[bl] == '/';
}

int mmp_registry_set_search_path(mmp_registry_t *reg, const mmp_config_t *cfg) {
  const char *env = getenv("MMPIPE_PLUGIN_PATH");
  int rc = 0;
  if (env && *env && (rc = add_dir_list(reg, env)) < 0) return rc;
  const mmp_config_t *pp = cfg ? mmp_config_lookup(cfg, "plugin_path") : NULL;
  if (pp) {
    size_t n = 0;
    if ((rc = mmp_config_get_list_size(cfg, "plugin_path", &n)) < 0) return rc;
    for (size_t i = 0; i < n; i++) {
      const char *s;
      if ((rc = mmp_config_get_list_string(cfg, "plugin_path", i, &s)) < 0) return rc;
      char buf[PATH_MAX];
      if (s[0] == '/' || mmp_config_layer(pp) == MMP_LAYER_OVERRIDE)
        snprintf(buf, sizeof buf, "%s", s);
      else
        snprintf(buf, sizeof buf, "%s/%s", mmp_config_base_dir(cfg), s);
      if ((rc = mmp_registry_add_dir(reg, buf)) < 0) return rc;
    }
  }
  if (running_uninstalled()) {
    for (int k = 0; k < MMP_KIND_COUNT; k++) {
      char buf[PATH_MAX];
      snprintf(buf, sizeof buf, "%s/plugins/%s/.libs", MMP_ABS_BUILDDIR, kind_dirs[k]);
      if ((rc = mmp_registry_add_dir(reg, buf)) < 0) return rc;
    }
  }
  return mmp_registry_add_dir(reg, MMP_PKGLIBDIR);
}

/* ---- module loading ---- */

static char *module_base(const char *path) {
  const char *b = strrchr(path, '/');
  b = b ? b + 1 : path;
  char *s = mmp_xstrdup(b);
  if (!s) return NULL;
  char *dot = strchr(s, '.');
  if (dot) *dot = '\0';
  return s;
}

static int already_loaded(const mmp_registry_t *reg, const char *base) {
  for (size_t i = 0; i < reg->nloaded; i++)
    if (strcmp(reg->loaded[i], base) == 0) return 1;
  return 0;
}

static void remember(mmp_registry_t *reg, char *base) {
  char **l = realloc(reg->loaded, (reg->nloaded + 1) * sizeof *l);
  if (!l) {
    free(base);
    return;
  }
  reg->loaded = l;
  reg->loaded[reg->nloaded++] = base;
}

int mmp_registry_load_module(mmp_registry_t *reg, const char *path) {
  if (!reg || !path) return mmp_error_set(MMP_EINVAL, "mmp_registry_load_module: NULL argument");
  if (access(path, R_OK) != 0)
    return mmp_error_set(MMP_EPLUGIN, "%s: cannot load module: file not found or unreadable", path);
  char *base = module_base(path);
  if (!base) return MMP_ENOMEM;
  for (char *c = base; *c; c++)
    if (!(('a' <= *c && *c <= 'z') || ('A' <= *c && *c <= 'Z') || ('0' <= *c && *c <= '9') || *c == '_')) {
      int rc = mmp_error_set(MMP_EPLUGIN, "%s: module names may hold only letters, digits and '_'", path);
      free(base);
      return rc;
    }
  lt_dladvise advise;
  lt_dladvise_init(&advise);
  lt_dladvise_local(&advise); /* each module's symbols stay its own */
  lt_dlhandle h = lt_dlopenadvise(path, advise);
  lt_dladvise_destroy(&advise);
  if (!h) {
    int rc = mmp_error_set(MMP_EPLUGIN, "%s: cannot load module: %s", path, lt_dlerror());
    free(base);
    return rc;
  }
  char sym[300];
  snprintf(sym, sizeof sym, "mmp_plugin_%s_init", base);
  void *fn = lt_dlsym(h, sym);
  if (!fn) {
    lt_dlclose(h);
    int rc = mmp_error_set(MMP_EPLUGIN, "%s: not an mmpipe module: entry symbol %s not found", path, sym);
    free(base);
    return rc;
  }
  int (*entry)(mmp_registry_t *);
  *(void **)&entry = fn;
  size_t before = reg->n;
  reg->loading = path;
  mmp_error_clear();
  int rc = entry(reg);
  reg->loading = NULL;
  if (rc < 0) {
    /* roll back what this module registered: it failed as a whole */
    for (size_t i = before; i < reg->n; i++) free(reg->e[i].module);
    reg->n = before;
    lt_dlclose(h);
    if (mmp_error_code() == MMP_OK) mmp_error_set(rc, "%s: entry %s failed (%s)", path, sym, mmp_strerror(rc));
    free(base);
    return rc == MMP_EABI || rc == MMP_EEXIST ? rc : (rc == MMP_EPLUGIN ? rc : MMP_EPLUGIN);
  }
  lt_dlhandle *hs = realloc(reg->handles, (reg->nhandles + 1) * sizeof *hs);
  if (!hs) {
    free(base);
    return mmp_error_set(MMP_ENOMEM, "out of memory");
  }
  reg->handles = hs;
  reg->handles[reg->nhandles++] = h;
  remember(reg, base);
  MMP_DEBUG("loader", "loaded %s (%zu implementations)", path, reg->n - before);
  return 0;
}

/* Find @base.so (or .la) in the search path; writes the first hit. */
static int find_module_file(const mmp_registry_t *reg, const char *base, char *out, size_t len) {
  static const char *exts[] = {".so", ".la"};
  for (size_t d = 0; d < reg->ndirs; d++)
    for (size_t e = 0; e < 2; e++) {
      snprintf(out, len, "%s/%s%s", reg->dirs[d], base, exts[e]);
      if (access(out, R_OK) == 0) return 1;
    }
  return 0;
}

static int is_module_name(const char *fname, char *base, size_t len) {
  size_t n = strlen(fname);
  if (n > 3 && strcmp(fname + n - 3, ".so") == 0) n -= 3;
  else if (n > 3 && strcmp(fname + n - 3, ".la") == 0) n -= 3;
  else return 0;
  if (n == 0 || n >= len || strncmp(fname, "lib", 3) == 0) return 0;
  memcpy(base, fname, n);
  base[n] = '\0';
  return 1;
}

int mmp_registry_load_all(mmp_registry_t *reg, int *failures) {
  int fails = 0, found_dir = 0;
  for (size_t d = 0; d < reg->ndirs; d++) {
    DIR *dir = opendir(reg->dirs[d]);
    if (!dir) continue;
    found_dir = 1;
    char **names = NULL;
    size_t nn = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
      char base[256];
      if (!is_module_name(de->d_name, base, sizeof base)) continue;
      int dup = 0;
      for (size_t i = 0; i < nn; i++) dup |= strcmp(names[i], base) == 0;
      if (dup) continue;
      char **nn2 = realloc(names, (nn + 1) * sizeof *names);
      if (!nn2) break;
      names = nn2;
      names[nn++] = mmp_xstrdup(base);
    }
    closedir(dir);
    for (size_t i = 0; i < nn; i++) {
      if (names[i] && !already_loaded(reg, names[i])) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s.so", reg->dirs[d], names[i]);
        if (access(path, R_OK) != 0) snprintf(path, sizeof path, "%s/%s.la", reg->dirs[d], names[i]);
        if (mmp_registry_load_module(reg, path) < 0) {
          MMP_WARN("loader", "%s", mmp_error_last());
          remember(reg, mmp_xstrdup(names[i])); /* do not retry a broken module */
          fails++;
        }
      }
      free(names[i]);
    }
    free(names);
  }
  reg->loaded_all = 1;
  if (failures) *failures = fails;
  mmp_error_clear();
  if (!found_dir && reg->ndirs > 0)
    return mmp_error_set(MMP_ENOENT, "no plugin directory exists (searched %zu)", reg->ndirs);
  return 0;
}

static const mmp_plugin_t *lookup(const mmp_registry_t *reg, mmp_kind_t kind, const char *name) {
  for (size_t i = 0; i < reg->n; i++)
    if (reg->e[i].plugin->kind == kind && strcmp(reg->e[i].plugin->name, name) == 0)
      return reg->e[i].plugin;
  return NULL;
}

const mmp_plugin_t *mmp_registry_find(mmp_registry_t *reg, mmp_kind_t kind, const char *name) {
  if (!reg || !name || (unsigned)kind >= MMP_KIND_COUNT) {
    mmp_error_set(MMP_EINVAL, "mmp_registry_find: bad argument");
    return NULL;
  }
  const mmp_plugin_t *p = lookup(reg, kind, name);
  if (p) return p;
  /* Lazy load by naming convention: <kind>_<name>.so */
  char base[300], path[PATH_MAX];
  snprintf(base, sizeof base, "%s_%s", kind_names[kind], name);
  if (!already_loaded(reg, base) && find_module_file(reg, base, path, sizeof path)) {
    if (mmp_registry_load_module(reg, path) < 0) {
      remember(reg, mmp_xstrdup(base));
      mmp_error_prefix("cannot load %s '%s': ", kind_names[kind], name);
      return NULL;
    }
    if ((p = lookup(reg, kind, name))) return p;
  }
  /* A module may register implementations under other file names. */
  if (!reg->loaded_all) {
    int fails = 0;
    mmp_registry_load_all(reg, &fails);
    if ((p = lookup(reg, kind, name))) return p;
  }
  const char **cands = malloc((reg->n + 1) * sizeof *cands);
  size_t nc = 0;
  mmp_strbuf_t known = {0};
  for (size_t i = 0; cands && i < reg->n; i++)
    if (reg->e[i].plugin->kind == kind) {
      cands[nc++] = reg->e[i].plugin->name;
      mmp_strbuf_append(&known, "%s%s", known.len ? ", " : "", reg->e[i].plugin->name);
    }
  const char *near = cands ? mmp_nearest(name, cands, nc) : NULL;
  mmp_error_set(MMP_ENOENT, "unknown %s '%s'%s%s%s; known %ss: %s", kind_names[kind], name,
                near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "",
                kind_names[kind], known.len ? known.data : "(none found on the plugin path)");
  mmp_strbuf_free(&known);
  free(cands);
  return NULL;
}
