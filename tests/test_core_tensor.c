/* tests/test_core_tensor.c - tensors: creation, refcounts, views, conversions, broadcasting, errors, pool. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <mmpipe/backend.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static mmp_backend_t *cpu;

static mmp_tensor_t *arange(int ndim, const int64_t *shape) {
  mmp_tensor_t *t = mmp_tensor_new(cpu, MMP_F32, ndim, shape);
  float *p = mmp_tensor_data(t);
  for (int64_t i = 0; i < mmp_tensor_numel(t); i++) p[i] = (float)i;
  return t;
}

/* contents of @t (any strides) as f32 */
static void host(const mmp_tensor_t *t, float *out) {
  mmp_tensor_t *c = mmp_convert(t, MMP_F32);
  mmp_tensor_to_host(c, out, mmp_tensor_nbytes(c));
  mmp_tensor_unref(c);
}

static void test_dtypes(void) {
  mmp_dtype_t dt;
  is_int(mmp_dtype_size(MMP_F32), 4, "f32 size");
  is_int(mmp_dtype_size(MMP_BF16), 2, "bf16 size");
  is_int(mmp_dtype_size(MMP_I64), 8, "i64 size");
  is_int(mmp_dtype_parse("float16", &dt), 0, "parse float16");
  is_int(dt, MMP_F16, "float16 is f16");
  is_int(mmp_dtype_parse("BF16", &dt), 0, "parse BF16");
  is_int(dt, MMP_BF16, "BF16 is bf16");
  is_int(mmp_dtype_parse("complex64", &dt), MMP_ENOENT, "unknown dtype");
  like(mmp_error_last(), "complex64", "message names it");
  is_str(mmp_dtype_name(MMP_BOOL), "bool", "bool name");
}

static void test_create(void) {
  int64_t s[3] = {2, 3, 4};
  mmp_tensor_t *z = mmp_tensor_zeros(cpu, MMP_F32, 3, s);
  ok(z != NULL, "zeros");
  is_int(mmp_tensor_numel(z), 24, "numel");
  is_int(mmp_tensor_nbytes(z), 96, "nbytes");
  ok(mmp_tensor_is_contiguous(z), "contiguous");
  int64_t idx[3] = {1, 2, 3};
  is_close(mmp_tensor_get(z, idx), 0.0, 0, "zero element");
  char buf[64];
  is_str(mmp_tensor_describe(z, buf, sizeof buf), "f32[2, 3, 4]", "describe");
  mmp_tensor_t *f = mmp_tensor_full(cpu, MMP_I64, 3, s, 7);
  is_close(mmp_tensor_get(f, idx), 7.0, 0, "full i64");
  float data[6] = {1, 2, 3, 4, 5, 6};
  int64_t s2[2] = {2, 3};
  mmp_tensor_t *d = mmp_tensor_from_data(cpu, MMP_F32, 2, s2, data);
  int64_t i2[2] = {1, 0};
  is_close(mmp_tensor_get(d, i2), 4.0, 0, "from_data element");
  ok(mmp_tensor_backend(d) == cpu, "backend of tensor");
  is_str(mmp_backend_name(cpu), "cpu", "backend name");
  int64_t bad[2] = {2, -1};
  ok(mmp_tensor_new(cpu, MMP_F32, 2, bad) == NULL, "negative size refused");
  is_int(mmp_error_code(), MMP_ESHAPE, "ESHAPE");
  int64_t big[6] = {1, 1, 1, 1, 1, 1};
  ok(mmp_tensor_new(cpu, MMP_F32, 6, big) == NULL, "6 dims refused");
  mmp_tensor_t *sc = mmp_tensor_full(cpu, MMP_F32, 0, NULL, 2.5);
  is_int(mmp_tensor_numel(sc), 1, "scalar numel 1");
  is_close(mmp_tensor_get(sc, NULL), 2.5, 0, "scalar value");
  mmp_tensor_unref(sc);
  mmp_tensor_unref(z);
  mmp_tensor_unref(f);
  mmp_tensor_unref(d);
  mmp_tensor_unref(NULL);
}

