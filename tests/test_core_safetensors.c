/* tests/test_core_safetensors.c - safetensors round trip, metadata, zero-copy, malformed files. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/plugin.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static char dir[256];
static mmp_backend_t *cpu;

static const char *tmp_path(const char *name) {
  static char buf[512];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

/* Write 8-byte length (or @lie when nonzero) + header + @data_len bytes. */
static const char *write_raw(const char *name, const char *hdr, uint64_t lie, size_t data_len) {
  const char *p = tmp_path(name);
  FILE *f = fopen(p, "wb");
  uint64_t n = lie ? lie : strlen(hdr);
  unsigned char b[8];
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
  fwrite(b, 1, 8, f);
  fwrite(hdr, 1, strlen(hdr), f);
  for (size_t i = 0; i < data_len; i++) fputc((int)(i * 7 + 1), f);
  fclose(f);
  return p;
}

static int count_tmp_files(void) {
  int n = 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

static void test_round_trip(void) {
  mmp_tensormap_t *m = mmp_tensormap_new();
  int64_t s1[2] = {3, 5}, s2[1] = {7}, s3[3] = {2, 1, 3}, s0[1] = {0};
  mmp_tensor_t *a = mmp_tensor_new(cpu, MMP_F32, 2, s1);
  float *pa = mmp_tensor_data(a);
  for (int i = 0; i < 15; i++) pa[i] = (float)i * 0.5f - 3.0f;
  mmp_tensor_t *h = mmp_convert(a, MMP_F16);
  mmp_tensor_t *i64 = mmp_tensor_full(cpu, MMP_I64, 1, s2, -9);
  mmp_tensor_t *bo = mmp_tensor_full(cpu, MMP_BOOL, 3, s3, 1);
  mmp_tensor_t *at = mmp_transpose(a, 0, 1); /* strided: written in logical order */
  mmp_tensor_t *em = mmp_tensor_new(cpu, MMP_F32, 1, s0);
  mmp_tensor_t *bf = mmp_convert(a, MMP_BF16);
  mmp_tensormap_set(m, "bool.mask", bo);
  mmp_tensormap_set(m, "w.f16", h);
  mmp_tensormap_set(m, "w", mmp_tensor_ref(a));
  mmp_tensormap_set(m, "ids", i64);
  mmp_tensormap_set(m, "w.T", at);
  mmp_tensormap_set(m, "empty", em);
  mmp_tensormap_set(m, "w.bf16", bf);
  const char *md[] = {"format", "pt", "producer", "test", NULL};
  const char *path = tmp_path("rt.safetensors");
  is_int(mmp_safetensors_save_map(path, m, md), 0, "save_map");
  is_int(count_tmp_files(), 0, "no temporary file left behind");

  mmp_safetensors_t *st = mmp_safetensors_open(path);
  ok(st != NULL, "open what we wrote");
  if (!st) {
    diag("%s", mmp_error_last());
    return;
  }
  is_int(mmp_safetensors_count(st), 7, "7 tensors");
  is_str(mmp_safetensors_metadata(st, "producer"), "test", "metadata value");
  is_int(mmp_safetensors_metadata_count(st), 2, "metadata count");
  ok(mmp_safetensors_metadata(st, "nope") == NULL, "absent metadata is NULL");
  mmp_dtype_t dt;
  int nd;
  int64_t shape[MMP_MAX_DIMS];
  is_int(mmp_safetensors_info(st, "w.T", &dt, &nd, shape), 0, "info");
  ok(dt == MMP_F32 && nd == 2 && shape[0] == 5 && shape[1] == 3, "info of the transposed tensor");
  is_int(mmp_safetensors_info(st, "missing", &dt, &nd, shape), MMP_ENOENT, "info of a missing tensor");
  like(mmp_error_last(), "missing", "message names it");

  mmp_tensor_t *w1 = mmp_safetensors_get(st, "w", cpu, MMP_F32);
  mmp_tensor_t *w2 = mmp_safetensors_get(st, "w", cpu, MMP_DTYPE_COUNT);
  ok(w1 && w2 && mmp_tensor_data(w1) == mmp_tensor_data(w2), "f32 get is zero-copy (same mapping)");
  mmp_tensor_t *wt = mmp_safetensors_get(st, "w.T", cpu, MMP_F32);
  int64_t i12[2] = {1, 2}, i21[2] = {2, 1};
  is_close(mmp_tensor_get(wt, i21), mmp_tensor_get(w1, i12), 0, "transposed tensor written in logical order");
  mmp_tensor_t *hf = mmp_safetensors_get(st, "w.f16", cpu, MMP_F32);
  ok(hf && hf->dtype == MMP_F32, "f16 converted to f32 on load");
  int64_t i14[2] = {2, 4};
  is_close(mmp_tensor_get(hf, i14), mmp_tensor_get(w1, i14), 0, "f16 values (exact in half)");
  mmp_tensor_t *bff = mmp_safetensors_get(st, "w.bf16", cpu, MMP_F32);
  is_close(mmp_tensor_get(bff, i14), mmp_tensor_get(w1, i14), 0, "bf16 values (exact in bf16)");
  mmp_tensor_t *ids = mmp_safetensors_get(st, "ids", cpu, MMP_DTYPE_COUNT);
  int64_t i3[1] = {3};
  ok(ids && ids->dtype == MMP_I64, "i64 as stored");
  is_close(mmp_tensor_get(ids, i3), -9, 0, "i64 value");
  mmp_tensor_t *b = mmp_safetensors_get(st, "bool.mask", cpu, MMP_DTYPE_COUNT);
  int64_t ib[3] = {1, 0, 2};
  is_close(mmp_tensor_get(b, ib), 1, 0, "bool value");
  mmp_tensor_t *e = mmp_safetensors_get(st, "empty", cpu, MMP_DTYPE_COUNT);
  ok(e && mmp_tensor_numel(e) == 0, "empty tensor");
  ok(mmp_safetensors_get(st, "nope", cpu, MMP_F32) == NULL, "get of a missing tensor");
  is_int(mmp_error_code(), MMP_ENOENT, "ENOENT");
  is_int(mmp_copy_into(w1, a), MMP_EINVAL, "a mapped weight is read-only");
  mmp_safetensors_close(st);
  is_close(mmp_tensor_get(w1, i14), 4.0, 0, "tensor outlives the closed file (mapping kept)");

  /* load_map */
  mmp_tensormap_t *m2 = mmp_tensormap_new();
  is_int(mmp_safetensors_load_map(path, cpu, true, m2), 0, "load_map");
  is_int(mmp_tensormap_size(m2), 7, "every tensor loaded");
  /* overwrite atomically */
  is_int(mmp_safetensors_save_map(path, m2, NULL), 0, "save over an existing file");
  mmp_safetensors_t *st2 = mmp_safetensors_open(path);
  ok(st2 && mmp_safetensors_metadata_count(st2) == 0, "rewritten without metadata");
  mmp_safetensors_close(st2);
  is_int(mmp_safetensors_save_map("/nonexistent-dir/x.safetensors", m2, NULL), MMP_EIO, "unwritable directory");

  mmp_tensor_t *all[] = {a, w1, w2, wt, hf, bff, ids, b, e};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) mmp_tensor_unref(all[k]);
  mmp_tensormap_free(m);
  mmp_tensormap_free(m2);
}

