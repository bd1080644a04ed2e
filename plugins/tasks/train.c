/* plugins/tasks/train.c - the training task: Stable Diffusion fine-tuning on image-caption pairs, AR-LDM on stories (issue 16).
 *
 * The loop (doc/training.md): data order per epoch, one tape per
 * micro-batch around the mode's step (plugins/common/train_step.h),
 * gradient accumulation, clipping, AdamW, the warmup + cosine schedule per
 * optimizer step; checkpoints (weights, moments, step counts, schedule,
 * data order, generator states) written atomically every N steps, at the
 * end and on SIGINT, and a resume that continues bit for bit; metrics as
 * JSON lines; validation loss per epoch; export of the trained weights in
 * the names the sampling plugins read. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mmpipe/file.h>
#include <mmpipe/autograd.h>
#include <mmpipe/dist.h>
#include <mmpipe/loader.h>
#include <mmpipe/optim.h>
#include <mmpipe/rng.h>
#include <mmpipe/safetensors.h>

#include "plugins/common/arldm.h"
#include "plugins/common/sd_common.h"
#include "plugins/common/train_data.h"
#include "plugins/common/train_step.h"
#include "plugins/processors/imagecommon.h"

static const train_step_ops_t *const train_modes[] = {&train_step_sd, &train_step_arldm, NULL};

static const mmp_key_t train_keys[] = {
    {"mode", MMP_TYPE_STRING, "\"sd\"", "what a step computes: sd (Stable Diffusion fine-tuning) or arldm (AR-LDM on stories)", 0, 0},
    {"data_dir", MMP_TYPE_STRING, "\"\"", "sd (required): folder of the training images (PNG or JPEG, all of one size)", MMP_KEY_PATH, 0},
    {"captions", MMP_TYPE_STRING, "\"\"", "file of `image<TAB>caption` lines (default: data_dir/captions.txt)", MMP_KEY_PATH, 0},
    {"val_data_dir", MMP_TYPE_STRING, "\"\"", "optional validation images: their mean loss after every epoch", MMP_KEY_PATH, 0},
    {"val_captions", MMP_TYPE_STRING, "\"\"", "captions of the validation images (default: val_data_dir/captions.txt)", MMP_KEY_PATH, 0},
    {"shuffle", MMP_TYPE_BOOL, "true", "a new order of the items every epoch (from the data generator)", 0, 0},
    {"batch_size", MMP_TYPE_INT, "1", "items per micro-batch", 0, 0},
    {"grad_accum", MMP_TYPE_INT, "1", "micro-batches per optimizer step (each loss scaled by 1/grad_accum)", 0, 0},
    {"max_steps", MMP_TYPE_INT, "0", "optimizer steps of the whole run (0: epochs x steps per epoch)", 0, 0},
    {"epochs", MMP_TYPE_INT, "1", "epochs, when max_steps is 0", 0, 0},
    {"run_steps", MMP_TYPE_INT, "0", "stop (with a checkpoint) after this many steps of this invocation (0: run to max_steps)", 0, 0},
    {"lr", MMP_TYPE_FLOAT, "1e-5", "AdamW learning rate (AR-LDM's)", 0, 0},
    {"weight_decay", MMP_TYPE_FLOAT, "1e-4", "AdamW weight decay (AR-LDM's)", 0, 0},
    {"betas", MMP_TYPE_LIST, "[0.9, 0.999]", "AdamW betas", 0, 0},
    {"eps", MMP_TYPE_FLOAT, "1e-8", "AdamW eps", 0, 0},
    {"lr_schedule", MMP_TYPE_STRING, "\"cosine\"", "cosine (pl_bolts' linear warmup + cosine, per optimizer step; step 0 has lr 0) or constant", 0, 0},
    {"warmup_steps", MMP_TYPE_INT, "0", "warmup of the cosine schedule, in optimizer steps", 0, 0},
    {"clip_norm", MMP_TYPE_FLOAT, "0", "> 0: clip the gradients' total 2-norm to this (clip_grad_norm_)", 0, 0},
    {"optimizer_in_backward", MMP_TYPE_BOOL, "false", "update each parameter (AdamW) during the backward as soon as its "
     "gradient is final, and free that gradient: the same result bit for bit, without ever holding all gradients "
     "(needs grad_accum = 1 and clip_norm = 0)", 0, 0},
    {"optimizer_state_on_disk", MMP_TYPE_BOOL, "false", "keep AdamW's two moments in a temporary file in output_dir, "
     "each parameter's read for its update and dropped from memory and the page cache after it: the same result bit "
     "for bit, 2 x the weights' bytes less memory, 4 x the weights' bytes of disk traffic per step", 0, 0},
    {"seed", MMP_TYPE_INT, "0", "seed of the step generator (latent sample, noise, timesteps) and of the data order", 0, 0},
    {"rng", MMP_TYPE_STRING, "\"torch\"", "random numbers: torch (torch.Generator().manual_seed(seed) on CPU; arldm's CFG drop: numpy's np.random.seed(seed) stream) or philox", 0, 0},
    {"freeze", MMP_TYPE_LIST, "[]", "glob patterns of parameters not trained (\"text_encoder.*\")", 0, 0},
    {"train", MMP_TYPE_LIST, "[]", "exceptions to freeze (\"*.token_embedding.*\")", 0, 0},
    {"checkpoint_every", MMP_TYPE_INT, "0", "> 0: a checkpoint every this many optimizer steps (always one at the end and on SIGINT)", 0, 0},
    {"output_dir", MMP_TYPE_STRING, "\"train-out\"", "checkpoint.safetensors, metrics.jsonl and export/ go here", MMP_KEY_PATH, 0},
    {"resume", MMP_TYPE_STRING, "\"\"", "a checkpoint to continue from (the same data, batch_size, grad_accum, max_steps, seed)", MMP_KEY_PATH, 0},
    {"arldm", MMP_TYPE_STRING, "\"\"", "arldm (required): the AR-LDM state dict (.safetensors with AR-LDM's names, or a torch.save "
     "file) whose modal_type_embeddings, time_embeddings (trained) and null buffers are read; the exported file copies "
     "its other tensors (the VAE)", MMP_KEY_PATH, 0},
    {"dataset", MMP_TYPE_COMPONENT, NULL, "arldm (required): the story dataset group (e.g. pororo with split = \"train\", "
     "the tokenizer vocabularies, max_length = S, image_size, task)", 0, MMP_KIND_DATASET},
    {"val_dataset", MMP_TYPE_COMPONENT, NULL, "arldm: optional validation stories (the same dataset with split = \"val\"): "
     "their mean loss after every epoch", 0, MMP_KIND_DATASET},
    {"tokenizer", MMP_TYPE_COMPONENT, "\"clip_tokenizer\"", "sd: the tokenizer (processor) group", 0, MMP_KIND_PROCESSOR},
    {"text_encoder", MMP_TYPE_COMPONENT, "\"clip_text\"", "the text encoder group (trainable = true to train it)", 0, MMP_KIND_ENCODER},
    {"mm_encoder", MMP_TYPE_COMPONENT, "\"blip\"", "arldm: BLIP, the multimodal encoder group (trainable = true to train it)", 0, MMP_KIND_ENCODER},
    {"blip_dropout", MMP_TYPE_STRING, "\"auto\"", "arldm: BLIP in train mode as AR-LDM runs it (BERT's dropout, the ViT's "
     "drop path): auto (on when BLIP trains beyond its word table, as AR-LDM without freeze_blip), on or off", 0, 0},
    {"unet", MMP_TYPE_COMPONENT, "\"unet2d_condition\"", "the denoising model group (trainable = true)", 0, MMP_KIND_MODEL},
    {"vae", MMP_TYPE_COMPONENT, "\"vae\"", "the autoencoder group (frozen)", 0, MMP_KIND_ENCODER},
    {"scheduler", MMP_TYPE_COMPONENT, "\"ddpm\"", "the noise schedule group (its add_noise)", 0, MMP_KIND_SCHEDULER},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef struct train {
  const train_step_ops_t *mode;
  char data_dir[4096], captions[4096], val_dir[4096], val_captions[4096];
  char out_dir[4096], resume[4096], arldm[4096];
  bool has_val_ds; /* a val_dataset group is configured */
  bool shuffle, cosine;
  bool in_backward; /* optimizer_in_backward */
  bool on_disk;     /* optimizer_state_on_disk */
  int64_t batch, accum, max_steps, epochs, run_steps, warmup, seed, ckpt_every;
  double lr, wd, beta1, beta2, eps, clip;
  mmp_rng_mode_t rng_mode;
  int blip_dropout; /* -1 auto, 0 off, 1 on */
  char **freeze, **train; /* NULL-terminated */
} train_t;

static void free_strv(char **v) {
  for (size_t i = 0; v && v[i]; i++) free(v[i]);
  free(v);
}

static void train_destroy(void *self) {
  train_t *t = self;
  if (!t) return;
  free_strv(t->freeze);
  free_strv(t->train);
  free(t);
}

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  const char *f = n ? mmp_config_file(n) : NULL;
  return mmp_error_set(MMP_ECONFIG, "%s:%d: %s: %s", f ? f : "(config)", n ? mmp_config_line(n) : 0, key, msg);
}

