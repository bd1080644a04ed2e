/* plugins/common/sd_common.h - the building blocks every model plugin links
 * (clip_text, vae, unet2d_condition, txt2img, vit, bert, blip): config.json
 * access, weight loading with name mapping or by prefix, and the layers
 * (linear, norms, attention with masks, MLP, pre/post-norm transformer
 * layers, ResnetBlock2D, Transformer2DModel, ...) computed through the core
 * tensor API only. The ViT and BERT towers built from them are in towers.h.
 *
 * Linked as a noinst convenience library into each module; every symbol is
 * hidden (the modules export only their entry points).
 *
 * Weights are taken by their diffusers name; the loader translates the
 * name for the file at hand (diffusers folder, old diffusers names, or the
 * original single-file LDM checkpoint), converts f16/bf16 to f32 once and
 * records every problem (missing, mis-shaped) without stopping, so that
 * sd_weights_finish() reports them all in one error together with the
 * tensors of the file that nothing asked for.
 */
#ifndef MMPIPE_PLUGINS_SD_COMMON_H
#define MMPIPE_PLUGINS_SD_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include <mmpipe/mmpipe.h>
#include <mmpipe/rng.h>
#include <mmpipe/checkpoint.h>
#include <mmpipe/safetensors.h>

/* ---- config.json ---- */
/* (transfer full) NULL + MMP_EIO/MMP_EDATA message naming the file. */
json_t *sd_json_load(const char *path);
/* Absent or null keys give @def; a wrong type is an MMP_EDATA error. */
int sd_json_int(const json_t *o, const char *key, int64_t def, int64_t *out);
int sd_json_float(const json_t *o, const char *key, double def, double *out);
int sd_json_bool(const json_t *o, const char *key, bool def, bool *out);
/* (transfer none) @def when absent or null. */
const char *sd_json_str(const json_t *o, const char *key, const char *def);
/* An int or a list of ints: @n items into @out (an int is repeated).
 * MMP_EDATA when a list has another length. Absent -> @def repeated. */
int sd_json_int_list(const json_t *o, const char *key, int64_t def, size_t n, int64_t *out);
/* The same, with every value checked to lie in [@lo, @hi]: sizes and
 * divisors from a config are bounded before anything divides by them or
 * multiplies them (an MMP_EDATA error names the key and the value). */
int sd_json_int_range(const json_t *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                      int64_t *out);
int sd_json_int_list_range(const json_t *o, const char *key, int64_t def, int64_t lo, int64_t hi,
                           size_t n, int64_t *out);
/* Bound of channel counts, widths, heads and groups in a config: products
 * of a few of them (weights of [out, in, k, k]) stay far from overflow. */
#define SD_MAX_WIDTH ((int64_t)1 << 16)
/* Number of items of a list key (0 when absent or not a list). */
size_t sd_json_list_size(const json_t *o, const char *key);
const char *sd_json_list_str(const json_t *o, const char *key, size_t i);

/* ---- locating a part ---- */
/* SD_PART_PLAIN: names as stored (optionally under a prefix), no
 * single-file translation (the ViT/BERT/BLIP towers). */
typedef enum sd_part { SD_PART_UNET = 0, SD_PART_VAE, SD_PART_CLIP, SD_PART_PLAIN } sd_part_t;

/* Resolve the config.json and weight file of a part from a component's
 * config group: `model_dir` (a diffusers pipeline folder, or the part's own
 * folder) or `config` + `weights`. @weights may name a single-file
 * checkpoint. Errors are MMP_ECONFIG naming the key. */
int sd_locate_part(const mmp_config_t *cfg, sd_part_t part, char *config_path,
                   size_t cplen, char *weights_path, size_t wplen);
/* The key-table rows every part plugin shares. */
#define SD_PART_KEYS(what)                                                                          \
  {"model_dir", MMP_TYPE_STRING, "\"\"", "diffusers folder (pipeline root or the " what " folder)", \
   MMP_KEY_PATH, 0},                                                                                \
  {"config", MMP_TYPE_STRING, "\"\"", "the part's config.json (instead of model_dir)", MMP_KEY_PATH, 0}, \
  {"weights", MMP_TYPE_STRING, "\"\"",                                                            \
   ".safetensors, or a PyTorch checkpoint (.ckpt/.pth/.pt/.bin): diffusers/transformers names or an original " \
   "single-file checkpoint's", MMP_KEY_PATH, 0},                                                    \
  {"weights_prefix", MMP_TYPE_STRING, "\"\"",                                                     \
   "take only the tensors whose dotted path starts with this and strip it (\"state_dict.unet.\", "     \
   "\"model.visual_encoder.\", \"state_dict.\"); doc/checkpoint.md", 0, 0},                        \
  {"init_seed", MMP_TYPE_INT, "-1",                                                                 \
   ">= 0: seeded random weights instead of a file (pipeline init-weights, benchmarks)", 0, 0},       \
  SD_WEIGHTS_DTYPE_KEY

