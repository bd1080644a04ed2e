/* tests/test_plugin_train_arldm.c - the train task's mode = "arldm": the tiny AR-LDM
 * (tests/gen_arldm.py) trained on the tiny story file (tests/gen_arldm_trainrun.py)
 * read by the pororo plugin; checkpoint + resume bit for bit, validation per epoch,
 * AR-LDM's freeze_* as patterns, the export read by the story task. */
#include <sys/stat.h>

#include "sd_test.h"
#include "train_test.h"

/* %1$s the fixture folder tests/fixtures/arldm, %2$s the output folder, %3$s extra task keys,
 * %4$s extra mm_encoder keys */
static const char *const CFG =
    "task = { name = \"train\"; mode = \"arldm\"; arldm = \"%1$s/arldm_tiny.safetensors\";\n"
    "  output_dir = \"%2$s\"; %3$s };\n"
    "dataset = { name = \"pororo\"; hdf5_file = \"%1$s/story_train.h5\"; split = \"train\"; task = \"visualization\";\n"
    "  max_length = 8; image_size = 32; new_tokens = [\"pororo\", \"loopy\", \"eddy\", \"crong\"];\n"
    "  clip_vocab = \"%1$s/tok/vocab.json\"; clip_merges = \"%1$s/tok/merges.txt\"; bert_vocab = \"%1$s/tok/vocab.txt\"; };\n"
    "val_dataset = { name = \"pororo\"; hdf5_file = \"%1$s/story_train.h5\"; split = \"val\"; task = \"visualization\";\n"
    "  max_length = 8; image_size = 32; new_tokens = [\"pororo\", \"loopy\", \"eddy\", \"crong\"];\n"
    "  clip_vocab = \"%1$s/tok/vocab.json\"; clip_merges = \"%1$s/tok/merges.txt\"; bert_vocab = \"%1$s/tok/vocab.txt\"; };\n"
    "text_encoder = { name = \"clip_text\"; config = \"%1$s/text_encoder/config.json\"; weights = \"%1$s/arldm_tiny.safetensors\";"
    " weights_prefix = \"text_encoder.\"; trainable = true; };\n"
    "mm_encoder = { name = \"blip\"; config = \"%1$s/med_config.json\"; weights = \"%1$s/arldm_tiny.safetensors\";"
    " weights_prefix = \"mm_encoder.\"; num_heads = 4; enc_token_id = 51; %4$s };\n"
    "unet = { name = \"unet2d_condition\"; config = \"%1$s/unet/config.json\"; weights = \"%1$s/arldm_tiny.safetensors\";"
    " weights_prefix = \"unet.\"; trainable = true; };\n"
    "vae = { name = \"vae\"; config = \"%1$s/vae/config.json\"; weights = \"%1$s/arldm_tiny.safetensors\"; weights_prefix = \"vae.\"; };\n"
    "scheduler = { name = \"ddpm\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
    " num_train_timesteps = 1000; };\n";

/* AR-LDM's freeze_clip and freeze_blip (ARLDM.__init__) as patterns */
#define FREEZE_CB "freeze = [\"text_encoder.*\", \"mm_encoder.*\"]; " \
                  "train = [\"text_encoder.text_model.embeddings.token_embedding.*\", " \
                  "\"mm_encoder.text_encoder.embeddings.word_embeddings.*\"]; "

static char tmpdir[4200];

static const char *plugin_dir(void) {
  static char d[4200];
  const char *b = getenv("MMP_TEST_BUILDDIR");
  snprintf(d, sizeof d, "%s/plugins/datasets/.libs", b ? b : ".");
  return d;
}

static const char *fxdir(void) {
  static char d[4200];
  snprintf(d, sizeof d, "%s/tests/fixtures/arldm", tap_srcdir());
  return d;
}

static int run_cfg(const char *out, const char *extra, const char *blip) {
  static char text[20000];
  snprintf(text, sizeof text, CFG, fxdir(), out, extra, blip);
  return sd_run_task(text, "train-arldm-test", plugin_dir());
}

