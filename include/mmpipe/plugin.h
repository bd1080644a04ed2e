/* mmpipe/plugin.h - the plugin ABI: kinds, descriptors, key tables, vtables.
 *
 * A module (a libltdl shared object named `<kind>_<name>.so`, e.g.
 * scheduler_ddim.so) exports exactly one symbol, mmp_plugin_<module>_init,
 * that registers one or more implementations:
 *
 *   static const mmp_key_t keys[] = {
 *     {"num_inference_steps", MMP_TYPE_INT, "50", "denoising steps", 0, 0},
 *     {NULL, 0, NULL, NULL, 0, 0}};
 *   static const mmp_scheduler_ops_t ops = {
 *     .base = MMP_PLUGIN_BASE(MMP_KIND_SCHEDULER, mmp_scheduler_ops_t,
 *                             "ddim", "1.0", "DDIM sampler", keys,
 *                             ddim_create, ddim_destroy),
 *     .set_timesteps = ddim_set_timesteps, ... };
 *   MMP_EXPORT int mmp_plugin_scheduler_ddim_init(mmp_registry_t *reg) {
 *     return mmp_registry_add(reg, &ops.base);
 *   }
 *
 * Every vtable begins with mmp_plugin_t and only grows at its end;
 * base.struct_size says how much of it the module knows, and the core reads
 * a member only if struct_size covers it. Lifecycle: load -> register ->
 * configure (keys validated, defaults merged) -> create -> run -> destroy.
 * State lives in the instance (void *self), never in globals.
 */
#ifndef MMPIPE_PLUGIN_H
#define MMPIPE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <mmpipe/config.h>
#include <mmpipe/tensor.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MMP_ABI_MAJOR 1 /* bumped on any incompatible change */
#define MMP_ABI_MINOR 1 /* bumped when members are added at the end (1: parameters) */

#if defined(__GNUC__)
#define MMP_EXPORT __attribute__((visibility("default")))
#else
#define MMP_EXPORT
#endif

typedef enum mmp_kind {
  MMP_KIND_DATASET = 0,
  MMP_KIND_PROCESSOR,
  MMP_KIND_ENCODER,
  MMP_KIND_SCHEDULER,
  MMP_KIND_MODEL,
  MMP_KIND_TASK,
  MMP_KIND_COUNT
} mmp_kind_t;

/* "dataset", "processor", ... (transfer none) */
const char *mmp_kind_name(mmp_kind_t k);
/* Accepts singular and plural ("schedulers"); MMP_ENOENT if unknown. */
int mmp_kind_parse(const char *s, mmp_kind_t *out);

/* Key flags */
#define MMP_KEY_REQUIRED 0x1u /* no default; the config must give it */
#define MMP_KEY_PATH 0x2u     /* a file path, resolved against the task file */
/* Accepted and ignored: a key that other implementations of the same kind
 * use, declared so that one configuration works with any of them (swap
 * `scheduler.name` and keep the other keys). Give it no default. The first
 * declaration of a name in a table wins, so a table may list its own keys
 * and then a shared list of ignored ones. */
#define MMP_KEY_IGNORED 0x4u

/* One configuration key a plugin accepts. Tables end with name == NULL. */
typedef struct mmp_key {
  const char *name;
  mmp_type_t type;
  const char *default_value; /* libconfig literal ("50", "\"ddim\"", "[]");
                                NULL = no default */
  const char *doc;           /* one line */
  unsigned flags;            /* MMP_KEY_* */
  mmp_kind_t component_kind; /* for MMP_TYPE_COMPONENT keys */
} mmp_key_t;

typedef struct mmp_registry mmp_registry_t;
typedef struct mmp_context mmp_context_t;
typedef struct mmp_tensormap mmp_tensormap_t;

/* The header every vtable starts with. */
typedef struct mmp_plugin {
  uint16_t abi_major;    /* MMP_ABI_MAJOR the module was built with */
  uint16_t abi_minor;    /* MMP_ABI_MINOR the module was built with */
  uint32_t struct_size;  /* sizeof the whole kind-specific vtable */
  mmp_kind_t kind;
  const char *name;        /* required: the string configs use */
  const char *version;     /* required: implementation version */
  const char *description; /* required: one line */
  const mmp_key_t *keys;   /* required (may be just the terminator) */
  /* required: build an instance from its validated group (defaults merged).
   * @cfg and @ctx outlive the instance. */
  int (*create)(const struct mmp_plugin *plugin, const mmp_config_t *cfg,
                mmp_context_t *ctx, void **out_self);
  /* required: free an instance (never called with NULL) */
  void (*destroy)(void *self);
  void *reserved[4];
} mmp_plugin_t;

