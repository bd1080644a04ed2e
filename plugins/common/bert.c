/* plugins/common/bert.c - the BERT tower (transformers BertModel and
 * BlipTextModel, BLIP's med.py BertModel) and the id input shared by the
 * text encoders, through the core tensor API. */
#include "plugins/common/towers.h"

#include <mmpipe/autograd.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sd_bert_load(sd_bert_t *b, const json_t *j, const char *cpath, sd_weights_t *w, const char *P) {
  int rc;
  const char *mt = sd_json_str(j, "model_type", "bert");
  bool blip_hf = !strcmp(mt, "blip_text_model");
  if (!blip_hf && strcmp(mt, "bert"))
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: bert: model_type \"%s\" (bert or blip_text_model)", cpath, mt);
  const char *pet = sd_json_str(j, "position_embedding_type", "absolute");
  if (strcmp(pet, "absolute"))
    return mmp_error_set(MMP_EUNSUPPORTED, "%s: bert: position_embedding_type %s (only absolute)", cpath, pet);
  bool add_cross;
  int64_t n_types, want_width = b->enc_width;
  if ((rc = sd_json_int(j, "hidden_size", 768, &b->dim)) || (rc = sd_json_int(j, "num_hidden_layers", 12, &b->layers)) ||
      (rc = sd_json_int(j, "num_attention_heads", 12, &b->heads)) ||
      (rc = sd_json_int(j, "intermediate_size", 3072, &b->inter)) ||
      (rc = sd_json_int(j, "vocab_size", blip_hf ? 30524 : 30522, &b->n_vocab)) ||
      (rc = sd_json_int(j, "max_position_embeddings", 512, &b->n_pos)) ||
      (rc = sd_json_int(j, "type_vocab_size", 2, &n_types)) || (rc = sd_json_int(j, "pad_token_id", 0, &b->pad_id)) ||
      (rc = sd_json_float(j, "layer_norm_eps", 1e-12, &b->eps)) ||
      (rc = sd_json_float(j, "hidden_dropout_prob", 0.1, &b->hidden_dropout)) ||
      (rc = sd_json_float(j, "attention_probs_dropout_prob", 0.1, &b->attn_dropout)) ||
      (rc = sd_json_bool(j, "is_decoder", blip_hf, &b->is_decoder)) ||
      (rc = sd_json_bool(j, "add_cross_attention", false, &add_cross)) ||
      (rc = sd_json_int(j, blip_hf ? "encoder_hidden_size" : "encoder_width", blip_hf ? 768 : -1, &b->enc_width)) ||
      (rc = sd_act_parse(sd_json_str(j, "hidden_act", "gelu"), &b->act)))
    return mmp_error_prefix("%s: ", cpath);
  if (b->enc_width < 0) b->enc_width = b->dim;
  if (want_width > 0) b->enc_width = want_width;
  /* BlipTextModel has cross-attention layers when configured as a decoder
   * (BLIP's text towers all are); BertModel and med.py when asked. */
  b->cross = blip_hf ? b->is_decoder : add_cross;
  if (blip_hf) b->is_decoder = false; /* BlipTextModel.forward's is_decoder defaults to False */
  /* Bounds well above any real tower keep random-weight sizes sane. */
  if (b->dim <= 0 || b->dim > 65536 || b->heads <= 0 || b->dim % b->heads || b->layers < 0 || b->layers > 1000 ||
      b->inter <= 0 || b->inter > 262144 || b->n_pos <= 0 || b->n_pos > 1048576 || b->enc_width <= 0 ||
      b->enc_width > 65536 || b->n_vocab <= 0 || b->n_vocab > 16777216 || n_types < 0 || n_types > 65536)
    return mmp_error_set(MMP_EDATA, "%s: bert: hidden_size %lld, %lld heads, %lld layers do not make a tower", cpath,
                         (long long)b->dim, (long long)b->heads, (long long)b->layers);
  if (!(b->hidden_dropout >= 0 && b->hidden_dropout <= 1) || !(b->attn_dropout >= 0 && b->attn_dropout <= 1))
    return mmp_error_set(MMP_EDATA, "%s: bert: hidden_dropout_prob %g and attention_probs_dropout_prob %g must lie in [0, 1]",
                         cpath, b->hidden_dropout, b->attn_dropout);
  char n[512], n2[512];
  int nd;
  int64_t s[MMP_MAX_DIMS];
  /* The word table as stored (AR-LDM's is resized past its config). */
  snprintf(n, sizeof n, "%sembeddings.word_embeddings.weight", P);
  if (sd_w_info(w, n, &nd, s) == 0 && nd == 2) {
    /* a table resized past the config was made by transformers'
     * resize_token_embeddings: a new nn.Embedding without padding_idx */
    if (s[0] != b->n_vocab) b->pad_id = -1;
    b->n_vocab = s[0];
  }
  int64_t ws[2] = {b->n_vocab, b->dim}, ps[2] = {b->n_pos, b->dim}, ts[2] = {n_types, b->dim};
  /* The cross-attention key width as stored: BLIP_Base sets encoder_width
   * to the vision width at run time, whatever med_config.json says. */
  snprintf(n2, sizeof n2, "%sencoder.layer.0.crossattention.self.key.weight", P);
  if (b->cross && sd_w_info(w, n2, &nd, s) == 0 && nd == 2) b->enc_width = s[1];
  b->word = sd_w(w, 2, ws, "%s", n);
  b->pos = sd_w(w, 2, ps, "%sembeddings.position_embeddings.weight", P);
  snprintf(n, sizeof n, "%sembeddings.token_type_embeddings.weight", P);
  if (!blip_hf && n_types > 0 && sd_weights_has(w, n)) b->type = sd_w(w, 2, ts, "%s", n);
  snprintf(n, sizeof n, "%sembeddings.LayerNorm", P);
  sd_norm_load(&b->emb_ln, w, n, b->dim, 0, b->eps);
  b->blocks = calloc((size_t)(b->layers ? b->layers : 1), sizeof *b->blocks);
  if (!b->blocks) return mmp_error_set(MMP_ENOMEM, "out of memory");
  static const char *const names[4] = {"self.query", "self.key", "self.value", "output.dense"};
  for (int64_t i = 0; i < b->layers; i++) {
    sd_block_t *l = &b->blocks[i];
    long long li = (long long)i;
    l->post_norm = true;
    snprintf(n, sizeof n, "%sencoder.layer.%lld.attention", P, li);
    sd_attn_load(&l->attn, w, n, names, b->dim, b->dim, b->dim, (int)b->heads, true);
    snprintf(n, sizeof n, "%sencoder.layer.%lld.attention.output.LayerNorm", P, li);
    sd_norm_load(&l->ln_attn, w, n, b->dim, 0, b->eps);
    if (b->cross) {
      snprintf(n, sizeof n, "%sencoder.layer.%lld.crossattention", P, li);
      sd_attn_load(&l->cross, w, n, names, b->dim, b->enc_width, b->dim, (int)b->heads, true);
      snprintf(n, sizeof n, "%sencoder.layer.%lld.crossattention.output.LayerNorm", P, li);
      sd_norm_load(&l->ln_cross, w, n, b->dim, 0, b->eps);
    }
    snprintf(n, sizeof n, "%sencoder.layer.%lld.intermediate.dense", P, li);
    snprintf(n2, sizeof n2, "%sencoder.layer.%lld.output.dense", P, li);
    sd_mlp_load(&l->mlp, w, n, n2, b->dim, b->inter, b->act);
    snprintf(n, sizeof n, "%sencoder.layer.%lld.output.LayerNorm", P, li);
    sd_norm_load(&l->ln_mlp, w, n, b->dim, 0, b->eps);
  }
  snprintf(n, sizeof n, "%spooler.dense.weight", P);
  if (sd_weights_has(w, n)) {
    snprintf(n, sizeof n, "%spooler.dense", P);
    sd_linear_load(&b->pooler, w, n, b->dim, b->dim, true);
  }
  return 0;
}