/* the metrics lines, the timing cut off */
static int read_metrics(const char *out, char *all, size_t alen, int *nval) {
  char p[4400], line[1024];
  snprintf(p, sizeof p, "%s/metrics.jsonl", out);
  FILE *f = fopen(p, "r");
  int n = 0;
  all[0] = '\0';
  *nval = 0;
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    if (strstr(line, "\"loss\": ")) n++;
    if (strstr(line, "\"val_loss\": ")) (*nval)++;
    char *e = strstr(line, ", \"elapsed_s\"");
    if (e) strcpy(e, "\n");
    strncat(all, line, alen - strlen(all) - 1);
  }
  fclose(f);
  return n;
}

/* 4 steps at once vs 2, then a resume for 2 more (batch 2 of 4 stories: an
 * epoch boundary and a reshuffle crossed, a validation after each epoch). */
static void test_resume(void) {
  char a[4400], b[4400], extra[4800];
  snprintf(a, sizeof a, "%s/a", tmpdir);
  snprintf(b, sizeof b, "%s/b", tmpdir);
#define KEYS0 "batch_size = 2; max_steps = 4; shuffle = true; lr = 1e-3; warmup_steps = 1; clip_norm = 1.0; checkpoint_every = 1; "
#define KEYS KEYS0 "seed = 3; "
  int rc = run_cfg(a, KEYS, "trainable = true;");
  if (!ok(rc == 0, "4 steps of the tiny AR-LDM on stories in one run")) diag("%s", mmp_error_last());
  rc = run_cfg(b, KEYS "run_steps = 2;", "trainable = true;");
  if (!ok(rc == 0, "2 steps (run_steps = 2)")) diag("%s", mmp_error_last());
  snprintf(extra, sizeof extra, KEYS "resume = \"%s/checkpoint.safetensors\";", b);
  rc = run_cfg(b, extra, "trainable = true;");
  if (!ok(rc == 0, "resumed for the 2 remaining steps")) diag("%s", mmp_error_last());
  static char ma[8192], mb[8192];
  int va = 0, vb = 0;
  int na = read_metrics(a, ma, sizeof ma, &va), nb = read_metrics(b, mb, sizeof mb, &vb);
  ok(na == 4 && nb == 4 && strcmp(ma, mb) == 0, "the same metrics (%d and %d steps)", na, nb);
  if (strcmp(ma, mb) != 0) diag("one run:\n%s\nresumed:\n%s", ma, mb);
  ok(va == 2 && vb == 2, "a validation loss per epoch (%d, %d)", va, vb);
  char why[700];
  bool same = same_run_files(a, b, "checkpoint.safetensors", why, sizeof why);
  ok(same, "bit-identical checkpoints after 4 steps%s%s", same ? "" : ": ", why);
  same = same_run_files(a, b, "export/arldm.safetensors", why, sizeof why);
  ok(same, "bit-identical exports%s%s", same ? "" : ": ", why);
  /* the export has AR-LDM's names: those of the AR-LDM file, every one */
  char orig[4400], export_a[4600];
  snprintf(orig, sizeof orig, "%s/arldm_tiny.safetensors", fxdir());
  snprintf(export_a, sizeof export_a, "%s/export/arldm.safetensors", a);
  mmp_tensormap_t *e = train_test_load(export_a), *o = train_test_load(orig);
  bool names = e && o && mmp_tensormap_size(e) == mmp_tensormap_size(o);
  for (size_t i = 0; names && i < mmp_tensormap_size(o); i++) {
    mmp_tensor_t *x = mmp_tensormap_at(o, i), *y = mmp_tensormap_get(e, mmp_tensormap_name(o, i));
    names = y && mmp_tensor_same_shape(x, y);
    if (!names) diag("%s missing or reshaped", mmp_tensormap_name(o, i));
  }
  ok(names, "the export holds the AR-LDM file's %zu names and shapes", o ? mmp_tensormap_size(o) : 0);
  const char *vae = "vae.encoder.conv_in.weight", *unet = "unet.conv_in.weight";
  ok(e && o && sd_relerr(mmp_tensormap_get(e, vae), mmp_tensormap_get(o, vae)) == 0, "the frozen VAE is copied");
  double moved = e && o ? sd_relerr(mmp_tensormap_get(e, unet), mmp_tensormap_get(o, unet)) : 0;
  ok(moved > 0, "the UNet moved (%.3g relative)", moved);
  mmp_tensormap_free(e);
  mmp_tensormap_free(o);
  /* the mode is part of the checkpoint */
  snprintf(extra, sizeof extra, KEYS0 "resume = \"%s/checkpoint.safetensors\"; seed = 4;", b);
  rc = run_cfg(b, extra, "trainable = true;");
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "seed"), "resume with another seed: %s", mmp_error_last());
}