#define MMP_PLUGIN_BASE(kind_, type_, name_, version_, desc_, keys_, create_, \
                        destroy_)                                           \
  {                                                                         \
    .abi_major = MMP_ABI_MAJOR, .abi_minor = MMP_ABI_MINOR,                 \
    .struct_size = (uint32_t)sizeof(type_), .kind = (kind_),                \
    .name = (name_), .version = (version_), .description = (desc_),         \
    .keys = (keys_), .create = (create_), .destroy = (destroy_)             \
  }

/* ---- kind-specific vtables ---- */

/* Components that map named tensors to named tensors (encoders, models,
 * processors) share this signature. @method selects an entry point (NULL
 * = the default one, e.g. the VAE's "encode"/"decode"). Outputs are added to
 * @out (transfer full into the map). */
typedef int (*mmp_forward_cb)(void *self, const char *method,
                              const mmp_tensormap_t *in, mmp_tensormap_t *out);

/* One trainable tensor of an instance, by state-dict name (transfer none:
 * the instance's own tensor, which an optimizer updates in place). A
 * non-zero return stops the listing and is returned by parameters(). */
typedef int (*mmp_param_cb)(void *user, const char *name, mmp_tensor_t *param);

typedef struct mmp_encoder_ops {
  mmp_plugin_t base;
  mmp_forward_cb forward; /* required */
  /* optional (ABI 1.1, read through MMP_OPS_HAS): call @cb for every
   * trainable tensor of the instance, by state-dict name, in a fixed order.
   * The tensors are writable f32 only when the instance was created for
   * training (e.g. the `trainable = true` key of the SD part plugins);
   * otherwise an MMP_EINVAL error says so. doc/training.md. */
  int (*parameters)(void *self, mmp_param_cb cb, void *user);
} mmp_encoder_ops_t;

typedef struct mmp_model_ops {
  mmp_plugin_t base;
  mmp_forward_cb forward; /* required */
  /* optional (ABI 1.1): as mmp_encoder_ops_t's parameters */
  int (*parameters)(void *self, mmp_param_cb cb, void *user);
} mmp_model_ops_t;

typedef struct mmp_processor_ops {
  mmp_plugin_t base;
  mmp_forward_cb forward; /* optional: tensors -> tensors (images) */
  /* optional: texts -> tensors (tokenizers: input_ids, attention_mask) */
  int (*encode_text)(void *self, const char *const *texts, size_t n,
                     mmp_tensormap_t *out);
} mmp_processor_ops_t;

typedef struct mmp_scheduler_ops {
  mmp_plugin_t base;
  /* required: compute the timestep list; resets multistep state. */
  int (*set_timesteps)(void *self, int num_inference_steps);
  /* required: the timesteps of the current schedule, one per model call.
   * (transfer none) valid until the next set_timesteps. */
  int (*timesteps)(void *self, const int64_t **out, size_t *n);
  /* required: one model call's update. @index is the call's position in
   * the timestep list (multistep schedulers repeat timesteps). @noise is
   * nullable (stochastic steps then draw from the instance's generator).
   * *prev_sample is transfer full; *pred_original may be NULL where the
   * scheduler does not define it (pred_original nullable out-arg). */
  int (*step)(void *self, size_t index, const mmp_tensor_t *model_output,
              const mmp_tensor_t *sample, const mmp_tensor_t *noise,
              mmp_tensor_t **prev_sample, mmp_tensor_t **pred_original);
  /* required: q(x_t | x_0) for each batch item's timestep (i64 [B]). */
  int (*add_noise)(void *self, const mmp_tensor_t *x0,
                   const mmp_tensor_t *noise, const mmp_tensor_t *timesteps,
                   mmp_tensor_t **out);
  /* optional (default: identity): scale the model input at call @index. */
  int (*scale_model_input)(void *self, size_t index, const mmp_tensor_t *sample,
                           mmp_tensor_t **out);
  /* optional (default 1.0): the std of the initial noise. */
  double (*init_noise_sigma)(void *self);
  /* optional (default 1): model evaluations one step needs. */
  int (*order)(void *self);
  /* optional (default: timesteps() as doubles): the exact timestep to give
   * the model at each call. Differs from timesteps() only where a schedule
   * is fractional (euler/euler_ancestral with linspace spacing or Karras
   * sigmas; timesteps() then holds the values rounded half to even).
   * (transfer none) valid until the next set_timesteps. */
  int (*model_timesteps)(void *self, const double **out, size_t *n);
  /* optional (default: never; added at the end, read only when struct_size
   * covers it, so older modules and older cores work): whether step(@index) of
   * the current schedule uses noise shaped like the sample, i.e. where
   * diffusers' step() draws randn_tensor(model_output.shape, generator)
   * (even where the draw is then unused, as euler's with s_churn = 0). A
   * caller that owns the random stream draws it then and passes it as
   * step()'s @noise. Returns 1, 0, or a negative MMP_E* code (before
   * set_timesteps, @index outside the schedule). */
  int (*step_noise)(void *self, size_t index);
} mmp_scheduler_ops_t;

