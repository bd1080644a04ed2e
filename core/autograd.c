/* core/autograd.c - the tape: nodes recorded by the op front-end, replayed backwards through grad.h. */
#include <stdlib.h>
#include <string.h>

#include "core/tensor_impl.h"
#pragma GCC visibility push(default)
#include <mmpipe/autograd.h>
#include <mmpipe/grad.h>
#include <mmpipe/rng.h>
#pragma GCC visibility pop

_Thread_local mmp_tape_t *mmp__tape_tls;

/* A tracked tensor carries (serial << 32) | (value id + 1) in tape_id; the
 * serial is unique per tape and per backward, so tensors left over from a
 * freed or already replayed tape are simply untracked. */
static uint32_t serial_next = 1;

typedef struct tvalue {
  int ndim;
  int64_t shape[MMP_MAX_DIMS];
  mmp_tensor_t *grad; /* accumulated during the reverse pass */
  char *name;         /* watched leaves only */
  int64_t parent_id;  /* a nested tape's leaf standing for this value of the parent tape, else -1 */
} tvalue_t;

/* What a checkpoint node keeps to run its region again (mmp_tape_checkpoint). */
typedef struct tckpt {
  mmp_checkpoint_fn fn;
  void *user;      /* the caller's pointer, or our copy of user_size bytes */
  bool user_owned; /* user is our copy */
  int nin;
  mmp_tensor_t **in; /* [nin] references (NULL entries allowed) */
  mmp_rng_t *rng;    /* (nullable) the caller's generator, replayed from state */
  unsigned char *rng_state;
} tckpt_t;

typedef struct tnode {
  mmp__tk_t kind;
  const char *name;
  int nin;
  int64_t *in_id;     /* [nin] value ids, -1 untracked */
  mmp_tensor_t **in;  /* [nin] references kept for the backward (NULL when not needed) */
  int64_t (*in_shape)[MMP_MAX_DIMS + 1]; /* [nin] ndim, then the shape */
  mmp_tensor_t *out;  /* softmax, attention, sqrt, exp: the forward's output */
  int64_t out_id;
  double f[3];
  int64_t i[8];
  size_t bytes; /* of the tensors referenced (mmp_tape_saved_bytes) */
  tckpt_t *ck;  /* a checkpoint region (kind MMP__TK_COUNT), else NULL */
} tnode_t;

struct mmp_tape {
  uint32_t serial;
  tvalue_t *vals;
  size_t nvals, capvals;
  tnode_t *nodes;
  size_t nnodes, capnodes;
  mmp_grad_ready_cb ready; /* (nullable) told of each leaf's gradient once final */
  void *ready_user;
  /* Nested tapes of checkpoint regions. A tensor tracked by the parent is
   * tracked here too: recording maps it to a leaf of this tape (map[parent
   * id] = id here) whose gradient goes back to the parent's value. A
   * collecting tape (the region's first run) records nothing and notes
   * which of the parent's values the region reads. */
  mmp_tape_t *parent;
  int64_t *map;
  size_t capmap;
  bool collect;
  int64_t *seen; /* collect: parent value ids read, in order, with repeats */
  size_t nseen, capseen;
  size_t saved, peak; /* bytes referenced by nodes (with nested tapes), and its maximum */
};

static int64_t own_value(const mmp_tape_t *t, const mmp_tensor_t *x) {
  if (!t || !x || (uint32_t)(x->tape_id >> 32) != t->serial) return -1;
  int64_t id = (int64_t)(x->tape_id & 0xffffffffu) - 1;
  return id >= 0 && (size_t)id < t->nvals ? id : -1;
}

static bool tracked(const mmp_tape_t *t, const mmp_tensor_t *x) {
  for (; t; t = t->parent)
    if (own_value(t, x) >= 0) return true;
  return false;
}

/* The id of @x on @t, or -1 (untracked, or, for a tensor of an ancestor
 * tape, not mapped yet). */
static int64_t value_of(const mmp_tape_t *t, const mmp_tensor_t *x) {
  int64_t id = own_value(t, x);
  if (id >= 0 || !t || !t->parent) return id;
  int64_t pid = value_of(t->parent, x);
  return pid >= 0 && (size_t)pid < t->capmap ? t->map[pid] : -1;
}

bool mmp_tape_tracks(const mmp_tape_t *t, const mmp_tensor_t *x) { return tracked(t, x); }

bool mmp__tape_tracked(const mmp_tape_t *t, const mmp_tensor_t *x) { return tracked(t, x); }

static void saved_add(mmp_tape_t *t, size_t add, size_t sub) {
  for (; t; t = t->parent) {
    t->saved = t->saved + add - sub;
    if (t->saved > t->peak) t->peak = t->saved;
  }
}

static size_t ref_bytes(const mmp_tensor_t *x) { return x ? mmp_tensor_nbytes(x) : 0; }

