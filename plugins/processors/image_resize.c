/* plugins/processors/image_resize.c - processor "image_resize": PIL-exact resize, crops, to_float and normalize on uint8 images. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mmpipe/config.h>
#include <mmpipe/error.h>
#include <mmpipe/plugin.h>
#include <mmpipe/tensor.h>

#include "plugins/processors/imagecommon.h"

static const mmp_key_t keys[] = {
    {"size", MMP_TYPE_LIST, "[]",
     "resize: [h, w] exactly, or one int for the shorter side (torchvision Resize); [] none", 0, 0},
    {"interpolation", MMP_TYPE_STRING, "\"bilinear\"", "bilinear, bicubic, box, hamming or lanczos (PIL)", 0, 0},
    {"center_crop", MMP_TYPE_LIST, "[]", "center crop [h, w] or one int (zero padding if larger); [] none", 0, 0},
    {"crop_offset", MMP_TYPE_STRING, "\"round\"",
     "center_crop's offsets: round (torchvision CenterCrop: round((in - out) / 2), half to even) or floor "
     "(transformers' image processors, e.g. CLIPImageProcessor: (in - out) // 2)", 0, 0},
    {"random_crop", MMP_TYPE_LIST, "[]", "random crop [h, w] or one int; [] none", 0, 0},
    {"seed", MMP_TYPE_INT, "0", "seed of random_crop", 0, 0},
    {"to_float", MMP_TYPE_STRING, "\"unit\"",
     "unit: v/255 in [0,1]; signed: [-1,1] (Normalize 0.5, 0.5); none: keep uint8 (CHW)", 0, 0},
    {"mean", MMP_TYPE_LIST, "[]", "per-channel mean subtracted after to_float (3 values; [] none)", 0, 0},
    {"std", MMP_TYPE_LIST, "[]", "per-channel std divided by after the mean (3 values)", 0, 0},
    {NULL, 0, NULL, NULL, 0, 0}};

typedef enum { TO_NONE, TO_UNIT, TO_SIGNED } to_float_t;

typedef struct resize {
  int size[2]; /* h, w; size[1] == 0: shorter side = size[0]; size[0] == 0: none */
  int center[2], random[2];
  mmp_resample_t interp;
  bool crop_floor; /* center_crop offsets (in - out) // 2, as transformers' center_crop */
  to_float_t to_float;
  bool normalize;
  float mean[3], std[3];
  uint64_t rng;
  pthread_mutex_t lock;
} resize_t;

static int cfg_error(const mmp_config_t *cfg, const char *key, const char *msg) {
  const mmp_config_t *n = mmp_config_lookup(cfg, key);
  if (n && mmp_config_file(n))
    return mmp_error_set(MMP_ECONFIG, "%s:%d: image_resize: key '%s': %s", mmp_config_file(n),
                         mmp_config_line(n), key, msg);
  return mmp_error_set(MMP_ECONFIG, "image_resize: key '%s': %s", key, msg);
}

/* A [h, w] or single-int size key into out[2] (out[1] = 0 for one int). */
static int get_size(const mmp_config_t *cfg, const char *key, bool one_is_short, int out[2]) {
  size_t n = 0;
  out[0] = out[1] = 0;
  int rc = mmp_config_get_list_size(cfg, key, &n);
  if (rc < 0) return rc;
  if (n == 0) return 0;
  if (n > 2) return cfg_error(cfg, key, "expected one int or [h, w]");
  int64_t v[2] = {0, 0};
  for (size_t i = 0; i < n; i++) {
    if ((rc = mmp_config_get_list_int(cfg, key, i, &v[i])) < 0) return rc;
    if (v[i] < 1 || v[i] > 16384) return cfg_error(cfg, key, "sizes must be in 1..16384");
  }
  out[0] = (int)v[0];
  out[1] = n == 2 ? (int)v[1] : (one_is_short ? 0 : (int)v[0]);
  return 0;
}

static void resize_destroy(void *self) {
  resize_t *r = self;
  pthread_mutex_destroy(&r->lock);
  free(r);
}