void sd_bert_free(sd_bert_t *b) {
  if (!b) return;
  mmp_tensor_unref(b->word);
  mmp_tensor_unref(b->pos);
  mmp_tensor_unref(b->type);
  sd_norm_free(&b->emb_ln);
  for (int64_t i = 0; b->blocks && i < b->layers; i++) sd_block_free(&b->blocks[i]);
  free(b->blocks);
  sd_linear_free(&b->pooler);
  memset(b, 0, sizeof *b);
}

int sd_bert_resize_vocab(sd_bert_t *b, int64_t rows, uint64_t seed) {
  if (!b->word || rows == b->n_vocab) return 0;
  if (rows < b->n_vocab)
    return mmp_error_set(MMP_EINVAL, "bert: vocab_size %lld is smaller than the stored table of %lld rows",
                         (long long)rows, (long long)b->n_vocab);
  b->word = sd_grow_rows(b->word, rows, 0.02, seed);
  if (!b->word) return mmp_error_code();
  b->n_vocab = rows;
  b->pad_id = -1; /* as resize_token_embeddings: the new table has no padding_idx */
  return 0;
}

mmp_tensor_t *sd_input_ids(const mmp_tensor_t *ids, int64_t n_vocab, mmp_backend_t *be, const char *who,
                           int64_t first_id) {
  if (ids->ndim != 2) {
    mmp_error_set(MMP_ESHAPE, "%s: input_ids must be [B, L]", who);
    return NULL;
  }
  if (ids->dtype != MMP_I64 && ids->dtype != MMP_I32) {
    mmp_error_set(MMP_EDTYPE, "%s: input_ids must be i64 or i32, not %s", who, mmp_dtype_name(ids->dtype));
    return NULL;
  }
  int64_t B = ids->shape[0], L = ids->shape[1];
  int64_t n = B * L;
  int64_t *h = malloc((size_t)(n > 0 ? n : 1) * sizeof *h);
  mmp_tensor_t *i64 = ids->dtype == MMP_I64 ? mmp_tensor_ref((mmp_tensor_t *)ids) : mmp_convert(ids, MMP_I64);
  if (!h || !i64 || mmp_tensor_to_host(i64, h, (size_t)(B * L) * sizeof *h) < 0) {
    if (!mmp_error_code()) mmp_error_set(MMP_ENOMEM, "out of memory");
    free(h);
    mmp_tensor_unref(i64);
    return NULL;
  }
  for (int64_t k = 0; k < B * L; k++)
    if (h[k] < 0 || h[k] >= n_vocab) {
      mmp_error_set(MMP_EINVAL, "%s: input_ids[%lld, %lld] = %lld is outside the vocabulary of %lld", who,
                    (long long)(k / L), (long long)(k % L), (long long)h[k], (long long)n_vocab);
      free(h);
      mmp_tensor_unref(i64);
      return NULL;
    }
  if (first_id >= 0)
    for (int64_t k = 0; k < B; k++) h[k * L] = first_id;
  mmp_tensor_t *r = mmp_tensor_from_data(be, MMP_I64, 2, ids->shape, h);
  mmp_tensor_unref(i64);
  free(h);
  return r;
}