static int get_strv(const mmp_config_t *cfg, const char *key, char ***out) {
  size_t n = 0;
  int rc = mmp_config_get_list_size(cfg, key, &n);
  if (rc < 0) return rc;
  char **v = calloc(n + 1, sizeof *v);
  if (!v) return mmp_error_set(MMP_ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const char *s = NULL;
    if ((rc = mmp_config_get_list_string(cfg, key, i, &s)) < 0 || !(v[i] = strdup(s))) {
      free_strv(v);
      return rc < 0 ? rc : mmp_error_set(MMP_ENOMEM, "out of memory");
    }
  }
  *out = v;
  return 0;
}

static int train_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx, void **out_self) {
  (void)plugin;
  train_t *t = calloc(1, sizeof *t);
  if (!t) return mmp_error_set(MMP_ENOMEM, "out of memory");
  const char *mode = "sd", *rng = "torch", *sched = "cosine", *bd = "auto";
  size_t nb = 0;
  int rc;
  if ((rc = mmp_config_get_string(cfg, "mode", &mode)) || (rc = mmp_config_get_string(cfg, "rng", &rng)) ||
      (rc = mmp_config_get_string(cfg, "blip_dropout", &bd)) ||
      (rc = mmp_config_get_string(cfg, "lr_schedule", &sched)) ||
      (rc = mmp_config_get_path(cfg, "data_dir", t->data_dir, sizeof t->data_dir)) ||
      (rc = mmp_config_get_path(cfg, "captions", t->captions, sizeof t->captions)) ||
      (rc = mmp_config_get_path(cfg, "val_data_dir", t->val_dir, sizeof t->val_dir)) ||
      (rc = mmp_config_get_path(cfg, "val_captions", t->val_captions, sizeof t->val_captions)) ||
      (rc = mmp_config_get_path(cfg, "output_dir", t->out_dir, sizeof t->out_dir)) ||
      (rc = mmp_config_get_path(cfg, "resume", t->resume, sizeof t->resume)) ||
      (rc = mmp_config_get_path(cfg, "arldm", t->arldm, sizeof t->arldm)) ||
      (rc = mmp_config_get_bool(cfg, "shuffle", &t->shuffle)) ||
      (rc = mmp_config_get_bool(cfg, "optimizer_in_backward", &t->in_backward)) ||
      (rc = mmp_config_get_bool(cfg, "optimizer_state_on_disk", &t->on_disk)) ||
      (rc = mmp_config_get_int(cfg, "batch_size", &t->batch)) ||
      (rc = mmp_config_get_int(cfg, "grad_accum", &t->accum)) ||
      (rc = mmp_config_get_int(cfg, "max_steps", &t->max_steps)) ||
      (rc = mmp_config_get_int(cfg, "epochs", &t->epochs)) ||
      (rc = mmp_config_get_int(cfg, "run_steps", &t->run_steps)) ||
      (rc = mmp_config_get_int(cfg, "warmup_steps", &t->warmup)) ||
      (rc = mmp_config_get_int(cfg, "seed", &t->seed)) ||
      (rc = mmp_config_get_int(cfg, "checkpoint_every", &t->ckpt_every)) ||
      (rc = mmp_config_get_float(cfg, "lr", &t->lr)) || (rc = mmp_config_get_float(cfg, "weight_decay", &t->wd)) ||
      (rc = mmp_config_get_float(cfg, "eps", &t->eps)) || (rc = mmp_config_get_float(cfg, "clip_norm", &t->clip)) ||
      (rc = mmp_config_get_list_size(cfg, "betas", &nb)) || (rc = get_strv(cfg, "freeze", &t->freeze)) ||
      (rc = get_strv(cfg, "train", &t->train)))
    goto fail;
  for (int i = 0; train_modes[i]; i++)
    if (strcmp(train_modes[i]->mode, mode) == 0) t->mode = train_modes[i];
  if (!t->mode) { rc = cfg_error(cfg, "mode", "unknown mode (known: sd, arldm)"); goto fail; }
  const mmp_config_t *root = ctx ? mmp_context_config(ctx) : NULL;
  if (t->mode == &train_step_arldm) {
    if (!t->arldm[0]) { rc = cfg_error(cfg, "arldm", "mode = \"arldm\" needs the AR-LDM state dict"); goto fail; }
    if (root && !mmp_config_lookup(root, "dataset")) {
      rc = cfg_error(cfg, "mode", "mode = \"arldm\" reads stories from a `dataset` group (a story dataset plugin)");
      goto fail;
    }
    if (t->data_dir[0] || t->val_dir[0]) { rc = cfg_error(cfg, "data_dir", "mode = \"arldm\" reads the dataset group, not data_dir"); goto fail; }
    t->has_val_ds = root && mmp_config_lookup(root, "val_dataset") != NULL;
  } else if (!t->data_dir[0]) {
    rc = cfg_error(cfg, "data_dir", "mode = \"sd\" needs the folder of training images");
    goto fail;
  }
  if (mmp_rng_mode_parse(rng, &t->rng_mode) < 0) { rc = cfg_error(cfg, "rng", "must be \"torch\" or \"philox\""); goto fail; }
  t->blip_dropout = !strcmp(bd, "auto") ? -1 : !strcmp(bd, "on") ? 1 : !strcmp(bd, "off") ? 0 : -2;
  if (t->blip_dropout == -2) { rc = cfg_error(cfg, "blip_dropout", "must be \"auto\", \"on\" or \"off\""); goto fail; }
  if (strcmp(sched, "cosine") && strcmp(sched, "constant")) {
    rc = cfg_error(cfg, "lr_schedule", "must be \"cosine\" or \"constant\"");
    goto fail;
  }
  t->cosine = strcmp(sched, "cosine") == 0;
  if (nb != 2 || (rc = mmp_config_get_list_float(cfg, "betas", 0, &t->beta1)) ||
      (rc = mmp_config_get_list_float(cfg, "betas", 1, &t->beta2))) {
    rc = cfg_error(cfg, "betas", "must be a list of two numbers");
    goto fail;
  }
  if (t->batch < 1 || t->batch > 65536) { rc = cfg_error(cfg, "batch_size", "must be 1..65536"); goto fail; }
  if (t->accum < 1 || t->accum > 65536) { rc = cfg_error(cfg, "grad_accum", "must be 1..65536"); goto fail; }
  if (t->max_steps < 0) { rc = cfg_error(cfg, "max_steps", "must be >= 0"); goto fail; }
  if (t->epochs < 1) { rc = cfg_error(cfg, "epochs", "must be >= 1"); goto fail; }
  if (t->run_steps < 0) { rc = cfg_error(cfg, "run_steps", "must be >= 0"); goto fail; }
  if (t->warmup < 0) { rc = cfg_error(cfg, "warmup_steps", "must be >= 0"); goto fail; }
  if (t->seed < 0) { rc = cfg_error(cfg, "seed", "must be >= 0"); goto fail; }
  if (t->ckpt_every < 0) { rc = cfg_error(cfg, "checkpoint_every", "must be >= 0"); goto fail; }
  if (!(t->clip >= 0)) { rc = cfg_error(cfg, "clip_norm", "must be >= 0"); goto fail; }
  if (!t->out_dir[0]) { rc = cfg_error(cfg, "output_dir", "must not be empty"); goto fail; }
  /* the update of a parameter in the backward cannot wait for gradients still to come */
  if (t->in_backward && t->accum > 1) {
    rc = cfg_error(cfg, "optimizer_in_backward", "needs grad_accum = 1 (a step in the backward cannot wait for the "
                   "later micro-batches' gradients)");
    goto fail;
  }
  if (t->in_backward && t->clip > 0) {
    rc = cfg_error(cfg, "optimizer_in_backward", "needs clip_norm = 0 (clipping scales every gradient by the total "
                   "norm, known only when the backward is over)");
    goto fail;
  }
  if (t->data_dir[0] && !t->captions[0]) snprintf(t->captions, sizeof t->captions, "%.4000s/captions.txt", t->data_dir);
  if (t->val_dir[0] && !t->val_captions[0])
    snprintf(t->val_captions, sizeof t->val_captions, "%.4000s/captions.txt", t->val_dir);
  /* torch's own checks, before any work */
  mmp_adamw_params_t hp = {t->lr, t->beta1, t->beta2, t->eps, t->wd};
  mmp_adamw_t *probe = mmp_adamw_new(&hp);
  if (!probe) { rc = cfg_error(cfg, "lr", mmp_error_last()); goto fail; }
  mmp_adamw_free(probe);
  *out_self = t;
  return 0;
fail:
  train_destroy(t);
  return rc ? rc : MMP_ECONFIG;
}

/* ---------------------------------------------------------------- data */

/* Items @idx[0..n) as f32 [n, 3, H, W] in [-1, 1]: torchvision's ToTensor
 * then Normalize([0.5], [0.5]), i.e. (x / 255 - 0.5) / 0.5 in float.
 * (transfer full) */