mmp_tape_t *mmp_tape_new(void) {
  mmp_tape_t *t = calloc(1, sizeof *t);
  if (!t) {
    mmp_error_set(MMP_ENOMEM, "tape: out of memory");
    return NULL;
  }
  t->serial = __atomic_fetch_add(&serial_next, 1, __ATOMIC_RELAXED);
  return t;
}

static void ckpt_free(tckpt_t *c) {
  if (!c) return;
  for (int k = 0; k < c->nin; k++) mmp_tensor_unref(c->in[k]);
  free(c->in);
  if (c->user_owned) free(c->user);
  free(c->rng_state);
  free(c);
}

static void node_clear(mmp_tape_t *t, tnode_t *n) {
  saved_add(t, 0, n->bytes);
  for (int k = 0; k < n->nin; k++) mmp_tensor_unref(n->in[k]);
  mmp_tensor_unref(n->out);
  ckpt_free(n->ck);
  free(n->in_id);
  free(n->in);
  free(n->in_shape);
  memset(n, 0, sizeof *n);
}

/* Drop everything and take a new serial (the tape is empty and reusable). */
static void tape_clear(mmp_tape_t *t) {
  for (size_t k = 0; k < t->nnodes; k++) node_clear(t, &t->nodes[k]);
  for (size_t k = 0; k < t->nvals; k++) {
    mmp_tensor_unref(t->vals[k].grad);
    free(t->vals[k].name);
  }
  t->nnodes = t->nvals = 0;
  t->serial = __atomic_fetch_add(&serial_next, 1, __ATOMIC_RELAXED);
}

void mmp_tape_free(mmp_tape_t *t) {
  if (!t) return;
  if (mmp__tape_tls == t) mmp__tape_tls = NULL;
  tape_clear(t);
  free(t->vals);
  free(t->nodes);
  free(t->map);
  free(t->seen);
  free(t);
}

size_t mmp_tape_size(const mmp_tape_t *t) { return t ? t->nnodes : 0; }

size_t mmp_tape_saved_bytes(const mmp_tape_t *t) { return t ? t->saved : 0; }

size_t mmp_tape_peak_bytes(const mmp_tape_t *t) { return t ? t->peak : 0; }

mmp_tape_t *mmp_tape_set_current(mmp_tape_t *t) {
  mmp_tape_t *prev = mmp__tape_tls;
  mmp__tape_tls = t;
  return prev;
}

mmp_tape_t *mmp_tape_current(void) { return mmp__tape_tls; }

void mmp_tape_on_grad_ready(mmp_tape_t *t, mmp_grad_ready_cb cb, void *user) {
  if (!t) return;
  t->ready = cb;
  t->ready_user = cb ? user : NULL;
}

/* A new value of @x's shape; marks @x unless @mark is false (a nested
 * tape's leaf for an ancestor's tensor). Returns its id or -1 (ENOMEM). */
static int64_t value_new(mmp_tape_t *t, mmp_tensor_t *x, bool mark) {
  if (t->nvals == t->capvals) {
    size_t cap = t->capvals ? 2 * t->capvals : 64;
    tvalue_t *v = realloc(t->vals, cap * sizeof *v);
    if (!v) return mmp_error_set(MMP_ENOMEM, "tape: out of memory"), -1;
    t->vals = v;
    t->capvals = cap;
  }
  if (t->nvals >= 0xffffffffu - 1) return mmp_error_set(MMP_ENOMEM, "tape: too many values"), -1;
  tvalue_t *v = &t->vals[t->nvals];
  memset(v, 0, sizeof *v);
  v->parent_id = -1;
  v->ndim = x->ndim;
  memcpy(v->shape, x->shape, sizeof v->shape);
  if (mark) x->tape_id = ((uint64_t)t->serial << 32) | (uint64_t)(t->nvals + 1);
  return (int64_t)t->nvals++;
}

static int64_t value_add(mmp_tape_t *t, mmp_tensor_t *x) { return value_new(t, x, true); }

/* The id of @x on @t; a tensor of an ancestor tape gets a leaf of @t on its
 * first use. -1: untracked; -2: out of memory (message set). */
static int64_t resolve(mmp_tape_t *t, const mmp_tensor_t *x) {
  int64_t id = own_value(t, x);
  if (id >= 0 || !t->parent || !x) return id;
  int64_t pid = resolve(t->parent, x);
  if (pid < 0) return pid;
  if ((size_t)pid >= t->capmap) {
    size_t cap = t->parent->nvals > (size_t)pid ? t->parent->nvals : (size_t)pid + 1;
    int64_t *m = realloc(t->map, cap * sizeof *m);
    if (!m) return mmp_error_set(MMP_ENOMEM, "tape: out of memory"), -2;
    for (size_t k = t->capmap; k < cap; k++) m[k] = -1;
    t->map = m;
    t->capmap = cap;
  }
  if (t->map[pid] >= 0) return t->map[pid];
  if ((id = value_new(t, (mmp_tensor_t *)x, false)) < 0) return -2;
  t->vals[id].parent_id = pid;
  t->map[pid] = id;
  return id;
}

