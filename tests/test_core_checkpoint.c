/* tests/test_core_checkpoint.c - PyTorch checkpoints against what torch.load returns (tests/gen_checkpoints.py):
 * both containers, every dtype, views and shared storages, Lightning/BLIP/SD wrappers, the allow-list,
 * malformed files, and every truncation and many corruptions of a small file (errors, never crashes). */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/error.h>
#include <mmpipe/log.h>
#include <mmpipe/plugin.h>
#include <mmpipe/safetensors.h>
#include <mmpipe/tensor.h>

#include "tap.h"

static char fix[512];
static mmp_backend_t *cpu;

static const char *fx(const char *name) {
  static char buf[4][700];
  static int k;
  k = (k + 1) % 4;
  snprintf(buf[k], sizeof buf[k], "%s/%s", fix, name);
  return buf[k];
}

static int hexval(char c) { return c <= '9' ? c - '0' : c - 'a' + 10; }

/* Compare tensor @name of @ck with the expected entry (dtype, shape, bytes). */
static int same_as_expected(mmp_checkpoint_t *ck, const char *name, json_t *e) {
  mmp_dtype_t dt;
  int nd;
  int64_t shape[MMP_MAX_DIMS];
  const char *stored;
  size_t nbytes;
  if (mmp_checkpoint_info(ck, name, &dt, &nd, shape, &stored, &nbytes) < 0) {
    diag("%s: %s", name, mmp_error_last());
    return 0;
  }
  if (strcmp(stored, json_string_value(json_object_get(e, "dtype"))) != 0) {
    diag("%s: dtype %s, want %s", name, stored, json_string_value(json_object_get(e, "dtype")));
    return 0;
  }
  json_t *sh = json_object_get(e, "shape");
  if ((size_t)nd != json_array_size(sh)) return 0;
  for (int i = 0; i < nd; i++)
    if (shape[i] != json_integer_value(json_array_get(sh, (size_t)i))) return 0;
  const char *hex = json_string_value(json_object_get(e, "hex"));
  size_t n = strlen(hex) / 2;
  if (n != nbytes) {
    diag("%s: %zu bytes, want %zu", name, nbytes, n);
    return 0;
  }
  unsigned char *want = malloc(n + 1);
  for (size_t i = 0; i < n; i++) want[i] = (unsigned char)(hexval(hex[2 * i]) * 16 + hexval(hex[2 * i + 1]));
  mmp_tensor_t *t = mmp_checkpoint_get(ck, name, cpu, MMP_DTYPE_COUNT);
  int good = t != NULL && mmp_tensor_is_contiguous(t);
  if (good && (strcmp(stored, "i16") == 0 || strcmp(stored, "i8") == 0)) {
    const int32_t *v = mmp_tensor_data(t);
    size_t es = stored[1] == '1' ? 2 : 1;
    for (size_t i = 0; i < n / es && good; i++) {
      int32_t w = es == 2 ? (int16_t)(want[2 * i] | (want[2 * i + 1] << 8)) : (int8_t)want[i];
      good = v[i] == w;
    }
  } else if (good) {
    unsigned char *got = malloc(n + 1);
    good = mmp_tensor_to_host(t, got, n) == 0 && memcmp(got, want, n) == 0;
    free(got);
  }
  if (!t) diag("%s: %s", name, mmp_error_last());
  mmp_tensor_unref(t);
  free(want);
  return good;
}

/* Every tensor of @file (under @prefix) equals expected/@file.json, and no other. */
static void check_expected(const char *file, const char *prefix, const char *skip, const char *expfile) {
  char jp[700];
  snprintf(jp, sizeof jp, "%s/expected/%s.json", fix, expfile ? expfile : file);
  json_error_t je;
  json_t *exp = json_load_file(jp, 0, &je);
  mmp_checkpoint_t *ck = mmp_checkpoint_open(fx(file), prefix, 0);
  if (!ok(exp && ck, "%s opens", file)) {
    diag("%s", ck ? je.text : mmp_error_last());
    json_decref(exp);
    mmp_checkpoint_close(ck);
    return;
  }
  size_t want = 0, bad = 0;
  const char *key;
  json_t *e;
  json_object_foreach(exp, key, e) {
    want++;
    if (!ok(same_as_expected(ck, key, e), "%s: %s equals torch.load's", file, key)) bad++;
  }
  size_t got = 0;
  for (size_t i = 0; i < mmp_checkpoint_count(ck); i++)
    if (!skip || strncmp(mmp_checkpoint_name(ck, i), skip, strlen(skip)) != 0) got++;
  is_int(got, want, "%s: %zu tensors, as torch.load gives", file, want);
  json_decref(exp);
  mmp_checkpoint_close(ck);
}