/* The largest relative error of the losses of metrics.jsonl in @out (9 digits) against
 * the fixture's step<k>.loss; *@k: how many were compared. */
static double loss_err(const char *out, mmp_tensormap_t *fx, int *k) {
  char mp[4600], line[1024];
  snprintf(mp, sizeof mp, "%s/metrics.jsonl", out);
  FILE *f = fopen(mp, "r");
  double worst = 0;
  *k = 0;
  while (f && fgets(line, sizeof line, f)) {
    const char *l = strstr(line, "\"loss\": ");
    char name[64];
    snprintf(name, sizeof name, "step%d.loss", *k);
    mmp_tensor_t *w = l ? mmp_tensormap_get(fx, name) : NULL;
    if (!w) continue;
    int64_t z = 0;
    double want = mmp_tensor_get(w, &z), got = strtod(l + 8, NULL);
    worst = fmax(worst, fabs(got - want) / fabs(want));
    (*k)++;
  }
  if (f) fclose(f);
  return worst;
}

/* The query and value thirds of a fused qkv bias [3 d] (consumes @t; NULL gives NULL). */
static mmp_tensor_t *qv_thirds(mmp_tensor_t *t) {
  if (!t || t->ndim != 1 || t->shape[0] % 3) return t;
  int64_t d3 = t->shape[0] / 3;
  mmp_tensor_t *parts[2] = {mmp_slice(t, 0, 0, d3, 1), mmp_slice(t, 0, 2 * d3, 3 * d3, 1)};
  mmp_tensor_t *r = parts[0] && parts[1] ? mmp_concat(parts, 2, 0) : NULL;
  mmp_tensor_unref(parts[0]);
  mmp_tensor_unref(parts[1]);
  mmp_tensor_unref(t);
  return r;
}

/* optimizer_in_backward = true equals the step after the backward bit for bit in arldm mode
 * too (CLIP's and BLIP's embedding tables, AR-LDM's own tables, the UNet, BLIP trained): 4
 * shuffled steps in one run, and 2 in the backward resumed for 2 more. */
static void test_in_backward(void) {
  char a[4400], b[4400], c[4400], extra[4800];
  snprintf(a, sizeof a, "%s/ib-a", tmpdir);
  snprintf(b, sizeof b, "%s/ib-b", tmpdir);
  snprintf(c, sizeof c, "%s/ib-c", tmpdir);
#define IB_KEYS "batch_size = 2; max_steps = 4; shuffle = true; lr = 1e-3; warmup_steps = 1; checkpoint_every = 1; seed = 3; "
  int rc = run_cfg(a, IB_KEYS, "trainable = true;");
  if (!ok(rc == 0, "4 steps, the optimizer after the backward")) diag("%s", mmp_error_last());
  rc = run_cfg(b, IB_KEYS "optimizer_in_backward = true;", "trainable = true;");
  if (!ok(rc == 0, "4 steps, the optimizer in the backward")) diag("%s", mmp_error_last());
  rc = run_cfg(c, IB_KEYS "optimizer_in_backward = true; run_steps = 2;", "trainable = true;");
  snprintf(extra, sizeof extra, IB_KEYS "optimizer_in_backward = true; resume = \"%s/checkpoint.safetensors\";", c);
  if (rc == 0) rc = run_cfg(c, extra, "trainable = true;");
  if (!ok(rc == 0, "2 steps in the backward, resumed for 2")) diag("%s", mmp_error_last());
  static char ma[8192], mo[8192];
  int va = 0, vo = 0, na = read_metrics(a, ma, sizeof ma, &va);
  const char *runs[2] = {b, c}, *what[2] = {"in the backward", "resumed in the backward"};
  for (int k = 0; k < 2; k++) {
    int no = read_metrics(runs[k], mo, sizeof mo, &vo);
    ok(na == 4 && no == 4 && strcmp(ma, mo) == 0, "%s: the same losses, rates and validation losses (%d and %d steps)",
       what[k], na, no);
    if (strcmp(ma, mo) != 0) diag("after:\n%s\n%s:\n%s", ma, what[k], mo);
    char why[700];
    bool same = same_run_files(a, runs[k], "checkpoint.safetensors", why, sizeof why);
    ok(same, "%s: bit-identical checkpoints (weights, moments, step counts)%s%s", what[k], same ? "" : ": ", why);
  }
}