static int released;
static void on_release(void *u) { released += *(int *)u; }

static void test_refcounts(void) {
  float buf[12];
  for (int i = 0; i < 12; i++) buf[i] = (float)i;
  int64_t s[2] = {3, 4};
  int one = 1;
  released = 0;
  mmp_tensor_t *w = mmp_tensor_wrap(MMP_F32, 2, s, buf, on_release, &one);
  ok(mmp_tensor_data(w) == buf, "wrap is zero-copy");
  mmp_tensor_t *v = mmp_transpose(w, 0, 1);
  mmp_tensor_t *r = mmp_tensor_ref(v);
  is_int(v->refcount, 2, "ref increments");
  mmp_tensor_unref(w);
  is_int(released, 0, "a view keeps the storage alive");
  int64_t idx[2] = {3, 2};
  is_close(mmp_tensor_get(v, idx), 11.0, 0, "view still reads storage");
  mmp_tensor_unref(v);
  is_int(released, 0, "still one reference");
  mmp_tensor_unref(r);
  is_int(released, 1, "release ran once at the last unref");
}

static void test_views(void) {
  int64_t s[3] = {2, 3, 4};
  mmp_tensor_t *a = arange(3, s);
  float out[24];

  int perm[3] = {2, 0, 1};
  mmp_tensor_t *p = mmp_permute(a, perm);
  is_int(p->shape[0], 4, "permute shape");
  ok(!mmp_tensor_is_contiguous(p), "permute not contiguous");
  ok(mmp_tensor_data(p) == mmp_tensor_data(a), "permute shares storage");
  int64_t ip[3] = {3, 1, 2};
  is_close(mmp_tensor_get(p, ip), 1 * 12 + 2 * 4 + 3, 0, "permute element");
  mmp_tensor_t *pc = mmp_contiguous(p);
  ok(mmp_tensor_is_contiguous(pc), "contiguous copy");
  host(pc, out);
  is_close(out[1], 4.0, 0, "contiguous order (p[0,0,1] = a[0,1,0])");
  is_close(out[23], 23.0, 0, "last element");

  /* reshape of a non-viewable tensor copies; of a viewable one does not */
  int64_t r1[2] = {4, 6};
  mmp_tensor_t *rv = mmp_reshape(a, 2, r1);
  ok(mmp_tensor_data(rv) == mmp_tensor_data(a), "reshape contiguous is a view");
  mmp_tensor_t *pv = mmp_reshape(p, 2, r1); /* [4, (2, 3)] merges: a view */
  ok(pv && mmp_tensor_data(pv) == mmp_tensor_data(a), "reshape of permuted but mergeable is a view");
  mmp_tensor_unref(pv);
  mmp_tensor_t *t21 = mmp_transpose(a, 1, 2); /* [2, 4, 3], strides (12, 1, 4) */
  int64_t rr[2] = {-1, 12};
  mmp_tensor_t *rp = mmp_reshape(t21, 2, rr);
  mmp_tensor_unref(t21);
  is_int(rp->shape[0], 2, "-1 inferred");
  ok(mmp_tensor_data(rp) != mmp_tensor_data(a), "reshape of permuted copies");
  host(rp, out);
  is_close(out[1], 4.0, 0, "reshape copy keeps logical order");
  int64_t bad[2] = {5, 5};
  ok(mmp_reshape(a, 2, bad) == NULL, "bad reshape refused");
  like(mmp_error_last(), "[2, 3, 4]", "message names the shape");
  /* reshape of a transposed view that merges only the contiguous dims */
  mmp_tensor_t *t12 = mmp_transpose(a, 0, 1); /* [3, 2, 4] */
  int64_t m2[3] = {3, 2, 2 * 2};
  mmp_tensor_t *tv = mmp_reshape(t12, 3, m2);
  ok(tv && mmp_tensor_data(tv) == mmp_tensor_data(a), "viewable reshape of a transposed tensor");

  mmp_tensor_t *sl = mmp_slice(a, 2, 1, -1, 1);
  is_int(sl->shape[2], 2, "slice length");
  int64_t is[3] = {1, 2, 0};
  is_close(mmp_tensor_get(sl, is), 12 + 8 + 1, 0, "slice element");
  mmp_tensor_t *st = mmp_slice(a, -1, 0, INT64_MAX, 2);
  is_int(st->shape[2], 2, "stepped slice length");
  int64_t is2[3] = {0, 0, 1};
  is_close(mmp_tensor_get(st, is2), 2, 0, "stepped slice element");

  mmp_tensor_t *u = mmp_unsqueeze(a, 1);
  is_int(u->ndim, 4, "unsqueeze rank");
  is_int(u->shape[1], 1, "unsqueeze dim");
  ok(mmp_tensor_is_contiguous(u), "unsqueeze contiguous");
  mmp_tensor_t *q = mmp_squeeze(u, 1);
  ok(mmp_tensor_same_shape(q, a), "squeeze undoes unsqueeze");
  mmp_tensor_t *q2 = mmp_squeeze(a, 0);
  is_int(q2->ndim, 3, "squeeze of a non-1 dim is a no-op");

  int64_t bs[4] = {5, 2, 3, 4};
  mmp_tensor_t *b = mmp_broadcast_to(a, 4, bs);
  is_int(b->stride[0], 0, "broadcast stride 0");
  int64_t ib[4] = {4, 1, 2, 3};
  is_close(mmp_tensor_get(b, ib), 23, 0, "broadcast element");
  int64_t bb[3] = {2, 5, 4};
  ok(mmp_broadcast_to(a, 3, bb) == NULL, "bad broadcast refused");
  is_int(mmp_error_code(), MMP_ESHAPE, "ESHAPE");

  mmp_tensor_t *ch[2];
  is_int(mmp_chunk(a, 2, -1, ch), 0, "chunk");
  int64_t ic[3] = {0, 0, 0};
  is_close(mmp_tensor_get(ch[1], ic), 2, 0, "second chunk starts at 2");
  mmp_tensor_unref(ch[0]);
  mmp_tensor_unref(ch[1]);
  is_int(mmp_chunk(a, 3, 2, ch), MMP_ESHAPE, "uneven chunk refused");
  mmp_tensor_t *sp[2];
  int64_t sizes[2] = {1, 2};
  is_int(mmp_split(a, 2, sizes, 1, sp), 0, "split");
  is_int(sp[1]->shape[1], 2, "split sizes");
  int64_t isp[3] = {1, 0, 0};
  is_close(mmp_tensor_get(sp[1], isp), 16, 0, "split element");
  mmp_tensor_unref(sp[0]);
  mmp_tensor_unref(sp[1]);

  mmp_tensor_t *parts[2] = {a, a};
  mmp_tensor_t *cat = mmp_concat(parts, 2, 1);
  is_int(cat->shape[1], 6, "concat shape");
  int64_t icat[3] = {1, 4, 2};
  is_close(mmp_tensor_get(cat, icat), 12 + 4 + 2, 0, "concat element");
  mmp_tensor_t *bparts[2] = {a, p};
  ok(mmp_concat(bparts, 2, 0) == NULL, "concat mismatch refused");
  like(mmp_error_last(), "[4, 2, 3]", "message names the odd shape");

  mmp_tensor_t *all[] = {p, pc, rv, rp, t12, tv, sl, st, u, q, q2, b, cat};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) mmp_tensor_unref(all[i]);
  mmp_tensor_unref(a);
}

