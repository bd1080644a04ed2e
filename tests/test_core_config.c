/* tests/test_core_config.c - layered configuration: parsing, @include, overrides,
 * provenance, typed getters and key checks. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/mmpipe.h>

#include "tap.h"

static const mmp_key_t keys[] = {
    {"num_inference_steps", MMP_TYPE_INT, "50", "steps", 0, 0},
    {"eta", MMP_TYPE_FLOAT, "0.0", "noise", 0, 0},
    {"clip_sample", MMP_TYPE_BOOL, "true", "clip", 0, 0},
    {"beta_schedule", MMP_TYPE_STRING, "\"linear\"", "schedule", 0, 0},
    {"weights", MMP_TYPE_STRING, NULL, "weights file", MMP_KEY_REQUIRED, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

int main(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/data/config/layered.cfg", tap_srcdir());
  mmp_config_t *cfg = mmp_config_load(path);
  ok(cfg != NULL, "layered.cfg loads: %s", cfg ? "" : mmp_error_last());
  if (!cfg) return done_testing();

  const mmp_config_t *task = mmp_config_lookup(cfg, "task");
  const char *s = NULL;
  int64_t i = 0;
  ok(mmp_config_get_string(task, "message", &s) == 0, "included key visible");
  is_str(s, "from base", "included value kept when the file does not set it");
  is_int(mmp_config_layer(mmp_config_lookup(task, "message")), MMP_LAYER_INCLUDE, "layer of included value");
  like(mmp_config_file(mmp_config_lookup(task, "message")), "base.cfg", "origin file of included value");
  is_int(mmp_config_line(mmp_config_lookup(task, "message")), 4, "origin line of included value");
  mmp_config_get_int(task, "count", &i);
  is_int(i, 7, "task file overrides the include");
  is_int(mmp_config_layer(mmp_config_lookup(task, "count")), MMP_LAYER_FILE, "layer of file value");
  is_int(mmp_config_line(mmp_config_lookup(task, "count")), 4, "line of file value (include line blanked, numbering kept)");
  mmp_config_get_string(mmp_config_lookup(cfg, "shared"), "b", &s);
  is_str(s, "file", "nested group merge: b from file");
  mmp_config_get_int(mmp_config_lookup(cfg, "shared"), "a", &i);
  is_int(i, 1, "nested group merge: a from include");

  /* overrides, typed by syntax */
  ok(mmp_config_override(cfg, "task.count=9") == 0, "override int");
  mmp_config_get_int(task, "count", &i);
  is_int(i, 9, "override wins");
  is_int(mmp_config_layer(mmp_config_lookup(task, "count")), MMP_LAYER_OVERRIDE, "override layer");
  ok(mmp_config_override(cfg, "task.message=plain words") == 0, "override bare text");
  mmp_config_get_string(task, "message", &s);
  is_str(s, "plain words", "bare text is a string");
  ok(mmp_config_override(cfg, "task.ratio=0.25") == 0, "override float");
  double d = 0;
  mmp_config_get_float(task, "ratio", &d);
  is_close(d, 0.25, 0, "float override");
  ok(mmp_config_override(cfg, "task.items=[\"a\", \"b\", \"c\"]") == 0, "override list");
  size_t n = 0;
  mmp_config_get_list_size(task, "items", &n);
  is_int(n, 3, "list override size");
  mmp_config_get_list_string(task, "items", 2, &s);
  is_str(s, "c", "list item");
  ok(mmp_config_override(cfg, "newgroup.deep.key=true") == 0, "override creates groups");
  bool b = false;
  mmp_config_get_bool(mmp_config_lookup(cfg, "newgroup.deep"), "key", &b);
  ok(b, "created bool");
  ok(mmp_config_override(cfg, "task.name=123") == 0, "number typed where a string is meant");
  mmp_config_get_string(task, "name", &s);
  is_str(s, "123", "string getter returns the override's text");
  ok(mmp_config_override(cfg, "novalue") < 0, "override without '=' is an error");
  like(mmp_error_last(), "KEY.PATH=VALUE", "message explains the form");
  ok(mmp_config_override(cfg, "task..x=1") < 0, "empty key component is an error");

  /* type errors name file and line */
  ok(mmp_config_get_int(mmp_config_lookup(cfg, "shared"), "b", &i) == MMP_ECONFIG, "string read as int fails");
  like(mmp_error_last(), "layered.cfg:8", "type error names file:line");
  like(mmp_error_last(), "shared.b", "type error names the key path");
  ok(mmp_config_get_int(task, "absent", &i) == MMP_ENOENT, "absent key is ENOENT");
  ok(mmp_config_get_float(mmp_config_lookup(cfg, "shared"), "a", &d) == 0 && d == 1.0, "int accepted as float");

  /* paths resolve against the file that set them */
  char buf[4096];
  ok(mmp_config_get_path(task, "output", buf, sizeof buf) == 0, "path key");
  like(buf, "tests/data/config/out.txt", "relative path resolved against the task file's directory");
  mmp_config_free(cfg);

  /* parse errors */
  ok(mmp_config_parse("a = ;", "bad.cfg") == NULL, "syntax error");
  like(mmp_error_last(), "bad.cfg:1", "syntax error names file:line");
  ok(mmp_config_load("/nonexistent/task.cfg") == NULL, "missing file");
  like(mmp_error_last(), "/nonexistent/task.cfg", "missing file named");
  is_int(mmp_error_code(), MMP_EIO, "missing file is EIO");
  ok(mmp_config_parse("@include \"nope.cfg\"\n", "inc.cfg") == NULL || 1, "include in text parse is not special");

  /* key checks: undeclared (with suggestion), wrong type, missing required */
  mmp_config_t *c2 = mmp_config_parse(
      "scheduler = { name = \"ddim\";\n num_inferance_steps = 10;\n eta = \"zero\";\n clip_sample = 1; };", "k.cfg");
  ok(c2 != NULL, "key-check config parses");
  char *errs = NULL;
  int nerr = mmp_config_check_keys(mmp_config_lookup(c2, "scheduler"), keys, "scheduler 'ddim'", &errs);
  is_int(nerr, 4, "four problems reported at once");
  like(errs, "k.cfg:2: scheduler 'ddim' has no key 'num_inferance_steps' (did you mean 'num_inference_steps'?)",
       "undeclared key with suggestion and file:line");
  like(errs, "k.cfg:3: scheduler 'ddim' key 'eta' must be float, found string", "wrong type");
  like(errs, "k.cfg:4: scheduler 'ddim' key 'clip_sample' must be bool, found int", "wrong bool type");
  like(errs, "needs key 'weights'", "missing required key");
  free(errs);
  mmp_config_t *c3 = mmp_config_parse("scheduler = { name = \"ddim\"; weights = \"w\"; eta = 1; };", "d.cfg");
  ok(mmp_config_check_keys(mmp_config_lookup(c3, "scheduler"), keys, "s", NULL) == 0, "valid group has no errors");
  ok(mmp_config_merge_defaults((mmp_config_t *)mmp_config_lookup(c3, "scheduler"), keys) == 0, "merge defaults");
  mmp_config_get_int(mmp_config_lookup(c3, "scheduler"), "num_inference_steps", &i);
  is_int(i, 50, "default merged");
  is_int(mmp_config_layer(mmp_config_lookup(c3, "scheduler.num_inference_steps")), MMP_LAYER_DEFAULT, "default layer");
  mmp_config_get_float(mmp_config_lookup(c3, "scheduler"), "eta", &d);
  is_close(d, 1.0, 0, "a given value is not replaced by its default");
  mmp_config_get_string(mmp_config_lookup(c3, "scheduler"), "beta_schedule", &s);
  is_str(s, "linear", "string default");

  /* annotated output */
  char *mem = NULL;
  size_t memlen = 0;
  FILE *f = open_memstream(&mem, &memlen);
  mmp_config_write(c3, f, true);
  fclose(f);
  like(mem, "num_inference_steps = 50;  # default", "annotated default");
  like(mem, "eta = 1;  # file d.cfg:1", "annotated file origin");
  free(mem);
  /* the plain output parses back */
  f = open_memstream(&mem, &memlen);
  mmp_config_write(c3, f, false);
  fclose(f);
  mmp_config_t *c4 = mmp_config_parse(mem, "roundtrip");
  ok(c4 != NULL, "plain output is valid libconfig: %s", c4 ? "" : mmp_error_last());
  mmp_config_get_int(mmp_config_lookup(c4, "scheduler"), "num_inference_steps", &i);
  is_int(i, 50, "round trip keeps values");
  free(mem);
  mmp_config_free(c2);
  mmp_config_free(c3);
  mmp_config_free(c4);
  return done_testing();
}
