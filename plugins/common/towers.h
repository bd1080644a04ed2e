/* plugins/common/towers.h - the Vision Transformer and BERT towers shared by
 * the vit, bert and blip encoder plugins, in the naming schemes of
 * transformers (ViTModel, BlipVisionModel, BertModel, BlipTextModel) and of
 * BLIP's original code (models/vit.py VisionTransformer, models/med.py
 * BertModel), built from sd_common.h's blocks.
 *
 * A tower is loaded from a weight store (sd_weights_t, which may carry a
 * checkpoint-wide prefix such as AR-LDM's "mm_encoder.") under a tower
 * prefix ("visual_encoder.", "vision_model.", "" ...). Problems are recorded
 * in the store and reported together by sd_weights_finish().
 */
#ifndef MMPIPE_PLUGINS_TOWERS_H
#define MMPIPE_PLUGINS_TOWERS_H

#include "plugins/common/sd_common.h"

/* ---- Vision Transformer ---- */
typedef enum sd_vit_kind {
  SD_VIT_HF = 0,   /* transformers ViTModel ("vit") */
  SD_VIT_BLIP_HF,  /* transformers BlipVisionModel ("blip_vision_model") */
  SD_VIT_BLIP,     /* BLIP's models/vit.py VisionTransformer */
  SD_VIT_CLIP_HF   /* transformers CLIPVisionModel ("clip_vision_model"): patch
                    * conv without bias, pre_layrnorm, the config's hidden_act
                    * (quick_gelu), post_layernorm on the pooled CLS only, no
                    * position interpolation */
} sd_vit_kind_t;

typedef struct sd_vit {
  sd_vit_kind_t kind;
  int64_t dim, heads, layers, inter, patch, chans;
  double eps;
  sd_act_t act;             /* the MLP's activation (gelu except CLIP) */
  sd_conv_t patch_embed;
  mmp_tensor_t *cls;        /* [1, 1, D] */
  mmp_tensor_t *pos;        /* [1, 1 + g*g, D] as stored */
  int64_t grid;             /* g: the stored grid side */
  sd_block_t *blocks;
  sd_norm_t norm;
  sd_norm_t pre_norm;       /* CLIP's pre_layrnorm (w NULL for the other kinds) */
  sd_linear_t pooler;       /* ViTModel's dense + tanh (w NULL when absent) */
  mmp_tensor_t *pos_cache;  /* the table interpolated for cache_gh x cache_gw */
  int64_t cache_gh, cache_gw;
  bool checkpointing;       /* under a tape each block is a checkpoint region (sd_block_train) */
} sd_vit_t;

/* The dimensions of BLIP's create_vit presets: "base" (768, 12 layers,
 * 12 heads) and "large" (1024, 24, 16); patch 16, MLP ratio 4, LayerNorm
 * eps 1e-6, exact GELU. 0 or MMP_ENOENT. */
int sd_vit_blip_preset(const char *name, sd_vit_t *v);

/* Load a tower. @j: the transformers config (vision part) for the HF kinds;
 * for SD_VIT_BLIP the dimensions come from @v (a preset, or all zero to
 * read them off the stored tensors; @v->heads must then be set, or is taken
 * from the width: 768 -> 12, 1024 -> 16). Errors in the config are returned
 * (with @cpath); weight problems are recorded in @w. */
int sd_vit_load(sd_vit_t *v, sd_vit_kind_t kind, const json_t *j, const char *cpath, sd_weights_t *w,
                const char *prefix);
void sd_vit_free(sd_vit_t *v);
/* pixel_values [B, C, H, W] (H, W multiples of the patch) -> last_hidden_state
 * [B, 1 + N, D] (transfer full; for SD_VIT_CLIP_HF the encoder output
 * without post_layernorm, as CLIPVisionModel returns it). Position embeddings are interpolated
 * bicubically (BLIP's interpolate_pos_embed) when the grid differs from the
 * stored one (CLIP: an MMP_ESHAPE error instead, as transformers 4.30
 * has no interpolation); the table is cached for the last grid. @hidden (nullable):
 * layers + 1 entries receive the embeddings and each layer's output;
 * @pooled (nullable): the pooler output where the kind has one, else NULL
 * (CLIP: post_layernorm of the CLS row). */
