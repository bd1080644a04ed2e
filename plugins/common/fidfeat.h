/* plugins/common/fidfeat.h - FID features and statistics of uint8 images
 * through an inception_fid encoder component, shared by `pipeline fid`
 * (tools/cmd_fid.c) and the story task's calculate_fid.
 *
 *   mmp_fid_acc_t *a = mmp_fid_acc_new(enc, MMP_FID_ARLDM, 50);
 *   for (...) mmp_fid_acc_add(a, &image);           // RGB u8, any size
 *   mmp_fid_stats_t s;
 *   mmp_fid_acc_finish(a, &s);                      // mu, sigma, count
 *   mmp_frechet_distance_method(s.mu, s.sigma, ...);
 *   mmp_fid_stats_clear(&s);
 *   mmp_fid_acc_free(a);
 *
 * The protocols are doc/evaluation.md's: standard (pytorch-fid: the image
 * at full size, x / 255) and arldm (AR-LDM: PIL bilinear resize to 64x64,
 * ToTensor, Normalize(0.5, 0.5), (x + 1) / 2). Images are batched in runs
 * of equal size, as pytorch-fid's loader stacks them.
 */
#ifndef MMPIPE_PLUGINS_COMMON_FIDFEAT_H
#define MMPIPE_PLUGINS_COMMON_FIDFEAT_H

#include <mmpipe/mmpipe.h>

#include "plugins/processors/imagecommon.h"

typedef enum mmp_fid_protocol {
  MMP_FID_STANDARD = 0,
  MMP_FID_ARLDM = 1
} mmp_fid_protocol_t;

/* Feature statistics of one image set: mu [dim], sigma [dim, dim] (n - 1),
 * both owned (mmp_fid_stats_clear). */
typedef struct mmp_fid_stats {
  int64_t count, dim;
  double *mu, *sigma;
} mmp_fid_stats_t;

typedef struct mmp_fid_acc mmp_fid_acc_t;

/* Progress after each forward pass: images encoded so far. */
typedef void (*mmp_fid_progress_cb)(void *user, int64_t done);

/* An accumulator feeding @enc (an encoder giving [N, D] 'features' from
 * 'sample' [N, 3, H, W], transfer none: it must outlive the accumulator)
 * @batch images at a time. @progress nullable. NULL on ENOMEM. (transfer full)
 */
mmp_fid_acc_t *mmp_fid_acc_new(mmp_component_t *enc, mmp_fid_protocol_t proto,
                               int batch, mmp_fid_progress_cb progress,
                               void *user);
void mmp_fid_acc_free(mmp_fid_acc_t *a);

/* One RGB u8 image (c = 3; not taken) through the protocol's preprocessing
 * into the next batch. 0 or the resize's / encoder's error. */
int mmp_fid_acc_add(mmp_fid_acc_t *a, const mmp_image_t *im);

/* Encode what is left; the statistics of all features into @out (fewer
 * than 2 images: MMP_EDATA). The accumulator is spent either way. */
int mmp_fid_acc_finish(mmp_fid_acc_t *a, mmp_fid_stats_t *out);

/* Images added so far (including those still in the pending batch). */
int64_t mmp_fid_acc_count(const mmp_fid_acc_t *a);

/* Free mu and sigma; NULL-safe, leaves the struct zeroed. */
void mmp_fid_stats_clear(mmp_fid_stats_t *s);

#endif