/* permuting copies large enough for the tiled transpose path, several dtypes */
static void test_permute_copies(void) {
  int64_t s[4] = {3, 20, 37, 9};
  mmp_tensor_t *a = arange(4, s);
  static const int perms[][4] = {{0, 2, 3, 1}, {0, 3, 1, 2}, {3, 2, 1, 0}, {1, 0, 3, 2}};
  mmp_dtype_t dts[3] = {MMP_F32, MMP_F16, MMP_I64};
  int bad = 0, checked = 0;
  for (int d = 0; d < 3; d++) {
    mmp_tensor_t *ad = mmp_convert(a, dts[d]);
    for (size_t p = 0; p < sizeof perms / sizeof perms[0]; p++) {
      mmp_tensor_t *v = mmp_permute(ad, perms[p]), *c = mmp_contiguous(v);
      int64_t idx[4];
      for (idx[0] = 0; idx[0] < c->shape[0]; idx[0]++)
        for (idx[1] = 0; idx[1] < c->shape[1]; idx[1]++)
          for (idx[2] = 0; idx[2] < c->shape[2]; idx[2]++)
            for (idx[3] = 0; idx[3] < c->shape[3]; idx[3]++) {
              checked++;
              if (mmp_tensor_get(c, idx) != mmp_tensor_get(v, idx)) bad++;
            }
      mmp_tensor_unref(v);
      mmp_tensor_unref(c);
    }
    mmp_tensor_unref(ad);
  }
  is_int(bad, 0, "permuted copies (f32, f16, i64; %d elements) match the views", checked);
  mmp_tensor_unref(a);
}