static mmp_tensor_t *load_pixels(const train_data_t *d, const int64_t *idx, int64_t n, mmp_backend_t *be) {
  float *buf = NULL;
  int64_t H = 0, W = 0;
  mmp_tensor_t *out = NULL;
  for (int64_t b = 0; b < n; b++) {
    mmp_image_t im = {0};
    const char *path = d->items[idx[b]].path;
    if (mmp_image_load(path, &im) < 0) goto fail;
    if (b == 0) {
      H = im.h;
      W = im.w;
      if (!(buf = malloc((size_t)(n * 3 * H * W) * sizeof *buf))) {
        mmp_image_clear(&im);
        mmp_error_set(MMP_ENOMEM, "out of memory");
        goto fail;
      }
    } else if (im.h != H || im.w != W) {
      mmp_error_set(MMP_ESHAPE, "train: %s is %dx%d, the batch's first image %lldx%lld (resize the data to one size)",
                    path, im.w, im.h, (long long)W, (long long)H);
      mmp_image_clear(&im);
      goto fail;
    }
    for (int64_t c = 0; c < 3; c++)
      for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < W; x++) {
          float v = (float)im.data[(y * W + x) * im.c + c] / 255.0f;
          buf[((b * 3 + c) * H + y) * W + x] = (v - 0.5f) / 0.5f;
        }
    mmp_image_clear(&im);
  }
  int64_t shape[4] = {n, 3, H, W};
  out = mmp_tensor_from_data(be, MMP_F32, 4, shape, buf);
fail:
  free(buf);
  return out;
}

/* The items of a run: image-caption lines (mode sd) or a dataset plugin's
 * items (mode arldm: the `dataset` / `val_dataset` group). One order,
 * sharding and batching for both: a micro-batch is the items at positions
 * of the epoch's order, loaded by micro_loss. */
typedef struct source {
  train_data_t list;
  mmp_component_t *ds;
  int64_t n;
} source_t;

static int source_open(source_t *s, mmp_context_t *ctx, const char *group, const char *dir, const char *captions) {
  if (!group) {
    int rc = train_data_load(&s->list, dir, captions);
    s->n = s->list.n;
    return rc;
  }
  if (!(s->ds = mmp_component_create(ctx, MMP_KIND_DATASET, group))) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
  s->n = ((const mmp_dataset_ops_t *)s->ds->plugin)->size(s->ds->self);
  if (s->n <= 0) return mmp_error_set(MMP_EDATA, "train: the %s group's dataset has no items", group);
  return 0;
}

static void source_close(source_t *s) {
  train_data_clear(&s->list);
  mmp_component_free(s->ds);
  memset(s, 0, sizeof *s);
}

/* Items @idx[0..n) of a dataset, their tensors stacked (transfer full). */
static mmp_tensormap_t *load_items(const source_t *d, const int64_t *idx, int64_t n) {
  const mmp_dataset_ops_t *ops = (const mmp_dataset_ops_t *)d->ds->plugin;
  mmp_tensormap_t **items = calloc((size_t)n, sizeof *items), *batch = NULL;
  bool fine = items != NULL;
  if (!items) mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; fine && i < n; i++) {
    if (!(items[i] = mmp_tensormap_new())) {
      mmp_error_set(MMP_ENOMEM, "out of memory");
      fine = false;
    } else if (ops->get(d->ds->self, idx[i], items[i]) < 0) {
      mmp_error_prefix("train: dataset item %lld: ", (long long)idx[i]);
      fine = false;
    }
  }
  if (fine && mmp_loader_stack(items, (int)n, &batch) < 0) mmp_error_prefix("train: ");
  for (int64_t i = 0; items && i < n; i++) mmp_tensormap_free(items[i]);
  free(items);
  return batch;
}

/* ---------------------------------------------------------------- state */

typedef struct param {
  char *name; /* prefixed: "unet.conv_in.weight" */
  mmp_tensor_t *t;
} param_t;

typedef struct run {
  train_t *t;
  mmp_context_t *ctx;
  train_parts_t parts;
  source_t data, val;
  param_t *ps; /* the trained parameters, in the optimizer's order */
  size_t nps, cps;
  mmp_adamw_t *opt;
  mmp_lr_warmup_cosine_t sched;
  mmp_rng_t *rng, *data_rng;
  mmp_rng_t *np_rng; /* arldm with rng = torch: numpy's stream of the CFG drop (np.random.seed(seed)) */
  int64_t *order; /* the current epoch's item order */
  int64_t step, steps_per_epoch, max_steps;
  FILE *metrics;
  double t0;
  mmp_dist_t *dist; /* the process group (mpirun -np N; a group of one otherwise) */
  int rank, world;
} run_t;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct collect {
  run_t *r;
  const char *prefix;
  size_t listed;
} collect_t;

static int collect_param(void *user, const char *name, mmp_tensor_t *p) {
  collect_t *c = user;
  run_t *r = c->r;
  char full[512];
  snprintf(full, sizeof full, "%s.%s", c->prefix, name);
  c->listed++;
  if (!mmp_param_trainable(full, (const char *const *)r->t->freeze, (const char *const *)r->t->train)) return 0;
  if (r->nps == r->cps) {
    size_t nc = r->cps ? 2 * r->cps : 256;
    param_t *np = realloc(r->ps, nc * sizeof *np);
    if (!np) return mmp_error_set(MMP_ENOMEM, "out of memory");
    r->ps = np;
    r->cps = nc;
  }
  char *dup = strdup(full);
  if (!dup) return mmp_error_set(MMP_ENOMEM, "out of memory");
  r->ps[r->nps].name = dup;
  r->ps[r->nps].t = mmp_tensor_ref(p);
  r->nps++;
  return mmp_adamw_add_param(r->opt, full, p);
}

/* The parameters of the component of group @prefix, filtered by the freeze
 * patterns. A component created without `trainable = true` is frozen
 * entirely, unless a pattern would train one of its parameters: *@listed
 * says how many it listed. */
static int collect(run_t *r, mmp_component_t *c, const char *prefix, size_t *listed) {
  *listed = 0;
  if (!c) return 0;
  const mmp_model_ops_t *ops = (const mmp_model_ops_t *)c->plugin; /* encoder/model share the layout */
  if (!MMP_OPS_HAS(ops, mmp_model_ops_t, parameters)) return 0;
  collect_t cc = {r, prefix, 0};
  int rc = ops->parameters(c->self, collect_param, &cc);
  *listed = cc.listed;
  if (rc == MMP_EINVAL && cc.listed == 0) {
    mmp_error_clear();
    return 0; /* not created for training: frozen */
  }
  return rc < 0 ? mmp_error_prefix("%s", prefix) : 0;
}

/* mode arldm: AR-LDM's own tensors from the `arldm` file; the modal-type
 * and time tables are owned copies, trained unless the patterns freeze them
 * (AR-LDM always trains them). */
static int load_arldm_extras(run_t *r) {
  arldm_file_t f = {0};
  arldm_parts_t ex = {0};
  int rc = arldm_file_open(&f, r->t->arldm);
  if (rc == 0) rc = arldm_extras_load(&f, r->t->arldm, mmp_context_backend(r->ctx), 0, &ex, NULL, NULL);
  arldm_file_close(&f);
  if (rc < 0) return mmp_error_prefix("train: ");
  r->parts.type = mmp_clone(ex.type);
  r->parts.time = mmp_clone(ex.time);
  r->parts.clip_null = ex.clip_null;
  r->parts.blip_null = ex.blip_null;
  r->parts.image_null = ex.image_null;
  mmp_tensor_unref(ex.type);
  mmp_tensor_unref(ex.time);
  if (!r->parts.type || !r->parts.time) return mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
  collect_t ct = {r, "modal_type_embeddings", 0}, cm = {r, "time_embeddings", 0};
  if ((rc = collect_param(&ct, "weight", r->parts.type)) < 0 || (rc = collect_param(&cm, "weight", r->parts.time)) < 0)
    return rc;
  return 0;
}

static int mkdir_p(const char *dir) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "train: mkdir %s: %s", buf, strerror(errno));
    *p = '/';
  }
  if (mkdir(buf, 0777) != 0 && errno != EEXIST) return mmp_error_set(MMP_EIO, "train: mkdir %s: %s", buf, strerror(errno));
  return 0;
}

static mmp_tensor_t *u8_tensor(const void *data, int64_t n) {
  return mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_U8, 1, &n, data);
}

static int put(mmp_tensormap_t *m, const char *a, const char *b, mmp_tensor_t *t) {
  char name[600];
  snprintf(name, sizeof name, "%s%s", a, b);
  if (!t) return mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
  return mmp_tensormap_set(m, name, t);
}

static int write_plot(const run_t *r);

/* The checkpoint: what a resumed run needs to continue bit for bit.
 * Written to a temporary file and renamed (mmp_safetensors_save_map). */