int mmp_tape_watch(mmp_tape_t *t, const char *name, mmp_tensor_t *x) {
  if (!t || !name || !x) return mmp_error_set(MMP_EINVAL, "tape_watch: NULL argument");
  if (x->dtype != MMP_F32)
    return mmp_error_set(MMP_EINVAL, "tape_watch: %s is %s; only f32 tensors get gradients (load trainable weights as f32)",
                         name, mmp__desc(x));
  int64_t id = value_of(t, x);
  if (id >= 0)
    return mmp_error_set(MMP_EINVAL, "tape_watch: %s %s is already tracked by this tape%s%s", name, mmp__desc(x),
                         t->vals[id].name ? " as " : "", t->vals[id].name ? t->vals[id].name : " (an op's output)");
  char *nm = strdup(name);
  if (!nm) return mmp_error_set(MMP_ENOMEM, "tape_watch: out of memory");
  if ((id = value_add(t, x)) < 0) {
    free(nm);
    return MMP_ENOMEM;
  }
  t->vals[id].name = nm;
  return 0;
}

/* Which operands (bit k) and whether the output a kind's backward reads. */
static unsigned needs_inputs(mmp__tk_t k) {
  switch (k) {
  case MMP__TK_ADD: case MMP__TK_SUB: case MMP__TK_SCALE: case MMP__TK_AXPBY: case MMP__TK_SQRT: case MMP__TK_EXP:
  case MMP__TK_SOFTMAX: case MMP__TK_SUM: case MMP__TK_MEAN: case MMP__TK_UPSAMPLE: case MMP__TK_VIEW:
  case MMP__TK_PERMUTE: case MMP__TK_SLICE: case MMP__TK_BROADCAST: case MMP__TK_CONCAT: case MMP__TK_NONE:
    return 0;
  case MMP__TK_EMBEDDING: return 2u; /* the ids */
  case MMP__TK_LINEAR: case MMP__TK_CONV2D: case MMP__TK_GROUP_NORM: case MMP__TK_LAYER_NORM: return 3u; /* x, w */
  case MMP__TK_ATTENTION: return 15u; /* q, k, v, mask */
  default: return ~0u;
  }
}

static bool needs_output(mmp__tk_t k) {
  return k == MMP__TK_SOFTMAX || k == MMP__TK_ATTENTION || k == MMP__TK_SQRT || k == MMP__TK_EXP;
}

mmp_tensor_t *mmp__tape_leave(mmp_tape_t *t, mmp_tensor_t *r, const mmp__tape_rec_t *rec) {
  mmp__tape_tls = t;
  if (!r) return NULL;
  bool any = false;
  for (int k = 0; k < rec->nin; k++)
    if (tracked(t, rec->in[k])) any = true;
  if (!any) return r;
  /* an op that handed back its (tracked) input itself, e.g. mmp_contiguous
   * of a contiguous tensor, is the identity: nothing to record */
  for (int k = 0; k < rec->nin; k++)
    if (rec->in[k] == r) return r;
  if (t->collect) { /* a region's first run: note what it reads of the parent */
    for (int k = 0; k < rec->nin; k++) {
      if (!tracked(t->parent, rec->in[k])) continue;
      int64_t pid = resolve(t->parent, rec->in[k]);
      if (pid < -1) goto oom;
      if (t->nseen == t->capseen) {
        size_t cap = t->capseen ? 2 * t->capseen : 64;
        int64_t *sn = realloc(t->seen, cap * sizeof *sn);
        if (!sn) goto oom;
        t->seen = sn;
        t->capseen = cap;
      }
      t->seen[t->nseen++] = pid;
    }
    return r;
  }
  if (t->nnodes == t->capnodes) {
    size_t cap = t->capnodes ? 2 * t->capnodes : 256;
    tnode_t *nn = realloc(t->nodes, cap * sizeof *nn);
    if (!nn) goto oom;
    t->nodes = nn;
    t->capnodes = cap;
  }
  tnode_t *n = &t->nodes[t->nnodes];
  memset(n, 0, sizeof *n);
  n->in_id = calloc((size_t)rec->nin, sizeof *n->in_id);
  n->in = calloc((size_t)rec->nin, sizeof *n->in);
  n->in_shape = calloc((size_t)rec->nin, sizeof *n->in_shape);
  if (!n->in_id || !n->in || !n->in_shape) {
    node_clear(t, n);
    goto oom;
  }
  n->kind = rec->kind;
  n->name = rec->name;
  n->nin = rec->nin;
  memcpy(n->f, rec->f, sizeof n->f);
  memcpy(n->i, rec->i, sizeof n->i);
  unsigned need = needs_inputs(rec->kind);
  for (int k = 0; k < rec->nin; k++) {
    const mmp_tensor_t *x = rec->in[k];
    if ((n->in_id[k] = x ? resolve(t, x) : -1) < -1) {
      n->bytes = 0; /* not added yet */
      node_clear(t, n);
      goto oom;
    }
    if (!x) continue;
    n->in_shape[k][0] = x->ndim;
    memcpy(&n->in_shape[k][1], x->shape, sizeof x->shape);
    if (k < 32 && (need >> k) & 1u) {
      n->in[k] = mmp_tensor_ref((mmp_tensor_t *)x);
      n->bytes += ref_bytes(x);
    }
  }
  if (needs_output(rec->kind)) {
    n->out = mmp_tensor_ref(r);
    n->bytes += ref_bytes(r);
  }
  saved_add(t, n->bytes, 0);
  if ((n->out_id = value_add(t, r)) < 0) {
    node_clear(t, n);
    goto oom;
  }
  t->nnodes++;
  return r;
oom:
  mmp_error_set(MMP_ENOMEM, "tape: out of memory recording %s", rec->name);
  mmp_tensor_unref(r);
  return NULL;
}