/* Whether the vtable @ops (a pointer to a kind-specific vtable of type
 * @type) has a non-NULL @member that its struct_size covers: how callers
 * reach optional members added at the end (a module built before they
 * existed has a smaller struct_size). */
#define MMP_OPS_HAS(ops, type, member)                                            \
  ((ops)->base.struct_size >= offsetof(type, member) + sizeof(((type *)0)->member) && \
   (ops)->member != NULL)

/* What `pipeline dataset build` asks of a dataset: make its stored form
 * (e.g. AR-LDM's HDF5 file) from the raw release. Grows only at the end;
 * a dataset reads a member only if struct_size covers it. */
#define MMP_DATASET_BUILD_NO_RESUME 0x1u /* discard an interrupted build's work */
#define MMP_DATASET_BUILD_TRUE_RGB 0x2u  /* PNGs hold RGB, not AR-LDM's swapped BGR */
#define MMP_DATASET_BUILD_QUIET 0x4u     /* no summary on stdout (the report file only) */
typedef struct mmp_dataset_build {
  uint32_t struct_size;        /* sizeof(mmp_dataset_build_t) of the caller */
  const char *raw_dir;         /* the unpacked raw release */
  const char *out_path;        /* the file to write (replaced when complete) */
  const char *report_path;     /* nullable: JSON report (default: out_path + ".report.json") */
  const char *const *options;  /* nullable, NULL-terminated "key=value" dataset options */
  int threads;                 /* worker threads (<= 0: MMPIPE_THREADS or the CPU count) */
  unsigned flags;              /* MMP_DATASET_BUILD_* */
  int64_t limit;               /* > 0: stop after this many stories per split (trials, benches) */
} mmp_dataset_build_t;

/* What inspect() does with a stored file. */
typedef enum mmp_dataset_inspect {
  MMP_DATASET_PROBE = 0, /* returns 0 (not this dataset's format) .. 100 (surely its) */
  MMP_DATASET_INFO,      /* a quick look: layout, counts, sizes of the first items */
  MMP_DATASET_VERIFY,    /* read and decode everything; a summary table; < 0 on any fault */
  MMP_DATASET_DIGEST     /* one content digest per part (decoded, encoder-independent) */
} mmp_dataset_inspect_t;

/* A dataset item: named tensors plus named strings (captions). */
typedef struct mmp_dataset_ops {
  mmp_plugin_t base;
  int64_t (*size)(void *self); /* required */
  /* required: item @index into @out (tensors transfer full into the map).
   * Must be safe to call from several threads on one instance. */
  int (*get)(void *self, int64_t index, mmp_tensormap_t *out);
  /* optional (NULL: the dataset keeps no files of its own; added at the
   * end, read through MMP_OPS_HAS): look at a stored file @path without an
   * instance, writing what @mode asks for to @out. Returns a negative
   * MMP_E* code when the file cannot be read (and, in VERIFY, when anything
   * in it is faulty), else 0 (PROBE: the score). */
  int (*inspect)(const mmp_plugin_t *plugin, const char *path, mmp_dataset_inspect_t mode,
                 FILE *out);
  /* optional (NULL: cannot be built): make the stored file from the raw
   * release as @req says. Long work: reports progress and stops at
   * mmp_context_cancelled(@ctx) with MMP_ECANCELED, leaving what a later
   * call resumes from. Prints its summary to stdout (unless
   * MMP_DATASET_BUILD_QUIET). @ctx may be NULL (no progress, no cancel). */
  int (*build)(const mmp_plugin_t *plugin, const mmp_dataset_build_t *req, mmp_context_t *ctx);
} mmp_dataset_ops_t;

