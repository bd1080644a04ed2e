/* tools/cmd_forward.c - pipeline forward: run one component on named tensors. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/safetensors.h>

#include "tools/commands.h"

static void forward_help(FILE *f) {
  fprintf(f,
          "Usage: pipeline forward COMPONENT.cfg --input IN.safetensors --output OUT.safetensors\n"
          "                        [--method M] [-s KEY.PATH=VALUE]...\n"
          "       pipeline forward COMPONENT.cfg --text FILE --output OUT.safetensors\n\n"
          "Build one component and run it on named tensors, so that any part can be compared\n"
          "with its PyTorch original on the same inputs. COMPONENT.cfg holds one group named\n"
          "after the component's kind, e.g.\n"
          "  scheduler = { name = \"pndm\"; num_inference_steps = 250; };\n"
          "  model = { name = \"unet2d_condition\"; config = \"unet/config.json\"; weights = \"...\"; };\n"
          "Inputs may be f32 or f64 (f64 is converted to f32); outputs are written atomically.\n"
          "Tensor names per component are listed in doc/forward.md.\n\n"
          "  -i, --input FILE     input tensors (.safetensors)\n"
          "  -t, --text FILE      text input, one item per line (processors: tokenizers)\n"
          "  -o, --output FILE    where to write the output tensors\n"
          "  -m, --method NAME    entry point of the component (e.g. encode, decode)\n"
          "  -s, --set KEY=VALUE  override a value (repeatable)\n"
          "  -h, --help           this help\n");
}

static char **read_lines(const char *path, size_t *n_out) {
  FILE *f = fopen(path, "r");
  if (!f) {
    mmp_error_set(MMP_EIO, "%s: cannot open: %s", path, strerror(errno));
    return NULL;
  }
  char **lines = NULL;
  size_t n = 0;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) >= 0) {
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    char **l2 = realloc(lines, (n + 1) * sizeof *l2);
    if (!l2) break;
    lines = l2;
    lines[n++] = strdup(line);
  }
  free(line);
  fclose(f);
  *n_out = n;
  if (!lines) lines = calloc(1, sizeof *lines);
  return lines;
}

int cmd_forward(int argc, char **argv) {
  static const struct option opts[] = {
      {"help", no_argument, NULL, 'h'},       {"verbose", no_argument, NULL, 'v'},
      {"quiet", no_argument, NULL, 'q'},      {"input", required_argument, NULL, 'i'},
      {"text", required_argument, NULL, 't'}, {"output", required_argument, NULL, 'o'},
      {"method", required_argument, NULL, 'm'}, {"set", required_argument, NULL, 's'},
      {NULL, 0, NULL, 0}};
  const char *in_path = NULL, *text_path = NULL, *out_path = NULL, *method = NULL;
  pipe_sets_t sets = {0};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "hvqi:t:o:m:s:", opts, NULL)) != -1) {
    if (pipe_common_option(c)) continue;
    switch (c) {
    case 'h': forward_help(stdout); pipe_sets_free(&sets); return PIPE_EXIT_OK;
    case 'i': in_path = optarg; break;
    case 't': text_path = optarg; break;
    case 'o': out_path = optarg; break;
    case 'm': method = optarg; break;
    case 's': pipe_sets_add(&sets, optarg); break;
    default: pipe_sets_free(&sets); return pipe_usage("forward", "bad option");
    }
  }
  if (optind != argc - 1) {
    pipe_sets_free(&sets);
    return pipe_usage("forward", "expected one COMPONENT.cfg");
  }
  if (!out_path || (!in_path && !text_path)) {
    pipe_sets_free(&sets);
    return pipe_usage("forward", "--output and one of --input/--text are required");
  }
  mmp_config_t *cfg = pipe_load_config(argv[optind], &sets);
  pipe_sets_free(&sets);
  if (!cfg) return pipe_fail("forward", mmp_error_code());

  static const char *kinds[] = {"scheduler", "encoder", "model", "processor"};
  const char *group = NULL;
  int ngroups = 0;
  for (size_t i = 0; i < 4; i++)
    if (mmp_config_lookup(cfg, kinds[i])) {
      group = kinds[i];
      ngroups++;
    }
  int rc = 0, code = PIPE_EXIT_OK;
  mmp_registry_t *reg = NULL;
  mmp_context_t *ctx = NULL;
  mmp_component_t *comp = NULL;
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  char **lines = NULL;
  size_t nlines = 0;
  if (ngroups != 1) {
    rc = mmp_error_set(MMP_ECONFIG,
                       "%s: expected exactly one group named scheduler, encoder, model or processor (found %d)",
                       argv[optind], ngroups);
    goto done;
  }
  mmp_kind_t kind;
  mmp_kind_parse(group, &kind);
  reg = mmp_registry_new();
  if (!reg || (rc = mmp_registry_set_search_path(reg, cfg)) < 0) {
    rc = mmp_error_code();
    goto done;
  }
  ctx = mmp_context_new(reg, cfg);
  if (!ctx || (rc = mmp_context_validate_component(ctx, kind, group)) < 0) {
    rc = mmp_error_code();
    goto done;
  }
  int64_t threads = 0;
  mmp_config_get_int(cfg, "threads", &threads);
  if (threads > 0) mmp_threads_set((int)threads);
  comp = mmp_component_create(ctx, kind, group);
  if (!comp) {
    rc = mmp_error_code();
    goto done;
  }
  mmp_backend_t *be = mmp_context_backend(ctx);
  if (!be) {
    rc = mmp_error_code();
    goto done;
  }
  if (in_path && (rc = mmp_safetensors_load_map(in_path, be, true, in)) < 0) goto done;
  mmp_error_clear();
  switch (kind) {
  case MMP_KIND_SCHEDULER: {
    int64_t steps = 50;
    mmp_config_get_int(mmp_config_lookup(cfg, group), "num_inference_steps", &steps);
    rc = pipe_forward_scheduler(comp, steps, in, out);
    break;
  }
  case MMP_KIND_PROCESSOR: {
    const mmp_processor_ops_t *ops = (const mmp_processor_ops_t *)comp->plugin;
    if (text_path) {
      if (ops->base.struct_size < offsetof(mmp_processor_ops_t, encode_text) + sizeof ops->encode_text ||
          !ops->encode_text) {
        rc = mmp_error_set(MMP_EUNSUPPORTED, "processor '%s' does not take text", comp->plugin->name);
        break;
      }
      if (!(lines = read_lines(text_path, &nlines))) {
        rc = mmp_error_code();
        break;
      }
      rc = ops->encode_text(comp->self, (const char *const *)lines, nlines, out);
    } else if (ops->forward) {
      rc = ops->forward(comp->self, method, in, out);
    } else {
      rc = mmp_error_set(MMP_EUNSUPPORTED, "processor '%s' takes text: use --text FILE", comp->plugin->name);
    }
    break;
  }
  case MMP_KIND_ENCODER:
    rc = ((const mmp_encoder_ops_t *)comp->plugin)->forward(comp->self, method, in, out);
    break;
  case MMP_KIND_MODEL:
    rc = ((const mmp_model_ops_t *)comp->plugin)->forward(comp->self, method, in, out);
    break;
  default:
    rc = mmp_error_set(MMP_EUNSUPPORTED, "forward does not apply to a %s", group);
  }
  if (rc < 0) {
    if (mmp_error_code() == MMP_OK) mmp_error_set(rc, "%s", mmp_strerror(rc));
    goto done;
  }
  const char *meta[] = {"component", comp->plugin->name, "kind", group, NULL};
  rc = mmp_safetensors_save_map(out_path, out, meta);

done:
  if (rc < 0) code = pipe_fail("forward", rc);
  for (size_t i = 0; i < nlines; i++) free(lines[i]);
  free(lines);
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  mmp_component_free(comp);
  mmp_context_free(ctx);
  mmp_registry_free(reg);
  mmp_config_free(cfg);
  return code;
}