/* ---------------------------------------------------------- reverse pass */

static int fail_code(void) {
  int c = mmp_error_code();
  return c < 0 ? c : MMP_EINVAL;
}

/* grads[id] += g (consumes g). */
static int accumulate(mmp_tape_t *t, int64_t id, mmp_tensor_t *g) {
  if (id < 0) {
    mmp_tensor_unref(g);
    return 0;
  }
  if (!g) return fail_code();
  tvalue_t *v = &t->vals[id];
  if (!v->grad) {
    v->grad = g;
    return 0;
  }
  mmp_tensor_t *s = mmp_add(v->grad, g);
  mmp_tensor_unref(g);
  if (!s) return fail_code();
  mmp_tensor_unref(v->grad);
  v->grad = s;
  return 0;
}

#define WANT(k) (n->in_id[k] >= 0)
#define OUTP(k) (WANT(k) ? &o[k] : NULL)
#define SHAPE_ND(k) ((int)n->in_shape[k][0])
#define SHAPE(k) (&n->in_shape[k][1])

/* An f32 version of an operand a backward op reads (weights may be stored
 * in f16/bf16). (transfer full) */
static mmp_tensor_t *as_f32(const mmp_tensor_t *x) {
  return x && x->dtype != MMP_F32 ? mmp_convert(x, MMP_F32) : mmp_tensor_ref((mmp_tensor_t *)x);
}