mmp_tensor_t *sd_vit(sd_vit_t *v, const mmp_tensor_t *pixels, mmp_tensor_t **hidden, mmp_tensor_t **pooled);
/* sd_vit in train mode with stochastic depth (timm's VisionTransformer:
 * block i's two branches pass through DropPath(dpr[i]), dpr =
 * torch.linspace(0, rate, layers) as mmp_linspace_f32 computes it, rate =
 * @train->path; a block whose rate is 0 draws nothing), drawn from
 * @train->rng on its shard in the forward's order by @train->path_draws
 * (mmp_drop_path_rows). The rate in [0, 1); not for SD_VIT_CLIP_HF. Under
 * a tape the backward uses the same draws. No pooled output. (transfer full) */
mmp_tensor_t *sd_vit_drop_path(sd_vit_t *v, const mmp_tensor_t *pixels, mmp_tensor_t **hidden, const sd_dropout_t *train);

/* ---- BERT ---- */
typedef struct sd_bert {
  int64_t dim, heads, layers, inter, n_vocab, n_pos, enc_width;
  double eps;
  sd_act_t act;
  mmp_tensor_t *word, *pos, *type; /* type NULL: no token-type table (BLIP) */
  sd_norm_t emb_ln;
  sd_block_t *blocks;
  sd_linear_t pooler;              /* dense + tanh on the first token (w NULL when absent) */
  bool cross;                      /* layers have cross-attention */
  bool is_decoder;                 /* the config's default for causal self-attention */
  int64_t pad_id;                  /* torch's padding_idx of the word table (its row gets no gradient under a
                                    * tape): pad_token_id, or -1 (none) when the table was resized past the
                                    * config's vocab_size (transformers' resize_token_embeddings drops it) */
  double hidden_dropout;           /* hidden_dropout_prob (0.1): for sd_bert_dropout only */
  double attn_dropout;             /* attention_probs_dropout_prob (0.1): for sd_bert_dropout only */
  bool checkpointing;              /* under a tape each layer is a checkpoint region (sd_block_train) */
} sd_bert_t;

/* Load from a transformers BertConfig / BlipTextConfig / BLIP med_config
 * (@j; "model_type" "bert" or "blip_text_model"). Cross-attention: "bert"
 * with add_cross_attention (keys from encoder_width when given, else
 * hidden_size), "blip_text_model" when is_decoder (keys from
 * encoder_hidden_size); the key width as stored wins, then @b->enc_width
 * when the caller set it > 0 (BLIP_Base: the vision width), then the
 * config. The token-type table and the pooler are used when the checkpoint
 * has them. */
int sd_bert_load(sd_bert_t *b, const json_t *j, const char *cpath, sd_weights_t *w, const char *prefix);
void sd_bert_free(sd_bert_t *b);
/* Grow the word table to @rows (sd_grow_rows, N(0, 0.02)). */
int sd_bert_resize_vocab(sd_bert_t *b, int64_t rows, uint64_t seed);
/* ids [B, L] i64 on the tower's backend, already range-checked;
 * mask [B, L] u8 nonzero = padding (nullable); types [B, L] (nullable:
 * zeros); ctx [B, Lc, enc_width] (nullable) with ctx_mask [B, Lc] u8
 * (nullable). @hidden / @pooled as sd_vit. (transfer full) */
mmp_tensor_t *sd_bert(const sd_bert_t *b, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                      const mmp_tensor_t *types, bool causal, const mmp_tensor_t *ctx,
                      const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled);
/* sd_bert in train mode (med.py's BertModel after .train()): dropout drawn
 * from @rng (required) in torch's order, the embeddings' (p =
 * hidden_dropout_prob) after their LayerNorm, then per layer the attention
 * probabilities (attention_probs_dropout_prob) and the output before the
 * residual (hidden_dropout_prob) of the self-attention, of the
 * cross-attention, and the output of the MLP (sd_block_dropout). Not causal.
 * Under a tape its backward uses the same masks. (transfer full) */
mmp_tensor_t *sd_bert_dropout(const sd_bert_t *b, const sd_dropout_t *train, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                              const mmp_tensor_t *types, bool causal, const mmp_tensor_t *ctx,
                              const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled);

/* The cross-attention keys and values of @ctx [Bc, Lc, enc_width] in every
 * layer, for sd_bert_cached: @kv receives 2 * layers tensors (key, value of
 * layer 0, then layer 1, ...), each [Bc, heads, Lc, dim / heads] (transfer
 * full each). One image attended by many captions (BLIP's ITM over k_test
 * candidates) is projected once instead of once per pair. 0, or an error
 * code with nothing left in @kv. */
