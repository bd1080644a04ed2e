/* plugins/common/topk.h - the k largest of a row of scores, in the order
 * torch.topk / a full descending sort gives them, without sorting the row:
 * the ranking of the retrieval task and of bench/retrieval. */
#ifndef MMPIPE_PLUGINS_TOPK_H
#define MMPIPE_PLUGINS_TOPK_H

#include <stdint.h>

/* A score and its index in the row. */
typedef struct sd_iv {
  float v;
  int64_t i;
} sd_iv_t;

/* qsort order: larger score first, then smaller index (a strict total
 * order on distinct indices). */
int sd_iv_desc(const void *a, const void *b);

/* The first min(@k, @n) of row[0..n) (element i at row[i * @stride]) sorted
 * by sd_iv_desc: exactly the head of a full sort, found with a bounded heap
 * in O(n log k). (transfer full: free()) NULL + MMP_ENOMEM. */
sd_iv_t *sd_top_desc(const float *row, int64_t n, int64_t stride, int64_t k);

#endif