/* The storage of the weights of linear and conv2d layers: "f32", "f16",
 * "bf16", or "file" (f16/bf16 as the file stores them, no conversion; f32
 * stays f32); "" is f32, converted at load, as diffusers and transformers
 * load a half-precision file by default. Norms, biases and embedding tables
 * stay f32. And the dtype their products are computed in: "f32", or
 * "bf16" (the layer's input and weight rounded to bf16, fp32 sums; the
 * AVX-512-BF16 dot products where the CPU has them). doc/tensor.md. */
#define SD_WEIGHTS_DTYPE_KEY                                                                       \
  {"weights_dtype", MMP_TYPE_STRING, "\"\"",                                                     \
   "storage of the linear/conv weights: \"f32\", \"f16\", \"bf16\" or \"file\" (as stored: f16/bf16 kept, " \
   "no conversion) (\"\": f32, converted at load, as diffusers and transformers do); norms, biases, "  \
   "embeddings stay f32", 0, 0},                                                                   \
  {"compute_dtype", MMP_TYPE_STRING, "\"\"",                                                     \
   "what the linear/conv products are computed in: \"f32\" (\"\") or \"bf16\" (input and weight "    \
   "rounded to bf16, fp32 sums; the AVX-512-BF16 dot products where the CPU has them; CPU backend "  \
   "only)", 0, 0}

/* ---- weights ---- */
typedef struct sd_weights sd_weights_t;

/* A translation of diffusers names into the original LDM checkpoint's
 * (model.diffusion_model.*, first_stage_model.*, cond_stage_model.*). */
typedef struct sd_ldm_map {
  sd_part_t part;
  int n_blocks;         /* len(block_out_channels) */
  int layers_per_block;
  bool up_has_attn[8];  /* unet: up block i has attentions */
} sd_ldm_map_t;

/* Open @path for @map->part: a .safetensors file or a PyTorch checkpoint
 * (told apart by content). @prefix (nullable): only the tensors whose
 * (dotted) name starts with it, stripped. The layout (diffusers or single
 * file) is detected from the names. (transfer full) */
sd_weights_t *sd_weights_open(const char *path, const char *prefix, const sd_ldm_map_t *map,
                              mmp_backend_t *be);
/* A weight store that makes seeded random weights instead of reading a
 * file (pipeline init-weights): normal(0, 1/sqrt(fan_in)) for matrices and
 * kernels, normal(0, 0.02) for embedding tables, 1 for 1-D weights (norms),
 * 0 for biases; drawn in the order the modules ask for them. */
sd_weights_t *sd_weights_random(const sd_ldm_map_t *map, mmp_backend_t *be, uint64_t seed);
/* Every tensor handed out so far, by diffusers name (transfer full of the
 * map; call before sd_weights_finish). */
mmp_tensormap_t *sd_weights_take_collected(sd_weights_t *w);
/* A weight by diffusers name with the expected shape (ndim <= 4; a shape
 * entry of -1 accepts any size). [O, I] and [O, I, 1, 1] are
 * interchangeable (linear vs 1x1 conv). Returns NULL and records the
 * problem when the tensor is missing or mis-shaped. (transfer full) */
mmp_tensor_t *sd_w(sd_weights_t *w, int ndim, const int64_t *shape,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The same for the weight of a linear or conv2d layer: stored in the
 * store's weights dtype (f32 unless the group's `weights_dtype` says
 * otherwise, sd_weights_for), read without conversion when the file holds
 * that dtype, and marked with the group's `compute_dtype`. (transfer full) */