static void test_conversions(void) {
  float v[8] = {1.0f, -2.5f, 65504.0f, 1e-7f, 3.14159265f, 1e6f, -0.0f, 0.333333f};
  int64_t s[1] = {8};
  mmp_tensor_t *a = mmp_tensor_from_data(cpu, MMP_F32, 1, s, v);
  mmp_tensor_t *h = mmp_convert(a, MMP_F16), *hb = mmp_convert(h, MMP_F32);
  mmp_tensor_t *b = mmp_convert(a, MMP_BF16), *bb = mmp_convert(b, MMP_F32);
  uint16_t hv[8], bv[8];
  float r[8];
  mmp_tensor_to_host(h, hv, sizeof hv);
  mmp_tensor_to_host(b, bv, sizeof bv);
  /* expected bit patterns from numpy/torch: torch.tensor(v).half().view(torch.int16) */
  is_int(hv[0], 0x3c00, "f16 1.0");
  is_int(hv[1], 0xc100, "f16 -2.5");
  is_int(hv[2], 0x7bff, "f16 max");
  is_int(hv[3], 0x0002, "f16 subnormal 1e-7");
  is_int(hv[4], 0x4248, "f16 pi");
  is_int(hv[5], 0x7c00, "f16 overflow to inf");
  is_int(hv[6], 0x8000, "f16 -0");
  is_int(bv[0], 0x3f80, "bf16 1.0");
  is_int(bv[4], 0x4049, "bf16 pi");
  is_int(bv[7], 0x3eab, "bf16 1/3 rounds to nearest even");
  mmp_tensor_to_host(hb, r, sizeof r);
  is_close(r[4], 3.140625, 0, "f16 back to f32");
  mmp_tensor_to_host(bb, r, sizeof r);
  is_close(r[4], 3.140625, 0, "bf16 back to f32");
  mmp_tensor_t *i = mmp_convert(a, MMP_I64);
  int64_t iv[8];
  mmp_tensor_to_host(i, iv, sizeof iv);
  is_int(iv[1], -2, "f32 -> i64 truncates");
  double dv[3] = {1.5, -2.25, 1e300};
  int64_t s3[1] = {3};
  mmp_tensor_t *d = mmp_tensor_from_data(cpu, MMP_F64, 1, s3, dv);
  mmp_tensor_t *df = mmp_convert(d, MMP_F32);
  mmp_tensor_to_host(df, r, 3 * sizeof(float));
  is_close(r[1], -2.25, 0, "f64 -> f32");
  ok(isinf(r[2]), "f64 overflow -> inf");
  mmp_tensor_t *bo = mmp_convert(a, MMP_BOOL);
  uint8_t ov[8];
  mmp_tensor_to_host(bo, ov, sizeof ov);
  ok(ov[0] == 1 && ov[6] == 0, "f32 -> bool");
  /* strided conversion */
  mmp_tensor_t *sl = mmp_slice(a, 0, 0, 8, 2);
  mmp_tensor_t *slh = mmp_convert(sl, MMP_F16);
  uint16_t sv[4];
  mmp_tensor_to_host(slh, sv, sizeof sv);
  is_int(sv[1], 0x7bff, "strided f32 -> f16");
  is_int(mmp_tensor_to_host(a, r, 4), MMP_EINVAL, "to_host size mismatch");
  mmp_tensor_t *all[] = {a, h, hb, b, bb, i, d, df, bo, sl, slh};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) mmp_tensor_unref(all[k]);
}

