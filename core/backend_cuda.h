/* core/backend_cuda.h - the CUDA backend's entry for core/backend.c (internal; built with HAVE_CUDA). */
#ifndef MMPIPE_CORE_BACKEND_CUDA_H
#define MMPIPE_CORE_BACKEND_CUDA_H

#include <mmpipe/backend.h>

/* The CUDA backend, initialised and registered on first call (device
 * MMPIPE_CUDA_DEVICE, default 0). NULL with MMP_EDEVICE "no CUDA device:
 * <reason>" when no GPU can be used. (transfer none) */
mmp_backend_t *mmp__backend_cuda(void);

#endif