/* K = 2 optimizer steps against AR-LDM's own training (tests/gen_arldm_trainrun.py --steps:
 * ARLDM.forward + torch.optim.AdamW, the same stories in file order, batch 2, freeze_clip and
 * freeze_blip, the CFG drop's uniforms drawn as the task draws them): the losses and the named
 * parameters after the steps within 1e-4 relative. With @dropout (--steps-dropout): freeze_clip
 * only, so BLIP trains in train mode and its BERT's dropout draws from torch's generator. */
static void test_reference(bool dropout) {
  char out[4400], p[4600], keys[1024];
  snprintf(out, sizeof out, "%s/ref%s", tmpdir, dropout ? "_dropout" : "");
  snprintf(keys, sizeof keys, "batch_size = 2; max_steps = 2; shuffle = false; lr = 1e-3; lr_schedule = \"constant\"; seed = 5; %s",
           dropout ? "freeze = [\"text_encoder.*\"]; train = [\"text_encoder.text_model.embeddings.token_embedding.*\"];"
                   : FREEZE_CB);
  int rc = run_cfg(out, keys, "trainable = true;");
  if (!ok(rc == 0, "2 steps as gen_arldm_trainrun.py's (BLIP's dropout %s)", dropout ? "on" : "off"))
    diag("%s", mmp_error_last());
  snprintf(p, sizeof p, "%s/%s", fxdir(), dropout ? "train_run_dropout.safetensors" : "train_run.safetensors");
  mmp_tensormap_t *fx = train_test_load(p);
  snprintf(p, sizeof p, "%s/checkpoint.safetensors", out);
  mmp_tensormap_t *ck = train_test_load(p);
  if (!fx || !ck) {
    ok(0, "fixture and checkpoint read");
    mmp_tensormap_free(fx);
    mmp_tensormap_free(ck);
    return;
  }
  int k = 0;
  double worst = loss_err(out, fx, &k);
  ok(k == 2 && worst <= SD_TOL, "the 2 losses equal AR-LDM's within 1e-4 relative (%.3g)%s", worst,
     dropout ? ", BLIP's dropout on" : "");
  if (dropout) { /* the dropout matters: the same run with BLIP in eval mode misses AR-LDM's losses */
    char off[4400], koff[1100];
    snprintf(off, sizeof off, "%s/ref_dropout_off", tmpdir);
    snprintf(koff, sizeof koff, "%s blip_dropout = \"off\";", keys);
    int ko = 0;
    double e = run_cfg(off, koff, "trainable = true;") == 0 ? loss_err(off, fx, &ko) : -1;
    ok(ko == 2 && e > 1e-3, "with blip_dropout = \"off\" the losses miss AR-LDM's (%.3g relative)", e);
  }
  /* the weights, and their change from the AR-LDM file's (what the two steps did) */
  snprintf(p, sizeof p, "%s/arldm_tiny.safetensors", fxdir());
  mmp_tensormap_t *init = train_test_load(p);
  int n = 0;
  double worst_d = 0;
  worst = 0;
  for (size_t i = 0; init && i < mmp_tensormap_size(fx); i++) {
    const char *name = mmp_tensormap_name(fx, i);
    if (strncmp(name, "param.", 6) != 0) continue;
    mmp_tensor_t *want = mmp_tensor_ref(mmp_tensormap_at(fx, i)), *got = mmp_tensormap_get(ck, name), *g = NULL;
    mmp_tensor_t *i0 = mmp_tensormap_get(init, name + 6), *i32 = i0 ? mmp_convert(i0, MMP_F32) : NULL;
    if (got && mmp_tensor_numel(got) == mmp_tensor_numel(want)) g = mmp_reshape(got, want->ndim, want->shape);
    size_t nl = strlen(name);
    if (nl > 9 && !strcmp(name + nl - 9, ".qkv.bias")) {
      /* the key third of a fused qkv bias gets no gradient in exact arithmetic (the
       * softmax over keys ignores a shift shared by every key), so AdamW moves it by
       * rounding noise alone (g / (|g| + eps) at the first step): compare the query
       * and value thirds */
      want = qv_thirds(want);
      g = qv_thirds(g);
      i32 = qv_thirds(i32);
    }
    char what[300];
    snprintf(what, sizeof what, "%s after 2 steps", name + 6);
    sd_check(g, want, what);
    worst = fmax(worst, sd_relerr(g, want));
    mmp_tensor_t *dg = g && i32 ? mmp_sub(g, i32) : NULL, *dw = i32 && want ? mmp_sub(want, i32) : NULL;
    double rd = sd_relerr(dg, dw);
    if (!ok(rd >= 0 && rd <= 1e-3, "%s: its change within 1e-3 relative", name + 6)) diag("  %.3g", rd);
    worst_d = fmax(worst_d, rd);
    mmp_tensor_unref(dg);
    mmp_tensor_unref(dw);
    mmp_tensor_unref(i32);
    mmp_tensor_unref(g);
    mmp_tensor_unref(want);
    n++;
  }
  ok(n == (dropout ? 21 : 14), "%d parameters compared", n);
  diag("largest relative error after 2 steps: %.3g of a parameter, %.3g of its change", worst, worst_d);
  mmp_tensormap_free(init);
  mmp_tensormap_free(fx);
  mmp_tensormap_free(ck);
}

