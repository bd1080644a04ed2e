/* core/pickle.c - the restricted pickle machine of the checkpoint reader (see core/pickle.h). */
#include "core/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/error.h>

struct pk_machine {
  bool strict;
  bool numpy; /* strict, but NumPy's array globals are opaque values */
  pk_value_t **all; /* the arena: every value made */
  size_t nall, capall;
  pk_value_t **storages;
  size_t nst, capst;
  /* per load */
  pk_value_t **stack;
  size_t sp, capstack;
  size_t *marks;
  size_t nmarks, capmarks;
  pk_value_t **memo;
  size_t capmemo, memo_len;
};

static const struct {
  const char *name;
  size_t size;
} dtypes[PK_DTYPE_COUNT] = {{"f32", 4}, {"f64", 8}, {"f16", 2}, {"bf16", 2}, {"i64", 8},
                            {"i32", 4}, {"i16", 2}, {"i8", 1},  {"u8", 1},   {"bool", 1}};

size_t pk_dtype_size(pk_dtype_t d) { return (unsigned)d < PK_DTYPE_COUNT ? dtypes[d].size : 0; }
const char *pk_dtype_name(pk_dtype_t d) { return (unsigned)d < PK_DTYPE_COUNT ? dtypes[d].name : "?"; }

pk_t *pk_new(bool strict) {
  pk_t *pk = calloc(1, sizeof *pk);
  if (!pk) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  pk->strict = strict;
  return pk;
}

static void value_free(pk_value_t *v) {
  switch (v->kind) {
  case PK_STR:
  case PK_BYTES:
  case PK_BIGINT: free(v->u.str.s); break;
  case PK_TUPLE:
  case PK_LIST:
  case PK_DICT:
  case PK_SET:
  case PK_OPAQUE: free(v->u.seq.items); break;
  case PK_STORAGE: free(v->u.storage.key); break;
  default: break;
  }
  free(v->gname);
  free(v);
}

void pk_free(pk_t *pk) {
  if (!pk) return;
  for (size_t i = 0; i < pk->nall; i++) value_free(pk->all[i]);
  free(pk->all);
  free(pk->storages);
  free(pk->stack);
  free(pk->marks);
  free(pk->memo);
  free(pk);
}

void pk_allow_numpy(pk_t *pk) { pk->numpy = true; }

/* The globals a pickled ndarray (np.save of an object array) names. */
static bool numpy_global(const char *mod, const char *name) {
  bool core = strcmp(mod, "numpy.core.multiarray") == 0 || strcmp(mod, "numpy._core.multiarray") == 0;
  if (core) return strcmp(name, "_reconstruct") == 0 || strcmp(name, "scalar") == 0;
  return strcmp(mod, "numpy") == 0 && (strcmp(name, "ndarray") == 0 || strcmp(name, "dtype") == 0);
}

size_t pk_storage_count(const pk_t *pk) { return pk ? pk->nst : 0; }
pk_value_t *pk_storage_at(const pk_t *pk, size_t i) { return pk && i < pk->nst ? pk->storages[i] : NULL; }

/* Grow @*arr (of @elem bytes each) to hold @need items. */
static int grow(void *arr, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 8;
  while (c < need) {
    if (c > SIZE_MAX / 2 / elem) return mmp_error_set(MMP_ENOMEM, "pickle: too many items");
    c *= 2;
  }
  void *p = realloc(*(void **)arr, c * elem);
  if (!p) return mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
  *(void **)arr = p;
  *cap = c;
  return 0;
}

static pk_value_t *mk(pk_t *pk, pk_kind_t kind, size_t pos) {
  if (grow(&pk->all, &pk->capall, pk->nall + 1, sizeof *pk->all) < 0) return NULL;
  pk_value_t *v = calloc(1, sizeof *v);
  if (!v) {
    mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
    return NULL;
  }
  v->kind = kind;
  v->pos = pos;
  pk->all[pk->nall++] = v;
  return v;
}

static int seq_add(pk_value_t *v, pk_value_t *item) {
  if (grow(&v->u.seq.items, &v->u.seq.cap, v->u.seq.n + 1, sizeof(pk_value_t *)) < 0) return MMP_ENOMEM;
  v->u.seq.items[v->u.seq.n++] = item;
  return 0;
}

static pk_value_t *mk_str(pk_t *pk, pk_kind_t kind, size_t pos, const uint8_t *s, size_t len) {
  pk_value_t *v = mk(pk, kind, pos);
  if (!v) return NULL;
  v->u.str.s = malloc(len + 1);
  if (!v->u.str.s) {
    mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
    return NULL;
  }
  if (len) memcpy(v->u.str.s, s, len);
  v->u.str.s[len] = '\0';
  v->u.str.len = len;
  return v;
}