int sd_bert_cross_kv(const sd_bert_t *b, const mmp_tensor_t *ctx, mmp_tensor_t **kv) {
  if (!b->cross) return mmp_error_set(MMP_EINVAL, "bert: the layers have no cross-attention");
  if (ctx->ndim != 3 || ctx->shape[2] != b->enc_width) {
    char d[96];
    return mmp_error_set(MMP_ESHAPE, "bert: encoder_hidden_states %s must be [B, Lc, %lld]",
                         mmp_tensor_describe(ctx, d, sizeof d), (long long)b->enc_width);
  }
  for (int64_t i = 0; i < b->layers; i++) {
    int rc = sd_attn_kv(&b->blocks[i].cross, ctx, &kv[2 * i], &kv[2 * i + 1]);
    if (rc) {
      for (int64_t k = 0; k < 2 * i; k++) mmp_tensor_unref(kv[k]), kv[k] = NULL;
      return rc;
    }
  }
  return 0;
}

/* The word table the embedding reads. Under a tape that tracks it, torch's
 * padding_idx is honoured: the pad row is a copy the tape does not track
 * (the same values), so that row gets no gradient, as in BERT's
 * nn.Embedding(..., padding_idx = pad_token_id). (transfer full) */
static mmp_tensor_t *word_table(const sd_bert_t *b) {
  mmp_tape_t *tape = mmp_tape_current();
  int64_t V = b->word->shape[0], p = b->pad_id;
  if (!tape || p < 0 || p >= V || !mmp_tape_tracks(tape, b->word)) return mmp_tensor_ref(b->word);
  mmp_tape_t *prev = mmp_tape_set_current(NULL);
  mmp_tensor_t *rv = mmp_slice(b->word, 0, p, p + 1, 1);
  mmp_tensor_t *row = rv ? mmp_clone(rv) : NULL;
  mmp_tensor_unref(rv);
  mmp_tape_set_current(prev);
  mmp_tensor_t *parts[3], *r = NULL;
  int n = 0;
  if (p > 0) parts[n++] = mmp_slice(b->word, 0, 0, p, 1);
  parts[n++] = row;
  if (p + 1 < V) parts[n++] = mmp_slice(b->word, 0, p + 1, V, 1);
  bool all = true;
  for (int i = 0; i < n; i++) all = all && parts[i];
  if (all) r = mmp_concat(parts, n, 0);
  for (int i = 0; i < n; i++) mmp_tensor_unref(parts[i]);
  return r;
}

