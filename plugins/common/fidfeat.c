/* plugins/common/fidfeat.c - FID features and statistics of uint8 images
 * through an inception_fid encoder. */
#include "plugins/common/fidfeat.h"

#include <stdlib.h>
#include <string.h>

#include <mmpipe/frechet.h>

struct mmp_fid_acc {
  mmp_component_t *enc;
  mmp_fid_protocol_t proto;
  int batch;
  mmp_fid_progress_cb progress;
  void *user;
  float *feat, *pix;
  int64_t nfeat, cap, dim, added;
  size_t pcap;
  int bn, bh, bw;
};

mmp_fid_acc_t *mmp_fid_acc_new(mmp_component_t *enc, mmp_fid_protocol_t proto,
                               int batch, mmp_fid_progress_cb progress,
                               void *user) {
  mmp_fid_acc_t *a = calloc(1, sizeof *a);
  if (!a) {
    mmp_error_set(MMP_ENOMEM, "out of memory");
    return NULL;
  }
  a->enc = enc;
  a->proto = proto;
  a->batch = batch > 0 ? batch : 50;
  a->progress = progress;
  a->user = user;
  return a;
}

void mmp_fid_acc_free(mmp_fid_acc_t *a) {
  if (!a)
    return;
  free(a->feat);
  free(a->pix);
  free(a);
}

void mmp_fid_stats_clear(mmp_fid_stats_t *s) {
  if (!s)
    return;
  free(s->mu);
  free(s->sigma);
  memset(s, 0, sizeof *s);
}

int64_t mmp_fid_acc_count(const mmp_fid_acc_t *a) { return a->added; }

/* The pending batch through the encoder; its features appended. */
static int flush(mmp_fid_acc_t *a) {
  if (a->bn == 0)
    return 0;
  int n = a->bn;
  int64_t shape[4] = {n, 3, a->bh, a->bw};
  a->bn = 0;
  mmp_tensor_t *x =
      mmp_tensor_from_data(mmp_backend_get("cpu"), MMP_F32, 4, shape, a->pix);
  if (!x)
    return mmp_error_code();
  mmp_tensormap_t *in = mmp_tensormap_new(), *out = mmp_tensormap_new();
  int rc = in && out ? mmp_tensormap_set(in, "sample", x)
                     : mmp_error_set(MMP_ENOMEM, "out of memory");
  if (rc)
    mmp_tensor_unref(x);
  const mmp_encoder_ops_t *ops = (const mmp_encoder_ops_t *)a->enc->plugin;
  if (rc == 0)
    rc = ops->forward(a->enc->self, "encode", in, out);
  mmp_tensor_t *f = rc == 0 ? mmp_tensormap_get(out, "features") : NULL;
  if (rc == 0 && (!f || f->ndim != 2 || f->shape[0] != n ||
                  (a->dim && f->shape[1] != a->dim)))
    rc = mmp_error_set(MMP_EDATA, "fid: the encoder gave no [N, D] 'features'");
  if (rc == 0) {
    if (a->dim == 0)
      a->dim = f->shape[1];
    if (a->nfeat + n > a->cap) {
      int64_t nc = a->cap ? a->cap * 2 : 256;
      while (nc < a->nfeat + n)
        nc *= 2;
      float *nf = realloc(a->feat, (size_t)(nc * a->dim) * sizeof *nf);
      if (!nf)
        rc = mmp_error_set(MMP_ENOMEM, "out of memory for %lld features",
                           (long long)nc);
      else {
        a->feat = nf;
        a->cap = nc;
      }
    }
    if (rc == 0)
      rc = mmp_tensor_to_host(f, a->feat + a->nfeat * a->dim,
                              (size_t)(n * a->dim) * sizeof(float));
    if (rc == 0)
      a->nfeat += n;
  }
  mmp_tensormap_free(in);
  mmp_tensormap_free(out);
  if (rc == 0 && a->progress)
    a->progress(a->user, a->nfeat);
  return rc;
}

int mmp_fid_acc_add(mmp_fid_acc_t *a, const mmp_image_t *im) {
  mmp_image_t small = {0};
  const mmp_image_t *src = im;
  int rc;
  if (!im || im->c != 3 || !im->data)
    return mmp_error_set(MMP_EINVAL, "fid: images must be RGB");
  if (a->proto == MMP_FID_ARLDM) {
    /* transforms.Resize([64, 64]) on a PIL image: PIL bilinear with its
     * antialiasing support */
    if ((rc = mmp_image_resize(im, 64, 64, MMP_RESAMPLE_BILINEAR, &small)) < 0)
      return rc;
    src = &small;
  }
  int h = src->h, w = src->w;
  if (a->bn > 0 && (h != a->bh || w != a->bw || a->bn == a->batch) &&
      (rc = flush(a)) < 0) {
    mmp_image_clear(&small);
    return rc;
  }
  size_t per = (size_t)3 * (size_t)h * (size_t)w;
  if ((size_t)(a->bn + 1) * per > a->pcap) {
    size_t nc = (size_t)a->batch * per;
    float *np = realloc(a->pix, nc * sizeof *np);
    if (!np) {
      mmp_image_clear(&small);
      return mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    a->pix = np;
    a->pcap = nc;
  }
  float *dst = a->pix + (size_t)a->bn * per;
  if (a->proto == MMP_FID_ARLDM) {
    /* ToTensor, Normalize(0.5, 0.5), then (x + 1) / 2 in float */
    static const float half[3] = {0.5f, 0.5f, 0.5f};
    mmp_image_to_float(src, half, half, dst);
    for (size_t i = 0; i < per; i++)
      dst[i] = (dst[i] + 1.0f) / 2.0f;
  } else {
    mmp_image_to_float(src, NULL, NULL, dst);
  }
  mmp_image_clear(&small);
  a->bn++;
  a->bh = h;
  a->bw = w;
  a->added++;
  return 0;
}

int mmp_fid_acc_finish(mmp_fid_acc_t *a, mmp_fid_stats_t *out) {
  memset(out, 0, sizeof *out);
  int rc = flush(a);
  if (rc == 0 && a->nfeat < 2)
    rc = mmp_error_set(MMP_EDATA, "fewer than 2 readable images");
  if (rc == 0) {
    out->count = a->nfeat;
    out->dim = a->dim;
    out->mu = malloc((size_t)a->dim * sizeof *out->mu);
    out->sigma = malloc((size_t)(a->dim * a->dim) * sizeof *out->sigma);
    rc = out->mu && out->sigma
             ? mmp_feature_stats(a->feat, a->nfeat, a->dim, out->mu, out->sigma)
             : mmp_error_set(MMP_ENOMEM, "out of memory");
    if (rc)
      mmp_fid_stats_clear(out);
  }
  free(a->feat);
  free(a->pix);
  a->feat = a->pix = NULL;
  a->nfeat = a->cap = 0;
  a->pcap = 0;
  return rc;
}
