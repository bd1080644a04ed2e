/* tests/test_plugin_train.c - the train task: Stable Diffusion fine-tuning against PyTorch
 * (tests/gen_train_sd.py), checkpoint + resume bit for bit, export, config errors. */
#include <dirent.h>
#include <sys/stat.h>

#include "sd_test.h"
#include "train_test.h"

/* The settings of gen_train_sd.py; %1$s the fixture root, %2$s the output
 * folder, %3$s extra task keys (ACC_CLIP and more), %4$s extra unet keys. */
static const char *const CFG =
    "task = { name = \"train\"; data_dir = \"%1$s/train/data\";\n"
    "  lr = 1e-3; weight_decay = 1e-2; eps = 1e-5;\n"
    "  output_dir = \"%2$s\"; %3$s };\n"
    "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"%1$s/sd/pipe/tokenizer\"; };\n"
    "text_encoder = { name = \"clip_text\"; model_dir = \"%1$s/sd/pipe\"; trainable = true; };\n"
    "unet = { name = \"unet2d_condition\"; model_dir = \"%1$s/sd/pipe\"; trainable = true; %4$s };\n"
    "vae = { name = \"vae\"; model_dir = \"%1$s/sd/pipe\"; };\n"
    "scheduler = { name = \"ddpm\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\"; };\n";

/* the rest of gen_train_sd.py's settings, and variations */
#define FREEZE "seed = 7; freeze = [\"text_encoder.*\"]; train = [\"*.token_embedding.*\"]; "
#define REF "batch_size = 2; shuffle = false; warmup_steps = 1; max_steps = 3; " FREEZE
#define ERR_BASE "shuffle = false; warmup_steps = 1; max_steps = 3; "

static char tmpdir[4200];

/* gen_train_sd.py's accumulation and clipping */
#define ACC_CLIP "grad_accum = 2; clip_norm = 1.0; "

static int run_keys(const char *out, const char *task, const char *unet) {
  char fx[4096], text[16384];
  snprintf(fx, sizeof fx, "%s/tests/fixtures", tap_srcdir());
  snprintf(text, sizeof text, CFG, fx, out, task, unet);
  return sd_run_task(text, "train-test", NULL);
}

static int run_cfg(const char *out, const char *extra) {
  char keys[8192];
  snprintf(keys, sizeof keys, ACC_CLIP "%s", extra);
  return run_keys(out, keys, "");
}

/* The metrics lines with a "loss": losses[i], lrs[i], norms[i]; returns
 * how many, and the lines themselves concatenated into @all. */
static int read_metrics(const char *out, double *losses, double *lrs, double *norms, int max, char *all, size_t alen) {
  char p[4400];
  snprintf(p, sizeof p, "%s/metrics.jsonl", out);
  FILE *f = fopen(p, "r");
  if (!f) return -1;
  char line[1024];
  int n = 0;
  if (all) all[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    const char *l = strstr(line, "\"loss\": "), *r = strstr(line, "\"lr\": "), *g = strstr(line, "\"grad_norm\": ");
    if (!l || n >= max) continue;
    losses[n] = strtod(l + 8, NULL);
    lrs[n] = r ? strtod(r + 6, NULL) : NAN;
    norms[n] = g ? strtod(g + 13, NULL) : NAN;
    n++;
    /* everything but the timing */
    if (all) {
      char *e = strstr(line, ", \"elapsed_s\"");
      if (e) *e = '\0';
      strncat(all, line, alen - strlen(all) - 1);
      strncat(all, "\n", alen - strlen(all) - 1);
    }
  }
  fclose(f);
  return n;
}

/* files of @dir whose name holds @part */
static int count_named(const char *dir, const char *part) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, part)) n++;
  if (d) closedir(d);
  return n;
}

static int count_tmp(const char *dir) { return count_named(dir, "tmp"); }