typedef struct mmp_task_ops {
  mmp_plugin_t base;
  /* required: do the work. Check mmp_context_cancelled() at safe points. */
  int (*run)(void *self, mmp_context_t *ctx);
} mmp_task_ops_t;

/* ---- registry ---- */

/* Register an implementation. The descriptor must outlive the registry
 * (static storage in the module). Errors: MMP_EABI, MMP_EEXIST (name
 * registered twice for one kind), MMP_EPLUGIN (a required field missing). */
int mmp_registry_add(mmp_registry_t *reg, const mmp_plugin_t *plugin);

/* Find an implementation; loads its module lazily from the search path.
 * MMP_ENOENT with a "did you mean" suggestion when unknown.
 * (transfer none) NULL + message when not found. */
const mmp_plugin_t *mmp_registry_find(mmp_registry_t *reg, mmp_kind_t kind,
                                      const char *name);

/* ---- named tensor maps ---- */
mmp_tensormap_t *mmp_tensormap_new(void); /* (transfer full) */
void mmp_tensormap_free(mmp_tensormap_t *m); /* unrefs its tensors; NULL ok */
/* Store @t under @name (takes the caller's reference: transfer full);
 * replaces and unrefs an existing entry. */
int mmp_tensormap_set(mmp_tensormap_t *m, const char *name, mmp_tensor_t *t);
/* (transfer none) NULL when absent */
mmp_tensor_t *mmp_tensormap_get(const mmp_tensormap_t *m, const char *name);
/* Like get, but sets an MMP_ENOENT message naming the tensor when absent. */
mmp_tensor_t *mmp_tensormap_need(const mmp_tensormap_t *m, const char *name);
size_t mmp_tensormap_size(const mmp_tensormap_t *m);
const char *mmp_tensormap_name(const mmp_tensormap_t *m, size_t i);
mmp_tensor_t *mmp_tensormap_at(const mmp_tensormap_t *m, size_t i);
/* Drop the entry @name (its reference is released; the later entries keep
 * their order). 1 if there was one, 0 if not (or NULL arguments). */
int mmp_tensormap_remove(mmp_tensormap_t *m, const char *name);
/* Strings (captions, prompts) travel beside tensors. (copied) */
int mmp_tensormap_set_string(mmp_tensormap_t *m, const char *name, const char *s);
const char *mmp_tensormap_get_string(const mmp_tensormap_t *m, const char *name);

/* ---- run context: what an instance may use ---- */
mmp_registry_t *mmp_context_registry(mmp_context_t *ctx);
mmp_backend_t *mmp_context_backend(mmp_context_t *ctx);
/* The whole merged configuration (to find the groups of components a
 * task declared). (transfer none) */
const mmp_config_t *mmp_context_config(mmp_context_t *ctx);
/* True once the user asked to stop (SIGINT); stop at the next safe point
 * and return MMP_ECANCELED. */
int mmp_context_cancelled(mmp_context_t *ctx);
/* Progress of long work: begin with a total and a label, then advance. */
void mmp_context_progress_begin(mmp_context_t *ctx, const char *label, int64_t total);
void mmp_context_progress_advance(mmp_context_t *ctx, int64_t n);
void mmp_context_progress_end(mmp_context_t *ctx);

/* A configured instance of some implementation. */
typedef struct mmp_component {
  const mmp_plugin_t *plugin; /* (transfer none) its vtable */
  void *self;
} mmp_component_t;

/* Build the component described by the config group at @path (e.g.
 * "scheduler"): resolves "name", validates keys (all errors at once, with
 * file and line), merges defaults and calls create. (transfer full) */
mmp_component_t *mmp_component_create(mmp_context_t *ctx, mmp_kind_t kind,
                                      const char *path);
void mmp_component_free(mmp_component_t *c); /* NULL ok */

#ifdef __cplusplus
}
#endif
#endif
