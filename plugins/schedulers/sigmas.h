/* plugins/schedulers/sigmas.h - the sigma (k-diffusion) schedule shared by euler and euler_ancestral. */
#ifndef MMP_SCHEDULERS_SIGMAS_H
#define MMP_SCHEDULERS_SIGMAS_H

#include "plugins/schedulers/common.h"

typedef struct sched_sigmas {
  double *timesteps_f; /* [n] the exact (possibly fractional) model timesteps */
  int64_t *timesteps;  /* [n] rounded half to even */
  float *sigmas;       /* [nsig] float32 as diffusers; nsig = n + 1 (n + 2 with log_linear) */
  size_t n, nsig;
} sched_sigmas_t;

/* diffusers' EulerDiscreteScheduler.set_timesteps: @interp_log_linear and
 * @karras as its interpolation_type / use_karras_sigmas. */
int sched_sigmas_build(const sched_common_t *c, int64_t n, bool interp_log_linear, bool karras,
                       sched_sigmas_t *out);
void sched_sigmas_free(sched_sigmas_t *s);
/* diffusers' init_noise_sigma: max sigma, or sqrt(max^2 + 1) for leading spacing. */
double sched_sigmas_init_noise(const sched_common_t *c, const sched_sigmas_t *s);
/* sample / sqrt(sigma_i^2 + 1). (transfer full) */
int sched_sigmas_scale_input(const sched_sigmas_t *s, size_t index, const mmp_tensor_t *sample,
                             mmp_tensor_t **out);
/* x0 + noise * sigma(t) with t looked up in the schedule (diffusers'
 * add_noise of the sigma schedulers). */
int sched_sigmas_add_noise(const sched_common_t *c, const sched_sigmas_t *s, const mmp_tensor_t *x0,
                           const mmp_tensor_t *noise, const mmp_tensor_t *timesteps,
                           mmp_tensor_t **out);
/* The full training sigmas sqrt((1 - ac) / ac) in float32 [T]. */
float *sched_train_sigmas(const sched_common_t *c);

#endif
