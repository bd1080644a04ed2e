/* plugins/schedulers/common.h - schedule math, keys and validation shared by the scheduler modules.
 *
 * Linked into each scheduler module from the convenience library
 * libschedcommon.la (hidden symbols; modules never link each other).
 *
 * Precision: diffusers 0.19.3 keeps its schedules in float32 torch tensors
 * (betas from torch.linspace(..., dtype=float32), alphas_cumprod from
 * torch.cumprod, which accumulates in double on the CPU and stores float) and
 * does the per-step scalar arithmetic on 0-dim float32 tensors, while its
 * timestep lists come from numpy in float64. The helpers here reproduce those
 * roundings: schedule arrays are float, timestep arithmetic is double.
 */
#ifndef MMP_SCHEDULERS_COMMON_H
#define MMP_SCHEDULERS_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/rng.h>

/* ---- keys every scheduler declares (diffusers' names and defaults) ---- */
#define SCHED_KEYS_COMMON(spacing_default)                                                       \
  {"num_inference_steps", MMP_TYPE_INT, "50",                                                    \
   "denoising steps (set_timesteps(0) uses this value)", 0, 0},                                  \
  {"num_train_timesteps", MMP_TYPE_INT, "1000", "diffusion steps the model was trained with", 0, \
   0},                                                                                           \
  {"beta_start", MMP_TYPE_FLOAT, "0.0001", "first beta (linear, scaled_linear, sigmoid)", 0, 0}, \
  {"beta_end", MMP_TYPE_FLOAT, "0.02", "last beta (linear, scaled_linear, sigmoid)", 0, 0},      \
  {"beta_schedule", MMP_TYPE_STRING, "\"linear\"",                                               \
   "linear, scaled_linear or squaredcos_cap_v2 (ddpm also: sigmoid)", 0, 0},                     \
  {"trained_betas", MMP_TYPE_STRING, NULL,                                                       \
   "file of betas replacing beta_schedule: .safetensors with one 1-D tensor, or text numbers",   \
   MMP_KEY_PATH, 0},                                                                             \
  {"prediction_type", MMP_TYPE_STRING, "\"epsilon\"",                                            \
   "what the model predicts: epsilon, v_prediction or sample", 0, 0},                            \
  {"timestep_spacing", MMP_TYPE_STRING, spacing_default,                                         \
   "leading, linspace or trailing (Lin et al. 2023, table 2)", 0, 0},                            \
  {"steps_offset", MMP_TYPE_INT, "0", "offset added to leading timesteps", 0, 0}

/* keys of schedulers with stochastic steps */
#define SCHED_KEYS_RNG                                                                     \
  {"seed", MMP_TYPE_INT, "0", "seed of the instance's generator (used when no noise is given)", \
   0, 0},                                                                                  \
  {"rng", MMP_TYPE_STRING, "\"torch\"",                                                    \
   "generator: torch (= torch.Generator().manual_seed(seed) on CPU) or philox", 0, 0}

/* dynamic thresholding (Imagen) */
#define SCHED_KEYS_THRESHOLD                                                                \
  {"thresholding", MMP_TYPE_BOOL, "false", "dynamic thresholding of the predicted x0", 0, 0}, \
  {"dynamic_thresholding_ratio", MMP_TYPE_FLOAT, "0.995",                                   \
   "quantile of |x0| used as the threshold", 0, 0},                                         \
  {"sample_max_value", MMP_TYPE_FLOAT, "1.0", "largest threshold", 0, 0}

/* Every scheduler-specific key of the others, accepted and ignored, so that
 * one configuration serves every scheduler (`-s scheduler.name=pndm` on a
 * DDIM configuration works, as diffusers' from_config ignores foreign keys).
 * Listed after a scheduler's own keys: the first declaration wins. */
#define SCHED_IGN(name, type) {name, type, NULL, "used by other schedulers; ignored by this one", MMP_KEY_IGNORED, 0}
#define SCHED_KEYS_INTERCHANGEABLE                                                              \
  SCHED_IGN("variance_type", MMP_TYPE_STRING), SCHED_IGN("clip_sample", MMP_TYPE_BOOL),         \
  SCHED_IGN("clip_sample_range", MMP_TYPE_FLOAT), SCHED_IGN("set_alpha_to_one", MMP_TYPE_BOOL), \
  SCHED_IGN("rescale_betas_zero_snr", MMP_TYPE_BOOL), SCHED_IGN("eta", MMP_TYPE_FLOAT),         \
  SCHED_IGN("use_clipped_model_output", MMP_TYPE_BOOL),                                         \
  SCHED_IGN("skip_prk_steps", MMP_TYPE_BOOL), SCHED_IGN("interpolation_type", MMP_TYPE_STRING), \
  SCHED_IGN("use_karras_sigmas", MMP_TYPE_BOOL), SCHED_IGN("s_churn", MMP_TYPE_FLOAT),          \
  SCHED_IGN("s_tmin", MMP_TYPE_FLOAT), SCHED_IGN("s_tmax", MMP_TYPE_FLOAT),                     \
  SCHED_IGN("s_noise", MMP_TYPE_FLOAT), SCHED_IGN("solver_order", MMP_TYPE_INT),                \
  SCHED_IGN("algorithm_type", MMP_TYPE_STRING), SCHED_IGN("solver_type", MMP_TYPE_STRING),      \
  SCHED_IGN("lower_order_final", MMP_TYPE_BOOL), SCHED_IGN("lambda_min_clipped", MMP_TYPE_FLOAT), \
  SCHED_IGN("thresholding", MMP_TYPE_BOOL), SCHED_IGN("dynamic_thresholding_ratio", MMP_TYPE_FLOAT), \
  SCHED_IGN("sample_max_value", MMP_TYPE_FLOAT), SCHED_IGN("seed", MMP_TYPE_INT),               \
  SCHED_IGN("rng", MMP_TYPE_STRING)