int sd_bert_cross_kv(const sd_bert_t *b, const mmp_tensor_t *ctx, mmp_tensor_t **kv);
/* sd_bert with the cross-attention keys and values of sd_bert_cross_kv in
 * place of ctx: their batch is B, or 1 for one context shared by all B
 * sequences (broadcast, not copied: the B*L query rows attend to it
 * together; @ctx_mask then nullable [1, Lc]). The same numbers as sd_bert
 * with ctx. (transfer full) */
mmp_tensor_t *sd_bert_cached(const sd_bert_t *b, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                             const mmp_tensor_t *types, bool causal, const mmp_tensor_t *const *kv,
                             const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled);

/* Token ids of an encoder input (i64 or i32 [B, L]) as a new i64 tensor
 * on @be after checking every id against @n_vocab (MMP_EINVAL naming the
 * id and its position). @first_id >= 0 replaces column 0 of the copy
 * (BLIP's [ENC]; the caller's tensor is never written). (transfer full) */
mmp_tensor_t *sd_input_ids(const mmp_tensor_t *ids, int64_t n_vocab, mmp_backend_t *be, const char *who,
                           int64_t first_id);

/* ---- what the tower plugins share ---- */
/* Key-table rows of the vit, bert and blip plugins. */
#define SD_TOWER_KEYS                                                                                        \
  {"model_dir", MMP_TYPE_STRING, "\"\"", "a transformers folder: config.json + model.safetensors (or pytorch_model.bin)", \
   MMP_KEY_PATH, 0},                                                                                         \
  {"config", MMP_TYPE_STRING, "\"\"", "config.json (transformers, or BLIP's med_config.json) instead of model_dir", \
   MMP_KEY_PATH, 0},                                                                                         \
  {"weights", MMP_TYPE_STRING, "\"\"", ".safetensors with transformers' or BLIP's names (instead of model_dir)", \
   MMP_KEY_PATH, 0},                                                                                         \
  {"weights_prefix", MMP_TYPE_STRING, "\"\"",                                                              \
   "take only the tensors whose dotted path starts with this and strip it (\"model.\" in a BLIP .pth, "     \
   "\"state_dict.mm_encoder.\" in an AR-LDM .ckpt, \"mm_encoder.\" in its safetensors); doc/checkpoint.md", 0, 0}, \
  {"prefix", MMP_TYPE_STRING, "\"\"",                                                                      \
   "then the tower's own names begin with this (AR-LDM: \"mm_encoder.\" for blip, \"mm_encoder.visual_encoder.\" for vit)", 0, 0}, \
  {"init_seed", MMP_TYPE_INT, "-1", ">= 0: seeded random weights instead of a file (benchmarks)", 0, 0},    \
  SD_WEIGHTS_DTYPE_KEY,                                                                                      \
  {"output_hidden_states", MMP_TYPE_BOOL, "false", "also output hidden_states.K (K = 0: embeddings, K: layer K)", 0, 0}

/* Paths of the config.json (empty when none and @need_config is false)
 * and of the weights (empty with init_seed >= 0), from `model_dir`,
 * `config`, `weights`. MMP_ECONFIG errors name the key. */
int sd_tower_locate(const mmp_config_t *cfg, bool need_config, char *cpath, size_t cplen, char *wpath, size_t wplen);
/* Typed getters with a default for absent keys; errors carry file:line. */
int sd_cfg_str(const mmp_config_t *cfg, const char *key, const char *def, const char **out);
int sd_cfg_int(const mmp_config_t *cfg, const char *key, int64_t def, int64_t *out);
int sd_cfg_bool(const mmp_config_t *cfg, const char *key, bool def, bool *out);
int sd_cfg_float(const mmp_config_t *cfg, const char *key, double def, double *out);
/* MMP_ECONFIG "file:line: key: msg". */
int sd_cfg_bad(const mmp_config_t *cfg, const char *key, const char *msg);
/* Put @t under @name into @out, or hidden_states.K for K in 0..n-1
 * (consumes the references; NULL entries are skipped). */
int sd_put_hidden(mmp_tensormap_t *out, mmp_tensor_t **hidden, int64_t n);

#endif