/* sd_bert, sd_bert_cached and sd_bert_dropout: cross-attention to @ctx, or
 * to @kv; dropout drawn from @train's generator on its shard (nullable:
 * none; its rates are the tower's). */
static mmp_tensor_t *bert_run(const sd_bert_t *b, const sd_dropout_t *train, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                              const mmp_tensor_t *types, bool causal, const mmp_tensor_t *ctx,
                              const mmp_tensor_t *const *kv, const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden,
                              mmp_tensor_t **pooled) {
  if (pooled) *pooled = NULL;
  if (!ids) return NULL;
  int64_t B = ids->shape[0], L = ids->shape[1];
  if (L > b->n_pos) {
    mmp_error_set(MMP_ESHAPE, "bert: %lld tokens but only %lld positions", (long long)L, (long long)b->n_pos);
    return NULL;
  }
  if (kv && !b->cross) {
    mmp_error_set(MMP_EINVAL, "bert: cross-attention keys given but the layers have no cross-attention");
    return NULL;
  }
  for (int64_t i = 0; kv && i < 2 * b->layers; i++) {
    const mmp_tensor_t *t = kv[i];
    if (!t || t->ndim != 4 || (t->shape[0] != B && t->shape[0] != 1) || t->shape[1] != b->heads ||
        t->shape[3] != b->dim / b->heads || t->shape[2] != kv[0]->shape[2]) {
      char d[96];
      mmp_error_set(MMP_ESHAPE, "bert: cross-attention %s of layer %lld: %s must be [%lld or 1, %lld, Lc, %lld]",
                    i % 2 ? "values" : "keys", (long long)(i / 2), t ? mmp_tensor_describe(t, d, sizeof d) : "none",
                    (long long)B, (long long)b->heads, (long long)(b->dim / b->heads));
      return NULL;
    }
  }
  if (ctx && (ctx->ndim != 3 || ctx->shape[0] != B || ctx->shape[2] != b->enc_width)) {
    char d[96];
    mmp_error_set(MMP_ESHAPE, "bert: encoder_hidden_states %s must be [%lld, Lc, %lld]",
                  mmp_tensor_describe(ctx, d, sizeof d), (long long)B, (long long)b->enc_width);
    return NULL;
  }
  if (ctx && !b->cross) {
    mmp_error_set(MMP_EINVAL, "bert: encoder_hidden_states given but the layers have no cross-attention");
    return NULL;
  }
  mmp_tensor_t *word = word_table(b);
  mmp_tensor_t *h = word ? mmp_embedding(word, ids) : NULL;
  mmp_tensor_unref(word);
  if (b->type) {
    mmp_tensor_t *t;
    if (types) {
      t = mmp_embedding(b->type, types);
    } else { /* token_type_ids default to zeros: row 0 for every token */
      mmp_tensor_t *row = mmp_slice(b->type, 0, 0, 1, 1);
      t = row;
    }
    h = sd_swap(h, h && t ? mmp_add(h, t) : NULL);
    mmp_tensor_unref(t);
  }
  mmp_tensor_t *pos = mmp_slice(b->pos, 0, 0, L, 1);
  h = sd_swap(h, h && pos ? mmp_add(h, pos) : NULL);
  mmp_tensor_unref(pos);
  h = sd_swap(h, sd_layer_norm(&b->emb_ln, h));
  /* med.py in train mode: BertEmbeddings' dropout, then each layer's */
  sd_dropout_t dp = {train ? train->rng : NULL, b->hidden_dropout, b->attn_dropout, 0.0, MMP_DROP_PATH_BERNOULLI,
                     train ? train->rows_total : 0, train ? train->rows_off : 0};
  if (train) h = sd_swap(h, sd_dropout_apply(&dp, h, b->hidden_dropout));
  for (int64_t i = 0; i < b->layers && h; i++) {
    if (hidden) hidden[i] = mmp_tensor_ref(h);
    h = sd_swap(h, sd_block_train(&b->blocks[i], b->checkpointing, h, mask, causal, kv ? NULL : ctx, kv ? kv[2 * i] : NULL,
                                  kv ? kv[2 * i + 1] : NULL, ctx_mask, train ? &dp : NULL));
  }
  if (hidden && h) hidden[b->layers] = mmp_tensor_ref(h);
  if (!h || !pooled || !b->pooler.w) return h;
  mmp_tensor_t *first = mmp_slice(h, 1, 0, 1, 1);
  int64_t s2[2] = {B, b->dim};
  first = sd_swap(first, first ? mmp_reshape(first, 2, s2) : NULL);
  first = sd_swap(first, sd_linear(&b->pooler, first));
  *pooled = sd_swap(first, first ? mmp_tanh(first) : NULL);
  if (!*pooled) {
    mmp_tensor_unref(h);
    return NULL;
  }
  return h;
}