static void test_broadcast_ops(void) {
  int64_t sa[3] = {2, 1, 3}, sb[2] = {4, 1};
  mmp_tensor_t *a = arange(3, sa), *b = arange(2, sb);
  mmp_tensor_t *c = mmp_add(a, b);
  ok(c && c->ndim == 3 && c->shape[0] == 2 && c->shape[1] == 4 && c->shape[2] == 3, "broadcast shape [2, 4, 3]");
  int64_t ic[3] = {1, 2, 1};
  is_close(mmp_tensor_get(c, ic), 4 + 2, 0, "broadcast add element");
  mmp_tensor_t *m = mmp_mul(b, a);
  is_close(mmp_tensor_get(m, ic), 4 * 2, 0, "broadcast mul element");
  int64_t sbad[1] = {2};
  mmp_tensor_t *bad = arange(1, sbad);
  ok(mmp_sub(a, bad) == NULL, "non-broadcastable refused");
  like(mmp_error_last(), "f32[2, 1, 3]", "message names shape a");
  like(mmp_error_last(), "f32[2]", "message names shape b");
  ok(mmp_add(NULL, a) == NULL, "NULL input gives NULL");
  mmp_tensor_t *i = mmp_tensor_zeros(cpu, MMP_I64, 3, sa);
  ok(mmp_add(a, i) == NULL, "i64 operand refused");
  is_int(mmp_error_code(), MMP_EDTYPE, "EDTYPE");
  mmp_tensor_t *ax = mmp_axpby(2.0, a, -1.0, a);
  int64_t ia[3] = {1, 0, 2};
  is_close(mmp_tensor_get(ax, ia), 5, 0, "axpby");
  ok(mmp_axpby(1, a, 1, c) == NULL, "axpby needs same shapes");
  mmp_tensor_t *all[] = {a, b, c, m, bad, i, ax};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) mmp_tensor_unref(all[k]);
}

/* A second backend object with the CPU's vtable but another name, to check
 * that mixing devices is an error, never a silent copy. */
static int warnings;
static void count_warnings(mmp_log_level_t level, const char *component, const char *message, void *user) {
  (void)component;
  (void)message;
  (void)user;
  if (level == MMP_LOG_WARN) warnings++;
}

static mmp_backend_ops_t fake_ops;
static mmp_backend_t fake;