/* Run node @n's backward with output gradient @g into o[0..nin). */
static int node_backward(const tnode_t *n, const mmp_tensor_t *g, mmp_tensor_t **o) {
  int rc = 0;
  switch (n->kind) {
  case MMP__TK_NONE:
    return mmp_error_set(MMP_EUNSUPPORTED, "tape: %s has no backward, but the gradient flows through it", n->name);
  case MMP__TK_ADD:
  case MMP__TK_SUB:
    if (WANT(0)) o[0] = mmp_sum_to_shape(g, SHAPE_ND(0), SHAPE(0));
    if (WANT(1)) {
      mmp_tensor_t *s = mmp_sum_to_shape(g, SHAPE_ND(1), SHAPE(1));
      o[1] = n->kind == MMP__TK_SUB && s ? mmp_scale(s, -1.0, 0.0) : mmp_tensor_ref(s);
      mmp_tensor_unref(s);
    }
    break;
  case MMP__TK_MUL:
    return mmp_mul_backward(g, n->in[0], n->in[1], OUTP(0), OUTP(1));
  case MMP__TK_DIV: { /* a / b: ga = g / b, gb = -g a / b^2 */
    const mmp_tensor_t *a = n->in[0], *b = n->in[1];
    if (WANT(0)) {
      mmp_tensor_t *q = mmp_div(g, b);
      o[0] = mmp_sum_to_shape(q, SHAPE_ND(0), SHAPE(0));
      mmp_tensor_unref(q);
    }
    if (WANT(1)) {
      mmp_tensor_t *q = mmp_div(g, b), *qa = mmp_mul(q, a), *qab = mmp_div(qa, b);
      mmp_tensor_t *neg = qab ? mmp_scale(qab, -1.0, 0.0) : NULL;
      o[1] = mmp_sum_to_shape(neg, SHAPE_ND(1), SHAPE(1));
      mmp_tensor_unref(q);
      mmp_tensor_unref(qa);
      mmp_tensor_unref(qab);
      mmp_tensor_unref(neg);
    }
    break;
  }
  case MMP__TK_SCALE:
    o[0] = mmp_scale_backward(g, n->f[0]);
    break;
  case MMP__TK_AXPBY:
    if (WANT(0)) o[0] = mmp_scale(g, n->f[0], 0.0);
    if (WANT(1)) o[1] = mmp_scale(g, n->f[1], 0.0);
    break;
  case MMP__TK_SQRT: { /* g / (2 y) */
    mmp_tensor_t *h = mmp_scale(g, 0.5, 0.0);
    o[0] = mmp_div(h, n->out);
    mmp_tensor_unref(h);
    break;
  }
  case MMP__TK_EXP:
    o[0] = mmp_mul(g, n->out);
    break;
  case MMP__TK_SILU: o[0] = mmp_silu_backward(g, n->in[0]); break;
  case MMP__TK_GELU: o[0] = mmp_gelu_backward(g, n->in[0]); break;
  case MMP__TK_GELU_TANH: o[0] = mmp_gelu_tanh_backward(g, n->in[0]); break;
  case MMP__TK_QUICK_GELU: o[0] = mmp_quick_gelu_backward(g, n->in[0]); break;
  case MMP__TK_SIGMOID: o[0] = mmp_sigmoid_backward(g, n->in[0]); break;
  case MMP__TK_TANH: o[0] = mmp_tanh_backward(g, n->in[0]); break;
  case MMP__TK_RELU: o[0] = mmp_relu_backward(g, n->in[0]); break;
  case MMP__TK_GEGLU: o[0] = mmp_geglu_backward(g, n->in[0]); break;
  case MMP__TK_SOFTMAX: o[0] = mmp_softmax_backward(g, n->out, (int)n->i[0]); break;
  case MMP__TK_SUM:
  case MMP__TK_MEAN: { /* i[0] = dim (normalised), i[1] = keepdim */
    int nd = SHAPE_ND(0), d = (int)n->i[0];
    int64_t ks[MMP_MAX_DIMS];
    memcpy(ks, SHAPE(0), sizeof ks);
    ks[d] = 1;
    mmp_tensor_t *gk = mmp_reshape((mmp_tensor_t *)g, nd, ks);
    mmp_tensor_t *gs = gk && n->kind == MMP__TK_MEAN
                           ? mmp_scale(gk, SHAPE(0)[d] ? 1.0 / (double)SHAPE(0)[d] : 0.0, 0.0)
                           : mmp_tensor_ref(gk);
    mmp_tensor_t *gb = mmp_broadcast_to(gs, nd, SHAPE(0));
    o[0] = mmp_contiguous(gb);
    mmp_tensor_unref(gk);
    mmp_tensor_unref(gs);
    mmp_tensor_unref(gb);
    break;
  }
  case MMP__TK_MATMUL:
    return mmp_matmul_backward(g, n->in[0], n->in[1], n->i[0] != 0, n->i[1] != 0, OUTP(0), OUTP(1));
  case MMP__TK_LINEAR: {
    mmp_tensor_t *w = as_f32(n->in[1]);
    rc = w ? mmp_linear_backward(g, n->in[0], w, OUTP(0), OUTP(1), n->nin > 2 ? OUTP(2) : NULL) : fail_code();
    mmp_tensor_unref(w);
    return rc;
  }
  case MMP__TK_CONV2D: {
    mmp_tensor_t *w = as_f32(n->in[1]);
    rc = w ? mmp_conv2d_backward(g, n->in[0], w, (int)n->i[0], (int)n->i[1], (int)n->i[2], (int)n->i[3], (int)n->i[4],
                                 (int)n->i[5], (int)n->i[6], OUTP(0), OUTP(1), n->nin > 2 ? OUTP(2) : NULL)
           : fail_code();
    mmp_tensor_unref(w);
    return rc;
  }
  case MMP__TK_GROUP_NORM:
    return mmp_group_norm_backward(g, n->in[0], (int)n->i[0], n->in[1], n->f[0], OUTP(0), OUTP(1), OUTP(2));
  case MMP__TK_GROUP_NORM_SILU:
    return mmp_group_norm_silu_backward(g, n->in[0], (int)n->i[0], n->in[1], n->in[2], n->f[0], OUTP(0), OUTP(1),
                                        OUTP(2));
  case MMP__TK_LAYER_NORM:
    return mmp_layer_norm_backward(g, n->in[0], n->in[1], n->f[0], OUTP(0), OUTP(1), OUTP(2));
  case MMP__TK_ATTENTION:
    return mmp_attention_backward(g, n->in[0], n->in[1], n->in[2], n->out, n->nin > 3 ? n->in[3] : NULL,
                                  n->i[0] != 0, n->f[0], OUTP(0), OUTP(1), OUTP(2));
  case MMP__TK_UPSAMPLE: o[0] = mmp_upsample_nearest2x_backward(g); break;
  case MMP__TK_EMBEDDING: o[0] = mmp_embedding_backward(g, n->in[1], SHAPE(0)[0], -1); break;
  case MMP__TK_VIEW: {
    mmp_tensor_t *r = mmp_reshape_backward(g, SHAPE_ND(0), SHAPE(0));
    o[0] = r;
    break;
  }
  case MMP__TK_PERMUTE: {
    int perm[MMP_MAX_DIMS];
    for (int d = 0; d < SHAPE_ND(0); d++) perm[d] = (int)n->i[d];
    o[0] = mmp_permute_backward(g, perm);
    break;
  }
  case MMP__TK_SLICE:
    o[0] = mmp_slice_backward(g, SHAPE_ND(0), SHAPE(0), (int)n->i[0], n->i[1], n->i[2], n->i[3]);
    break;
  case MMP__TK_BROADCAST: o[0] = mmp_sum_to_shape(g, SHAPE_ND(0), SHAPE(0)); break;
  case MMP__TK_CONCAT: {
    int64_t *sizes = malloc((size_t)n->nin * sizeof *sizes);
    mmp_tensor_t **all = calloc((size_t)n->nin, sizeof *all);
    if (!sizes || !all) {
      free(sizes);
      free(all);
      return mmp_error_set(MMP_ENOMEM, "tape: out of memory");
    }
    int d = (int)n->i[0];
    for (int k = 0; k < n->nin; k++) sizes[k] = SHAPE(k)[d];
    rc = mmp_concat_backward(g, n->nin, sizes, d, all);
    for (int k = 0; k < n->nin; k++) {
      if (WANT(k)) o[k] = all[k];
      else mmp_tensor_unref(all[k]);
    }
    free(sizes);
    free(all);
    return rc;
  }
  case MMP__TK_MSE: {
    double gv = mmp_tensor_get(g, NULL);
    return mmp_mse_loss_backward(gv, n->in[0], n->in[1], OUTP(0), OUTP(1));
  }
  default:
    return mmp_error_set(MMP_EINVAL, "tape: node kind %d unknown", (int)n->kind);
  }
  for (int k = 0; k < n->nin; k++) /* (integer ids have no gradient) */
    if (WANT(k) && !o[k] && !(n->kind == MMP__TK_EMBEDDING && k == 1)) return fail_code();
  return rc;
}