static void test_reference(void) {
  char out[4400], p[4600];
  snprintf(out, sizeof out, "%s/ref", tmpdir);
  int rc = run_cfg(out, REF);
  if (!ok(rc == 0, "3 optimizer steps of the tiny SD model")) diag("%s", mmp_error_last());
  char fxp[4200];
  snprintf(fxp, sizeof fxp, "%s/tests/fixtures/train/train_sd.safetensors", tap_srcdir());
  mmp_tensormap_t *fx = train_test_load(fxp);
  if (!fx) return;
  double losses[8], lrs[8], norms[8];
  int n = read_metrics(out, losses, lrs, norms, 8, NULL, 0);
  mmp_tensor_t *wl = mmp_tensormap_get(fx, "loss"), *wr = mmp_tensormap_get(fx, "lr"),
               *wn = mmp_tensormap_get(fx, "grad_norm");
  ok(n == 3 && wl && wl->shape[0] == 3, "metrics.jsonl has a line per step (%d)", n);
  double el = 0, er = 0, en = 0;
  for (int64_t i = 0; i < 3 && i < n && wl && wr && wn; i++) {
    double a = mmp_tensor_get(wl, &i), b = mmp_tensor_get(wr, &i), c = mmp_tensor_get(wn, &i);
    el = fmax(el, fabs(losses[i] - a) / fabs(a));
    er = fmax(er, b == 0 ? fabs(lrs[i]) : fabs(lrs[i] - b) / b);
    en = fmax(en, fabs(norms[i] - c) / c);
  }
  ok(n == 3 && el <= SD_TOL, "the loss of each step equals diffusers' within 1e-4 relative (%.3g)", el);
  ok(n == 3 && er <= 1e-12, "the learning rates equal the schedule's (%.3g)", er);
  ok(n == 3 && en <= SD_TOL, "the gradient norms before clipping equal torch's (%.3g)", en);
  /* the final weights, from the export (diffusers' / transformers' names) */
  snprintf(p, sizeof p, "%s/export/unet/diffusion_pytorch_model.safetensors", out);
  mmp_tensormap_t *eu = train_test_load(p);
  snprintf(p, sizeof p, "%s/export/text_encoder/model.safetensors", out);
  mmp_tensormap_t *et = train_test_load(p);
  ok(eu && et, "export/unet and export/text_encoder written");
  int nparams = 0;
  double worst = 0;
  for (size_t i = 0; eu && et && i < mmp_tensormap_size(fx); i++) {
    const char *name = mmp_tensormap_name(fx, i);
    if (strncmp(name, "param.", 6) != 0) continue;
    const char *pn = name + 6;
    mmp_tensor_t *got = strncmp(pn, "unet.", 5) == 0 ? mmp_tensormap_get(eu, pn + 5) : mmp_tensormap_get(et, pn + 13);
    mmp_tensor_t *g = NULL;
    mmp_tensor_t *want = mmp_tensormap_at(fx, i);
    if (got && mmp_tensor_numel(got) == mmp_tensor_numel(want)) g = mmp_reshape(got, want->ndim, want->shape);
    char what[300];
    snprintf(what, sizeof what, "%s after 3 steps", pn);
    sd_check(g, want, what);
    double r = sd_relerr(g, want);
    if (r > worst) worst = r;
    mmp_tensor_unref(g);
    nparams++;
  }
  ok(nparams == 10, "%d parameters compared", nparams);
  diag("largest relative error of a parameter: %.3g", worst);
  /* the frozen part of the text encoder is exported unchanged */
  mmp_tensormap_t *orig = sd_load("pipe/text_encoder/model.safetensors");
  const char *frozen = "text_model.final_layer_norm.weight";
  double fr = orig && et ? sd_relerr(mmp_tensormap_get(et, frozen), mmp_tensormap_get(orig, frozen)) : -1;
  ok(fr == 0, "a frozen parameter is exported unchanged (%g)", fr);
  mmp_tensormap_free(orig);
  snprintf(p, sizeof p, "%s/checkpoint.safetensors", out);
  mmp_safetensors_t *st = mmp_safetensors_open(p);
  const char *step = st ? mmp_safetensors_metadata(st, "step") : NULL;
  ok(step && strcmp(step, "3") == 0, "the final checkpoint is at step 3 (%s)", step ? step : "none");
  mmp_safetensors_close(st);
  ok(count_tmp(out) == 0, "no temporary file left in the output folder");
  snprintf(p, sizeof p, "%s/loss.png", out);
  struct stat sb;
  ok(stat(p, &sb) == 0 && sb.st_size > 100, "loss.png written");
  mmp_tensormap_free(eu);
  mmp_tensormap_free(et);
  mmp_tensormap_free(fx);
}

/* 4 steps at once vs 2 steps, then a resume for 2 more: the same metrics
 * (losses, rates, norms: all printed to 9 digits) and bit-identical
 * checkpoints (weights, moments, step counts, data order, generators).
 * Shuffled, so the data generator and an epoch boundary are crossed. */
