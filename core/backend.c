/* core/backend.c - backend registry, selection ("cpu" | "cuda" | "auto") and dispatch. */
#include <pthread.h>
#include <string.h>

#include "config.h"

#include "core/cpu/kernels.h"
#include "core/tensor_impl.h"
#ifdef HAVE_CUDA
#include "core/backend_cuda.h"
#endif

#define MAX_BACKENDS 8

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static mmp_backend_t *backends[MAX_BACKENDS];
static int nbackends;
static int auto_warned;

static const char *const op_names[MMP_OP_COUNT] = {
    [MMP_OP_COPY] = "copy",
    [MMP_OP_FILL] = "fill",
    [MMP_OP_ADD] = "add",
    [MMP_OP_SUB] = "sub",
    [MMP_OP_MUL] = "mul",
    [MMP_OP_DIV] = "div",
    [MMP_OP_SCALE] = "scale",
    [MMP_OP_AXPBY] = "axpby",
    [MMP_OP_CLAMP] = "clamp",
    [MMP_OP_SQRT] = "sqrt",
    [MMP_OP_EXP] = "exp",
    [MMP_OP_ABS] = "abs",
    [MMP_OP_SILU] = "silu",
    [MMP_OP_GELU] = "gelu",
    [MMP_OP_GELU_TANH] = "gelu_tanh",
    [MMP_OP_QUICK_GELU] = "quick_gelu",
    [MMP_OP_SIGMOID] = "sigmoid",
    [MMP_OP_TANH] = "tanh",
    [MMP_OP_RELU] = "relu",
    [MMP_OP_GEGLU] = "geglu",
    [MMP_OP_SUM] = "sum",
    [MMP_OP_MEAN] = "mean",
    [MMP_OP_MAX] = "max",
    [MMP_OP_ARGMAX] = "argmax",
    [MMP_OP_MATMUL] = "matmul",
    [MMP_OP_LINEAR] = "linear",
    [MMP_OP_CONV2D] = "conv2d",
    [MMP_OP_GROUP_NORM] = "group_norm",
    [MMP_OP_GROUP_NORM_SILU] = "group_norm_silu",
    [MMP_OP_LAYER_NORM] = "layer_norm",
    [MMP_OP_SOFTMAX] = "softmax",
    [MMP_OP_ATTENTION] = "attention",
    [MMP_OP_UPSAMPLE_NEAREST2X] = "upsample_nearest2x",
    [MMP_OP_AVG_POOL2D] = "avg_pool2d",
    [MMP_OP_MAX_POOL2D] = "max_pool2d",
    [MMP_OP_EMBEDDING] = "embedding",
    [MMP_OP_TIMESTEP_EMBEDDING] = "timestep_embedding",
    [MMP_OP_RESIZE_BILINEAR] = "resize_bilinear",
    [MMP_OP_ACT_BACKWARD] = "act_backward",
    [MMP_OP_GEGLU_BACKWARD] = "geglu_backward",
    [MMP_OP_LAYER_NORM_BACKWARD] = "layer_norm_backward",
    [MMP_OP_GROUP_NORM_BACKWARD] = "group_norm_backward",
    [MMP_OP_EMBEDDING_BACKWARD] = "embedding_backward",
    [MMP_OP_CONV2D_BACKWARD_INPUT] = "conv2d_backward_input",
    [MMP_OP_CONV2D_BACKWARD_WEIGHT] = "conv2d_backward_weight",
    [MMP_OP_ATTENTION_BACKWARD] = "attention_backward",
    [MMP_OP_ADAMW] = "adamw",
};