static int save_checkpoint(run_t *r) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  if (!m) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = 0;
  int64_t *steps = malloc((r->nps ? r->nps : 1) * sizeof *steps);
  if (!steps) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  for (size_t i = 0; rc == 0 && i < r->nps; i++) {
    mmp_tensor_t *p, *ma, *va;
    if ((rc = mmp_adamw_state(r->opt, i, NULL, &p, &ma, &va, &steps[i])) < 0) break;
    if ((rc = put(m, "param.", r->ps[i].name, mmp_tensor_ref(p))) < 0 ||
        (rc = put(m, "exp_avg.", r->ps[i].name, mmp_tensor_ref(ma))) < 0 ||
        (rc = put(m, "exp_avg_sq.", r->ps[i].name, mmp_tensor_ref(va))) < 0)
      break;
  }
  int64_t np = (int64_t)r->nps, nd = r->data.n;
  uint8_t st[MMP_RNG_STATE_SIZE], sd[MMP_RNG_STATE_SIZE];
  if (rc == 0 && np > 0) rc = put(m, "adamw.step", "", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, &np, steps));
  if (rc == 0) rc = put(m, "data.order", "", mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_I64, 1, &nd, r->order));
  if (rc == 0 && (rc = mmp_rng_get_state(r->rng, st, sizeof st)) == 0 &&
      (rc = mmp_rng_get_state(r->data_rng, sd, sizeof sd)) == 0 &&
      (rc = put(m, "rng.step", "", u8_tensor(st, sizeof st))) == 0)
    rc = put(m, "rng.data", "", u8_tensor(sd, sizeof sd));
  if (rc == 0 && r->np_rng && (rc = mmp_rng_get_state(r->np_rng, st, sizeof st)) == 0)
    rc = put(m, "rng.numpy", "", u8_tensor(st, sizeof st));
  free(steps);
  char v[9][64];
  snprintf(v[0], sizeof v[0], "%lld", (long long)r->step);
  snprintf(v[1], sizeof v[1], "%lld", (long long)r->sched.last_step);
  snprintf(v[2], sizeof v[2], "%.17g", r->sched.lr);
  snprintf(v[3], sizeof v[3], "%lld", (long long)r->t->seed);
  snprintf(v[4], sizeof v[4], "%lld", (long long)r->t->batch);
  snprintf(v[5], sizeof v[5], "%lld", (long long)r->t->accum);
  snprintf(v[6], sizeof v[6], "%lld", (long long)r->max_steps);
  snprintf(v[7], sizeof v[7], "%lld", (long long)r->data.n);
  snprintf(v[8], sizeof v[8], "%d", r->world);
  const char *md[] = {"format", "mmpipe-train-1", "mode", r->t->mode->mode, "step", v[0], "sched_last_step", v[1],
                      "sched_lr", v[2], "seed", v[3], "batch_size", v[4], "grad_accum", v[5], "max_steps", v[6],
                      "data_size", v[7], "processes", v[8], NULL};
  char path[4200];
  snprintf(path, sizeof path, "%s/checkpoint.safetensors", r->t->out_dir);
  if (rc == 0 && (rc = mmp_safetensors_save_map(path, m, md)) < 0) rc = mmp_error_prefix("train: checkpoint: ");
  if (rc == 0) MMP_INFO("train", "step %lld: wrote %s", (long long)r->step, path);
  mmp_tensormap_free(m);
  /* reading the moments brought them in: out of memory again (moments in a file) */
  if (rc == 0) rc = mmp_adamw_release_moments(r->opt);
  if (rc == 0 && r->metrics) {
    fflush(r->metrics);
    rc = write_plot(r);
  }
  return rc;
}

static int md_int(mmp_safetensors_t *st, const char *key, int64_t want, const char *path) {
  const char *s = mmp_safetensors_metadata(st, key);
  if (!s) return mmp_error_set(MMP_EDATA, "train: resume %s: no `%s` in the metadata (not a train checkpoint?)", path, key);
  if (want >= 0 && strtoll(s, NULL, 10) != want)
    return mmp_error_set(MMP_ECONFIG, "train: resume %s: the checkpoint's %s is %s, this run's %lld (they must agree)",
                         path, key, s, (long long)want);
  return 0;
}

static int load_into(mmp_safetensors_t *st, const char *name, mmp_tensor_t *dst, const char *path) {
  mmp_tensor_t *src = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), dst->dtype);
  if (!src) return mmp_error_prefix("train: resume %s: ", path);
  int rc = 0;
  if (!mmp_tensor_same_shape(src, dst)) {
    char a[64], b[64];
    rc = mmp_error_set(MMP_ESHAPE, "train: resume %s: %s is %s, the model's %s", path, name,
                       mmp_tensor_describe(src, a, sizeof a), mmp_tensor_describe(dst, b, sizeof b));
  } else {
    rc = mmp_copy_into(dst, src);
  }
  mmp_tensor_unref(src);
  return rc;
}

static int load_bytes(mmp_safetensors_t *st, const char *name, void *buf, size_t n, const char *path) {
  mmp_tensor_t *t = mmp_safetensors_get(st, name, mmp_backend_get("cpu"), MMP_U8);
  if (!t) return mmp_error_prefix("train: resume %s: ", path);
  int rc = mmp_tensor_nbytes(t) == n ? mmp_tensor_to_host(t, buf, n)
                                     : mmp_error_set(MMP_EDATA, "train: resume %s: %s has %zu bytes, expected %zu", path,
                                                     name, mmp_tensor_nbytes(t), n);
  mmp_tensor_unref(t);
  return rc;
}

static int load_checkpoint(run_t *r, const char *path) {
  mmp_safetensors_t *st = mmp_safetensors_open(path);
  if (!st) return mmp_error_prefix("train: resume: ");
  int rc = 0;
  const char *fmt = mmp_safetensors_metadata(st, "format"), *mode = mmp_safetensors_metadata(st, "mode");
  if (!fmt || strcmp(fmt, "mmpipe-train-1") != 0) {
    rc = mmp_error_set(MMP_EDATA, "train: resume %s: not a train checkpoint (format %s)", path, fmt ? fmt : "missing");
    goto done;
  }
  if (!mode || strcmp(mode, r->t->mode->mode) != 0) {
    rc = mmp_error_set(MMP_ECONFIG, "train: resume %s: written by mode %s, this run is %s", path, mode ? mode : "?",
                       r->t->mode->mode);
    goto done;
  }
  if ((rc = md_int(st, "seed", r->t->seed, path)) || (rc = md_int(st, "batch_size", r->t->batch, path)) ||
      (rc = md_int(st, "grad_accum", r->t->accum, path)) || (rc = md_int(st, "max_steps", r->max_steps, path)) ||
      (rc = md_int(st, "data_size", r->data.n, path)) || (rc = md_int(st, "step", -1, path)) ||
      (rc = md_int(st, "sched_last_step", -1, path)))
    goto done;
  {
    /* the data order and the draws depend on the number of processes (a checkpoint without
     * the key comes from one process) */
    const char *np = mmp_safetensors_metadata(st, "processes");
    long long have = np ? strtoll(np, NULL, 10) : 1;
    if (have != r->world) {
      rc = mmp_error_set(MMP_ECONFIG, "train: resume %s: the checkpoint's run had %lld processes, this one has %d "
                         "(the data order and the random draws depend on it)", path, have, r->world);
      goto done;
    }
  }
  for (size_t i = 0; i < r->nps; i++) {
    mmp_tensor_t *p, *ma, *va;
    char name[600];
    mmp_adamw_state(r->opt, i, NULL, &p, &ma, &va, NULL);
    snprintf(name, sizeof name, "param.%s", r->ps[i].name);
    if ((rc = load_into(st, name, p, path)) < 0) goto done;
    snprintf(name, sizeof name, "exp_avg.%s", r->ps[i].name);
    if ((rc = load_into(st, name, ma, path)) < 0) goto done;
    snprintf(name, sizeof name, "exp_avg_sq.%s", r->ps[i].name);
    if ((rc = load_into(st, name, va, path)) < 0) goto done;
  }
  if (r->nps > 0) {
    int64_t np = (int64_t)r->nps;
    mmp_tensor_t *steps = mmp_tensor_new(mmp_backend_get("cpu"), MMP_I64, 1, &np);
    if (!steps || (rc = load_into(st, "adamw.step", steps, path)) < 0) {
      mmp_tensor_unref(steps);
      rc = rc < 0 ? rc : mmp_error_code();
      goto done;
    }
    const int64_t *sv = mmp_tensor_data(steps);
    for (size_t i = 0; rc == 0 && i < r->nps; i++) rc = mmp_adamw_set_step(r->opt, i, sv[i]);
    mmp_tensor_unref(steps);
    if (rc < 0) goto done;
  }
  int64_t nd = r->data.n;
  mmp_tensor_t *ord = mmp_tensor_new(mmp_backend_get("cpu"), MMP_I64, 1, &nd);
  if (!ord || (rc = load_into(st, "data.order", ord, path)) < 0) {
    mmp_tensor_unref(ord);
    rc = rc < 0 ? rc : mmp_error_code();
    goto done;
  }
  memcpy(r->order, mmp_tensor_data(ord), (size_t)nd * sizeof *r->order);
  mmp_tensor_unref(ord);
  for (int64_t i = 0; i < nd; i++)
    if (r->order[i] < 0 || r->order[i] >= nd) {
      rc = mmp_error_set(MMP_EDATA, "train: resume %s: data.order holds %lld, out of range", path, (long long)r->order[i]);
      goto done;
    }
  uint8_t buf[MMP_RNG_STATE_SIZE];
  if ((rc = load_bytes(st, "rng.step", buf, sizeof buf, path)) < 0 || (rc = mmp_rng_set_state(r->rng, buf, sizeof buf)) < 0 ||
      (rc = load_bytes(st, "rng.data", buf, sizeof buf, path)) < 0 ||
      (rc = mmp_rng_set_state(r->data_rng, buf, sizeof buf)) < 0 ||
      (r->np_rng && ((rc = load_bytes(st, "rng.numpy", buf, sizeof buf, path)) < 0 ||
                     (rc = mmp_rng_set_state(r->np_rng, buf, sizeof buf)) < 0)))
    goto done;
  r->step = strtoll(mmp_safetensors_metadata(st, "step"), NULL, 10);
  r->sched.last_step = strtoll(mmp_safetensors_metadata(st, "sched_last_step"), NULL, 10);
  const char *lr = mmp_safetensors_metadata(st, "sched_lr");
  r->sched.lr = lr ? strtod(lr, NULL) : NAN;
  if (r->step < 0 || r->step > r->max_steps || !isfinite(r->sched.lr)) {
    rc = mmp_error_set(MMP_EDATA, "train: resume %s: step %lld outside 0..%lld or a bad sched_lr", path,
                       (long long)r->step, (long long)r->max_steps);
    goto done;
  }
  MMP_INFO("train", "resumed from %s at step %lld", path, (long long)r->step);
done:
  mmp_safetensors_close(st);
  return rc;
}