static void test_resume(void) {
  char a[4400], b[4400], extra[4800];
  snprintf(a, sizeof a, "%s/a", tmpdir);
  snprintf(b, sizeof b, "%s/b", tmpdir);
#define RESUME_KEYS "batch_size = 2; max_steps = 4; shuffle = true; warmup_steps = 2; checkpoint_every = 1; "
  static const char *const common = RESUME_KEYS FREEZE;
  int rc = run_cfg(a, common);
  if (!ok(rc == 0, "4 steps in one run")) diag("%s", mmp_error_last());
  snprintf(extra, sizeof extra, "%s run_steps = 2;", common);
  rc = run_cfg(b, extra);
  if (!ok(rc == 0, "2 steps (run_steps = 2)")) diag("%s", mmp_error_last());
  char p[4600];
  snprintf(p, sizeof p, "%s/export", b);
  struct stat sb;
  ok(stat(p, &sb) == 0, "run_steps stops with an export as well");
  /* a run that died after its checkpoint left lines of later steps: the resume drops them */
  snprintf(p, sizeof p, "%s/metrics.jsonl", b);
  FILE *mf = fopen(p, "a");
  if (mf) {
    fputs("{\"step\": 3, \"epoch\": 1, \"loss\": 99, \"lr\": 0}\n", mf);
    fclose(mf);
  }
  snprintf(extra, sizeof extra, "%s resume = \"%s/checkpoint.safetensors\";", common, b);
  rc = run_cfg(b, extra);
  if (!ok(rc == 0, "resumed for the 2 remaining steps")) diag("%s", mmp_error_last());
  static char ma[8192], mb[8192];
  double l[8], r[8], g[8];
  int na = read_metrics(a, l, r, g, 8, ma, sizeof ma), nb = read_metrics(b, l, r, g, 8, mb, sizeof mb);
  ok(na == 4 && nb == 4 && strcmp(ma, mb) == 0, "the same metrics (%d and %d lines)", na, nb);
  if (strcmp(ma, mb) != 0) diag("one run:\n%s\nresumed:\n%s", ma, mb);
  char why[700];
  bool same = same_run_files(a, b, "checkpoint.safetensors", why, sizeof why);
  ok(same, "bit-identical checkpoints after 4 steps%s%s", same ? "" : ": ", why);
  same = same_run_files(a, b, "export/unet/diffusion_pytorch_model.safetensors", why, sizeof why);
  ok(same, "bit-identical exported UNets%s%s", same ? "" : ": ", why);
  /* a resume with other settings is refused, naming the key */
  snprintf(extra, sizeof extra, RESUME_KEYS "seed = 8; freeze = [\"text_encoder.*\"]; train = [\"*.token_embedding.*\"]; "
           "resume = \"%s/checkpoint.safetensors\";", b);
  rc = run_cfg(b, extra);
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "seed"), "resume with another seed: %s", mmp_error_last());
  snprintf(extra, sizeof extra, "%s resume = \"%s/metrics.jsonl\";", common, b);
  rc = run_cfg(b, extra);
  ok(rc < 0, "resume from a file that is no checkpoint: %s", mmp_error_last());
}

/* optimizer_in_backward = true (each parameter's AdamW update from the grad-ready hook, its
 * gradient freed at once) equals the step after the backward bit for bit: 4 shuffled steps
 * with gradient checkpointing on (regions replayed in the backward read weights whose
 * gradients are not final yet), the text encoder's token table trained too; then 2 steps in
 * the backward resumed for 2 more without, and 2 without resumed with: the same bits again. */