/* Add the finished gradient *@gp to the caller's map under @name. A
 * gradient nothing else refers to is handed over (*@gp becomes NULL);
 * one that shares its storage (a view of another gradient) is copied, so
 * that in-place work on the map (clipping) touches each gradient once. */
static int deliver(mmp_tensormap_t *grads, const char *name, mmp_tensor_t **gp) {
  mmp_tensor_t *g = *gp, *c;
  mmp_tensor_t *old = mmp_tensormap_get(grads, name);
  if (old) {
    c = mmp_add(old, g);
  } else if (g->refcount == 1 && g->storage->refcount == 1 && mmp_tensor_is_contiguous(g)) {
    c = g;
    *gp = NULL;
  } else {
    c = mmp_clone(g);
  }
  if (!c) return fail_code();
  return mmp_tensormap_set(grads, name, c);
}

/* Deliver leaf @v's gradient now and tell the grad-ready hook; the value
 * keeps no gradient afterwards (a leaf used twice by one node is told once). */
static int deliver_ready(mmp_tape_t *t, mmp_tensormap_t *grads, tvalue_t *v) {
  int rc = deliver(grads, v->name, &v->grad);
  mmp_tensor_unref(v->grad);
  v->grad = NULL;
  if (rc < 0) return rc;
  rc = t->ready(t->ready_user, v->name, mmp_tensormap_get(grads, v->name));
  if (rc < 0) mmp_error_prefix("tape_backward: grad-ready hook for %s: ", v->name);
  return rc;
}

/* With a grad-ready hook: for each watched leaf, the index of the first
 * node (in recording order) that reads it, -1 for none; the reverse walk
 * passes that node last, so the leaf's gradient is final right after it.
 * Without a hook: *@out stays NULL. */
static int first_uses(const mmp_tape_t *t, int64_t **out) {
  *out = NULL;
  if (!t->ready || !t->nvals) return 0;
  int64_t *f = malloc(t->nvals * sizeof *f);
  if (!f) return mmp_error_set(MMP_ENOMEM, "tape: out of memory");
  for (size_t k = 0; k < t->nvals; k++) f[k] = -1;
  for (size_t k = 0; k < t->nnodes; k++)
    for (int j = 0; j < t->nodes[k].nin; j++) {
      int64_t id = t->nodes[k].in_id[j];
      if (id >= 0 && t->vals[id].name && f[id] < 0) f[id] = (int64_t)k;
    }
  *out = f;
  return 0;
}

static int backward_walk(mmp_tape_t *t, mmp_tensor_t *out, const mmp_tensor_t *grad, mmp_tensormap_t *grads,
                         const int64_t *first_use);

/* The reverse step of checkpoint node @n of @t with output gradient @g:
 * run the region again under a nested tape (its generator, if any, set to
 * the state of the first run and put back afterwards), walk that tape
 * back from @g, and add the gradients of the nested leaves to the values
 * of @t they stand for. */