/* AR-LDM's freeze_clip + freeze_blip by patterns train exactly AR-LDM's tensors:
 * the count ARLDM.__init__ leaves trainable (tests/gen_arldm_train.py, case cont) */
static void test_freeze(void) {
  char out[4400], p[4600];
  snprintf(out, sizeof out, "%s/freeze", tmpdir);
  int rc = run_cfg(out, "batch_size = 2; max_steps = 1; lr = 1e-3; " FREEZE_CB, "trainable = true;");
  if (!ok(rc == 0, "a step with freeze_clip and freeze_blip as patterns")) diag("%s", mmp_error_last());
  snprintf(p, sizeof p, "%s/checkpoint.safetensors", out);
  mmp_tensormap_t *ck = train_test_load(p);
  snprintf(p, sizeof p, "%s/train_step.safetensors", fxdir());
  mmp_tensormap_t *fx = train_test_load(p);
  mmp_tensor_t *want = fx ? mmp_tensormap_get(fx, "cont.n_trainable") : NULL;
  int64_t n = 0, zero = 0;
  bool tok = false, word = false, layer = false;
  for (size_t i = 0; ck && i < mmp_tensormap_size(ck); i++) {
    const char *name = mmp_tensormap_name(ck, i);
    if (strncmp(name, "param.", 6) != 0) continue;
    n++;
    tok |= strcmp(name, "param.text_encoder.text_model.embeddings.token_embedding.weight") == 0;
    word |= strcmp(name, "param.mm_encoder.text_encoder.embeddings.word_embeddings.weight") == 0;
    layer |= strstr(name, "encoder.layers.") != NULL || strstr(name, "encoder.layer.") != NULL;
  }
  ok(want && n == (int64_t)mmp_tensor_get(want, &zero), "%lld tensors trained, ARLDM.__init__ leaves %lld trainable",
     (long long)n, want ? (long long)mmp_tensor_get(want, &zero) : -1LL);
  ok(tok && word && !layer, "the token and word tables trained, the encoder layers frozen");
  mmp_tensormap_free(ck);
  /* freeze_resnet too: only UNet names containing "attentions" (tests/gen_arldm_trainrun.py's count) */
  snprintf(out, sizeof out, "%s/freeze3", tmpdir);
  rc = run_cfg(out, "batch_size = 2; max_steps = 1; lr = 1e-3; freeze = [\"text_encoder.*\", \"mm_encoder.*\", \"unet.*\"]; "
               "train = [\"text_encoder.text_model.embeddings.token_embedding.*\", "
               "\"mm_encoder.text_encoder.embeddings.word_embeddings.*\", \"unet.*attentions*\"];", "trainable = true;");
  if (!ok(rc == 0, "a step with freeze_clip, freeze_blip and freeze_resnet as patterns")) diag("%s", mmp_error_last());
  snprintf(p, sizeof p, "%s/checkpoint.safetensors", out);
  ck = train_test_load(p);
  snprintf(p, sizeof p, "%s/train_run.safetensors", fxdir());
  mmp_tensormap_t *fr = train_test_load(p);
  want = fr ? mmp_tensormap_get(fr, "n_trainable_resnet") : NULL;
  n = 0;
  bool resnet = false;
  for (size_t i = 0; ck && i < mmp_tensormap_size(ck); i++) {
    const char *name = mmp_tensormap_name(ck, i);
    if (strncmp(name, "param.", 6) != 0) continue;
    n++;
    resnet |= strncmp(name, "param.unet.", 11) == 0 && !strstr(name, "attentions");
  }
  ok(want && n == (int64_t)mmp_tensor_get(want, &zero) && !resnet,
     "%lld tensors trained, ARLDM.__init__ leaves %lld trainable with freeze_resnet; no UNet tensor outside the attentions",
     (long long)n, want ? (long long)mmp_tensor_get(want, &zero) : -1LL);
  mmp_tensormap_free(ck);
  mmp_tensormap_free(fr);
  mmp_tensormap_free(fx);
}

