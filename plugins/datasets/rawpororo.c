/* plugins/datasets/rawpororo.c - the PororoSV raw release: not built natively yet; says which converter to use. */
#include <stdio.h>

#include <mmpipe/error.h>

#include "plugins/datasets/story.h"
#include "plugins/datasets/storybuild.h"

/* PororoSV's index files (descriptions.npy, train_seen_unseen_ids.npy) are
 * NumPy object arrays pickled by Python 2: NumPy's reconstruct globals,
 * which the restricted machine keeps opaque. Until their state is walked
 * (doc/datasets.md), the build refuses and names the converter. */
int story_build_pororo(const story_desc_t *d, const mmp_dataset_build_t *req, mmp_context_t *ctx) {
  (void)req;
  (void)ctx;
  return mmp_error_set(MMP_EUNSUPPORTED,
                       "%s: building from the raw release is not supported yet (its .npy index files are "
                       "pickled NumPy object arrays); convert it with AR-LDM's data_script/pororo_hdf5.py "
                       "--data_dir DIR --save_path pororo.h5 and use that file (doc/datasets.md)",
                       d->name);
}