/* The trained weights under the names the sampling plugins read: diffusers'
 * for the UNet (export/unet/diffusion_pytorch_model.safetensors),
 * transformers' for the text encoder (export/text_encoder/model.safetensors);
 * every tensor the component lists, trained or not, f32. */
typedef struct export_ctx {
  mmp_tensormap_t *m;
} export_ctx_t;

static int export_param(void *user, const char *name, mmp_tensor_t *p) {
  export_ctx_t *e = user;
  return mmp_tensormap_set(e->m, name, mmp_tensor_ref(p));
}

static int export_part(run_t *r, mmp_component_t *c, const char *prefix, const char *file) {
  size_t plen = strlen(prefix);
  bool trained = false;
  for (size_t i = 0; i < r->nps; i++)
    if (strncmp(r->ps[i].name, prefix, plen) == 0 && r->ps[i].name[plen] == '.') trained = true;
  if (!trained) return 0;
  const mmp_model_ops_t *ops = (const mmp_model_ops_t *)c->plugin;
  export_ctx_t e = {mmp_tensormap_new()};
  if (!e.m) return mmp_error_set(MMP_ENOMEM, "out of memory");
  char dir[4200], path[4400];
  snprintf(dir, sizeof dir, "%s/export/%s", r->t->out_dir, prefix);
  snprintf(path, sizeof path, "%s/%s", dir, file);
  static const char *const md[] = {"format", "pt", NULL};
  int rc = ops->parameters(c->self, export_param, &e);
  if (rc == 0) rc = mkdir_p(dir);
  if (rc == 0 && (rc = mmp_safetensors_save_map(path, e.m, md)) < 0) rc = mmp_error_prefix("train: export: ");
  if (rc == 0) MMP_INFO("train", "exported %s", path);
  mmp_tensormap_free(e.m);
  return rc;
}

/* mode arldm: one AR-LDM state dict, export/arldm.safetensors, that the
 * story task's `arldm` and the parts' weights + weights_prefix read: every
 * tensor of the `arldm` file (the frozen VAE, the null buffers, parts not
 * created trainable, in their stored dtype) with the tensors the trainable
 * parts list (text_encoder.*, mm_encoder.*, unet.*, f32) and the
 * modal-type and time tables in place of the stored ones. A listed name the
 * file lacks is an error: the parts must read their weights from it. */
typedef struct export_pref {
  mmp_tensormap_t *m;
  const char *prefix;
} export_pref_t;

static int export_prefixed(void *user, const char *name, mmp_tensor_t *p) {
  export_pref_t *e = user;
  char full[600];
  snprintf(full, sizeof full, "%s%s", e->prefix, name);
  return mmp_tensormap_set(e->m, full, mmp_tensor_ref(p));
}

static int export_arldm(run_t *r) {
  mmp_tensormap_t *cur = mmp_tensormap_new(), *m = mmp_tensormap_new();
  arldm_file_t f = {0};
  int rc = cur && m ? 0 : mmp_error_set(MMP_ENOMEM, "out of memory");
  struct {
    mmp_component_t *c;
    const char *prefix;
  } parts[3] = {{r->parts.text_encoder, "text_encoder."}, {r->parts.mm_encoder, "mm_encoder."}, {r->parts.unet, "unet."}};
  for (int i = 0; rc == 0 && i < 3; i++) {
    const mmp_model_ops_t *ops = (const mmp_model_ops_t *)parts[i].c->plugin;
    if (!MMP_OPS_HAS(ops, mmp_model_ops_t, parameters) || !ops->parameters) continue;
    export_pref_t e = {cur, parts[i].prefix};
    size_t before = mmp_tensormap_size(cur);
    rc = ops->parameters(parts[i].c->self, export_prefixed, &e);
    if (rc == MMP_EINVAL && mmp_tensormap_size(cur) == before) {
      mmp_error_clear();
      rc = 0; /* not created for training: its stored tensors are copied */
    }
  }
  if (rc == 0 && ((rc = mmp_tensormap_set(cur, "modal_type_embeddings.weight", mmp_tensor_ref(r->parts.type))) < 0 ||
                  (rc = mmp_tensormap_set(cur, "time_embeddings.weight", mmp_tensor_ref(r->parts.time))) < 0))
    goto done;
  if (rc == 0 && (rc = arldm_file_open(&f, r->t->arldm)) < 0) goto done;
  for (size_t i = 0; rc == 0 && i < mmp_tensormap_size(cur); i++) {
    const char *name = mmp_tensormap_name(cur, i);
    int nd = 0;
    int64_t sh[MMP_MAX_DIMS];
    mmp_tensor_t *t = mmp_tensormap_at(cur, i);
    int64_t numel = 1;
    bool have = arldm_file_info(&f, name, NULL, &nd, sh) == 0;
    for (int k = 0; have && k < nd; k++) numel *= sh[k];
    if (!have || mmp_tensor_numel(t) != numel)
      rc = mmp_error_set(MMP_EDATA, "train: export: %s (a trained part's tensor) is not in %s with its size: give the parts "
                         "the `arldm` file as weights (weights_prefix = \"text_encoder.\", ...)", name, r->t->arldm);
  }
  for (size_t i = 0; rc == 0 && i < arldm_file_count(&f); i++) {
    const char *name = arldm_file_name(&f, i);
    mmp_tensor_t *t = mmp_tensormap_get(cur, name);
    if (t) {
      int nd = 0;
      int64_t sh[MMP_MAX_DIMS];
      arldm_file_info(&f, name, NULL, &nd, sh);
      mmp_tensor_t *h = mmp_to_backend(t, mmp_backend_get("cpu")), *c = h ? mmp_contiguous(h) : NULL;
      /* the stored shape (1x1 convs may be [O, I] in the part, [O, I, 1, 1] in torch) */
      mmp_tensor_t *v = c ? mmp_reshape(c, nd, sh) : NULL;
      mmp_tensor_unref(h);
      mmp_tensor_unref(c);
      rc = v ? mmp_tensormap_set(m, name, v) : mmp_error_code();
    } else {
      mmp_dtype_t dt;
      int nd = 0;
      int64_t sh[MMP_MAX_DIMS];
      mmp_tensor_t *v = arldm_file_info(&f, name, &dt, &nd, sh) == 0 ? arldm_file_get(&f, name, dt, mmp_backend_get("cpu")) : NULL;
      rc = v ? mmp_tensormap_set(m, name, v) : mmp_error_prefix("train: export: %s: ", r->t->arldm);
    }
  }
  char dir[4200], path[4400];
  snprintf(dir, sizeof dir, "%s/export", r->t->out_dir);
  snprintf(path, sizeof path, "%s/arldm.safetensors", dir);
  static const char *const md[] = {"format", "pt", NULL};
  if (rc == 0) rc = mkdir_p(dir);
  if (rc == 0 && (rc = mmp_safetensors_save_map(path, m, md)) < 0) rc = mmp_error_prefix("train: export: ");
  if (rc == 0) MMP_INFO("train", "exported %s (%zu tensors)", path, mmp_tensormap_size(m));
done:
  arldm_file_close(&f);
  mmp_tensormap_free(cur);
  mmp_tensormap_free(m);
  return rc;
}

/* ---------------------------------------------------------------- plot */

typedef struct series {
  double *x, *y;
  size_t n, cap;
} series_t;

static int series_add(series_t *s, double x, double y) {
  if (s->n == s->cap) {
    size_t nc = s->cap ? 2 * s->cap : 256;
    double *nx = realloc(s->x, nc * sizeof *nx);
    if (!nx) return mmp_error_set(MMP_ENOMEM, "out of memory");
    s->x = nx;
    double *ny = realloc(s->y, nc * sizeof *ny);
    if (!ny) return mmp_error_set(MMP_ENOMEM, "out of memory");
    s->y = ny;
    s->cap = nc;
  }
  s->x[s->n] = x;
  s->y[s->n++] = y;
  return 0;
}

static void put_px(mmp_image_t *im, int x, int y, const uint8_t *c) {
  if (x < 0 || y < 0 || x >= im->w || y >= im->h) return;
  memcpy(im->data + ((size_t)y * (size_t)im->w + (size_t)x) * 3, c, 3);
}