#define SCHED_KEYS_END SCHED_KEYS_INTERCHANGEABLE, {NULL, MMP_TYPE_NONE, NULL, NULL, 0, 0}

/* ---- what a scheduler accepts (flags to sched_common_init) ---- */
#define SCHED_ALLOW_SIGMOID 0x1u      /* beta_schedule = "sigmoid" (ddpm) */
#define SCHED_ALLOW_ZERO_SNR 0x2u     /* rescale_betas_zero_snr key (ddim) */
#define SCHED_NO_PRED_SAMPLE 0x4u     /* prediction_type "sample" unsupported */
#define SCHED_HAS_THRESHOLD 0x8u      /* SCHED_KEYS_THRESHOLD declared */
#define SCHED_HAS_RNG 0x10u           /* SCHED_KEYS_RNG declared */

typedef enum { SCHED_PRED_EPSILON = 0, SCHED_PRED_V, SCHED_PRED_SAMPLE } sched_pred_t;
typedef enum {
  SCHED_SPACING_LEADING = 0,
  SCHED_SPACING_LINSPACE,
  SCHED_SPACING_TRAILING
} sched_spacing_t;

typedef struct sched_common {
  const char *plugin;        /* name for messages */
  const mmp_config_t *cfg;   /* the scheduler's group (transfer none) */
  int64_t num_train_timesteps;
  int64_t num_inference_steps; /* configured default */
  double beta_start, beta_end;
  sched_pred_t prediction;
  sched_spacing_t spacing;
  int64_t steps_offset;
  float *betas;              /* [T] float32, as torch */
  float *alphas_cumprod;     /* [T] float32, as torch.cumprod */
  bool thresholding;
  double dyn_ratio, sample_max_value;
  uint64_t seed;
  mmp_rng_mode_t rng_mode;
  mmp_rng_t *rng;            /* created on first use */
} sched_common_t;

/* Read and validate the common keys, build betas and alphas_cumprod.
 * Errors: MMP_ECONFIG naming key, file and line. On failure the struct is
 * left for sched_common_free. */
int sched_common_init(sched_common_t *c, const char *plugin, const mmp_config_t *cfg,
                      unsigned flags);
void sched_common_free(sched_common_t *c);

/* Set a config error for @key of @cfg: "FILE:LINE: PATH: message".
 * Returns MMP_ECONFIG. */