bool pk_is_scalar(const pk_value_t *v) {
  return v && (v->kind == PK_NONE || v->kind == PK_BOOL || v->kind == PK_INT || v->kind == PK_BIGINT ||
               v->kind == PK_FLOAT || v->kind == PK_STR || v->kind == PK_BYTES);
}

/* The answer is kept in the node (holds: 1 no, 2 yes), so that many
 * values sharing one large part search it once. A "no" is kept only when
 * the search did not stop at a node already being searched (a cycle) or at
 * the depth limit, where the answer is partial. */
static bool holds(pk_value_t *v, int depth, long *budget, long *partial) {
  if (!v) return false;
  if (v->kind == PK_TENSOR || v->kind == PK_STORAGE) return true;
  if (v->kind != PK_TUPLE && v->kind != PK_LIST && v->kind != PK_DICT && v->kind != PK_SET &&
      v->kind != PK_OPAQUE)
    return false;
  if (v->holds) return v->holds == 2;
  if (depth > PK_MAX_DEPTH || --*budget < 0) { /* cannot tell: assume it does */
    ++*partial;
    return true;
  }
  if (v->mark) { /* a cycle: already being searched */
    ++*partial;
    return false;
  }
  v->mark = 1;
  long before = *partial;
  bool r = false;
  for (size_t i = 0; i < v->u.seq.n && !r; i++) r = holds(v->u.seq.items[i], depth + 1, budget, partial);
  v->mark = 0;
  if (r || *partial == before) v->holds = r ? 2 : 1;
  return r;
}

bool pk_holds_tensor(pk_value_t *v) {
  long budget = 1L << 22, partial = 0;
  return holds(v, 0, &budget, &partial);
}

/* ------------------------------------------------------------ the machine */

typedef struct run {
  pk_t *pk;
  const uint8_t *d;
  size_t n, p, op; /* data, size, read position, offset of the current opcode */
  const char *what;
  size_t start;    /* where this pickle began */
} run_t;

