/* core/pickle.h - a pickle machine that builds plain values and tensors only (not installed).
 *
 * Protocols 2-5. Nothing a pickle names is imported or called: GLOBAL and
 * STACK_GLOBAL resolve against a fixed allow-list (collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter /
 * _rebuild_parameter_with_state, the typed storages torch.*Storage,
 * torch.UntypedStorage, builtins.set / frozenset, _codecs.encode with
 * latin-1). Any other global is an error naming it and its offset in strict
 * mode; otherwise it becomes an opaque value that absorbs whatever is done
 * with it (calls, state, items), so that the caller can still reach the
 * tensors beside it and can tell when a tensor sits inside one.
 *
 * Every value lives in the machine's arena and is freed with it; values may
 * be shared and (through the memo) cyclic, so walkers bound their depth and
 * mark nodes they are inside. Lengths and indices read from the input are
 * checked against the bytes that remain before anything is allocated.
 */
#ifndef MMPIPE_CORE_PICKLE_H
#define MMPIPE_CORE_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mmpipe/tensor.h>

#define PK_MAX_DIMS 8    /* dims a tensor may have in a pickle */
#define PK_MAX_DEPTH 200 /* nesting walkers follow */

typedef enum pk_kind {
  PK_NONE,
  PK_BOOL,
  PK_INT,
  PK_BIGINT,  /* more than 64 bits: little-endian two's complement in str */
  PK_FLOAT,
  PK_STR,     /* UTF-8 as stored */
  PK_BYTES,
  PK_TUPLE,
  PK_LIST,
  PK_DICT,    /* items: key, value, key, value, ... */
  PK_SET,
  PK_GLOBAL,  /* an allow-listed global (callable or storage type) */
  PK_OPAQUE,  /* anything built from a global not on the allow-list */
  PK_STORAGE, /* a persistent id ('storage', type, key, location, numel[, view]) */
  PK_TENSOR
} pk_kind_t;

/* Allow-listed globals. */
typedef enum pk_fn {
  PK_FN_UNKNOWN = 0,
  PK_FN_ORDERED_DICT,
  PK_FN_REBUILD_TENSOR_V2,
  PK_FN_REBUILD_TENSOR,
  PK_FN_REBUILD_PARAMETER,
  PK_FN_REBUILD_PARAMETER_STATE,
  PK_FN_STORAGE, /* a storage type; the dtype in .st_dtype */
  PK_FN_SET,
  PK_FN_FROZENSET,
  PK_FN_CODECS_ENCODE
} pk_fn_t;

/* Element types of torch storages (wider than mmp_dtype_t: i16 and i8). */
typedef enum pk_dtype {
  PK_F32, PK_F64, PK_F16, PK_BF16, PK_I64, PK_I32, PK_I16, PK_I8, PK_U8, PK_BOOL_T, PK_DTYPE_COUNT
} pk_dtype_t;
size_t pk_dtype_size(pk_dtype_t d);
const char *pk_dtype_name(pk_dtype_t d);

typedef struct pk_value pk_value_t;

typedef struct pk_storage {
  pk_dtype_t dtype;
  char *key;          /* the record's key (zip: data/<key>; legacy: root key) */
  int64_t numel;      /* elements the pickle declares for the root storage */
  bool view;          /* legacy storage view: [view_offset, +view_numel) of the root */
  int64_t view_offset, view_numel;
  void *user;         /* the container's record (set by the caller) */
} pk_storage_t;

typedef struct pk_tensor {
  pk_value_t *storage; /* PK_STORAGE */
  int64_t offset;      /* in elements of the storage (or view) */
  int ndim;
  int64_t size[PK_MAX_DIMS], stride[PK_MAX_DIMS];
} pk_tensor_t;

struct pk_value {
  pk_kind_t kind;
  uint8_t mark;  /* walker: inside this node */
  uint8_t holds; /* pk_holds_tensor's answer: 0 not known, 1 no, 2 yes */
  uint8_t py2;   /* PK_STR from a Python 2 str (BINSTRING, SHORT_BINSTRING): bytes as stored */
  size_t pos;    /* offset of the opcode that made it */
  union {
    bool b;
    int64_t i;
    double f;
    struct {
      char *s; /* NUL-terminated copy */
      size_t len;
    } str;     /* PK_STR, PK_BYTES, PK_BIGINT */
    struct {
      pk_value_t **items;
      size_t n, cap;
    } seq;     /* PK_TUPLE, PK_LIST, PK_DICT, PK_SET; PK_OPAQUE's parts */
    struct {
      pk_fn_t fn;
      pk_dtype_t st_dtype;
    } global;
    pk_storage_t storage;
    pk_tensor_t tensor;
  } u;
  char *gname;       /* PK_OPAQUE: "module.name" of the global it came from */
  size_t gpos;       /* PK_OPAQUE: where that global was named */
};

typedef struct pk_machine pk_t;

/* (transfer full) NULL + MMP_ENOMEM. @strict: unknown globals are errors. */
pk_t *pk_new(bool strict);
/* In strict mode, also let NumPy's array globals through as opaque values
 * (numpy[._]core.multiarray._reconstruct / .scalar, numpy.ndarray,
 * numpy.dtype): an .npy object array's pickle, read as data. */
void pk_allow_numpy(pk_t *pk);
void pk_free(pk_t *pk); /* NULL ok */
/* Run one pickle in data[*pos, n) to its STOP; advances *pos past it.
 * (transfer none: the value lives in @pk) NULL + MMP_EDATA message with
 * the offset (relative to @data) on bad input. @what names the input in
 * messages ("data.pkl"). */
pk_value_t *pk_load(pk_t *pk, const uint8_t *data, size_t n, size_t *pos, const char *what);
/* Every PK_STORAGE made so far (to attach records). */
size_t pk_storage_count(const pk_t *pk);
pk_value_t *pk_storage_at(const pk_t *pk, size_t i);

/* Whether a tensor is reachable from @v (cycle-safe, depth-bounded; a
 * structure too deep to search counts as holding one). */
bool pk_holds_tensor(pk_value_t *v);
/* True for None, bool, int, float, str, bytes. */
bool pk_is_scalar(const pk_value_t *v);

#endif