/* ops whose operands must all be contiguous (backend.h's comments) */
static const bool contiguous_srcs[MMP_OP_COUNT] = {
    [MMP_OP_GEGLU] = true,      [MMP_OP_LINEAR] = true,          [MMP_OP_CONV2D] = true,
    [MMP_OP_GROUP_NORM] = true, [MMP_OP_GROUP_NORM_SILU] = true, [MMP_OP_LAYER_NORM] = true,
    [MMP_OP_ATTENTION] = true,  [MMP_OP_UPSAMPLE_NEAREST2X] = true, [MMP_OP_AVG_POOL2D] = true,
    [MMP_OP_MAX_POOL2D] = true, [MMP_OP_EMBEDDING] = true, [MMP_OP_RESIZE_BILINEAR] = true,
    [MMP_OP_ACT_BACKWARD] = true, [MMP_OP_GEGLU_BACKWARD] = true, [MMP_OP_LAYER_NORM_BACKWARD] = true,
    [MMP_OP_GROUP_NORM_BACKWARD] = true, [MMP_OP_EMBEDDING_BACKWARD] = true,
    [MMP_OP_CONV2D_BACKWARD_INPUT] = true, [MMP_OP_CONV2D_BACKWARD_WEIGHT] = true,
    [MMP_OP_ATTENTION_BACKWARD] = true, [MMP_OP_ADAMW] = true,
};

int mmp__backend_check(const char *who, mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                       const mmp_tensor_t *dst, bool strided_fill) {
  if ((unsigned)op >= MMP_OP_COUNT) return mmp_error_set(MMP_EINVAL, "%s: unknown op %d", who, (int)op);
  if (op != MMP_OP_COPY && !(strided_fill && op == MMP_OP_FILL) && !mmp_tensor_is_contiguous(dst))
    return mmp_error_set(MMP_EINVAL, "%s %s: destination %s must be contiguous", who, mmp_op_name(op),
                         mmp__desc(dst));
  if (contiguous_srcs[op])
    for (int i = 0; i < nsrc; i++)
      if (srcs[i] && !mmp_tensor_is_contiguous(srcs[i]))
        return mmp_error_set(MMP_EINVAL, "%s %s: operands must be contiguous", who, mmp_op_name(op));
  return 0;
}

const char *mmp_op_name(mmp_op_t op) {
  if ((unsigned)op >= MMP_OP_COUNT || !op_names[op]) return "unknown-op";
  return op_names[op];
}

/* The vtable member at @member is covered by struct_size and non-NULL. */
#define HAS(ops, member)                                                      \
  ((ops)->struct_size >= offsetof(mmp_backend_ops_t, member) + sizeof((ops)->member) && \
   (ops)->member != NULL)

int mmp_backend_register(mmp_backend_t *be) {
  if (!be || !be->ops) return mmp_error_set(MMP_EINVAL, "backend_register: NULL backend");
  const mmp_backend_ops_t *o = be->ops;
  if (o->struct_size < offsetof(mmp_backend_ops_t, compute) + sizeof(o->compute))
    return mmp_error_set(MMP_EINVAL, "backend_register: struct_size %zu too small", o->struct_size);
  if (!o->name || !*o->name) return mmp_error_set(MMP_EINVAL, "backend_register: backend has no name");
  static const struct {
    size_t off;
    const char *name;
  } req[] = {{offsetof(mmp_backend_ops_t, alloc), "alloc"},
             {offsetof(mmp_backend_ops_t, free), "free"},
             {offsetof(mmp_backend_ops_t, copy_to_host), "copy_to_host"},
             {offsetof(mmp_backend_ops_t, copy_from_host), "copy_from_host"},
             {offsetof(mmp_backend_ops_t, compute), "compute"}};
  for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
    void *fp;
    memcpy(&fp, (const char *)o + req[i].off, sizeof fp);
    if (!fp)
      return mmp_error_set(MMP_EINVAL, "backend_register: backend \"%s\" lacks required member %s", o->name,
                           req[i].name);
  }
  pthread_mutex_lock(&reg_lock);
  int rc = 0;
  for (int i = 0; i < nbackends; i++)
    if (strcmp(backends[i]->ops->name, o->name) == 0) rc = MMP_EEXIST;
  if (rc == 0 && nbackends >= MAX_BACKENDS) rc = MMP_ENOMEM;
  if (rc == 0) backends[nbackends++] = be;
  pthread_mutex_unlock(&reg_lock);
  if (rc == MMP_EEXIST) return mmp_error_set(rc, "backend_register: \"%s\" is already registered", o->name);
  if (rc) return mmp_error_set(rc, "backend_register: too many backends");
  return 0;
}