static void test_devices(void) {
  fake_ops = *cpu->ops;
  fake_ops.name = "fake";
  fake.ops = &fake_ops;
  fake.ctx = NULL;
  is_int(mmp_backend_register(&fake), 0, "register a second backend");
  is_int(mmp_backend_register(&fake), MMP_EEXIST, "duplicate name refused");
  mmp_backend_ops_t broken = fake_ops;
  broken.name = "broken";
  broken.compute = NULL;
  mmp_backend_t bk = {&broken, NULL};
  is_int(mmp_backend_register(&bk), MMP_EINVAL, "missing compute refused");
  like(mmp_error_last(), "compute", "message names the member");
  ok(mmp_backend_get("fake") == &fake, "get by name");
  int64_t s[2] = {2, 2};
  mmp_tensor_t *a = mmp_tensor_zeros(cpu, MMP_F32, 2, s), *b = mmp_tensor_zeros(&fake, MMP_F32, 2, s);
  ok(mmp_add(a, b) == NULL, "mixed devices refused");
  is_int(mmp_error_code(), MMP_EDEVICE, "EDEVICE");
  like(mmp_error_last(), "fake", "message names the device");
  ok(mmp_matmul(a, b, false, false) == NULL, "matmul mixed devices refused");
  mmp_tensor_t *m = mmp_to_backend(b, cpu);
  ok(m && mmp_tensor_backend(m) == cpu, "explicit move works");
  mmp_tensor_t *ok2 = mmp_add(a, m);
  ok(ok2 != NULL, "add after the move");
  mmp_tensor_unref(a);
  mmp_tensor_unref(b);
  mmp_tensor_unref(m);
  mmp_tensor_unref(ok2);
  mmp_log_set_sink(count_warnings, NULL);
  mmp_log_set_level(MMP_LOG_WARN);
  mmp_backend_t *a1 = mmp_backend_get("auto"), *a2 = mmp_backend_get("auto");
  mmp_log_set_sink(NULL, NULL);
  mmp_log_set_level(MMP_LOG_ERROR);
  ok(a1 != NULL && a1 == a2, "auto gives a backend");
  if (mmp_backend_get("cuda") == NULL) {
    is_int(mmp_error_code(), MMP_EDEVICE, "no CUDA backend: cuda is EDEVICE");
    ok(a1 == cpu, "auto falls back to the cpu");
    is_int(warnings, 1, "with exactly one warning");
  }
  ok(mmp_backend_get("tpu") == NULL, "unknown device refused");
  is_int(mmp_error_code(), MMP_ENOENT, "ENOENT");
}

/* The caching pool: a repeated op sequence allocates nothing the second time. */
static void step(mmp_tensor_t *x, mmp_tensor_t *w) {
  mmp_tensor_t *y = mmp_linear(x, w, NULL);
  mmp_tensor_t *z = mmp_silu(y);
  mmp_tensor_t *t = mmp_transpose(z, 0, 1);
  mmp_tensor_t *c = mmp_contiguous(t);
  mmp_tensor_t *s = mmp_softmax(c, -1);
  mmp_tensor_t *a = mmp_add(s, c);
  mmp_tensor_unref(y);
  mmp_tensor_unref(z);
  mmp_tensor_unref(t);
  mmp_tensor_unref(c);
  mmp_tensor_unref(s);
  mmp_tensor_unref(a);
}

static void test_pool(void) {
  int64_t sx[2] = {37, 64}, sw[2] = {48, 64};
  mmp_tensor_t *x = arange(2, sx), *w = arange(2, sw);
  step(x, w);
  mmp_pool_stats_t s1, s2;
  uint64_t h1, h2;
  mmp_backend_pool_stats(cpu, &s1);
  mmp_tensor_header_stats(&h1, NULL);
  for (int i = 0; i < 5; i++) step(x, w);
  mmp_backend_pool_stats(cpu, &s2);
  mmp_tensor_header_stats(&h2, NULL);
  ok(s2.requests > s1.requests, "the steps requested memory");
  is_int(s2.os_allocs - s1.os_allocs, 0, "no OS allocation in steady state");
  is_int(h2 - h1, 0, "no header malloc in steady state");
  /* the pool gives back whole chunks only: with nothing live, all of them */
  mmp_tensor_unref(x);
  mmp_tensor_unref(w);
  mmp_backend_pool_trim(cpu);
  mmp_backend_pool_stats(cpu, &s2);
  is_int(s2.bytes_in_use, 0, "no tensor left alive");
  is_int(s2.bytes_cached, 0, "trim empties the cache");
  is_int(s2.os_frees, s2.os_allocs, "  every chunk went back");
}

int main(void) {
  mmp_log_set_level(MMP_LOG_ERROR);
  cpu = mmp_backend_get("cpu");
  ok(cpu != NULL, "cpu backend");
  test_dtypes();
  test_create();
  test_refcounts();
  test_views();
  test_conversions();
  test_permute_copies();
  test_broadcast_ops();
  test_devices();
  test_pool();
  return done_testing();
}