/* Bresenham, two pixels thick. */
static void draw_line(mmp_image_t *im, int x0, int y0, int x1, int y1, const uint8_t *c) {
  int dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1, dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1, err = dx + dy;
  for (;;) {
    put_px(im, x0, y0, c);
    put_px(im, x0, y0 + 1, c);
    if (x0 == x1 && y0 == y1) break;
    int e2 = 2 * err;
    if (e2 >= dy) { err += dy; x0 += sx; }
    if (e2 <= dx) { err += dx; y0 += sy; }
  }
}

/* loss.png from metrics.jsonl (so a resumed run plots the whole curve):
 * the training loss per step in blue, the validation loss per epoch in red
 * (with square marks), on axes scaled to the data, a light grid of quarters.
 * No text: the numbers are in metrics.jsonl. Written atomically. */
static int write_plot(const run_t *r) {
  char mpath[4200], path[4200];
  snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", r->t->out_dir);
  snprintf(path, sizeof path, "%s/loss.png", r->t->out_dir);
  FILE *f = fopen(mpath, "r");
  if (!f) return mmp_error_set(MMP_EIO, "train: %s: %s", mpath, strerror(errno));
  series_t tr = {0}, va = {0};
  char line[1024];
  int rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    const char *st = strstr(line, "\"step\": "), *l = strstr(line, "\"loss\": "), *v = strstr(line, "\"val_loss\": ");
    if (!st) continue;
    double x = strtod(st + 8, NULL);
    if (l && isfinite(strtod(l + 8, NULL))) rc = series_add(&tr, x, strtod(l + 8, NULL));
    else if (v && isfinite(strtod(v + 12, NULL))) rc = series_add(&va, x, strtod(v + 12, NULL));
  }
  fclose(f);
  mmp_image_t im = {0};
  enum { W = 640, H = 360, M = 24 };
  if (rc == 0 && tr.n > 0 && (rc = mmp_image_alloc(&im, W, H, 3)) == 0) {
    memset(im.data, 255, (size_t)W * H * 3);
    double xmin = tr.x[0], xmax = tr.x[0], ymin = tr.y[0], ymax = tr.y[0];
    const series_t *all[2] = {&tr, &va};
    for (int k = 0; k < 2; k++)
      for (size_t i = 0; i < all[k]->n; i++) {
        xmin = fmin(xmin, all[k]->x[i]), xmax = fmax(xmax, all[k]->x[i]);
        ymin = fmin(ymin, all[k]->y[i]), ymax = fmax(ymax, all[k]->y[i]);
      }
    if (xmax <= xmin) xmax = xmin + 1;
    if (ymax <= ymin) ymax = ymin + 1e-6 * (fabs(ymin) + 1);
    static const uint8_t grid[3] = {225, 225, 225}, axis[3] = {90, 90, 90}, blue[3] = {31, 119, 180},
                         red[3] = {214, 39, 40};
    for (int q = 1; q < 4; q++) {
      draw_line(&im, M, M + q * (H - 2 * M) / 4, W - M, M + q * (H - 2 * M) / 4, grid);
      draw_line(&im, M + q * (W - 2 * M) / 4, M, M + q * (W - 2 * M) / 4, H - M, grid);
    }
    draw_line(&im, M, M, M, H - M, axis);
    draw_line(&im, M, H - M, W - M, H - M, axis);
#define PX(xv) (M + (int)lround(((xv) - xmin) / (xmax - xmin) * (W - 2 * M)))
#define PY(yv) (H - M - (int)lround(((yv) - ymin) / (ymax - ymin) * (H - 2 * M)))
    for (size_t i = 1; i < tr.n; i++) draw_line(&im, PX(tr.x[i - 1]), PY(tr.y[i - 1]), PX(tr.x[i]), PY(tr.y[i]), blue);
    if (tr.n == 1) draw_line(&im, PX(tr.x[0]) - 2, PY(tr.y[0]), PX(tr.x[0]) + 2, PY(tr.y[0]), blue);
    for (size_t i = 0; i < va.n; i++) {
      if (i > 0) draw_line(&im, PX(va.x[i - 1]), PY(va.y[i - 1]), PX(va.x[i]), PY(va.y[i]), red);
      for (int d = -3; d <= 3; d++) draw_line(&im, PX(va.x[i]) - 3, PY(va.y[i]) + d, PX(va.x[i]) + 3, PY(va.y[i]) + d, red);
    }
#undef PX
#undef PY
    static const char *const keys[] = {"Software", "Description"};
    static const char *const vals[] = {"mmpipe train", "training loss per step (blue), validation loss per epoch (red)"};
    rc = mmp_image_png_write_text(&im, path, keys, vals, 2);
  }
  mmp_image_clear(&im);
  free(tr.x);
  free(tr.y);
  free(va.x);
  free(va.y);
  return rc;
}

/* ---------------------------------------------------------------- steps */

/* The loss of items @idx[0..n) of @d, the tape (nullable) current. */
static int micro_loss(run_t *r, const source_t *d, const int64_t *idx, int64_t n, int64_t draw_n, int64_t draw_off,
                      mmp_rng_t *rng, mmp_rng_t *np_rng, mmp_tape_t *tape, mmp_tensor_t **loss) {
  *loss = NULL;
  if (n < 1) return mmp_error_set(MMP_EINVAL, "train: empty batch");
  if (d->ds) {
    mmp_tensormap_t *items = load_items(d, idx, n);
    if (!items) return mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
    train_batch_t b = {n, NULL, NULL, items, draw_n, draw_off, np_rng};
    mmp_tape_t *prev = mmp_tape_set_current(tape);
    int rc = r->t->mode->loss(&r->parts, &b, rng, loss);
    mmp_tape_set_current(prev);
    mmp_tensormap_free(items);
    return rc;
  }
  mmp_tensor_t *px = load_pixels(&d->list, idx, n, mmp_context_backend(r->ctx));
  const char **caps = calloc((size_t)n, sizeof *caps);
  int rc = 0;
  if (!px || !caps) {
    rc = px ? mmp_error_set(MMP_ENOMEM, "out of memory") : mmp_error_code();
    goto done;
  }
  for (int64_t i = 0; i < n; i++) caps[i] = d->list.items[idx[i]].caption;
  train_batch_t b = {n, px, caps, NULL, draw_n, draw_off, np_rng};
  mmp_tape_t *prev = mmp_tape_set_current(tape);
  rc = r->t->mode->loss(&r->parts, &b, rng, loss);
  mmp_tape_set_current(prev);
done:
  mmp_tensor_unref(px);
  free(caps);
  return rc;
}

static double scalar(const mmp_tensor_t *t) {
  int64_t idx[MMP_MAX_DIMS] = {0};
  return mmp_tensor_get(t, idx);
}

/* optimizer_in_backward: each gradient, once final and averaged over the ranks
 * (mmp_dist_grads_begin_cb: packed into the bucket in flight, its collective overlapping the
 * rest of the backward, handed over when the bucket completes; one process: at once), is
 * taken by its AdamW update and dropped from the map. The tape's first-use rule
 * (autograd.h) makes sure no op still to be walked reads the parameter; an update that
 * waits for its bucket happens later in the walk, which is as safe. The ordered reduction
 * gives the bits of the optimizer after the backward. */
typedef struct in_backward {
  run_t *r;
  mmp_tensormap_t *grads; /* the backward's map */
} in_backward_t;

static int step_in_backward(void *user, const char *name, mmp_tensor_t *grad) {
  in_backward_t *ib = user;
  int rc = mmp_adamw_step_one(ib->r->opt, name, grad);
  mmp_tensormap_remove(ib->grads, name);
  return rc;
}