mmp_tensor_t *sd_bert(const sd_bert_t *b, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                      const mmp_tensor_t *types, bool causal, const mmp_tensor_t *ctx,
                      const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled) {
  return bert_run(b, NULL, ids, mask, types, causal, ctx, NULL, ctx_mask, hidden, pooled);
}

mmp_tensor_t *sd_bert_dropout(const sd_bert_t *b, const sd_dropout_t *train, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                              const mmp_tensor_t *types, bool causal, const mmp_tensor_t *ctx,
                              const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled) {
  if (pooled) *pooled = NULL;
  if (!train || !train->rng) {
    mmp_error_set(MMP_EINVAL, "bert: dropout needs a generator");
    return NULL;
  }
  return bert_run(b, train, ids, mask, types, causal, ctx, NULL, ctx_mask, hidden, pooled);
}

mmp_tensor_t *sd_bert_cached(const sd_bert_t *b, const mmp_tensor_t *ids, const mmp_tensor_t *mask,
                             const mmp_tensor_t *types, bool causal, const mmp_tensor_t *const *kv,
                             const mmp_tensor_t *ctx_mask, mmp_tensor_t **hidden, mmp_tensor_t **pooled) {
  if (pooled) *pooled = NULL;
  if (!kv) {
    mmp_error_set(MMP_EINVAL, "bert: no cached cross-attention keys");
    return NULL;
  }
  return bert_run(b, NULL, ids, mask, types, causal, NULL, kv, ctx_mask, hidden, pooled);
}
