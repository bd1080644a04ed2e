/* tools/cmd_convert.c - pipeline convert: a PyTorch checkpoint (or a .safetensors file) to a .safetensors file. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/checkpoint.h>
#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void convert_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline convert IN OUT [--select PATH] [--strip-prefix P]\n"
          "                        [--dtype f32|f16|bf16] [--to safetensors|torch|lightning]\n\n"
          "Write the tensors of IN, a PyTorch checkpoint (.ckpt, .pth, .pt, .bin; read\n"
          "without running anything it names, see doc/checkpoint.md) or a .safetensors\n"
          "file, to OUT: a .safetensors file, or a torch.save file that torch.load reads\n"
          "(an OrderedDict of the tensors; for a .ckpt OUT, Lightning's layout with the\n"
          "tensors under state_dict, as AR-LDM's last.ckpt). OUT is written to a\n"
          "temporary name and renamed into place, so an interrupted run never leaves a\n"
          "truncated file.\n\n"
          "Without options every tensor of IN is written under its dotted path (dict keys\n"
          "and list/tuple indices joined by '.': state_dict.unet.conv_in.weight,\n"
          "optimizer_states.0.state.3.exp_avg) in its own dtype (bf16 stays bf16; i16 and\n"
          "i8 storages are written as i32, the narrowest integer type mmpipe holds).\n"
          "Loading OUT gives the same tensors, bit for bit, as loading IN directly.\n\n"
          "  --select PATH        only the part under PATH, a dotted path of nested dicts\n"
          "                       (state_dict, model), named relative to it\n"
          "  --strip-prefix P     only the tensors whose name (after --select) starts with\n"
          "                       P, written without it (--select state_dict\n"
          "                       --strip-prefix unet. gives a diffusers UNet file)\n"
          "  --dtype T            convert floating-point tensors to T (f32, f16 or bf16);\n"
          "                       integer and bool tensors are written as they are\n"
          "  --to F               OUT's format: safetensors, torch (torch.save of the\n"
          "                       tensors' OrderedDict) or lightning (the same under\n"
          "                       \"state_dict\" with epoch, global_step and\n"
          "                       pytorch-lightning_version); default by OUT's extension:\n"
          "                       .ckpt lightning, .pt/.pth/.bin torch, else safetensors\n"
          "  -v, --verbose        more log output; -q, --quiet: errors only\n"
          "  -h, --help           this help\n");
}

static bool is_float(mmp_dtype_t d) { return d == MMP_F32 || d == MMP_F16 || d == MMP_BF16 || d == MMP_F64; }

int cmd_convert(int argc, char **argv) {
  static const struct option opts[] = {{"help", no_argument, NULL, 'h'},
                                       {"select", required_argument, NULL, 's'},
                                       {"to", required_argument, NULL, 'o'},
                                       {"strip-prefix", required_argument, NULL, 'p'},
                                       {"dtype", required_argument, NULL, 't'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {NULL, 0, NULL, 0}};
  int c;
  const char *select = NULL, *strip = "", *dts = NULL, *to = NULL;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvq", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': convert_help(stdout); return PIPE_EXIT_OK;
    case 's': select = optarg; break;
    case 'p': strip = optarg; break;
    case 't': dts = optarg; break;
    case 'o': to = optarg; break;
    default: return pipe_usage("convert", "bad option");
    }
  }
  if (optind != argc - 2) return pipe_usage("convert", "expected IN and OUT");
  const char *in = argv[optind], *out = argv[optind + 1];
  if (!to) {
    const char *dot = strrchr(out, '.');
    to = !dot ? "safetensors"
         : !strcmp(dot, ".ckpt") ? "lightning"
         : (!strcmp(dot, ".pt") || !strcmp(dot, ".pth") || !strcmp(dot, ".bin")) ? "torch"
                                                                                : "safetensors";
  }
  if (strcmp(to, "safetensors") && strcmp(to, "torch") && strcmp(to, "lightning"))
    return pipe_usage("convert", "--to must be safetensors, torch or lightning, not '%s'", to);
  mmp_dtype_t want = MMP_DTYPE_COUNT;
  if (dts) {
    if (strcmp(dts, "f32") != 0 && strcmp(dts, "f16") != 0 && strcmp(dts, "bf16") != 0)
      return pipe_usage("convert", "--dtype must be f32, f16 or bf16, not '%s'", dts);
    mmp_dtype_parse(dts, &want);
  }
  char prefix[2048];
  snprintf(prefix, sizeof prefix, "%s%s%s", select && *select ? select : "", select && *select ? "." : "", strip);
  mmp_backend_t *cpu = mmp_backend_get("cpu");
  mmp_tensormap_t *m = mmp_tensormap_new();
  mmp_checkpoint_t *ck = NULL;
  mmp_safetensors_t *st = NULL;
  int rc = 0;
  if (!m) return pipe_fail("convert", MMP_ENOMEM);
  if (mmp_checkpoint_sniff(in)) {
    ck = mmp_checkpoint_open(in, prefix, 0);
    if (!ck) rc = mmp_error_code();
    for (size_t i = 0; ck && i < mmp_checkpoint_count(ck) && rc == 0; i++) {
      const char *name = mmp_checkpoint_name(ck, i);
      mmp_dtype_t dt;
      mmp_checkpoint_info(ck, name, &dt, NULL, NULL, NULL, NULL);
      mmp_tensor_t *t = mmp_checkpoint_get(ck, name, cpu, is_float(dt) ? want : MMP_DTYPE_COUNT);
      rc = t ? mmp_tensormap_set(m, name, t) : mmp_error_code();
    }
  } else {
    if (select && *select) {
      mmp_tensormap_free(m);
      return pipe_usage("convert", "--select applies to PyTorch checkpoints only");
    }
    st = mmp_safetensors_open(in);
    if (!st) rc = mmp_error_code();
    size_t pl = strlen(prefix);
    for (size_t i = 0; st && i < mmp_safetensors_count(st) && rc == 0; i++) {
      const char *name = mmp_safetensors_name(st, i);
      if (strncmp(name, prefix, pl) != 0) continue;
      mmp_dtype_t dt;
      mmp_safetensors_info(st, name, &dt, NULL, NULL);
      mmp_tensor_t *t = mmp_safetensors_get(st, name, cpu, is_float(dt) ? want : MMP_DTYPE_COUNT);
      rc = t ? mmp_tensormap_set(m, name + pl, t) : mmp_error_code();
    }
  }
  if (rc == 0 && mmp_tensormap_size(m) == 0)
    rc = mmp_error_set(MMP_ENOENT, "%s: no tensor%s%s", in, prefix[0] ? " under " : "", prefix);
  static const char *const meta[] = {"format", "pt", NULL};
  if (rc == 0 && !strcmp(to, "safetensors")) rc = mmp_safetensors_save_map(out, m, meta);
  else if (rc == 0) rc = mmp_checkpoint_save_map(out, m, !strcmp(to, "lightning") ? MMP_CKPT_LIGHTNING : 0);
  size_t n = mmp_tensormap_size(m);
  mmp_tensormap_free(m);
  mmp_checkpoint_close(ck);
  mmp_safetensors_close(st);
  if (rc) return pipe_fail("convert", rc);
  if (!pipe_quiet) fprintf(stderr, "pipeline convert: %zu tensors written to %s\n", n, out);
  return PIPE_EXIT_OK;
}