static const char *value_of(mmp_checkpoint_t *ck, const char *name) {
  for (size_t i = 0; i < mmp_checkpoint_value_count(ck); i++)
    if (strcmp(mmp_checkpoint_value_name(ck, i), name) == 0) return mmp_checkpoint_value_text(ck, i);
  return "(absent)";
}

/* The tensors under @prefix equal those of a safetensors file bit for bit. */
static void check_against_safetensors(const char *file, const char *prefix, const char *st_path) {
  mmp_checkpoint_t *ck = mmp_checkpoint_open(fx(file), prefix, 0);
  mmp_safetensors_t *st = mmp_safetensors_open(st_path);
  if (!ok(ck && st, "%s (%s) and %s open", file, prefix, st_path)) {
    diag("%s", mmp_error_last());
    mmp_checkpoint_close(ck);
    mmp_safetensors_close(st);
    return;
  }
  is_int(mmp_checkpoint_count(ck), mmp_safetensors_count(st), "%s: as many tensors under %s as in the safetensors", file,
         prefix);
  size_t bad = 0;
  for (size_t i = 0; i < mmp_safetensors_count(st); i++) {
    const char *nm = mmp_safetensors_name(st, i);
    mmp_tensor_t *a = mmp_safetensors_get(st, nm, cpu, MMP_DTYPE_COUNT);
    mmp_tensor_t *b = mmp_checkpoint_get(ck, nm, cpu, MMP_DTYPE_COUNT);
    if (!a || !b || a->dtype != b->dtype || !mmp_tensor_same_shape(a, b) ||
        memcmp(mmp_tensor_data(a), mmp_tensor_data(b), mmp_tensor_nbytes(a)) != 0) {
      if (bad++ < 3) diag("differs: %s (%s)", nm, b ? "" : mmp_error_last());
    }
    mmp_tensor_unref(a);
    mmp_tensor_unref(b);
  }
  is_int(bad, 0, "%s: every tensor under %s equals the safetensors one bit for bit", file, prefix);
  mmp_checkpoint_close(ck);
  mmp_safetensors_close(st);
}

static void expect_error(const char *file, const char *prefix, unsigned flags, const char *needle, const char *what) {
  mmp_checkpoint_t *ck = mmp_checkpoint_open(fx(file), prefix, flags);
  int good = !ck && mmp_error_code() == MMP_EDATA && strstr(mmp_error_last(), needle);
  if (!ok(good, "%s: %s", file, what)) diag("got: %s", ck ? "(opened)" : mmp_error_last());
  mmp_checkpoint_close(ck);
}

static unsigned char *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long l = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc((size_t)l);
  *n = fread(b, 1, (size_t)l, f);
  fclose(f);
  return b;
}

/* Every prefix of the file, and byte corruptions: an error or a valid
 * open, never a crash (the sanitizer builds run this too). */
static void check_mangled(const char *file) {
  size_t n;
  unsigned char *b = slurp(fx(file), &n);
  if (!ok(b != NULL, "%s read", file)) return;
  size_t opened = 0;
  for (size_t len = 0; len < n; len++) {
    unsigned char *c = malloc(len + 1);
    memcpy(c, b, len);
    mmp_checkpoint_t *ck = mmp_checkpoint_open_memory(c, len, "cut", NULL, 0);
    opened += ck != NULL;
    mmp_checkpoint_close(ck);
    free(c);
  }
  is_int(opened, 0, "%s: none of its %zu truncations opens", file, n);
  unsigned char *c = malloc(n);
  uint32_t x = 12345;
  size_t errs = 0, oks = 0;
  for (int round = 0; round < 3000; round++) {
    memcpy(c, b, n);
    for (int k = 0; k < 1 + round % 4; k++) {
      x = x * 1664525u + 1013904223u;
      size_t at = (x >> 8) % n;
      x = x * 1664525u + 1013904223u;
      c[at] = (unsigned char)(x >> 24);
    }
    mmp_checkpoint_t *ck = mmp_checkpoint_open_memory(c, n, "mangled", NULL, 0);
    if (ck) {
      for (size_t i = 0; i < mmp_checkpoint_count(ck); i++)
        mmp_tensor_unref(mmp_checkpoint_get(ck, mmp_checkpoint_name(ck, i), cpu, MMP_F32));
      oks++;
    } else {
      errs += mmp_error_code() < 0 && mmp_error_last()[0];
    }
    mmp_checkpoint_close(ck);
  }
  is_int(errs + oks, 3000, "%s: 3000 corruptions give %zu errors with a message and %zu opens, no crash", file, errs, oks);
  free(c);
  free(b);
}