static int fail(run_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(run_t *r, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return mmp_error_set(MMP_EDATA, "%s: pickle offset %zu (opcode 0x%02x): %s", r->what, r->op,
                       r->op < r->n ? r->d[r->op] : 0, msg);
}

static int need(run_t *r, size_t k) {
  if (r->n - r->p < k) return fail(r, "truncated: %zu more bytes needed, %zu left", k, r->n - r->p);
  return 0;
}

static uint64_t rd_le(const uint8_t *p, int k) {
  uint64_t v = 0;
  for (int i = k - 1; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static int push(run_t *r, pk_value_t *v) {
  if (!v) return mmp_error_code() ? mmp_error_code() : MMP_ENOMEM;
  pk_t *pk = r->pk;
  if (grow(&pk->stack, &pk->capstack, pk->sp + 1, sizeof *pk->stack) < 0) return MMP_ENOMEM;
  pk->stack[pk->sp++] = v;
  return 0;
}

static pk_value_t *pop(run_t *r) {
  pk_t *pk = r->pk;
  size_t floor = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
  if (pk->sp <= floor) {
    fail(r, "stack underflow");
    return NULL;
  }
  return pk->stack[--pk->sp];
}

static pk_value_t *top(run_t *r) {
  pk_t *pk = r->pk;
  size_t floor = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
  if (pk->sp <= floor) {
    fail(r, "stack underflow");
    return NULL;
  }
  return pk->stack[pk->sp - 1];
}

/* The items above the last mark: stack[*from, sp); pops the mark. */
static int pop_mark(run_t *r, size_t *from) {
  pk_t *pk = r->pk;
  if (!pk->nmarks) return fail(r, "no MARK on the stack");
  *from = pk->marks[--pk->nmarks];
  return 0;
}

static int memo_put(run_t *r, size_t idx) {
  pk_t *pk = r->pk;
  pk_value_t *v = top(r);
  if (!v) return MMP_EDATA;
  /* A pickler numbers memo entries from 0 up, one per PUT: an index past
   * the bytes read so far is abuse, not a large file (and bounds the memo
   * by the pickle's own length, not by a declared number). */
  if (idx > r->p - r->start) return fail(r, "memo index %zu out of range", idx);
  size_t old = pk->capmemo;
  if (grow(&pk->memo, &pk->capmemo, idx + 1, sizeof *pk->memo) < 0) return MMP_ENOMEM;
  if (pk->capmemo > old) memset(pk->memo + old, 0, (pk->capmemo - old) * sizeof *pk->memo);
  if (!pk->memo[idx]) pk->memo_len++;
  pk->memo[idx] = v;
  return 0;
}

static int memo_get(run_t *r, size_t idx) {
  pk_t *pk = r->pk;
  if (idx >= pk->capmemo || !pk->memo[idx]) return fail(r, "memo entry %zu is not set", idx);
  return push(r, pk->memo[idx]);
}

static bool is_str(const pk_value_t *v) { return v && v->kind == PK_STR; }

/* A global by module and name: the allow-list, else opaque (or an error). */
static pk_value_t *global(run_t *r, const char *mod, const char *name) {
  static const struct {
    const char *mod, *name;
    pk_fn_t fn;
  } fns[] = {
      {"collections", "OrderedDict", PK_FN_ORDERED_DICT},
      {"torch._utils", "_rebuild_tensor_v2", PK_FN_REBUILD_TENSOR_V2},
      {"torch._utils", "_rebuild_tensor", PK_FN_REBUILD_TENSOR},
      {"torch._utils", "_rebuild_parameter", PK_FN_REBUILD_PARAMETER},
      {"torch._utils", "_rebuild_parameter_with_state", PK_FN_REBUILD_PARAMETER_STATE},
      {"builtins", "set", PK_FN_SET},
      {"__builtin__", "set", PK_FN_SET},
      {"builtins", "frozenset", PK_FN_FROZENSET},
      {"__builtin__", "frozenset", PK_FN_FROZENSET},
      {"_codecs", "encode", PK_FN_CODECS_ENCODE},
  };
  static const struct {
    const char *name;
    pk_dtype_t dt;
  } storages[] = {{"FloatStorage", PK_F32},  {"DoubleStorage", PK_F64}, {"HalfStorage", PK_F16},
                  {"BFloat16Storage", PK_BF16}, {"LongStorage", PK_I64}, {"IntStorage", PK_I32},
                  {"ShortStorage", PK_I16},  {"CharStorage", PK_I8},    {"ByteStorage", PK_U8},
                  {"BoolStorage", PK_BOOL_T}, {"UntypedStorage", PK_U8}, {"_UntypedStorage", PK_U8}};
  pk_value_t *v;
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
    if (strcmp(mod, fns[i].mod) == 0 && strcmp(name, fns[i].name) == 0) {
      if (!(v = mk(r->pk, PK_GLOBAL, r->op))) return NULL;
      v->u.global.fn = fns[i].fn;
      return v;
    }
  /* torch.cuda.FloatStorage is what torch < 1.12 wrote for GPU tensors */
  bool untyped = strcmp(name, "UntypedStorage") == 0 || strcmp(name, "_UntypedStorage") == 0;
  if (strcmp(mod, "torch") == 0 || strcmp(mod, "torch.cuda") == 0 ||
      (untyped && strcmp(mod, "torch.storage") == 0))
    for (size_t i = 0; i < sizeof storages / sizeof storages[0]; i++)
      if (strcmp(name, storages[i].name) == 0) {
        if (!(v = mk(r->pk, PK_GLOBAL, r->op))) return NULL;
        v->u.global.fn = PK_FN_STORAGE;
        v->u.global.st_dtype = storages[i].dt;
        return v;
      }
  if (r->pk->strict && !(r->pk->numpy && numpy_global(mod, name))) {
    fail(r, "global '%s.%s' is not on the allow-list", mod, name);
    return NULL;
  }
  if (!(v = mk(r->pk, PK_OPAQUE, r->op))) return NULL;
  size_t l = strlen(mod) + strlen(name) + 2;
  v->gname = malloc(l);
  if (!v->gname) {
    mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
    return NULL;
  }
  snprintf(v->gname, l, "%s.%s", mod, name);
  v->gpos = r->op;
  return v;
}

/* An opaque value made by calling (or building) @callee with @parts. */
static pk_value_t *opaque_from(run_t *r, pk_value_t *callee, pk_value_t *a, pk_value_t *b) {
  pk_value_t *v = mk(r->pk, PK_OPAQUE, r->op);
  if (!v) return NULL;
  v->gname = strdup(callee->gname ? callee->gname : "?");
  v->gpos = callee->gpos;
  if (!v->gname || seq_add(v, callee) < 0 || (a && seq_add(v, a) < 0) || (b && seq_add(v, b) < 0)) {
    mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
    return NULL;
  }
  return v;
}

static int int_arg(run_t *r, const pk_value_t *v, const char *what, int64_t *out) {
  if (!v || (v->kind != PK_INT && v->kind != PK_BOOL)) return fail(r, "%s is not an int", what);
  *out = v->kind == PK_INT ? v->u.i : v->u.b;
  return 0;
}

static int dims_arg(run_t *r, const pk_value_t *v, const char *what, int *nd, int64_t *out) {
  if (!v || v->kind != PK_TUPLE) return fail(r, "tensor %s is not a tuple", what);
  if (v->u.seq.n > PK_MAX_DIMS) return fail(r, "tensor has %zu dims (at most %d)", v->u.seq.n, PK_MAX_DIMS);
  for (size_t i = 0; i < v->u.seq.n; i++) {
    if (int_arg(r, v->u.seq.items[i], what, &out[i]) < 0) return MMP_EDATA;
    if (out[i] < 0) return fail(r, "tensor %s[%zu] = %lld is negative", what, i, (long long)out[i]);
  }
  *nd = (int)v->u.seq.n;
  return 0;
}

static pk_value_t *rebuild_tensor(run_t *r, pk_value_t *args, size_t min_args) {
  if (args->u.seq.n < min_args) {
    fail(r, "tensor rebuild with %zu arguments", args->u.seq.n);
    return NULL;
  }
  pk_value_t **a = args->u.seq.items;
  if (a[0]->kind != PK_STORAGE) {
    fail(r, "tensor rebuild: the first argument is not a storage");
    return NULL;
  }
  pk_value_t *t = mk(r->pk, PK_TENSOR, r->op);
  if (!t) return NULL;
  t->u.tensor.storage = a[0];
  int nd2 = 0;
  if (int_arg(r, a[1], "storage offset", &t->u.tensor.offset) < 0 ||
      dims_arg(r, a[2], "size", &t->u.tensor.ndim, t->u.tensor.size) < 0 ||
      dims_arg(r, a[3], "stride", &nd2, t->u.tensor.stride) < 0)
    return NULL;
  if (t->u.tensor.offset < 0) {
    fail(r, "negative storage offset");
    return NULL;
  }
  if (nd2 != t->u.tensor.ndim) {
    fail(r, "tensor size has %d dims, stride %d", t->u.tensor.ndim, nd2);
    return NULL;
  }
  return t;
}

/* The allow-listed call @fn(@args). */
static pk_value_t *call(run_t *r, pk_value_t *fn, pk_value_t *args) {
  if (fn->kind == PK_OPAQUE) return opaque_from(r, fn, args, NULL);
  if (fn->kind != PK_GLOBAL) {
    fail(r, "call of a value that is not a global");
    return NULL;
  }
  if (args->kind != PK_TUPLE) {
    fail(r, "call arguments are not a tuple");
    return NULL;
  }
  size_t n = args->u.seq.n;
  pk_value_t **a = args->u.seq.items, *v;
  switch (fn->u.global.fn) {
  case PK_FN_ORDERED_DICT:
    if (n != 0) break; /* OrderedDict(items) is not what a pickler writes */
    return mk(r->pk, PK_DICT, r->op);
  case PK_FN_REBUILD_TENSOR_V2: return rebuild_tensor(r, args, 4);
  case PK_FN_REBUILD_TENSOR: return rebuild_tensor(r, args, 4);
  case PK_FN_REBUILD_PARAMETER:
  case PK_FN_REBUILD_PARAMETER_STATE:
    if (n < 1 || a[0]->kind != PK_TENSOR) break;
    return a[0];
  case PK_FN_SET:
  case PK_FN_FROZENSET:
    if (n > 1 || (n == 1 && a[0]->kind != PK_LIST && a[0]->kind != PK_TUPLE)) break;
    if (!(v = mk(r->pk, PK_SET, r->op))) return NULL;
    for (size_t i = 0; n == 1 && i < a[0]->u.seq.n; i++)
      if (seq_add(v, a[0]->u.seq.items[i]) < 0) return NULL;
    return v;
  case PK_FN_CODECS_ENCODE: {
    /* protocol 2's bytes: _codecs.encode(str, 'latin1') */
    if (n != 2 || !is_str(a[0]) || !is_str(a[1]) ||
        (strcmp(a[1]->u.str.s, "latin1") != 0 && strcmp(a[1]->u.str.s, "latin-1") != 0))
      break;
    const uint8_t *s = (const uint8_t *)a[0]->u.str.s;
    size_t len = a[0]->u.str.len, o = 0;
    if (!(v = mk_str(r->pk, PK_BYTES, r->op, s, len))) return NULL;
    for (size_t i = 0; i < len; i++) { /* UTF-8 code points < 256 -> bytes */
      if (s[i] < 0x80) {
        v->u.str.s[o++] = (char)s[i];
      } else if ((s[i] & 0xfe) == 0xc2 && i + 1 < len && (s[i + 1] & 0xc0) == 0x80) {
        v->u.str.s[o++] = (char)(((s[i] & 0x03) << 6) | (s[i + 1] & 0x3f));
        i++;
      } else {
        fail(r, "_codecs.encode: not a latin-1 string");
        return NULL;
      }
    }
    v->u.str.s[o] = '\0';
    v->u.str.len = o;
    return v;
  }
  default: break;
  }
  fail(r, "unsupported call of an allow-listed global with these arguments");
  return NULL;
}

/* A persistent id: ('storage', type, key, location, numel[, view_metadata]). */
static pk_value_t *persistent(run_t *r, pk_value_t *pid) {
  if (pid->kind != PK_TUPLE || pid->u.seq.n < 1 || !is_str(pid->u.seq.items[0])) {
    fail(r, "persistent id is not a tuple starting with a string");
    return NULL;
  }
  pk_value_t **a = pid->u.seq.items;
  size_t n = pid->u.seq.n;
  if (strcmp(a[0]->u.str.s, "module") == 0 && !r->pk->strict) { /* legacy: a class's source */
    pk_value_t *v = mk(r->pk, PK_OPAQUE, r->op);
    if (v && !(v->gname = strdup("(saved module)"))) v = NULL;
    if (v) v->gpos = r->op;
    return v;
  }
  if (strcmp(a[0]->u.str.s, "storage") != 0 || (n != 5 && n != 6)) {
    fail(r, "unsupported persistent id '%s' with %zu fields", a[0]->u.str.s, n);
    return NULL;
  }
  if (a[1]->kind != PK_GLOBAL || a[1]->u.global.fn != PK_FN_STORAGE) {
    fail(r, "persistent id: %s is not a storage type",
         a[1]->kind == PK_OPAQUE ? a[1]->gname : "the type");
    return NULL;
  }
  if (!is_str(a[2]) || strchr(a[2]->u.str.s, '/') || a[2]->u.str.len != strlen(a[2]->u.str.s) ||
      a[2]->u.str.len == 0 || a[2]->u.str.len > 64) {
    fail(r, "persistent id: bad storage key");
    return NULL;
  }
  pk_value_t *v = mk(r->pk, PK_STORAGE, r->op);
  if (!v) return NULL;
  pk_storage_t *s = &v->u.storage;
  s->dtype = a[1]->u.global.st_dtype;
  if (int_arg(r, a[4], "storage numel", &s->numel) < 0) return NULL;
  if (s->numel < 0) {
    fail(r, "negative storage size");
    return NULL;
  }
  if (n == 6 && a[5]->kind != PK_NONE) { /* legacy view: (view_key, offset, size) */
    pk_value_t *vm = a[5];
    if (vm->kind != PK_TUPLE || vm->u.seq.n != 3 ||
        int_arg(r, vm->u.seq.items[1], "view offset", &s->view_offset) < 0 ||
        int_arg(r, vm->u.seq.items[2], "view size", &s->view_numel) < 0) {
      if (!mmp_error_code()) fail(r, "bad storage view");
      return NULL;
    }
    if (s->view_offset < 0 || s->view_numel < 0 || s->view_offset > s->numel ||
        s->view_numel > s->numel - s->view_offset) {
      fail(r, "storage view [%lld, +%lld) outside its storage of %lld", (long long)s->view_offset,
           (long long)s->view_numel, (long long)s->numel);
      return NULL;
    }
    s->view = true;
  }
  if (!(s->key = strdup(a[2]->u.str.s))) {
    mmp_error_set(MMP_ENOMEM, "pickle: out of memory");
    return NULL;
  }
  pk_t *pk = r->pk;
  if (grow(&pk->storages, &pk->capst, pk->nst + 1, sizeof *pk->storages) < 0) return NULL;
  pk->storages[pk->nst++] = v;
  return v;
}

static pk_value_t *make_seq(run_t *r, pk_kind_t kind, size_t from) {
  pk_t *pk = r->pk;
  pk_value_t *v = mk(pk, kind, r->op);
  if (!v) return NULL;
  for (size_t i = from; i < pk->sp; i++)
    if (seq_add(v, pk->stack[i]) < 0) return NULL;
  pk->sp = from;
  return v;
}

/* Add stack[from, sp) to @target (list/set items or dict pairs). */
static int add_items(run_t *r, pk_value_t *target, size_t from, bool pairs) {
  pk_t *pk = r->pk;
  if (pairs && (pk->sp - from) % 2) return fail(r, "odd number of items for a dict");
  bool ok = target->kind == PK_OPAQUE || (pairs ? target->kind == PK_DICT
                                                 : (target->kind == PK_LIST || target->kind == PK_SET));
  if (!ok) return fail(r, "cannot add items to this value");
  for (size_t i = from; i < pk->sp; i++)
    if (seq_add(target, pk->stack[i]) < 0) return MMP_ENOMEM;
  pk->sp = from;
  return 0;
}

static int str_op(run_t *r, pk_kind_t kind, int lenbytes) {
  int rc;
  if ((rc = need(r, (size_t)lenbytes)) < 0) return rc;
  uint64_t len = rd_le(r->d + r->p, lenbytes);
  r->p += (size_t)lenbytes;
  if (len > r->n - r->p) return fail(r, "string of %llu bytes, %zu left", (unsigned long long)len, r->n - r->p);
  pk_value_t *v = mk_str(r->pk, kind, r->op, r->d + r->p, (size_t)len);
  r->p += (size_t)len;
  return push(r, v);
}

static int long_op(run_t *r, int lenbytes) {
  int rc;
  if ((rc = need(r, (size_t)lenbytes)) < 0) return rc;
  uint64_t len = rd_le(r->d + r->p, lenbytes);
  r->p += (size_t)lenbytes;
  if (lenbytes == 4 && (len >> 31)) return fail(r, "negative LONG4 length");
  if (len > r->n - r->p) return fail(r, "long of %llu bytes, %zu left", (unsigned long long)len, r->n - r->p);
  const uint8_t *b = r->d + r->p;
  r->p += (size_t)len;
  /* Shorten redundant sign bytes, then fit int64 when possible. */
  size_t l = (size_t)len;
  while (l > 1 && ((b[l - 1] == 0 && !(b[l - 2] & 0x80)) || (b[l - 1] == 0xff && (b[l - 2] & 0x80)))) l--;
  if (l <= 8) {
    uint64_t u = l ? rd_le(b, (int)l) : 0;
    if (l && l < 8 && (b[l - 1] & 0x80)) u |= ~0ULL << (8 * l);
    pk_value_t *v = mk(r->pk, PK_INT, r->op);
    if (v) v->u.i = (int64_t)u;
    return push(r, v);
  }
  return push(r, mk_str(r->pk, PK_BIGINT, r->op, b, l));
}

static int global_op(run_t *r) {
  /* GLOBAL: "module\nname\n" */
  const uint8_t *s = r->d + r->p, *end = r->d + r->n;
  const uint8_t *nl1 = memchr(s, '\n', (size_t)(end - s));
  if (!nl1) return fail(r, "GLOBAL without a newline");
  const uint8_t *nl2 = memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1));
  if (!nl2) return fail(r, "GLOBAL without a second newline");
  if (nl1 - s > 256 || nl2 - nl1 - 1 > 256) return fail(r, "GLOBAL name too long");
  char mod[260], name[260];
  memcpy(mod, s, (size_t)(nl1 - s));
  mod[nl1 - s] = '\0';
  memcpy(name, nl1 + 1, (size_t)(nl2 - nl1 - 1));
  name[nl2 - nl1 - 1] = '\0';
  if (strlen(mod) != (size_t)(nl1 - s) || strlen(name) != (size_t)(nl2 - nl1 - 1))
    return fail(r, "GLOBAL name with a NUL byte");
  r->p = (size_t)(nl2 + 1 - r->d);
  return push(r, global(r, mod, name));
}

pk_value_t *pk_load(pk_t *pk, const uint8_t *data, size_t n, size_t *pos, const char *what) {
  run_t rr = {pk, data, n, *pos, *pos, what ? what : "pickle", *pos}, *r = &rr;
  mmp_error_clear();
  pk->sp = 0;
  pk->nmarks = 0;
  free(pk->memo);
  pk->memo = NULL;
  pk->capmemo = pk->memo_len = 0;
  int rc = 0;
  pk_value_t *a, *b, *c, *v;
  size_t from = 0;
  while (rc == 0) {
    r->op = r->p;
    if (r->p >= r->n) {
      fail(r, "truncated: no STOP");
      return NULL;
    }
    uint8_t op = r->d[r->p++];
    switch (op) {
    case 0x80: /* PROTO */
      if ((rc = need(r, 1)) < 0) break;
      if (r->d[r->p] < 2 || r->d[r->p] > 5) rc = fail(r, "pickle protocol %d (2-5 supported)", r->d[r->p]);
      r->p++;
      break;
    case 0x95: /* FRAME: a length hint */
      if ((rc = need(r, 8)) < 0) break;
      if (rd_le(r->d + r->p, 8) > r->n - r->p - 8) rc = fail(r, "frame longer than the input");
      r->p += 8;
      break;
    case '.': /* STOP */
      if (pk->sp != 1 || pk->nmarks) {
        fail(r, "STOP with %zu values and %zu marks on the stack", pk->sp, pk->nmarks);
        return NULL;
      }
      *pos = r->p;
      return pk->stack[0];
    case '(': /* MARK */
      if (grow(&pk->marks, &pk->capmarks, pk->nmarks + 1, sizeof *pk->marks) < 0) {
        rc = MMP_ENOMEM;
        break;
      }
      pk->marks[pk->nmarks++] = pk->sp;
      break;
    case '0': rc = pop(r) ? 0 : MMP_EDATA; break;        /* POP */
    case '1': rc = pop_mark(r, &from); pk->sp = rc ? pk->sp : from; break; /* POP_MARK */
    case '2': rc = (a = top(r)) ? push(r, a) : MMP_EDATA; break;          /* DUP */
    case 'N': rc = push(r, mk(pk, PK_NONE, r->op)); break;
    case 0x88:
    case 0x89: /* NEWTRUE, NEWFALSE */
      if ((v = mk(pk, PK_BOOL, r->op))) v->u.b = op == 0x88;
      rc = push(r, v);
      break;
    case 'J':
    case 'K':
    case 'M': { /* BININT (signed 32), BININT1, BININT2 (unsigned) */
      int k = op == 'J' ? 4 : op == 'K' ? 1 : 2;
      if ((rc = need(r, (size_t)k)) < 0) break;
      uint64_t u = rd_le(r->d + r->p, k);
      r->p += (size_t)k;
      if ((v = mk(pk, PK_INT, r->op))) v->u.i = op == 'J' ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
      rc = push(r, v);
      break;
    }
    case 0x8a: rc = long_op(r, 1); break; /* LONG1 */
    case 0x8b: rc = long_op(r, 4); break; /* LONG4 */
    case 'G': { /* BINFLOAT: big-endian double */
      if ((rc = need(r, 8)) < 0) break;
      uint64_t u = 0;
      for (int i = 0; i < 8; i++) u = (u << 8) | r->d[r->p + (size_t)i];
      r->p += 8;
      if ((v = mk(pk, PK_FLOAT, r->op))) memcpy(&v->u.f, &u, 8);
      rc = push(r, v);
      break;
    }
    case 'X': rc = str_op(r, PK_STR, 4); break;    /* BINUNICODE */
    case 0x8c: rc = str_op(r, PK_STR, 1); break;   /* SHORT_BINUNICODE */
    case 0x8d: rc = str_op(r, PK_STR, 8); break;   /* BINUNICODE8 */
    case 'T':                                      /* BINSTRING (py2 str) */
    case 'U':                                      /* SHORT_BINSTRING */
      if ((rc = str_op(r, PK_STR, op == 'T' ? 4 : 1)) == 0) pk->stack[pk->sp - 1]->py2 = 1;
      break;
    case 'B': rc = str_op(r, PK_BYTES, 4); break;  /* BINBYTES */
    case 'C': rc = str_op(r, PK_BYTES, 1); break;  /* SHORT_BINBYTES */
    case 0x8e: rc = str_op(r, PK_BYTES, 8); break; /* BINBYTES8 */
    case 0x96: rc = str_op(r, PK_BYTES, 8); break; /* BYTEARRAY8 */
    case ')': rc = push(r, mk(pk, PK_TUPLE, r->op)); break;
    case ']': rc = push(r, mk(pk, PK_LIST, r->op)); break;
    case '}': rc = push(r, mk(pk, PK_DICT, r->op)); break;
    case 0x8f: rc = push(r, mk(pk, PK_SET, r->op)); break; /* EMPTY_SET */
    case 0x85:
    case 0x86:
    case 0x87: { /* TUPLE1..3 */
      size_t k = (size_t)(op - 0x84);
      size_t floor = pk->nmarks ? pk->marks[pk->nmarks - 1] : 0;
      if (pk->sp < floor + k) {
        rc = fail(r, "stack underflow");
        break;
      }
      rc = push(r, make_seq(r, PK_TUPLE, pk->sp - k));
      break;
    }
    case 't': /* TUPLE */
    case 'l': /* LIST */
    case 0x91: /* FROZENSET */
      if ((rc = pop_mark(r, &from)) < 0) break;
      rc = push(r, make_seq(r, op == 't' ? PK_TUPLE : op == 'l' ? PK_LIST : PK_SET, from));
      break;
    case 'd': /* DICT */
      if ((rc = pop_mark(r, &from)) < 0) break;
      if ((pk->sp - from) % 2) {
        rc = fail(r, "odd number of items for a dict");
        break;
      }
      rc = push(r, make_seq(r, PK_DICT, from));
      break;
    case 'a': /* APPEND */
      if (!(b = pop(r)) || !(a = top(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (a->kind != PK_LIST && a->kind != PK_OPAQUE) {
        rc = fail(r, "APPEND to a value that is not a list");
        break;
      }
      rc = seq_add(a, b);
      break;
    case 'e':  /* APPENDS */
    case 0x90: /* ADDITEMS */
    case 'u':  /* SETITEMS */
      if ((rc = pop_mark(r, &from)) < 0) break;
      if (from == 0 || (pk->nmarks && from <= pk->marks[pk->nmarks - 1])) {
        rc = fail(r, "no target below the MARK");
        break;
      }
      rc = add_items(r, pk->stack[from - 1], from, op == 'u');
      break;
    case 's': /* SETITEM */
      if (!(c = pop(r)) || !(b = pop(r)) || !(a = top(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (a->kind != PK_DICT && a->kind != PK_OPAQUE) {
        rc = fail(r, "SETITEM on a value that is not a dict");
        break;
      }
      rc = seq_add(a, b);
      if (!rc) rc = seq_add(a, c);
      break;
    case 'c': rc = global_op(r); break; /* GLOBAL */
    case 0x93:                          /* STACK_GLOBAL */
      if (!(b = pop(r)) || !(a = pop(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (!is_str(a) || !is_str(b) || strlen(a->u.str.s) != a->u.str.len ||
          strlen(b->u.str.s) != b->u.str.len || a->u.str.len > 256 || b->u.str.len > 256) {
        rc = fail(r, "STACK_GLOBAL needs two strings");
        break;
      }
      rc = push(r, global(r, a->u.str.s, b->u.str.s));
      break;
    case 'R': /* REDUCE */
      if (!(b = pop(r)) || !(a = pop(r))) {
        rc = MMP_EDATA;
        break;
      }
      rc = push(r, call(r, a, b));
      break;
    case 0x81: /* NEWOBJ */
    case 0x92: /* NEWOBJ_EX */
      c = NULL;
      if (op == 0x92 && !(c = pop(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (!(b = pop(r)) || !(a = pop(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (a->kind == PK_OPAQUE) {
        rc = push(r, opaque_from(r, a, b, c));
      } else if (a->kind == PK_GLOBAL && a->u.global.fn == PK_FN_ORDERED_DICT && b->kind == PK_TUPLE &&
                 b->u.seq.n == 0) {
        rc = push(r, mk(pk, PK_DICT, r->op));
      } else {
        rc = fail(r, "NEWOBJ of a class that is not allowed here");
      }
      break;
    case 'b': /* BUILD */
      if (!(b = pop(r)) || !(a = top(r))) {
        rc = MMP_EDATA;
        break;
      }
      if (a->kind == PK_OPAQUE) {
        rc = seq_add(a, b);
      } else if (a->kind == PK_TENSOR || a->kind == PK_DICT) {
        /* a tensor's __setstate__ (attributes of subclasses) or an
         * OrderedDict's attributes (a state_dict's _metadata): no tensors
         * of the caller's live there */
        rc = 0;
      } else {
        rc = fail(r, "BUILD on a value that takes no state");
      }
      break;
    case 'Q': /* BINPERSID */
      if (!(a = pop(r))) {
        rc = MMP_EDATA;
        break;
      }
      rc = push(r, persistent(r, a));
      break;
    case 'h': /* BINGET */
      if ((rc = need(r, 1)) < 0) break;
      rc = memo_get(r, r->d[r->p++]);
      break;
    case 'j': /* LONG_BINGET */
      if ((rc = need(r, 4)) < 0) break;
      rc = memo_get(r, (size_t)rd_le(r->d + r->p, 4));
      r->p += 4;
      break;
    case 'q': /* BINPUT */
      if ((rc = need(r, 1)) < 0) break;
      rc = memo_put(r, r->d[r->p++]);
      break;
    case 'r': /* LONG_BINPUT */
      if ((rc = need(r, 4)) < 0) break;
      rc = memo_put(r, (size_t)rd_le(r->d + r->p, 4));
      r->p += 4;
      break;
    case 0x94: /* MEMOIZE */
      rc = memo_put(r, pk->memo_len);
      break;
    default:
      rc = fail(r, "opcode not supported (protocol 0/1 text opcodes, extensions and out-of-band "
                   "buffers are refused)");
      break;
    }
  }
  if (!mmp_error_code()) mmp_error_set(MMP_EDATA, "%s: pickle offset %zu: failed", r->what, r->op);
  return NULL;
}