/* One optimizer step: grad_accum micro-batches of the epoch's order. */
static int train_step(run_t *r, double *loss_out, double *norm_out) {
  const train_t *t = r->t;
  int64_t pos = r->step % r->steps_per_epoch;
  mmp_tensormap_t *grads = mmp_tensormap_new();
  in_backward_t ib = {r, grads};
  if (!grads) return mmp_error_set(MMP_ENOMEM, "out of memory");
  double sum = 0;
  int rc = 0;
  mmp_adamw_set_lr(r->opt, t->cosine ? r->sched.lr : t->lr);
  /* With N ranks a micro-batch is N x batch_size items of the epoch's order; rank k takes
   * items [k b, (k + 1) b) and its rows of draws made for all N b (train_batch_t). */
  int64_t b = t->batch, W = r->world;
  for (int64_t k = 0; rc == 0 && k < t->accum; k++) {
    int64_t first = (pos * t->accum + k) * b * W + r->rank * b;
    mmp_tape_t *tape = mmp_tape_new();
    mmp_tensor_t *loss = NULL, *scaled = NULL;
    if (!tape) {
      rc = mmp_error_set(MMP_ENOMEM, "out of memory");
      break;
    }
    for (size_t i = 0; rc == 0 && i < r->nps; i++) rc = mmp_tape_watch(tape, r->ps[i].name, r->ps[i].t);
    if (rc == 0) rc = micro_loss(r, &r->data, r->order + first, b, b * W, r->rank * b, r->rng, r->np_rng, tape, &loss);
    if (rc == 0) {
      sum += scalar(loss);
      /* Lightning's accumulate_grad_batches: loss / k */
      mmp_tape_t *prev = mmp_tape_set_current(tape);
      scaled = t->accum > 1 ? mmp_scale(loss, 1.0 / (double)t->accum, 0.0) : mmp_tensor_ref(loss);
      mmp_tape_set_current(prev);
      /* the last micro-batch's backward sends the (accumulated) gradients as they are final */
      bool last = k == t->accum - 1;
      if (!scaled) rc = mmp_error_code();
      bool begun = false;
      if (rc == 0 && last) {
        rc = t->in_backward ? mmp_dist_grads_begin_cb(r->dist, tape, step_in_backward, &ib)
                            : mmp_dist_grads_begin(r->dist, tape);
        begun = rc == 0;
      }
      if (rc == 0) rc = mmp_tape_backward(tape, scaled, NULL, grads);
      if (begun) {
        int rc2 = mmp_dist_grads_end(r->dist, grads);
        if (rc == 0) rc = rc2;
      }
    }
    mmp_tensor_unref(scaled);
    mmp_tensor_unref(loss);
    mmp_tape_free(tape);
  }
  double norm = NAN;
  if (rc == 0 && t->clip > 0) rc = mmp_clip_grad_norm(grads, t->clip, &norm);
  /* (in the backward: done, and the map is empty) */
  if (rc == 0 && !t->in_backward) rc = mmp_adamw_step(r->opt, grads);
  if (rc == 0 && t->cosine) mmp_lr_warmup_cosine_step(&r->sched);
  mmp_tensormap_free(grads);
  double mean = sum / (double)t->accum;
  if (rc == 0) rc = mmp_dist_average(r->dist, &mean, 1); /* the loss of all N b items */
  if (rc == 0) {
    r->step++;
    *loss_out = mean;
    *norm_out = norm;
  }
  return rc;
}

/* Mean loss over the validation items, batch_size at a time (times the number of processes:
 * rank 0 validates alone, as one process with the whole batch would), with a fresh
 * generator seeded with seed (the same draws every epoch), no tape. */
static int validate(run_t *r, double *out) {
  int64_t B = r->t->batch * r->world;
  int64_t nb = r->val.n / B, *idx = malloc((size_t)r->val.n * sizeof *idx);
  mmp_rng_t *g = mmp_rng_new((uint64_t)r->t->seed, r->t->rng_mode);
  mmp_rng_t *np = r->np_rng ? mmp_rng_new((uint64_t)r->t->seed, MMP_RNG_NUMPY) : NULL;
  double sum = 0;
  int rc = 0;
  if (!idx || !g || (r->np_rng && !np)) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
  for (int64_t i = 0; rc == 0 && i < r->val.n; i++) idx[i] = i;
  bool bd = r->parts.blip_dropout;
  r->parts.blip_dropout = false; /* eval mode, as Lightning's validation */
  for (int64_t b = 0; rc == 0 && b < nb; b++) {
    mmp_tensor_t *loss = NULL;
    rc = micro_loss(r, &r->val, idx + b * B, B, 0, 0, g, np, NULL, &loss);
    if (rc == 0) sum += scalar(loss);
    mmp_tensor_unref(loss);
  }
  r->parts.blip_dropout = bd;
  free(idx);
  mmp_rng_free(g);
  mmp_rng_free(np);
  if (rc == 0) *out = nb > 0 ? sum / (double)nb : NAN;
  return rc;
}

static void new_order(run_t *r) {
  for (int64_t i = 0; i < r->data.n; i++) r->order[i] = i;
  if (!r->t->shuffle) return;
  /* Fisher-Yates from the data generator */
  for (int64_t i = r->data.n - 1; i > 0; i--) {
    int64_t j = (int64_t)(mmp_rng_u64(r->data_rng) % (uint64_t)(i + 1));
    int64_t tmp = r->order[i];
    r->order[i] = r->order[j];
    r->order[j] = tmp;
  }
}