/* The story task samples from the export: after a step at lr = 0 the exported file holds the
 * AR-LDM file's weights (as f32), so the frames equal those drawn from the AR-LDM file itself. */
static const char *const STORY =
    "task = { name = \"story\"; task = \"visualization\"; arldm = \"%2$s\";\n"
    "  story_tensors = \"%1$s/story_visualization_ddim.safetensors\"; width = 32; height = 32; steps = 3;\n"
    "  guidance_scale = 6.0; seed = 7; output_dir = \"%3$s\"; save_tensors = true; };\n"
    "text_encoder = { name = \"clip_text\"; config = \"%1$s/text_encoder/config.json\"; weights = \"%2$s\"; weights_prefix = \"text_encoder.\"; };\n"
    "mm_encoder = { name = \"blip\"; config = \"%1$s/med_config.json\"; weights = \"%2$s\"; weights_prefix = \"mm_encoder.\";"
    " num_heads = 4; enc_token_id = 51; };\n"
    "blip_processor = { name = \"image_resize\"; size = [224, 224]; interpolation = \"bilinear\";"
    " mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };\n"
    "unet = { name = \"unet2d_condition\"; config = \"%1$s/unet/config.json\"; weights = \"%2$s\"; weights_prefix = \"unet.\"; };\n"
    "vae = { name = \"vae\"; config = \"%1$s/vae/config.json\"; weights = \"%2$s\"; weights_prefix = \"vae.\"; };\n"
    "scheduler = { name = \"ddim\"; beta_start = 0.00085; beta_end = 0.012; beta_schedule = \"scaled_linear\";"
    " clip_sample = false; set_alpha_to_one = true; steps_offset = 0; };\n";

static int run_story(const char *arldm, const char *out) {
  static char text[12000];
  snprintf(text, sizeof text, STORY, fxdir(), arldm, out);
  return sd_run_task(text, "story-from-export", NULL);
}