static int ckpt_backward(mmp_tape_t *t, tnode_t *n, const mmp_tensor_t *g) {
  tckpt_t *c = n->ck;
  mmp_tape_t *in = mmp_tape_new();
  if (!in) return MMP_ENOMEM;
  in->parent = t;
  unsigned char *now = NULL;
  int rc = 0;
  if (c->rng) {
    now = malloc(MMP_RNG_STATE_SIZE);
    if (!now) rc = mmp_error_set(MMP_ENOMEM, "tape: out of memory");
    if (rc == 0) rc = mmp_rng_get_state(c->rng, now, MMP_RNG_STATE_SIZE);
    if (rc == 0) rc = mmp_rng_set_state(c->rng, c->rng_state, MMP_RNG_STATE_SIZE);
  }
  mmp_tensor_t *r = NULL;
  if (rc == 0) {
    mmp_tape_t *prev = mmp__tape_tls;
    mmp__tape_tls = in;
    r = c->fn(c->user, c->nin, c->in);
    mmp__tape_tls = prev;
    if (!r) rc = fail_code();
  }
  if (now) {
    int src = mmp_rng_set_state(c->rng, now, MMP_RNG_STATE_SIZE);
    if (rc == 0) rc = src;
    free(now);
  }
  if (rc == 0 && own_value(in, r) < 0)
    rc = mmp_error_set(MMP_EINVAL, "checkpoint: the replay of the region computed %s from nothing tracked, but its "
                       "first run read tracked tensors (a region must compute the same way each time)",
                       mmp__desc(r));
  if (rc == 0) rc = backward_walk(in, r, g, NULL, NULL);
  for (size_t k = 0; rc == 0 && k < in->nvals; k++) {
    tvalue_t *v = &in->vals[k];
    if (v->parent_id < 0 || !v->grad) continue;
    rc = accumulate(t, v->parent_id, v->grad);
    v->grad = NULL;
  }
  mmp_tensor_unref(r);
  mmp_tape_free(in);
  return rc;
}

static int backward_walk(mmp_tape_t *t, mmp_tensor_t *out, const mmp_tensor_t *grad, mmp_tensormap_t *grads,
                         const int64_t *first_use) {
  int64_t oid = value_of(t, out);
  if (oid < 0)
    return mmp_error_set(MMP_EINVAL, "tape_backward: %s was not computed from a watched tensor on this tape",
                         mmp__desc(out));
  mmp_tensor_t *seed;
  if (grad) {
    if (!mmp_tensor_same_shape(grad, out))
      return mmp_error_set(MMP_EINVAL, "tape_backward: seed %s does not match the output %s", mmp__desc(grad),
                           mmp__desc(out));
    seed = mmp_contiguous((mmp_tensor_t *)grad);
  } else {
    if (mmp_tensor_numel(out) != 1)
      return mmp_error_set(MMP_EINVAL, "tape_backward: output %s has %lld elements; pass a seed gradient",
                           mmp__desc(out), (long long)mmp_tensor_numel(out));
    seed = mmp_tensor_full(mmp_tensor_backend(out), MMP_F32, out->ndim, out->shape, 1.0);
  }
  if (!seed) return fail_code();
  t->vals[oid].grad = seed;
  mmp_tensor_t *o[64];
  for (size_t k = t->nnodes; k-- > 0;) {
    tnode_t *n = &t->nodes[k];
    mmp_tensor_t *g = t->vals[n->out_id].grad;
    t->vals[n->out_id].grad = NULL;
    if (g && n->ck) {
      int rc = ckpt_backward(t, n, g);
      mmp_tensor_unref(g);
      if (rc < 0) {
        mmp_error_prefix("tape_backward: through a checkpoint region: ");
        return rc;
      }
    } else if (g) {
      mmp_tensor_t **outs = n->nin <= 64 ? o : calloc((size_t)n->nin, sizeof *outs);
      if (!outs) {
        mmp_tensor_unref(g);
        return mmp_error_set(MMP_ENOMEM, "tape: out of memory");
      }
      memset(outs, 0, (size_t)n->nin * sizeof *outs);
      int rc = node_backward(n, g, outs);
      mmp_tensor_unref(g);
      for (int j = 0; j < n->nin && rc == 0; j++) {
        rc = accumulate(t, n->in_id[j], outs[j]);
        outs[j] = NULL;
      }
      for (int j = 0; j < n->nin; j++) mmp_tensor_unref(outs[j]);
      if (outs != o) free(outs);
      if (rc < 0) {
        mmp_error_prefix("tape_backward: through %s: ", n->name);
        return rc;
      }
    }
    /* a watched leaf whose earliest use was this node has its final gradient */
    for (int j = 0; first_use && j < n->nin; j++) {
      int64_t id = n->in_id[j];
      if (id < 0 || first_use[id] != (int64_t)k || !t->vals[id].grad) continue;
      int rc = deliver_ready(t, grads, &t->vals[id]);
      if (rc < 0) return rc;
    }
    node_clear(t, n); /* memory falls as the walk goes */
  }
  for (size_t k = 0; k < t->nvals; k++) {
    tvalue_t *v = &t->vals[k];
    if (!v->name || !v->grad) continue;
    int rc = t->ready ? deliver_ready(t, grads, v) : deliver(grads, v->name, &v->grad);
    if (rc < 0) return rc;
  }
  return 0;
}