static mmp_backend_t *find_backend(const char *name) {
  mmp_backend_t *r = NULL;
  pthread_mutex_lock(&reg_lock);
  for (int i = 0; i < nbackends; i++)
    if (strcmp(backends[i]->ops->name, name) == 0) r = backends[i];
  pthread_mutex_unlock(&reg_lock);
  return r;
}

mmp_backend_t *mmp_backend_get(const char *name) {
  if (!name || strcmp(name, "cpu") == 0) return mmp__backend_cpu();
  if (strcmp(name, "cuda") == 0 || strcmp(name, "auto") == 0) {
    mmp_backend_t *be = find_backend("cuda");
#ifdef HAVE_CUDA
    if (!be) be = mmp__backend_cuda(); /* NULL + "no CUDA device: <why>" */
#else
    if (!be) mmp_error_set(MMP_EDEVICE, "no CUDA device: this build has no CUDA backend (configure found no nvcc)");
#endif
    if (be) return be;
    if (strcmp(name, "cuda") == 0) return NULL;
    if (!__atomic_exchange_n(&auto_warned, 1, __ATOMIC_RELAXED))
      MMP_WARN("backend", "device \"auto\": %s; using the CPU", mmp_error_last());
    mmp_error_clear();
    return mmp__backend_cpu();
  }
  mmp_backend_t *be = find_backend(name);
  if (!be)
    mmp_error_set(MMP_ENOENT, "unknown device \"%s\" (known: cpu, cuda, auto)", name);
  return be;
}

const char *mmp_backend_name(const mmp_backend_t *be) {
  return be && be->ops && be->ops->name ? be->ops->name : "(none)";
}

mmp_device_t mmp_backend_device(const mmp_backend_t *be) {
  return be ? be->ops->device : MMP_DEVICE_CPU;
}

void mmp_backend_pool_stats(mmp_backend_t *be, mmp_pool_stats_t *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (be && HAS(be->ops, pool_stats)) be->ops->pool_stats(be, out);
}

void mmp_backend_pool_trim(mmp_backend_t *be) {
  if (be && HAS(be->ops, pool_trim)) be->ops->pool_trim(be);
}

bool mmp_backend_supports(mmp_backend_t *be, mmp_op_t op, const mmp_tensor_t *const *srcs, int nsrc,
                          const mmp_tensor_t *dst) {
  if (!be) return false;
  if (!HAS(be->ops, supports_op)) return true;
  return be->ops->supports_op(be, op, srcs, nsrc, dst);
}

int mmp_backend_compute(mmp_backend_t *be, mmp_op_t op, const mmp_op_params_t *p,
                        const mmp_tensor_t *const *srcs, int nsrc, mmp_tensor_t *dst) {
  static const mmp_op_params_t zero;
  if (!be || !dst) return mmp_error_set(MMP_EINVAL, "%s: NULL backend or destination", mmp_op_name(op));
  if (!mmp_backend_supports(be, op, srcs, nsrc, dst))
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: not supported by the %s backend for %s", mmp_op_name(op),
                         mmp_backend_name(be), mmp__desc(nsrc ? srcs[0] : dst));
  return be->ops->compute(be, op, p ? p : &zero, srcs, nsrc, dst);
}

void mmp_threads_set(int n) {
  mmp_cpu_set_threads(n < 0 ? 0 : n);
  pthread_mutex_lock(&reg_lock);
  for (int i = 0; i < nbackends; i++)
    if (HAS(backends[i]->ops, set_threads)) backends[i]->ops->set_threads(backends[i], n);
  pthread_mutex_unlock(&reg_lock);
}

int mmp_threads_get(void) { return mmp_cpu_threads(); }