/* A legacy file around @obj (an object pickle without storages). */
static mmp_checkpoint_t *open_pickle(const unsigned char *obj, size_t n, unsigned flags) {
  static const unsigned char head[] = {
      0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e, 0x80, 0x02, 0x4d,
      0xe9, 0x03, 0x2e, 0x80, 0x02, 0x7d, 0x58, 0x0d, 0x00, 0x00, 0x00, 'l',  'i',  't',  't',  'l',  'e',  '_',
      'e',  'n',  'd',  'i',  'a',  'n',  0x88, 0x73, 0x2e};
  static const unsigned char keys[] = {0x80, 0x02, ']', '.'};
  static unsigned char buf[8192];
  if (sizeof head + n + sizeof keys > sizeof buf) return NULL;
  memcpy(buf, head, sizeof head);
  memcpy(buf + sizeof head, obj, n);
  memcpy(buf + sizeof head + n, keys, sizeof keys);
  return mmp_checkpoint_open_memory(buf, sizeof head + n + sizeof keys, "made", NULL, flags);
}

static void check_abuse(void) {
  unsigned char p[2048];
  size_t n = 0;
  /* memo abuse: an index far past what was read */
  memcpy(p, "\x80\x02]r\xf0\xff\xff\xff.", 9);
  mmp_checkpoint_t *ck = open_pickle(p, 9, 0);
  ok(!ck && strstr(mmp_error_last(), "memo index 4294967280 out of range"), "a memo index past the input is refused");
  /* GET of an unset entry */
  ck = open_pickle((const unsigned char *)"\x80\x02h\x05.", 5, 0);
  ok(!ck && strstr(mmp_error_last(), "memo entry 5 is not set"), "a GET of an unset memo entry is refused");
  /* nested 300 deep */
  n = 0;
  p[n++] = 0x80, p[n++] = 2;
  for (int i = 0; i < 300; i++) p[n++] = ']';
  for (int i = 0; i < 299; i++) p[n++] = 'a';
  p[n++] = '.';
  ck = open_pickle(p, n, 0);
  ok(!ck && strstr(mmp_error_last(), "nested deeper than 200 levels"), "nesting deeper than the limit is an error");
  /* a list that contains itself: shown once */
  ck = open_pickle((const unsigned char *)"\x80\x02]q\x00(K\x07h\x00" "e.", 12, 0);
  ok(ck && strcmp(value_of(ck, "0"), "7") == 0 && strcmp(value_of(ck, "1"), "<recursive>") == 0,
     "a cyclic list is followed once");
  mmp_checkpoint_close(ck);
  /* a long that does not fit 64 bits, protocol 0 text opcodes, a bad protocol */
  ck = open_pickle((const unsigned char *)"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", 14, 0);
  ok(ck && strcmp(value_of(ck, ""), "<int of 9 bytes>") == 0, "a 9-byte long is kept by size");
  mmp_checkpoint_close(ck);
  ck = open_pickle((const unsigned char *)"\x80\x02I1\n.", 6, 0);
  ok(!ck && strstr(mmp_error_last(), "opcode not supported"), "protocol 0 text opcodes are refused");
  ck = open_pickle((const unsigned char *)"\x80\x09N.", 4, 0);
  ok(!ck && strstr(mmp_error_last(), "pickle protocol 9"), "protocol 9 is refused");
  /* builtins.eval is never called, even in a REDUCE, and strict mode names it */
  static const char ev[] = "\x80\x02" "cbuiltins\neval\nX\x03\x00\x00\x00" "1+1\x85R.";
  ck = open_pickle((const unsigned char *)ev, sizeof ev - 1, 0);
  ok(ck && strcmp(value_of(ck, ""), "<builtins.eval>") == 0, "builtins.eval('1+1') is an opaque value");
  mmp_checkpoint_close(ck);
  ck = open_pickle((const unsigned char *)ev, sizeof ev - 1, MMP_CKPT_STRICT);
  ok(!ck && strstr(mmp_error_last(), "global 'builtins.eval' is not on the allow-list") &&
         strstr(mmp_error_last(), "pickle offset 47"),
     "strict: builtins.eval refused with its offset");
}