static void test_in_backward(void) {
  char a[4400], b[4400], c[4400], d[4400], e[4400], extra[4800];
  snprintf(a, sizeof a, "%s/ib-a", tmpdir);
  snprintf(b, sizeof b, "%s/ib-b", tmpdir);
  snprintf(c, sizeof c, "%s/ib-c", tmpdir);
  snprintf(d, sizeof d, "%s/ib-d", tmpdir);
  snprintf(e, sizeof e, "%s/ib-e", tmpdir);
#define IB_KEYS "batch_size = 2; max_steps = 4; shuffle = true; warmup_steps = 2; checkpoint_every = 1; " FREEZE
#define CKPT "gradient_checkpointing = true;"
  int rc = run_keys(a, IB_KEYS, CKPT);
  if (!ok(rc == 0, "4 steps, the optimizer after the backward")) diag("%s", mmp_error_last());
  rc = run_keys(b, IB_KEYS "optimizer_in_backward = true;", CKPT);
  if (!ok(rc == 0, "4 steps, the optimizer in the backward")) diag("%s", mmp_error_last());
  rc = run_keys(c, IB_KEYS "optimizer_in_backward = true; run_steps = 2;", CKPT);
  snprintf(extra, sizeof extra, IB_KEYS "resume = \"%s/checkpoint.safetensors\";", c);
  if (rc == 0) rc = run_keys(c, extra, CKPT);
  if (!ok(rc == 0, "2 steps in the backward, resumed for 2 after it")) diag("%s", mmp_error_last());
  rc = run_keys(d, IB_KEYS "run_steps = 2;", CKPT);
  snprintf(extra, sizeof extra, IB_KEYS "optimizer_in_backward = true; resume = \"%s/checkpoint.safetensors\";", d);
  if (rc == 0) rc = run_keys(d, extra, CKPT);
  if (!ok(rc == 0, "2 steps after the backward, resumed for 2 in it")) diag("%s", mmp_error_last());
#define DISK "optimizer_in_backward = true; optimizer_state_on_disk = true; "
  rc = run_keys(e, IB_KEYS DISK "run_steps = 2;", CKPT);
  snprintf(extra, sizeof extra, IB_KEYS DISK "resume = \"%s/checkpoint.safetensors\";", e);
  if (rc == 0) rc = run_keys(e, extra, CKPT);
  if (!ok(rc == 0, "2 steps with the moments in a file, resumed for 2 (restored into the file)"))
    diag("%s", mmp_error_last());
  ok(count_named(e, "adamw-moments") == 0, "the moments' file is gone");
  static char ma[8192], mo[8192];
  double l[8], r[8], g[8];
  int na = read_metrics(a, l, r, g, 8, ma, sizeof ma);
  const char *runs[4] = {b, c, d, e};
  const char *what[4] = {"in the backward", "in, then after", "after, then in", "moments in a file"};
  for (int k = 0; k < 4; k++) {
    int no = read_metrics(runs[k], l, r, g, 8, mo, sizeof mo);
    ok(na == 4 && no == 4 && strcmp(ma, mo) == 0, "%s: the same losses and rates (%d and %d lines)", what[k], na, no);
    if (strcmp(ma, mo) != 0) diag("after:\n%s\n%s:\n%s", ma, what[k], mo);
    char why[700];
    bool same = same_run_files(a, runs[k], "checkpoint.safetensors", why, sizeof why);
    ok(same, "%s: bit-identical checkpoints (weights, moments, step counts)%s%s", what[k], same ? "" : ": ", why);
  }
}

static void test_errors(void) {
  char out[4400];
  snprintf(out, sizeof out, "%s/err", tmpdir);
  int rc = run_cfg(out, REF "mode = \"nope\";");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "mode"), "unknown mode: %s", mmp_error_last());
  rc = run_cfg(out, ERR_BASE "batch_size = 2; freeze = [\"*\"];");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "nothing to train"), "everything frozen: %s", mmp_error_last());
  rc = run_cfg(out, ERR_BASE FREEZE "batch_size = 8;");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "no optimizer step"), "too few items: %s", mmp_error_last());
  rc = run_cfg(out, REF "betas = [0.9];");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "betas"), "betas: %s", mmp_error_last());
  /* where the step in the backward cannot be exact: refused with the key's file and line */
  rc = run_keys(out, ERR_BASE FREEZE "batch_size = 1; grad_accum = 2; optimizer_in_backward = true;", "");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "train-test:3: optimizer_in_backward") &&
     strstr(mmp_error_last(), "grad_accum"), "in the backward with grad_accum 2: %s", mmp_error_last());
  rc = run_keys(out, ERR_BASE FREEZE "batch_size = 2; clip_norm = 1.0; optimizer_in_backward = true;", "");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "train-test:3: optimizer_in_backward") &&
     strstr(mmp_error_last(), "clip_norm"), "in the backward with clip_norm: %s", mmp_error_last());
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s", "/tmp/mmp-train-XXXXXX");
  const char *tmp = getenv("TMPDIR");
  if (tmp && *tmp) snprintf(tmpdir, sizeof tmpdir, "%s/mmp-train-XXXXXX", tmp);
  if (!mkdtemp(tmpdir)) {
    diag("mkdtemp failed");
    return 1;
  }
  test_reference();
  test_resume();
  test_in_backward();
  test_errors();
  rm_rf(tmpdir);
  return done_testing();
}