typedef struct bad_case {
  const char *what, *hdr;
  uint64_t lie;
  size_t data;
  int code;
  const char *msg;
} bad_case_t;

static void test_malformed(void) {
  static const bad_case_t cases[] = {
      {"lying header length (past the end)", "{}", 1000, 0, MMP_EDATA, "header length"},
      {"header length 0", "{}", 0xffffffffffffffffull, 0, MMP_EDATA, "header length"},
      {"bad JSON", "{\"a\": {\"dtype\": \"F32\",", 0, 0, MMP_EDATA, "not valid JSON"},
      {"header not an object", "[1, 2, 3]", 0, 0, MMP_EDATA, "not a JSON object"},
      {"duplicate names",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
       0, 8, MMP_EDATA, "duplicate"},
      {"unknown dtype", "{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, MMP_EDATA,
       "unknown dtype \"Q7\""},
      {"unsupported dtype", "{\"a\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 0, 4, MMP_EDTYPE,
       "not supported"},
      {"overlapping ranges",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       0, 12, MMP_EDATA, "overlap"},
      {"range past the end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 0, 8, MMP_EDATA,
       "past the end"},
      {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8, MMP_EDATA,
       "needs 12 bytes"},
      {"huge shape overflowing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}",
       0, 8, MMP_EDATA, "is too large"},
      {"huge shape not overflowing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1000000,1000000],\"data_offsets\":[0,8]}}", 0,
       8, MMP_EDATA, "needs 4000000000000 bytes"},
      {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 0, 4, MMP_EDATA,
       "non-negative"},
      {"offsets reversed", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 0, 4, MMP_EDATA,
       "end before"},
      {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 0, 4, MMP_EDATA, "\"dtype\""},
      {"offsets not a pair", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 0, 4, MMP_EDATA,
       "data_offsets"},
      {"too many dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 0, 4,
       MMP_EDATA, "6 dims"},
      {"metadata not strings", "{\"__metadata__\":{\"k\":3}}", 0, 0, MMP_EDATA, "not a string"},
      {"entry not an object", "{\"a\":[1]}", 0, 0, MMP_EDATA, "not an object"},
      {"fractional offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 0, 4, MMP_EDATA,
       "data_offsets"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bad_case_t *c = &cases[i];
    const char *p = write_raw("bad.safetensors", c->hdr, c->lie, c->data);
    mmp_error_clear();
    mmp_safetensors_t *st = mmp_safetensors_open(p);
    ok(st == NULL, "%s: refused", c->what);
    is_int(mmp_error_code(), c->code, "%s: error code", c->what);
    like(mmp_error_last(), c->msg, "%s: message", c->what);
    mmp_safetensors_close(st);
  }
  /* a file too short for the length field, and an empty one */
  FILE *f = fopen(tmp_path("short.safetensors"), "wb");
  fwrite("\x02\x00\x00", 1, 3, f);
  fclose(f);
  ok(mmp_safetensors_open(tmp_path("short.safetensors")) == NULL, "3-byte file refused");
  like(mmp_error_last(), "too short", "message says too short");
  f = fopen(tmp_path("empty.safetensors"), "wb");
  fclose(f);
  ok(mmp_safetensors_open(tmp_path("empty.safetensors")) == NULL, "empty file refused");
  ok(mmp_safetensors_open(tmp_path("absent.safetensors")) == NULL, "absent file refused");
  is_int(mmp_error_code(), MMP_EIO, "absent file is EIO");

  /* truncations of a valid file at every length: each is a clean error or
   * (for the full length) a good file */
  const char *good = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                     "\"b\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
  char gp[512];
  snprintf(gp, sizeof gp, "%s", write_raw("good.safetensors", good, 0, 22));
  FILE *g = fopen(gp, "rb");
  unsigned char full[512];
  size_t flen = fread(full, 1, sizeof full, g);
  fclose(g);
  int clean = 0;
  for (size_t len = 0; len < flen; len++) {
    FILE *t = fopen(tmp_path("trunc.safetensors"), "wb");
    fwrite(full, 1, len, t);
    fclose(t);
    mmp_safetensors_t *st = mmp_safetensors_open(tmp_path("trunc.safetensors"));
    if (!st && mmp_error_code() == MMP_EDATA) clean++;
    mmp_safetensors_close(st);
  }
  is_int(clean, (long long)flen, "every truncation is a clean MMP_EDATA error");
  mmp_safetensors_t *gs = mmp_safetensors_open(gp);
  ok(gs != NULL, "the untruncated file opens");
  if (!gs) diag("%s", mmp_error_last());
  mmp_safetensors_close(gs);

  /* random byte mutations of the header: never a crash; whatever opens
   * must read back in full */
  srand(1234);
  int opened = 0, refused = 0;
  for (int it = 0; it < 1000; it++) {
    unsigned char mut[512];
    memcpy(mut, full, flen);
    int flips = 1 + rand() % 3;
    for (int k = 0; k < flips; k++) mut[rand() % (int)flen] = (unsigned char)(rand() & 0xff);
    FILE *t = fopen(tmp_path("mut.safetensors"), "wb");
    fwrite(mut, 1, flen, t);
    fclose(t);
    mmp_safetensors_t *st = mmp_safetensors_open(tmp_path("mut.safetensors"));
    if (!st) {
      refused++;
      continue;
    }
    opened++;
    for (size_t k = 0; k < mmp_safetensors_count(st); k++) {
      mmp_tensor_t *x = mmp_safetensors_get(st, mmp_safetensors_name(st, k), cpu, MMP_F32);
      if (x) {
        float *buf = malloc(mmp_tensor_nbytes(x) + 1);
        mmp_tensor_to_host(x, buf, mmp_tensor_nbytes(x));
        free(buf);
      }
      mmp_tensor_unref(x);
    }
    mmp_safetensors_close(st);
  }
  ok(opened + refused == 1000, "1000 mutated files: %d opened, %d refused, none crashed", opened, refused);
}

/* Inputs found by fuzzing (tests/fixtures/fuzz): an empty tensor whose
 * other sizes are 2^40 would overflow the contiguous strides (UBSan). */
static void test_fuzz_findings(void) {
  static const char *const files[] = {"zero_dim_huge_shape_f16.safetensors", "zero_dim_huge_shape_f32.safetensors"};
  for (int i = 0; i < 2; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/tests/fixtures/fuzz/safetensors_contig_strides_overflow/%s", tap_srcdir(), files[i]);
    mmp_safetensors_t *st = mmp_safetensors_open(p);
    ok(st == NULL, "%s is refused", files[i]);
    like(mmp_error_last(), "too large", "  the shape is named too large");
    mmp_safetensors_close(st);
  }
  /* the same bound on every tensor made from a shape */
  int64_t huge[4] = {0, (int64_t)1 << 40, (int64_t)1 << 40, (int64_t)1 << 40};
  mmp_tensor_t *t = mmp_tensor_new(cpu, MMP_F32, 4, huge);
  ok(t == NULL && mmp_error_code() == MMP_ESHAPE, "mmp_tensor_new refuses [0, 2^40, 2^40, 2^40]");
  mmp_tensor_unref(t);
  int64_t empty[3] = {0, 1 << 20, 1 << 20};
  t = mmp_tensor_new(cpu, MMP_F32, 3, empty);
  ok(t != NULL && mmp_tensor_numel(t) == 0, "an empty [0, 2^20, 2^20] is fine");
  mmp_tensor_unref(t);
}

int main(void) {
  mmp_log_set_level(MMP_LOG_ERROR);
  cpu = mmp_backend_get("cpu");
  const char *base = getenv("MMP_TEST_BUILDDIR");
  snprintf(dir, sizeof dir, "%s/st-test-XXXXXX", base ? base : "/tmp");
  if (!mkdtemp(dir)) {
    snprintf(dir, sizeof dir, "/tmp/st-test-XXXXXX");
    if (!mkdtemp(dir)) skip_all("cannot create a temporary directory");
  }
  test_round_trip();
  test_malformed();
  test_fuzz_findings();
  /* clean up */
  DIR *d = opendir(dir);
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    unlink(tmp_path(e->d_name));
  }
  closedir(d);
  rmdir(dir);
  return done_testing();
}