static void metric_json(run_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void metric_json(run_t *r, const char *fmt, ...) {
  if (!r->metrics) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(r->metrics, fmt, ap);
  va_end(ap);
  fflush(r->metrics);
}

/* A resumed run continues metrics.jsonl from its checkpoint: lines of later steps (written
 * after the checkpoint by a run that then died without one) are dropped, atomically, so the
 * file never holds a step twice. */
static int trim_metrics(const char *mpath, int64_t step) {
  FILE *in = fopen(mpath, "r");
  if (!in) return errno == ENOENT ? 0 : mmp_error_set(MMP_EIO, "train: %s: %s", mpath, strerror(errno));
  mmp_afile_t *af = mmp_afile_open(mpath);
  if (!af) {
    fclose(in);
    return mmp_error_prefix("train: ");
  }
  char *line = NULL;
  size_t cap = 0;
  int64_t dropped = 0;
  while (getline(&line, &cap, in) > 0) {
    const char *st = strstr(line, "\"step\": ");
    if (st && strtoll(st + 8, NULL, 10) > step) {
      dropped++;
      continue;
    }
    fputs(line, mmp_afile_stream(af));
  }
  free(line);
  int rd = ferror(in);
  fclose(in);
  if (rd) {
    mmp_afile_abort(af);
    return mmp_error_set(MMP_EIO, "train: %s: read failed", mpath);
  }
  if (dropped) MMP_INFO("train", "%s: dropped %lld lines after step %lld (the checkpoint's)", mpath, (long long)dropped,
                        (long long)step);
  return mmp_afile_commit(af) < 0 ? mmp_error_prefix("train: ") : 0;
}

static double info_scalar(mmp_component_t *vae, const char *name, double def) {
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  double v = def;
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)vae->plugin;
  if (in && out && ops->forward(vae->self, "info", in, out) == 0) {
    mmp_tensor_t *s = mmp_tensormap_get(out, name);
    if (s && mmp_tensor_numel(s) == 1) v = scalar(s);
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  return v;
}

static int train_run(void *self, mmp_context_t *ctx) {
  train_t *t = self;
  run_t r = {.t = t, .ctx = ctx};
  r.parts.ctx = ctx;
  int rc = 0;
  if (!(r.dist = mmp_dist_init())) return mmp_error_prefix("train: ");
  r.rank = mmp_dist_rank(r.dist);
  r.world = mmp_dist_size(r.dist);
  if (r.world > 1) MMP_INFO("train", "rank %d of %d", r.rank, r.world);
  const mmp_config_t *root = mmp_context_config(ctx);
  static const struct {
    const char *group;
    mmp_kind_t kind;
    size_t off;
  } comps[] = {{"tokenizer", MMP_KIND_PROCESSOR, offsetof(train_parts_t, tokenizer)},
               {"text_encoder", MMP_KIND_ENCODER, offsetof(train_parts_t, text_encoder)},
               {"mm_encoder", MMP_KIND_ENCODER, offsetof(train_parts_t, mm_encoder)},
               {"unet", MMP_KIND_MODEL, offsetof(train_parts_t, unet)},
               {"vae", MMP_KIND_ENCODER, offsetof(train_parts_t, vae)},
               {"scheduler", MMP_KIND_SCHEDULER, offsetof(train_parts_t, scheduler)}};
  for (size_t i = 0; i < sizeof comps / sizeof comps[0]; i++) {
    bool needed = false;
    for (int j = 0; t->mode->needs[j]; j++) needed |= strcmp(t->mode->needs[j], comps[i].group) == 0;
    if (!needed) continue;
    mmp_component_t *c = mmp_component_create(ctx, comps[i].kind, comps[i].group);
    if (!c) {
      rc = mmp_error_code() ? mmp_error_code() : MMP_ERUNTIME;
      goto done;
    }
    *(mmp_component_t **)((char *)&r.parts + comps[i].off) = c;
  }
  r.parts.scaling = r.parts.vae ? info_scalar(r.parts.vae, "scaling_factor", 0.18215) : 1.0;
  const mmp_config_t *ntt = mmp_config_lookup(root, "scheduler.num_train_timesteps");
  int64_t T = 1000;
  if (ntt && mmp_config_get_int(mmp_config_lookup(root, "scheduler"), "num_train_timesteps", &T) < 0) T = 1000;
  r.parts.num_train_timesteps = T;

  mmp_adamw_params_t hp = {t->lr, t->beta1, t->beta2, t->eps, t->wd};
  if (!(r.opt = mmp_adamw_new(&hp))) {
    rc = mmp_error_code();
    goto done;
  }
  size_t lt = 0, lu = 0, lm = 0;
  if ((rc = collect(&r, r.parts.text_encoder, "text_encoder", &lt)) < 0 ||
      (rc = collect(&r, r.parts.mm_encoder, "mm_encoder", &lm)) < 0 || (rc = collect(&r, r.parts.unet, "unet", &lu)) < 0)
    goto done;
  if (t->mode == &train_step_arldm && (rc = load_arldm_extras(&r)) < 0) goto done;
  if (t->mode == &train_step_arldm) {
    /* BLIP in train mode as AR-LDM: mm_encoder.eval() only with freeze_blip,
     * which leaves its word table alone trainable */
    bool beyond = false;
    for (size_t i = 0; i < r.nps && !beyond; i++)
      beyond = !strncmp(r.ps[i].name, "mm_encoder.", 11) && !strstr(r.ps[i].name, ".word_embeddings.");
    r.parts.blip_dropout = t->blip_dropout < 0 ? beyond : t->blip_dropout == 1;
    MMP_INFO("train", "BLIP's dropout %s", r.parts.blip_dropout ? "on (train mode)" : "off (eval mode)");
  }
  if (r.nps == 0) {
    rc = mmp_error_set(MMP_ECONFIG, "train: nothing to train: give the unet (or text_encoder) group `trainable = true` "
                                    "and check the freeze patterns (%zu + %zu parameters listed)", lt, lu);
    goto done;
  }
  MMP_INFO("train", "%zu parameter tensors trained (text_encoder lists %zu, mm_encoder %zu, unet %zu)", r.nps, lt, lm, lu);
  /* every rank starts from rank 0's weights */
  for (size_t i = 0; rc == 0 && r.world > 1 && i < r.nps; i++) rc = mmp_dist_broadcast(r.dist, r.ps[i].t);
  if (rc < 0) goto done;

  bool ds = t->mode == &train_step_arldm;
  if ((rc = source_open(&r.data, ctx, ds ? "dataset" : NULL, t->data_dir, t->captions)) < 0) goto done;
  if ((ds ? t->has_val_ds : t->val_dir[0] != 0) &&
      (rc = source_open(&r.val, ctx, ds ? "val_dataset" : NULL, t->val_dir, t->val_captions)) < 0)
    goto done;
  r.steps_per_epoch = r.data.n / t->batch / t->accum / r.world;
  if (r.steps_per_epoch < 1) {
    rc = mmp_error_set(MMP_ECONFIG, "train: %lld items make no optimizer step of batch_size %lld x grad_accum %lld x %d "
                       "processes", (long long)r.data.n, (long long)t->batch, (long long)t->accum, r.world);
    goto done;
  }
  r.max_steps = t->max_steps > 0 ? t->max_steps : t->epochs * r.steps_per_epoch;
  if (t->cosine && (rc = mmp_lr_warmup_cosine_init(&r.sched, t->lr, t->warmup, r.max_steps, 0.0, 0.0)) < 0) {
    rc = mmp_error_prefix("train: ");
    goto done;
  }
  /* AR-LDM draws its CFG drop from numpy (pl.seed_everything seeds it with the seed too) */
  if (t->mode == &train_step_arldm && t->rng_mode == MMP_RNG_TORCH &&
      !(r.np_rng = mmp_rng_new((uint64_t)t->seed, MMP_RNG_NUMPY))) {
    rc = mmp_error_code();
    goto done;
  }
  if (!(r.rng = mmp_rng_new((uint64_t)t->seed, t->rng_mode)) || !(r.data_rng = mmp_rng_new((uint64_t)t->seed, t->rng_mode)) ||
      !(r.order = calloc((size_t)r.data.n, sizeof *r.order))) {
    rc = mmp_error_code() ? mmp_error_code() : mmp_error_set(MMP_ENOMEM, "out of memory");
    goto done;
  }
  for (int64_t i = 0; i < r.data.n; i++) r.order[i] = i;
  /* the moments' file lives in output_dir; a resume restores into it */
  if (t->on_disk && (rc = mkdir_p(t->out_dir)) < 0) goto done;
  if (t->on_disk && (rc = mmp_adamw_moments_to_file(r.opt, t->out_dir)) < 0) {
    rc = mmp_error_prefix("train: optimizer_state_on_disk: ");
    goto done;
  }
  if (t->resume[0] && ((rc = load_checkpoint(&r, t->resume)) < 0 || (rc = mmp_adamw_release_moments(r.opt)) < 0))
    goto done;
  if ((rc = mkdir_p(t->out_dir)) < 0) goto done;
  char mpath[4200];
  snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", t->out_dir);
  if (r.rank == 0 && t->resume[0] && (rc = trim_metrics(mpath, r.step)) < 0) goto done;
  if (r.rank == 0 && !(r.metrics = fopen(mpath, t->resume[0] ? "a" : "w"))) {
    rc = mmp_error_set(MMP_EIO, "train: %s: %s", mpath, strerror(errno));
    goto done;
  }
  int64_t stop = t->run_steps > 0 && r.step + t->run_steps < r.max_steps ? r.step + t->run_steps : r.max_steps;
  if (r.rank != 0) mmp_context_set_progress(ctx, false); /* rank 0 reports for the group */
  mmp_context_progress_begin(ctx, "train", stop - r.step);
  r.t0 = now_s();
  bool saved = false;
  while (r.step < stop) {
    if (r.step % r.steps_per_epoch == 0) new_order(&r);
    double lr = t->cosine ? r.sched.lr : t->lr, loss = NAN, norm = NAN;
    if ((rc = train_step(&r, &loss, &norm)) < 0) goto done;
    saved = false;
    int64_t epoch = (r.step - 1) / r.steps_per_epoch;
    metric_json(&r, "{\"step\": %lld, \"epoch\": %lld, \"loss\": %.9g, \"lr\": %.9g", (long long)r.step,
                (long long)epoch, loss, lr);
    if (isfinite(norm)) metric_json(&r, ", \"grad_norm\": %.9g", norm);
    metric_json(&r, ", \"elapsed_s\": %.3f}\n", now_s() - r.t0);
    mmp_context_progress_advance(ctx, 1);
    if (r.rank == 0 && r.val.n > 0 && r.step % r.steps_per_epoch == 0) {
      double vl = NAN;
      if ((rc = validate(&r, &vl)) < 0) goto done;
      metric_json(&r, "{\"step\": %lld, \"epoch\": %lld, \"val_loss\": %.9g}\n", (long long)r.step, (long long)epoch, vl);
      MMP_INFO("train", "epoch %lld: validation loss %.6g", (long long)epoch, vl);
    }
    if (t->ckpt_every > 0 && r.step % t->ckpt_every == 0) {
      if (r.rank == 0 && (rc = save_checkpoint(&r)) < 0) goto done;
      saved = true;
    }
    /* Ctrl-C reaches every rank, not at the same step: they agree to stop after the step
     * where any of them saw it (the average of the flags is then > 0) */
    double stop_now = mmp_context_cancelled(ctx) ? 1.0 : 0.0;
    if ((rc = mmp_dist_average(r.dist, &stop_now, 1)) < 0) goto done;
    if (stop_now > 0) {
      mmp_context_progress_end(ctx);
      if (r.rank == 0 && !saved && (rc = save_checkpoint(&r)) < 0) goto done;
      rc = mmp_error_set(MMP_ECANCELED, "train: interrupted at step %lld; checkpoint written, resume with resume = "
                                        "\"%s/checkpoint.safetensors\"", (long long)r.step, t->out_dir);
      goto done;
    }
  }
  mmp_context_progress_end(ctx);
  if (r.rank == 0 && !saved && (rc = save_checkpoint(&r)) < 0) goto done;
  if (r.rank == 0 && t->mode == &train_step_arldm && (rc = export_arldm(&r)) < 0) goto done;
  if (r.rank == 0 && t->mode != &train_step_arldm &&
      ((rc = export_part(&r, r.parts.unet, "unet", "diffusion_pytorch_model.safetensors")) < 0 ||
       (rc = export_part(&r, r.parts.text_encoder, "text_encoder", "model.safetensors")) < 0))
    goto done;
  rc = mmp_dist_barrier(r.dist); /* the others wait for rank 0's files */
done:
  /* a failing rank ends the group: the others would wait forever in the next collective */
  if (rc < 0 && rc != MMP_ECANCELED && r.world > 1) {
    mmp_log(MMP_LOG_ERROR, "train", "rank %d: %s", r.rank, mmp_error_last());
    mmp_dist_abort(r.dist, 1);
  }
  mmp_dist_finalize(r.dist);
  if (r.metrics) fclose(r.metrics);
  for (size_t i = 0; i < r.nps; i++) {
    free(r.ps[i].name);
    mmp_tensor_unref(r.ps[i].t);
  }
  free(r.ps);
  free(r.order);
  mmp_rng_free(r.rng);
  mmp_rng_free(r.data_rng);
  mmp_rng_free(r.np_rng);
  mmp_adamw_free(r.opt);
  source_close(&r.data);
  source_close(&r.val);
  mmp_tensor_unref(r.parts.type);
  mmp_tensor_unref(r.parts.time);
  mmp_tensor_unref(r.parts.clip_null);
  mmp_tensor_unref(r.parts.blip_null);
  mmp_tensor_unref(r.parts.image_null);
  mmp_component_free(r.parts.mm_encoder);
  mmp_component_free(r.parts.scheduler);
  mmp_component_free(r.parts.vae);
  mmp_component_free(r.parts.unet);
  mmp_component_free(r.parts.text_encoder);
  mmp_component_free(r.parts.tokenizer);
  return rc;
}

static const mmp_task_ops_t train_ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_TASK, mmp_task_ops_t, "train", "1.0",
                            "training: Stable Diffusion fine-tuning on image-caption pairs (checkpoints, resume, export)",
                            train_keys, train_create, train_destroy),
    .run = train_run,
};

MMP_EXPORT int mmp_plugin_task_train_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_task_train_init(mmp_registry_t *reg) { return mmp_registry_add(reg, &train_ops.base); }
