/* plugins/common/topk.c - the bounded-heap top k of plugins/common/topk.h. */
#include "plugins/common/topk.h"

#include <stdlib.h>

#include <mmpipe/error.h>

int sd_iv_desc(const void *a, const void *b) {
  const sd_iv_t *x = a, *y = b;
  if (x->v != y->v) return x->v < y->v ? 1 : -1;
  return x->i < y->i ? -1 : x->i > y->i;
}

/* The heap's root is the last of the k kept; sd_iv_desc is a strict total
 * order, so the kept set is exactly the head of a full sort. */
sd_iv_t *sd_top_desc(const float *row, int64_t n, int64_t stride, int64_t k) {
  if (k > n) k = n;
  sd_iv_t *a = malloc((size_t)(k > 0 ? k : 1) * sizeof *a);
  if (!a) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  int64_t m = 0;
  for (int64_t i = 0; i < n && k > 0; i++) {
    sd_iv_t e = {row[i * stride], i};
    int64_t p;
    if (m < k) { /* sift up: a parent sorts after its children */
      for (p = m++; p > 0 && sd_iv_desc(&e, &a[(p - 1) / 2]) > 0; p = (p - 1) / 2) a[p] = a[(p - 1) / 2];
    } else if (sd_iv_desc(&e, &a[0]) < 0) { /* before the last kept: replace it, sift down */
      for (p = 0;;) {
        int64_t ch = 2 * p + 1;
        if (ch >= k) break;
        if (ch + 1 < k && sd_iv_desc(&a[ch + 1], &a[ch]) > 0) ch++;
        if (sd_iv_desc(&a[ch], &e) <= 0) break;
        a[p] = a[ch];
        p = ch;
      }
    } else {
      continue;
    }
    a[p] = e;
  }
  qsort(a, (size_t)k, sizeof *a, sd_iv_desc);
  return a;
}