static int resize_create(const mmp_plugin_t *plugin, const mmp_config_t *cfg, mmp_context_t *ctx,
                         void **out_self) {
  (void)plugin;
  (void)ctx;
  resize_t *r = calloc(1, sizeof *r);
  if (!r) return mmp_error_set(MMP_ENOMEM, "out of memory");
  pthread_mutex_init(&r->lock, NULL);
  const char *interp = NULL, *tf = NULL, *co = NULL;
  int64_t seed = 0;
  size_t nm = 0, ns = 0;
  int rc;
  if ((rc = get_size(cfg, "size", true, r->size)) < 0 ||
      (rc = get_size(cfg, "center_crop", false, r->center)) < 0 ||
      (rc = get_size(cfg, "random_crop", false, r->random)) < 0 ||
      (rc = mmp_config_get_string(cfg, "interpolation", &interp)) < 0 ||
      (rc = mmp_config_get_string(cfg, "to_float", &tf)) < 0 ||
      (rc = mmp_config_get_string(cfg, "crop_offset", &co)) < 0 ||
      (rc = mmp_config_get_int(cfg, "seed", &seed)) < 0 ||
      (rc = mmp_config_get_list_size(cfg, "mean", &nm)) < 0 ||
      (rc = mmp_config_get_list_size(cfg, "std", &ns)) < 0)
    goto fail;
  if (mmp_resample_parse(interp, &r->interp) < 0) {
    rc = cfg_error(cfg, "interpolation", "expected bilinear, bicubic, box, hamming or lanczos");
    goto fail;
  }
  if (strcmp(co, "round") == 0) r->crop_floor = false;
  else if (strcmp(co, "floor") == 0) r->crop_floor = true;
  else {
    rc = cfg_error(cfg, "crop_offset", "expected round or floor");
    goto fail;
  }
  if (r->center[0] && r->random[0]) {
    rc = cfg_error(cfg, "random_crop", "give center_crop or random_crop, not both");
    goto fail;
  }
  if (strcmp(tf, "unit") == 0) r->to_float = TO_UNIT;
  else if (strcmp(tf, "signed") == 0) r->to_float = TO_SIGNED;
  else if (strcmp(tf, "none") == 0) r->to_float = TO_NONE;
  else {
    rc = cfg_error(cfg, "to_float", "expected unit, signed or none");
    goto fail;
  }
  if (nm != ns || (nm != 0 && nm != 3 && nm != 1)) {
    rc = cfg_error(cfg, "mean", "mean and std need 1 or 3 values each");
    goto fail;
  }
  if (nm && r->to_float == TO_NONE) {
    rc = cfg_error(cfg, "mean", "normalization needs to_float = unit or signed");
    goto fail;
  }
  r->normalize = nm > 0;
  for (size_t c = 0; c < 3 && nm; c++) {
    double m, s;
    if ((rc = mmp_config_get_list_float(cfg, "mean", nm == 1 ? 0 : c, &m)) < 0 ||
        (rc = mmp_config_get_list_float(cfg, "std", nm == 1 ? 0 : c, &s)) < 0)
      goto fail;
    if (s == 0) {
      rc = cfg_error(cfg, "std", "a std of 0");
      goto fail;
    }
    r->mean[c] = (float)m;
    r->std[c] = (float)s;
  }
  r->rng = (uint64_t)seed;
  *out_self = r;
  return 0;
fail:
  resize_destroy(r);
  return rc < 0 ? rc : MMP_ECONFIG;
}