mmp_tensor_t *sd_w_mat(sd_weights_t *w, int ndim, const int64_t *shape,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Training: every weight handed out from now on is an owned, writable f32
 * copy (never a read-only mapping of the file, never half precision), which
 * an optimizer may update in place. sd_weights_for() sets it from the
 * group's `trainable` key (SD_TRAINABLE_KEY) when the plugin declares it. */
void sd_weights_set_trainable(sd_weights_t *w, bool on);
#define SD_TRAINABLE_KEY                                                                           \
  {"trainable", MMP_TYPE_BOOL, "false",                                                            \
   "load the weights as owned, writable f32 copies (not a read-only mapping of the file) so that " \
   "training can update them in place; the `parameters` entry point needs it", 0, 0}
/* The towers' `gradient_checkpointing` key (clip_text, blip): each layer a
 * checkpoint region under a tape (sd_block_train). */
#define SD_CHECKPOINTING_KEY                                                                         \
  {"gradient_checkpointing", MMP_TYPE_BOOL, "false",                                                 \
   "under a tape (training), run each transformer layer as a checkpoint region (mmp_tape_checkpoint): " \
   "its activations are not kept but computed again during the backward, dropout draws replayed; "    \
   "less memory, one more forward of each layer; no effect on inference", 0, 0}
/* Shape of a weight as stored (after name translation), to size tables
 * that may be resized. MMP_ENOENT when absent. */
int sd_w_info(sd_weights_t *w, const char *name, int *ndim, int64_t *shape);
/* Names (diffusers form, or as stored) to ignore if not taken. */
void sd_weights_ignore_suffix(sd_weights_t *w, const char *suffix);
/* Weight loading by prefix: every name asked for is looked up as
 * @prefix + name (e.g. AR-LDM's "mm_encoder."). @prefix is copied. */
int sd_weights_set_prefix(sd_weights_t *w, const char *prefix);
/* Limit the "unexpected" check of sd_weights_finish() to stored names under
 * prefix + @scope (repeatable): a checkpoint holding more than the parts
 * built (BLIP's projections and momentum towers, a whole AR-LDM) is fine. */
int sd_weights_add_scope(sd_weights_t *w, const char *scope);
/* How many stored tensors under prefix + @scope nothing asked for (to name
 * what a component loads and ignores, e.g. BLIP's momentum towers). */
int64_t sd_weights_count_unused(sd_weights_t *w, const char *scope);
/* True when the store holds @name (after prefix and translation); random
 * stores hold nothing. */
bool sd_weights_has(sd_weights_t *w, const char *name);
/* Report all problems in one MMP_EDATA error (with the file name) and
 * close the file. Returns 0 when everything matched. */
int sd_weights_finish(sd_weights_t *w, const char *what);
void sd_weights_free(sd_weights_t *w); /* NULL ok */
/* True when the file at @path looks like an original LDM single file. */
bool sd_weights_is_single_file(sd_weights_t *w);

/* The weight store of a component group: seeded random weights when the
 * group's `init_seed` is >= 0, else the file at @wpath, its names read
 * under the group's `weights_prefix` (when set); the group's
 * `weights_dtype` and `compute_dtype` (SD_WEIGHTS_DTYPE_KEY) set the dtype
 * of sd_w_mat()'s weights and of their products. An unknown dtype is
 * MMP_ECONFIG naming the file and line. */
sd_weights_t *sd_weights_for(const mmp_config_t *cfg, const char *wpath, const sd_ldm_map_t *map,
                             mmp_backend_t *be);
/* Copy the references of @state into @out (the "state_dict" method). */
int sd_state_dict(const mmp_tensormap_t *state, mmp_tensormap_t *out);
/* Diffusers name -> LDM name (without the part prefix); 0 or MMP_ENOENT. */
int sd_ldm_name(const sd_ldm_map_t *map, const char *name, char *buf, size_t n);

/* ---- tensor helpers ---- */
/* Replace @old by @neu and return @neu (unref of @old after @neu was
 * computed): h = sd_swap(h, mmp_silu(h)). */
static inline mmp_tensor_t *sd_swap(mmp_tensor_t *old, mmp_tensor_t *neu) {
  mmp_tensor_unref(old);
  return neu;
}

/* Grow @t [R, D] to [@rows, D]: the new rows drawn from normal(0, @std)
 * with a Philox generator seeded by @seed (transformers'
 * resize_token_embeddings draws from torch's generator; the rows are
 * random either way). Consumes @t; @rows < R is an MMP_EINVAL error. */
mmp_tensor_t *sd_grow_rows(mmp_tensor_t *t, int64_t rows, double std, uint64_t seed);

/* ---- building blocks ---- */
/* sd_linear's w is [out, in], or a 1x1 conv's [out, in, 1, 1] (the
 * transformers' proj_in/proj_out of SD-1.x), viewed as [out, in] per call.
 * Modules keep the very tensors the weight store handed out (never a view
 * made at load time): parameters() lists those, and a tape watching them
 * must see every use. */
typedef struct sd_linear { mmp_tensor_t *w, *b; } sd_linear_t;
typedef struct sd_conv { mmp_tensor_t *w, *b; int stride, pad; } sd_conv_t;
typedef struct sd_norm { mmp_tensor_t *w, *b; int groups; double eps; } sd_norm_t;

int sd_linear_load(sd_linear_t *l, sd_weights_t *w, const char *prefix,
                   int64_t in, int64_t out, bool bias);
int sd_conv_load(sd_conv_t *c, sd_weights_t *w, const char *prefix, int64_t in,
                 int64_t out, int k, int stride, int pad);
int sd_norm_load(sd_norm_t *n, sd_weights_t *w, const char *prefix, int64_t ch,
                 int groups, double eps);
void sd_linear_free(sd_linear_t *l);
void sd_conv_free(sd_conv_t *c);
void sd_norm_free(sd_norm_t *n);
mmp_tensor_t *sd_linear(const sd_linear_t *l, const mmp_tensor_t *x);
mmp_tensor_t *sd_conv(const sd_conv_t *c, const mmp_tensor_t *x);
mmp_tensor_t *sd_group_norm(const sd_norm_t *n, const mmp_tensor_t *x);
/* silu(group_norm(x)) in one pass (mmp_group_norm_silu). */
mmp_tensor_t *sd_group_norm_silu(const sd_norm_t *n, const mmp_tensor_t *x);
mmp_tensor_t *sd_layer_norm(const sd_norm_t *n, const mmp_tensor_t *x);

/* ResnetBlock2D (diffusers, time_embedding_norm "default"). */
typedef struct sd_resnet {
  sd_norm_t norm1, norm2;
  sd_conv_t conv1, conv2, shortcut; /* shortcut.w NULL when in == out */
  sd_linear_t temb;                 /* temb.w NULL without time embedding */
  double out_scale;
} sd_resnet_t;
int sd_resnet_load(sd_resnet_t *r, sd_weights_t *w, const char *prefix,
                   int64_t in, int64_t out, int64_t temb_ch, int groups,
                   double eps, double out_scale);
void sd_resnet_free(sd_resnet_t *r);
/* @temb: [N, temb_ch] or NULL. */
mmp_tensor_t *sd_resnet(const sd_resnet_t *r, const mmp_tensor_t *x,
                        const mmp_tensor_t *temb);

/* Multi-head attention of diffusers' Attention / CLIP's attention. */
typedef struct sd_attn {
  sd_linear_t q, k, v, o;
  int heads;
  /* BLIP's fused [3 inner, dim] qkv as stored (sd_attn_load_fused; else
   * NULL): q, k, v are row views of it made at load time; while a tape
   * tracks it (trainable weights watched) they are sliced again per call,
   * so that the tape sees the uses of the parameter itself */
  sd_linear_t qkv;
} sd_attn_t;
/* q/k/v/o names are given (e.g. "to_q", "to_k", "to_v", "to_out.0"). */
int sd_attn_load(sd_attn_t *a, sd_weights_t *w, const char *prefix,
                 const char *const names[4], int64_t qdim, int64_t kvdim,
                 int64_t inner, int heads, bool qkv_bias);
void sd_attn_free(sd_attn_t *a);
/* x [B, Lq, qdim], ctx [B, Lk, kvdim] (NULL = self), key_mask [B, Lk]
 * u8 nonzero = do not attend (nullable). */
mmp_tensor_t *sd_attn(const sd_attn_t *a, const mmp_tensor_t *x,
                      const mmp_tensor_t *ctx, const mmp_tensor_t *key_mask,
                      bool causal);
/* The keys and values of @ctx [B, Lk, kvdim] split into heads, @k and @v
 * [B, H, Lk, inner/H] (transfer full), for sd_attn_cached: a context that
 * several calls attend to is projected once. 0 or an error code (then both
 * NULL). */
int sd_attn_kv(const sd_attn_t *a, const mmp_tensor_t *ctx, mmp_tensor_t **k, mmp_tensor_t **v);
/* sd_attn with the keys and values of sd_attn_kv. Their batch is x's B, or
 * 1 for one context shared by all B sequences of @x (broadcast: the B*L
 * query rows attend to the one K/V; then @causal must be false and
 * @key_mask, nullable, [1, Lk]). Same numbers as sd_attn(x, ctx). */
mmp_tensor_t *sd_attn_cached(const sd_attn_t *a, const mmp_tensor_t *x, const mmp_tensor_t *k,
                             const mmp_tensor_t *v, const mmp_tensor_t *key_mask, bool causal);

/* Load q/k/v from one fused [3*dim, dim] projection @qkv (BLIP's and
 * transformers' BLIP vision attention), sliced into row views, and the
 * output projection @out. @qkv_bias: whether @qkv has a bias. */
int sd_attn_load_fused(sd_attn_t *a, sd_weights_t *w, const char *qkv, const char *out,
                       int64_t dim, int heads, bool qkv_bias);

/* Activations named as in transformers' ACT2FN. */
typedef enum sd_act { SD_ACT_GELU = 0, SD_ACT_GELU_TANH, SD_ACT_QUICK_GELU, SD_ACT_RELU } sd_act_t;
/* "gelu", "gelu_new"/"gelu_pytorch_tanh", "quick_gelu", "relu"; else
 * MMP_EUNSUPPORTED naming it. */
int sd_act_parse(const char *name, sd_act_t *out);
/* (transfer full) act(x); NULL x gives NULL. */
mmp_tensor_t *sd_act(sd_act_t a, const mmp_tensor_t *x);

/* Two-layer MLP: fc2(act(fc1(x))). */
typedef struct sd_mlp {
  sd_linear_t fc1, fc2;
  sd_act_t act;
} sd_mlp_t;
int sd_mlp_load(sd_mlp_t *m, sd_weights_t *w, const char *fc1, const char *fc2, int64_t dim,
                int64_t hidden, sd_act_t act);
void sd_mlp_free(sd_mlp_t *m);
mmp_tensor_t *sd_mlp(const sd_mlp_t *m, const mmp_tensor_t *x);

/* One transformer encoder/decoder layer, in the two arrangements in use:
 * pre-norm (ViT, CLIP: x + attn(ln(x)), x + mlp(ln(x))) and post-norm
 * (BERT: ln(x + attn(x)), ln(x + cross(x, ctx)), ln(x + mlp(x))).
 * Loaded by the caller, whose checkpoints name the parts differently. */
typedef struct sd_block {
  bool post_norm;
  sd_norm_t ln_attn, ln_cross, ln_mlp;
  sd_attn_t attn;
  sd_attn_t cross; /* cross.q.w NULL: no cross-attention */
  sd_mlp_t mlp;
} sd_block_t;
void sd_block_free(sd_block_t *b);
/* Dropout of a training forward, as torch's nn.Dropout modules in train
 * mode (BERT's: med.py, transformers' BertModel): @rng NULL means none (eval
 * mode; the inference functions). p = 0 draws nothing (mmp_dropout). */
typedef struct sd_dropout {
  mmp_rng_t *rng; /* (transfer none) the generator drawn from, torch's order */
  double hidden;  /* hidden_dropout_prob: each sub-layer's output before its residual (and the embeddings) */
  double attn;    /* attention_probs_dropout_prob: the attention probabilities */
  double path;    /* pre-norm (ViT) layers: timm's DropPath rate of this block, on each branch before its residual */
  mmp_drop_path_draws_t path_draws; /* which timm's draws (mmp_drop_path) */
  /* data parallelism: the rows (dimension 0) are rows [rows_off, rows_off + B) of a batch of
   * rows_total (0: the whole batch), and draw as that batch would (mmp_dropout_rows) */
  int64_t rows_total, rows_off;
} sd_dropout_t;
/* mmp_dropout_rows / mmp_drop_path_rows of @x at @p by @dp's generator and
 * shard (transfer full) */
mmp_tensor_t *sd_dropout_apply(const sd_dropout_t *dp, mmp_tensor_t *x, double p);
mmp_tensor_t *sd_drop_path_apply(const sd_dropout_t *dp, mmp_tensor_t *x, double p);
/* x [B, L, D]; mask [B, L] u8 nonzero = padding (nullable); causal: the
 * decoder's self-attention; ctx [B, Lc, Dc] (nullable: the cross-attention
 * is skipped) with ctx_mask [B, Lc] (nullable). (transfer full) */
mmp_tensor_t *sd_block(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask,
                       bool causal, const mmp_tensor_t *ctx, const mmp_tensor_t *ctx_mask);
/* sd_block for training with dropout @dp (nullable or rng NULL: none, the
 * numbers of sd_block). Post-norm (BERT) layers take hidden and attn (not
 * path) and draw in med.py's order: self-attention probabilities [B, H,
 * L, L], its output, then the cross-attention's two, then the MLP's output.
 * Pre-norm (ViT) layers take path only (timm's Block: x + drop_path(attn(
 * norm1(x))), then x + drop_path(mlp(norm2(x))); one draw per sample after
 * each branch, none when path is 0); other combinations: MMP_EUNSUPPORTED.
 * With dropout the attention is computed unfused (scores materialised) with
 * med.py's additive -10000 mask; causal is refused. The cross-attention reads
 * @ctx, or @ck, @cv (sd_attn_kv) when given. (transfer full) */
mmp_tensor_t *sd_block_dropout(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                               const mmp_tensor_t *ctx, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                               const mmp_tensor_t *ctx_mask, const sd_dropout_t *dp);
/* sd_block_dropout for training, as one checkpoint region when @ckpt and a
 * tape is current (mmp_tape_checkpoint: the layer keeps only its inputs on
 * the tape and runs again in the backward; dropout and drop path replay
 * their draws from @dp->rng, which must live until the backward); otherwise
 * sd_block_dropout itself. What torch.utils.checkpoint does per layer for
 * transformers' and BLIP's gradient_checkpointing. (transfer full) */
mmp_tensor_t *sd_block_train(const sd_block_t *b, bool ckpt, const mmp_tensor_t *x, const mmp_tensor_t *mask, bool causal,
                             const mmp_tensor_t *ctx, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                             const mmp_tensor_t *ctx_mask, const sd_dropout_t *dp);
/* sd_block with the cross-attention's keys and values precomputed
 * (sd_attn_kv of the layer's cross attention; batch B or 1 as in
 * sd_attn_cached). MMP_EINVAL when the layer has no cross-attention. */
mmp_tensor_t *sd_block_cached(const sd_block_t *b, const mmp_tensor_t *x, const mmp_tensor_t *mask,
                              bool causal, const mmp_tensor_t *ck, const mmp_tensor_t *cv,
                              const mmp_tensor_t *ctx_mask);

/* Transformer2DModel (continuous input) with BasicTransformerBlocks. */
typedef struct sd_tblock {
  sd_norm_t norm1, norm2, norm3;
  sd_attn_t attn1, attn2;
  sd_linear_t ff_in, ff_out; /* GEGLU proj, output linear */
} sd_tblock_t;
typedef struct sd_transformer {
  sd_norm_t norm;
  sd_linear_t proj_in, proj_out; /* [inner, C] weights (1x1 conv or linear) */
  bool linear_proj;
  int n_blocks;
  sd_tblock_t *blocks;
  int64_t inner;
  int64_t ff_chunk_rows; /* feed-forward rows per block: 0 automatic, < 0 all at once */
} sd_transformer_t;
int sd_transformer_load(sd_transformer_t *t, sd_weights_t *w, const char *prefix,
                        int64_t ch, int heads, int64_t cross_dim, int layers,
                        int groups, bool linear_proj);
void sd_transformer_free(sd_transformer_t *t);
mmp_tensor_t *sd_transformer(const sd_transformer_t *t, const mmp_tensor_t *x,
                             const mmp_tensor_t *ctx, const mmp_tensor_t *mask);

/* VAE mid-block attention (one head over all channels, group norm,
 * residual). Accepts new (to_q..) and old (query..) diffusers names. */
typedef struct sd_vae_attn {
  sd_norm_t norm;
  sd_attn_t attn;
} sd_vae_attn_t;
int sd_vae_attn_load(sd_vae_attn_t *a, sd_weights_t *w, const char *prefix,
                     int64_t ch, int groups, double eps);
void sd_vae_attn_free(sd_vae_attn_t *a);
mmp_tensor_t *sd_vae_attn(const sd_vae_attn_t *a, const mmp_tensor_t *x);

/* 2x2 downsample conv (pad 1, or diffusers' asymmetric (0,1,0,1) pad when
 * @pad is 0) and nearest-2x upsample + conv. */
mmp_tensor_t *sd_downsample(const sd_conv_t *c, const mmp_tensor_t *x);
mmp_tensor_t *sd_upsample(const sd_conv_t *c, const mmp_tensor_t *x);

/* Parse "f32"... for a key value and convert; small helpers for inputs. */
/* Copy an input tensor to @be as contiguous f32. (transfer full) */
mmp_tensor_t *sd_input_f32(const mmp_tensor_t *t, mmp_backend_t *be);
/* A mask input (u8/bool/i64/f32, nonzero = do not attend) as u8. */
mmp_tensor_t *sd_input_mask(const mmp_tensor_t *t, mmp_backend_t *be, bool invert);

#endif