int sched_config_error(const mmp_config_t *cfg, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Typed reads with a fallback when the key is absent (defaults are normally
 * merged by the core already). Return 0 or a negative MMP_E*. */
int sched_get_int(const mmp_config_t *cfg, const char *key, int64_t fallback, int64_t *out);
int sched_get_float(const mmp_config_t *cfg, const char *key, double fallback, double *out);
int sched_get_bool(const mmp_config_t *cfg, const char *key, bool fallback, bool *out);
int sched_get_string(const mmp_config_t *cfg, const char *key, const char *fallback,
                     const char **out);
/* Pick one of @names (NULL-terminated) for a string key; *out is the index. */
int sched_get_enum(const mmp_config_t *cfg, const char *key, const char *fallback,
                   const char *const *names, int *out);

/* Resolve set_timesteps' argument: 0 means the configured value; checks
 * 1 <= n <= num_train_timesteps. */
int sched_check_steps(const sched_common_t *c, int n, int64_t *out);
/* Every timestep in [0, num_train_timesteps): else a config error naming
 * steps_offset / timestep_spacing. */
int sched_check_range(const sched_common_t *c, const int64_t *ts, size_t n);

/* The descending integer timesteps of DDPM/DDIM for @n steps under the
 * configured spacing (linspace: round(linspace(0, T-1, n)) reversed;
 * leading: i * (T // n) + steps_offset reversed; trailing:
 * round(arange(T, 0, -T/n)) - 1). *out is malloc'ed. */
int sched_spaced_timesteps(const sched_common_t *c, int64_t n, int64_t **out, size_t *cnt);
/* set_timesteps of DDPM and DDIM: sched_check_steps, sched_spaced_timesteps
 * and sched_check_range in one; *steps gets the resolved step count. */
int sched_plain_timesteps(const sched_common_t *c, int num_inference_steps, int64_t **out,
                          size_t *cnt, int64_t *steps);

/* ---- numpy / torch reproductions ---- */
/* np.linspace(start, stop, num) in float64 (endpoint included). */
void sched_np_linspace(double start, double stop, int64_t num, double *out);
/* np.arange(start, stop, step) for doubles: returns the length, fills @out
 * when non-NULL (numpy's fill: start + i * ((start + step) - start)). */
int64_t sched_np_arange(double start, double stop, double step, double *out);
/* numpy's round (half to even). */
double sched_np_round(double x);
/* torch.linspace(start, end, steps, dtype=float32) as the CPU kernel does it. */
void sched_torch_linspace_f32(double start, double end, int64_t steps, float *out);

/* alphas_cumprod helpers */
/* What every step() starts with: clears *prev_out and *pred_out (nullable),
 * then checks that set_timesteps ran (@ready), that @index is inside the
 * @n-step schedule and (@mo non-NULL) that the model output has the
 * sample's shape. Returns 0 or a negative MMP_E* code with the message. */
int sched_step_begin(const sched_common_t *c, bool ready, size_t index, size_t n,
                     const mmp_tensor_t *mo, const mmp_tensor_t *sample, mmp_tensor_t **prev_out,
                     mmp_tensor_t **pred_out);
/* The checks of step_noise(): set_timesteps ran (@ready) and @index is
 * inside the @n-step schedule. Returns 0 or a negative MMP_E* code. */
int sched_check_index(const sched_common_t *c, bool ready, size_t index, size_t n);
/* What it ends with: hands out @prev (transfer full) and @x0 (nullable;
 * given to *pred_out, or dropped when @pred_out is NULL). A NULL @prev means
 * an op failed: @x0 is dropped and the error code returned. */
int sched_step_end(mmp_tensor_t *prev, mmp_tensor_t *x0, mmp_tensor_t **prev_out,
                   mmp_tensor_t **pred_out);

static inline float sched_alpha_prod(const sched_common_t *c, int64_t t, float final_value) {
  return t >= 0 ? c->alphas_cumprod[t] : final_value;
}

/* Karras et al. sigmas: (a^(1/7) + ramp * (b^(1/7) - a^(1/7)))^7 with
 * ramp = linspace(0, 1, n); a = in_first, b = in_last (diffusers'
 * _convert_to_karras with in_sigmas[0], in_sigmas[-1]). */
void sched_karras(double in_first, double in_last, int64_t n, double *out);
/* diffusers' _sigma_to_t: @log_sigmas float32 ascending [T]. */
double sched_sigma_to_t(double sigma, const float *log_sigmas, int64_t T);

/* ---- tensor helpers (steps go through the core tensor API) ---- */
/* x0 <- dynamic thresholding of @x0 per batch item (torch.quantile, linear).
 * (transfer full) */
mmp_tensor_t *sched_threshold(const sched_common_t *c, const mmp_tensor_t *x0);
/* clip or threshold the predicted x0 as configured (@clip: clip_sample with
 * @clip_range); takes ownership of @x0 and returns the result. */
mmp_tensor_t *sched_clip_or_threshold(const sched_common_t *c, mmp_tensor_t *x0, bool clip,
                                      double clip_range);
/* The noise of a stochastic step: a new reference of @given, or a draw from
 * the instance's generator shaped like @like. (transfer full) */
mmp_tensor_t *sched_noise(sched_common_t *c, const mmp_tensor_t *given, const mmp_tensor_t *like);
/* Per-batch-item coefficients [B] as a tensor shaped [B, 1, ...] to
 * broadcast against @like. (transfer full) */
mmp_tensor_t *sched_batch_coeffs(const float *v, int64_t b, const mmp_tensor_t *like);
/* alphas_cumprod-based add_noise (ddpm, ddim, pndm, dpm):
 * sqrt(ac[t]) * x0 + sqrt(1 - ac[t]) * noise. */
int sched_add_noise_alphas(const sched_common_t *c, const mmp_tensor_t *x0,
                           const mmp_tensor_t *noise, const mmp_tensor_t *timesteps,
                           mmp_tensor_t **out);
/* Read an i64/i32 timesteps tensor [B] into @out (caller frees). */
int sched_read_timesteps(const mmp_tensor_t *t, int64_t **out, int64_t *n);

/* Unref helper for arrays of tensors. */
void sched_unref_all(mmp_tensor_t **ts, size_t n);

#endif