static uint64_t next_u64(resize_t *r) {
  pthread_mutex_lock(&r->lock);
  uint64_t z = (r->rng += 0x9E3779B97F4A7C15ull);
  pthread_mutex_unlock(&r->lock);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* One image through the configured chain. */
static int apply(resize_t *r, const mmp_image_t *in, mmp_image_t *out) {
  mmp_image_t a = {0}, b = {0};
  const mmp_image_t *cur = in;
  int rc = 0;
  if (r->size[0]) {
    int w = r->size[1], h = r->size[0];
    if (r->size[1] == 0) mmp_image_resize_short_side(in->w, in->h, r->size[0], &w, &h);
    if ((rc = mmp_image_resize(cur, w, h, r->interp, &a)) < 0) goto out;
    cur = &a;
  }
  if (r->center[0]) {
    int x, y;
    if (r->crop_floor) {
      /* transformers' center_crop: (in - out) // 2, or, for an image
       * smaller than the crop, zero padding of (out - in) // 2 before it */
      x = cur->w >= r->center[1] ? (cur->w - r->center[1]) / 2 : -((r->center[1] - cur->w) / 2);
      y = cur->h >= r->center[0] ? (cur->h - r->center[0]) / 2 : -((r->center[0] - cur->h) / 2);
    } else {
      mmp_image_center_offsets(cur->w, cur->h, r->center[1], r->center[0], &x, &y);
    }
    if ((rc = mmp_image_crop(cur, x, y, r->center[1], r->center[0], &b)) < 0) goto out;
    cur = &b;
  } else if (r->random[0]) {
    int th = r->random[0], tw = r->random[1];
    if (cur->h < th || cur->w < tw) {
      rc = mmp_error_set(MMP_ESHAPE, "image_resize: random_crop %dx%d is larger than the image %dx%d",
                         tw, th, cur->w, cur->h);
      goto out;
    }
    int y = (int)(next_u64(r) % (uint64_t)(cur->h - th + 1));
    int x = (int)(next_u64(r) % (uint64_t)(cur->w - tw + 1));
    if ((rc = mmp_image_crop(cur, x, y, tw, th, &b)) < 0) goto out;
    cur = &b;
  }
  if (cur == in) {
    if ((rc = mmp_image_alloc(out, in->w, in->h, in->c)) < 0) goto out;
    memcpy(out->data, in->data, (size_t)in->w * in->h * in->c);
  } else {
    mmp_image_t *own = cur == &a ? &a : &b;
    *out = *own;
    memset(own, 0, sizeof *own);
  }
out:
  mmp_image_clear(&a);
  mmp_image_clear(&b);
  return rc;
}

static int resize_forward(void *self, const char *method, const mmp_tensormap_t *in,
                          mmp_tensormap_t *out) {
  resize_t *r = self;
  if (method && *method && strcmp(method, "forward"))
    return mmp_error_set(MMP_EUNSUPPORTED, "image_resize: no method '%s'", method);
  mmp_tensor_t *t = mmp_tensormap_need(in, "images");
  if (!t) return mmp_error_prefix("image_resize: ");
  if (t->dtype != MMP_U8)
    return mmp_error_set(MMP_EDTYPE, "image_resize: 'images' must be u8 [N,H,W,3] or [H,W,3], found %s",
                         mmp_dtype_name(t->dtype));
  if ((t->ndim != 3 && t->ndim != 4) || t->shape[t->ndim - 1] != 3)
    return mmp_error_set(MMP_ESHAPE, "image_resize: 'images' must be [N,H,W,3] or [H,W,3]");
  int64_t n = t->ndim == 4 ? t->shape[0] : 1;
  int64_t h = t->shape[t->ndim - 3], w = t->shape[t->ndim - 2];
  if (n < 1 || h < 1 || w < 1 || h > 65536 || w > 65536)
    return mmp_error_set(MMP_ESHAPE, "image_resize: bad image size %lldx%lld", (long long)w, (long long)h);
  size_t per = (size_t)h * (size_t)w * 3;
  uint8_t *host = malloc((size_t)n * per);
  if (!host) return mmp_error_set(MMP_ENOMEM, "out of memory");
  int rc = mmp_tensor_to_host(t, host, (size_t)n * per);
  void *buf = NULL;
  int oh = 0, ow = 0;
  for (int64_t i = 0; rc == 0 && i < n; i++) {
    mmp_image_t im = {(int)w, (int)h, 3, host + (size_t)i * per}, o = {0};
    if ((rc = apply(r, &im, &o)) < 0) break;
    size_t oper = (size_t)o.w * o.h * 3;
    if (i == 0) {
      oh = o.h;
      ow = o.w;
      buf = malloc((size_t)n * oper * (r->to_float == TO_NONE ? 1 : sizeof(float)));
      if (!buf) rc = mmp_error_set(MMP_ENOMEM, "out of memory");
    }
    if (rc == 0) {
      if (r->to_float == TO_NONE) {
        mmp_image_to_chw(&o, (uint8_t *)buf + (size_t)i * oper);
      } else {
        float *dst = (float *)buf + (size_t)i * oper;
        static const float half[3] = {0.5f, 0.5f, 0.5f};
        mmp_image_to_float(&o, r->to_float == TO_SIGNED ? half : NULL,
                           r->to_float == TO_SIGNED ? half : NULL, dst);
        if (r->normalize) {
          size_t hw = (size_t)o.w * o.h;
          for (int c = 0; c < 3; c++)
            for (size_t k = 0; k < hw; k++) {
              float v = dst[c * hw + k] - r->mean[c];
              dst[c * hw + k] = v / r->std[c];
            }
        }
      }
    }
    mmp_image_clear(&o);
  }
  free(host);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  int64_t shape[4] = {n, 3, oh, ow};
  mmp_tensor_t *res = mmp_tensor_wrap(r->to_float == TO_NONE ? MMP_U8 : MMP_F32, 4, shape, buf,
                                      free, buf);
  if (!res) {
    free(buf);
    return mmp_error_code();
  }
  return mmp_tensormap_set(out, "images", res);
}

static const mmp_processor_ops_t ops = {
    .base = MMP_PLUGIN_BASE(MMP_KIND_PROCESSOR, mmp_processor_ops_t, "image_resize", "1.0",
                            "resize (PIL-exact, antialiased), crop, to_float and normalize uint8 images",
                            keys, resize_create, resize_destroy),
    .forward = resize_forward,
};

MMP_EXPORT int mmp_plugin_processor_image_resize_init(mmp_registry_t *reg);
MMP_EXPORT int mmp_plugin_processor_image_resize_init(mmp_registry_t *reg) {
  return mmp_registry_add(reg, &ops.base);
}