int mmp_tape_backward(mmp_tape_t *t, mmp_tensor_t *out, const mmp_tensor_t *grad, mmp_tensormap_t *grads) {
  if (!t || !out || !grads) return mmp_error_set(MMP_EINVAL, "tape_backward: NULL argument");
  mmp_tape_t *prev = mmp__tape_tls;
  mmp__tape_tls = NULL;
  int64_t *first_use;
  int rc = first_uses(t, &first_use);
  if (rc == 0) rc = backward_walk(t, out, grad, grads, first_use);
  free(first_use);
  tape_clear(t);
  mmp__tape_tls = prev;
  return rc;
}

/* ------------------------------------------------------ checkpoint regions */

static int cmp_id(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

mmp_tensor_t *mmp_tape_checkpoint(mmp_checkpoint_fn fn, void *user, size_t user_size, int nin,
                                  mmp_tensor_t *const *in, mmp_rng_t *rng) {
  if (!fn || nin < 0 || (nin > 0 && !in) || (user_size > 0 && !user)) {
    mmp_error_set(MMP_EINVAL, "tape_checkpoint: NULL function, or inputs or user data missing");
    return NULL;
  }
  mmp_tape_t *t = mmp__tape_tls;
  /* no tape, or inside a region's first run (whose collecting tape sees
   * what this region reads too): run it plainly */
  if (!t || t->collect) return fn(user, nin, in);
  tckpt_t *c = calloc(1, sizeof *c);
  if (!c) goto oom;
  c->fn = fn;
  c->nin = nin;
  if (user_size > 0) {
    if (!(c->user = malloc(user_size))) goto oom;
    memcpy(c->user, user, user_size);
    c->user_owned = true;
  } else {
    c->user = user;
  }
  if (nin > 0 && !(c->in = calloc((size_t)nin, sizeof *c->in))) goto oom;
  if (rng) {
    c->rng = rng;
    if (!(c->rng_state = malloc(MMP_RNG_STATE_SIZE))) goto oom;
    if (mmp_rng_get_state(rng, c->rng_state, MMP_RNG_STATE_SIZE) < 0) {
      ckpt_free(c);
      return NULL;
    }
  }
  mmp_tape_t col = {.parent = t, .collect = true};
  mmp__tape_tls = &col;
  mmp_tensor_t *r = fn(c->user, nin, in);
  mmp__tape_tls = t;
  int64_t *seen = col.seen;
  size_t nseen = col.nseen;
  if (!r || tracked(t, r) || nseen == 0) {
    /* failed; or the region handed back a tracked tensor unchanged, or read
     * nothing tracked: nothing to record */
    free(seen);
    ckpt_free(c);
    return r;
  }
  qsort(seen, nseen, sizeof *seen, cmp_id);
  size_t nid = 0;
  for (size_t k = 0; k < nseen; k++)
    if (nid == 0 || seen[k] != seen[nid - 1]) seen[nid++] = seen[k];
  if (nid > (size_t)INT32_MAX) {
    free(seen);
    goto oom_r;
  }
  if (t->nnodes == t->capnodes) {
    size_t cap = t->capnodes ? 2 * t->capnodes : 256;
    tnode_t *nn = realloc(t->nodes, cap * sizeof *nn);
    if (!nn) {
      free(seen);
      goto oom_r;
    }
    t->nodes = nn;
    t->capnodes = cap;
  }
  tnode_t *n = &t->nodes[t->nnodes];
  memset(n, 0, sizeof *n);
  n->kind = MMP__TK_NONE;
  n->name = "checkpoint";
  n->nin = (int)nid;
  n->in_id = seen; /* (taken) */
  n->in = calloc(nid, sizeof *n->in);
  n->in_shape = calloc(nid, sizeof *n->in_shape);
  if (!n->in || !n->in_shape) {
    node_clear(t, n);
    goto oom_r;
  }
  for (int k = 0; k < nin; k++) {
    c->in[k] = in[k] ? mmp_tensor_ref(in[k]) : NULL;
    n->bytes += ref_bytes(in[k]);
  }
  n->ck = c;
  saved_add(t, n->bytes, 0);
  if ((n->out_id = value_add(t, r)) < 0) {
    c = NULL; /* freed with the node */
    node_clear(t, n);
    goto oom_r;
  }
  t->nnodes++;
  return r;
oom_r:
  mmp_tensor_unref(r);
oom:
  ckpt_free(c);
  mmp_error_set(MMP_ENOMEM, "tape_checkpoint: out of memory");
  return NULL;
}