int main(void) {
  const char *src = getenv("MMP_TEST_SRCDIR");
  snprintf(fix, sizeof fix, "%s/tests/fixtures/ckpt", src ? src : ".");
  mmp_log_set_level(MMP_LOG_ERROR);
  cpu = mmp_backend_get("cpu");

  /* containers, dtypes, views, shared storages, 0-dim and empty tensors */
  check_expected("plain.pt", NULL, NULL, NULL);
  check_expected("legacy.pt", NULL, NULL, NULL);
  check_expected("small.pt", NULL, NULL, NULL);
  check_expected("small_byteorder.pt", NULL, NULL, "small.pt");
  check_expected("lightning.ckpt", NULL, "state_dict.", NULL);

  mmp_checkpoint_t *ck = mmp_checkpoint_open(fx("plain.pt"), NULL, 0);
  is_str(mmp_checkpoint_format(ck), "zip", "plain.pt is the zip format");
  is_str(value_of(ck, "n_params"), "17", "plain values beside tensors: an int");
  is_str(value_of(ck, "name"), "'mixed'", "plain values beside tensors: a string");
  mmp_checkpoint_close(ck);
  ck = mmp_checkpoint_open(fx("legacy.pt"), NULL, 0);
  is_str(mmp_checkpoint_format(ck), "legacy", "legacy.pt is the legacy format");
  mmp_checkpoint_close(ck);

  /* a prefix selects a nested part and strips it */
  ck = mmp_checkpoint_open(fx("plain.pt"), "nested.a.", 0);
  ok(ck && mmp_checkpoint_count(ck) == 2 && strcmp(mmp_checkpoint_name(ck, 0), "0") == 0 &&
         strcmp(mmp_checkpoint_name(ck, 1), "1.0") == 0,
     "prefix nested.a. gives 0 and 1.0");
  mmp_checkpoint_close(ck);
  ck = mmp_checkpoint_open(fx("plain.pt"), "nope.", 0);
  ok(!ck && mmp_error_code() == MMP_ENOENT, "a prefix that selects nothing is MMP_ENOENT");

  /* zero-copy: an aligned, stored record is used in place */
  size_t n;
  unsigned char *buf = slurp(fx("plain.pt"), &n);
  ck = mmp_checkpoint_open_memory(buf, n, "plain.pt", NULL, 0);
  mmp_tensor_t *t = ck ? mmp_checkpoint_get(ck, "w_f32", cpu, MMP_F32) : NULL;
  const unsigned char *p = t ? mmp_tensor_data(t) : NULL;
  ok(p && p >= buf && p < buf + n, "w_f32 is a view of the file's bytes (no copy)");
  mmp_tensor_t *tt = ck ? mmp_checkpoint_get(ck, "w_t", cpu, MMP_F32) : NULL;
  ok(tt && mmp_tensor_is_contiguous(tt) && tt->shape[0] == 6 && mmp_tensor_get(tt, (int64_t[]){2, 1}) ==
                                                                         mmp_tensor_get(t, (int64_t[]){1, 2}),
     "w_t (a transposed view of the same storage) is materialised contiguous");
  mmp_tensor_unref(tt);
  mmp_checkpoint_close(ck);
  ok(t && mmp_tensor_get(t, (int64_t[]){0, 0}) == mmp_tensor_get(t, (int64_t[]){0, 0}),
     "the tensor outlives the checkpoint");
  mmp_tensor_unref(t);
  free(buf);

  ok(mmp_checkpoint_sniff(fx("plain.pt")) && mmp_checkpoint_sniff(fx("legacy.pt")) &&
         mmp_checkpoint_sniff(fx("sd.ckpt")),
     "sniff: zip and legacy files are checkpoints");
  {
    char sp[700];
    snprintf(sp, sizeof sp, "%s/../sd/pipe/unet/diffusion_pytorch_model.safetensors", fix);
    const char *tmp = getenv("TMPDIR");
    char fake[700];
    snprintf(fake, sizeof fake, "%s/ckpt_sniff_%d.safetensors", tmp ? tmp : "/tmp", (int)getpid());
    FILE *f = fopen(fake, "wb");
    fwrite("\x80\x02\x00\x00\x00\x00\x00\x00{}", 1, 10, f); /* a header of 640 bytes begins 0x80 0x02 */
    fclose(f);
    ok(!mmp_checkpoint_sniff(sp) && !mmp_checkpoint_sniff(fake), "sniff: safetensors files are not");
    unlink(fake);
  }

  /* Lightning, BLIP and SD wrappers */
  ck = mmp_checkpoint_open(fx("lightning.ckpt"), NULL, 0);
  ok(ck != NULL, "lightning.ckpt opens whole (hyper-parameters of unknown classes are opaque)");
  is_str(value_of(ck, "epoch"), "3", "epoch");
  is_str(value_of(ck, "global_step"), "120", "global_step");
  is_str(value_of(ck, "pytorch-lightning_version"), "'1.7.7'", "pytorch-lightning_version");
  is_str(value_of(ck, "hyper_parameters"), "<pytorch_lightning.utilities.parsing.AttributeDict>",
         "hyper_parameters: an opaque object named by its class");
  is_str(value_of(ck, "optimizer_states.0.param_groups.0.betas"), "(0.9, 0.999)",
         "a tuple of floats");
  mmp_checkpoint_close(ck);
  char stp[700];
  snprintf(stp, sizeof stp, "%s/../sd/pipe/unet/diffusion_pytorch_model.safetensors", fix);
  check_against_safetensors("lightning.ckpt", "state_dict.unet.", stp);
  snprintf(stp, sizeof stp, "%s/../sd/pipe/text_encoder/model.safetensors", fix);
  check_against_safetensors("blip.pth", "model.text_encoder.", stp);
  ck = mmp_checkpoint_open(fx("sd.ckpt"), "state_dict.", 0);
  ok(ck && mmp_checkpoint_count(ck) > 0 && strcmp(value_of(ck, "global_step"), "(absent)") == 0 &&
         mmp_checkpoint_info(ck, "first_stage_model.encoder.conv_in.weight", NULL, NULL, NULL, NULL, NULL) == 0,
     "sd.ckpt: state_dict. gives the CompVis names (and no values outside it)");
  if (!ck) diag("%s", mmp_error_last());
  mmp_checkpoint_close(ck);

  /* the allow-list */
  ck = mmp_checkpoint_open(fx("bad_global.pt"), NULL, 0);
  ok(ck && mmp_checkpoint_count(ck) == 1 && strcmp(value_of(ck, "x"), "<posix.system>") == 0,
     "a forbidden global beside the tensors is an opaque value, never called");
  mmp_checkpoint_close(ck);
  expect_error("bad_global.pt", NULL, MMP_CKPT_STRICT, "global 'posix.system' is not on the allow-list",
               "strict: the forbidden global is refused by name");
  expect_error("bad_global.pt", NULL, MMP_CKPT_STRICT, "pickle offset", "strict: ... and position");
  expect_error("bad_depends.pt", NULL, 0, "'__main__.Holder'", "a tensor inside an unknown class: named");
  ck = mmp_checkpoint_open(fx("bad_depends.pt"), "w", 0);
  ok(ck && mmp_checkpoint_count(ck) == 1, "... but the tensor beside it loads");
  mmp_checkpoint_close(ck);

  /* malformed files */
  expect_error("bad_truncated.pt", NULL, 0, "zip", "a truncated zip");
  expect_error("bad_missing_record.pt", NULL, 0, "has no record", "a storage without a record");
  expect_error("bad_byteorder.pt", NULL, 0, "little-endian", "a big-endian file");
  expect_error("bad_short_record.pt", NULL, 0, "the pickle declares", "a record shorter than declared");
  expect_error("bad_pickle.pt", NULL, 0, "truncated", "a corrupt pickle");
  expect_error("bad_view.pt", NULL, 0, "reach element", "a view past its storage");
  check_abuse();
  check_mangled("small.pt");
  check_mangled("legacy.pt");
  return done_testing();
}