static void test_export_story(void) {
  char out[4400], ex[4600], s1[4400], s2[4400], orig[4400];
  snprintf(out, sizeof out, "%s/lr0", tmpdir);
  snprintf(ex, sizeof ex, "%s/export/arldm.safetensors", out);
  snprintf(s1, sizeof s1, "%s/story-export", tmpdir);
  snprintf(s2, sizeof s2, "%s/story-orig", tmpdir);
  snprintf(orig, sizeof orig, "%s/arldm_tiny.safetensors", fxdir());
  int rc = run_cfg(out, "batch_size = 1; max_steps = 1; lr = 0; weight_decay = 0;", "trainable = true;");
  if (!ok(rc == 0, "a step at lr = 0")) diag("%s", mmp_error_last());
  rc = run_story(ex, s1);
  if (!ok(rc == 0, "the story task draws from the exported file")) diag("%s", mmp_error_last());
  rc = run_story(orig, s2);
  if (!ok(rc == 0, "the story task draws from the AR-LDM file")) diag("%s", mmp_error_last());
  char a[4600], b[4600], why[700];
  snprintf(a, sizeof a, "%s/story_tensors.safetensors", s1);
  snprintf(b, sizeof b, "%s/story_tensors.safetensors", s2);
  bool same = same_tensors(a, b, why, sizeof why);
  ok(same, "the same frames, contexts and latents%s%s", same ? "" : ": ", why);
  /* and from weights that moved */
  snprintf(ex, sizeof ex, "%s/a/export/arldm.safetensors", tmpdir);
  snprintf(s1, sizeof s1, "%s/story-trained", tmpdir);
  rc = run_story(ex, s1);
  if (!ok(rc == 0, "the story task draws from a trained export")) diag("%s", mmp_error_last());
}

/* blank the setting of @text that starts with @key, up to its ';' */
static void drop_setting(char *text, const char *key) {
  char *k = strstr(text, key), *e = k ? strchr(k, ';') : NULL;
  while (k && e && k <= e) *k++ = ' ';
}

static void test_errors(void) {
  char out[4400];
  snprintf(out, sizeof out, "%s/err", tmpdir);
  static char text[20000];
  snprintf(text, sizeof text, CFG, fxdir(), out, "max_steps = 1; lr = 1e-3;", "");
  drop_setting(text, "arldm = \"");
  int rc = sd_run_task(text, "train-arldm-err", plugin_dir());
  ok(rc == MMP_ECONFIG && strstr(mmp_error_last(), "arldm"), "no arldm file: %s", mmp_error_last());
  char sd[4400], extra[4800];
  snprintf(sd, sizeof sd, "%s/a/checkpoint.safetensors", tmpdir);
  snprintf(extra, sizeof extra, "lr = 1e-3; mode = \"sd\"; data_dir = \"%s/../train/data\"; resume = \"%s\";", fxdir(), sd);
  snprintf(text, sizeof text, CFG, fxdir(), out, extra, "");
  drop_setting(text, "mode = \"arldm\"");
  strcat(text, "tokenizer = { name = \"clip_tokenizer\"; tokenizer_dir = \"");
  strcat(text, fxdir());
  strcat(text, "/../sd/pipe/tokenizer\"; };\n");
  rc = sd_run_task(text, "train-arldm-err", plugin_dir());
  ok(rc < 0 && strstr(mmp_error_last(), "mode"), "an sd run refuses an arldm checkpoint: %s", mmp_error_last());
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "%s", "/tmp/mmp-train-arldm-XXXXXX");
  const char *tmp = getenv("TMPDIR");
  if (tmp && *tmp) snprintf(tmpdir, sizeof tmpdir, "%s/mmp-train-arldm-XXXXXX", tmp);
  if (!mkdtemp(tmpdir)) {
    diag("mkdtemp failed");
    return 1;
  }
  test_reference(false);
  test_reference(true);
  test_resume();
  test_in_backward();
  test_freeze();
  test_export_story();
  test_errors();
  rm_rf(tmpdir);
  return done_testing();
}
