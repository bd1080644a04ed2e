/* core/tensor_impl.h - internals shared by the tensor runtime files (not installed). */
#ifndef MMPIPE_CORE_TENSOR_IMPL_H
#define MMPIPE_CORE_TENSOR_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The public API of these headers is what libmmpipe exports: give their
 * declarations default visibility even if the library is built with
 * -fvisibility=hidden (the internal mmp__ helpers below are not exported
 * either way: the export regex is '^mmp_[a-z]'). */
#pragma GCC visibility push(default)
#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>
#pragma GCC visibility pop

/* Reference-counted device memory. Either from the backend's allocator
 * (release == NULL) or wrapped host memory (release called with user). */
struct mmp_storage {
  int refcount;
  bool wrapped;
  mmp_backend_t *be;
  void *data;
  size_t nbytes;
  void (*release)(void *user);
  void *user;
};

/* Tensor flags (core-private). */
#define MMP_TF_READONLY 0x1u /* storage is a read-only mapping */

/* ---- tensor.c ---- */
/* A new header on @st (takes a reference to @st). shape/stride copied. */
mmp_tensor_t *mmp__tensor_view(const mmp_tensor_t *base, int ndim,
                               const int64_t *shape, const int64_t *stride,
                               int64_t offset);
/* Contiguous strides for @shape. */
void mmp__contig_strides(int ndim, const int64_t *shape, int64_t *stride);
int64_t mmp__numel(int ndim, const int64_t *shape);
/* Byte pointer of element 0 (storage data + offset). */
static inline void *mmp__ptr(const mmp_tensor_t *t) {
  return (char *)t->storage->data + t->offset * (int64_t)mmp_dtype_size(t->dtype);
}
/* Format a shape "[2, 3]" into buf. */
const char *mmp__shape_str(int ndim, const int64_t *shape, char *buf, size_t len);
/* Like mmp_tensor_describe, into a static thread-local ring of buffers
 * (for error messages with several tensors). */
const char *mmp__desc(const mmp_tensor_t *t);

/* fp16/bf16 conversions (round to nearest even). */
float mmp__half_to_float(uint16_t h);
uint16_t mmp__float_to_half(float f);
float mmp__bf16_to_float(uint16_t h);
uint16_t mmp__float_to_bf16(float f);

/* ---- backend.c ---- */
/* The core-private CPU backend singleton (backend_cpu.c). */
mmp_backend_t *mmp__backend_cpu(void);
/* Counters of header allocations (tensor headers and storages are cached
 * too, so that steady state makes no malloc at all). */
void mmp__header_stats(uint64_t *os_allocs, uint64_t *requests);

/* Small caches for tensor headers and storages (tensor.c). */
mmp_tensor_t *mmp__header_alloc(void);
void mmp__header_free(mmp_tensor_t *t);

#endif
