/* plugins/processors/imagecommon.c - PIL-exact resampling, torchvision crops and float conversion. */
#include "config.h"

#include "plugins/processors/imagecommon.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <mmpipe/error.h>

/* ---- filters: the kernels of Pillow's libImaging/Resample.c ---- */

typedef struct resample_filter {
  double (*fn)(double x);
  double support;
} resample_filter_t;

static double filter_box(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double filter_bilinear(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

static double filter_hamming(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  /* PIL writes these constants as floats */
  return sin(x) / x * (0.54f + 0.46f * cos(x));
}

static double filter_bicubic(double x) {
  const double a = -0.5; /* PIL's choice (Keys' cubic) */
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

static double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return sin(x) / x;
}

static double filter_lanczos(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

static const resample_filter_t FILTERS[] = {
    [MMP_RESAMPLE_BILINEAR] = {filter_bilinear, 1.0},
    [MMP_RESAMPLE_BICUBIC] = {filter_bicubic, 2.0},
    [MMP_RESAMPLE_BOX] = {filter_box, 0.5},
    [MMP_RESAMPLE_HAMMING] = {filter_hamming, 1.0},
    [MMP_RESAMPLE_LANCZOS] = {filter_lanczos, 3.0},
};

static const char *const RESAMPLE_NAMES[] = {
    [MMP_RESAMPLE_BILINEAR] = "bilinear", [MMP_RESAMPLE_BICUBIC] = "bicubic",
    [MMP_RESAMPLE_BOX] = "box",           [MMP_RESAMPLE_HAMMING] = "hamming",
    [MMP_RESAMPLE_LANCZOS] = "lanczos",
};

int mmp_resample_parse(const char *s, mmp_resample_t *out) {
  for (size_t i = 0; i < sizeof RESAMPLE_NAMES / sizeof *RESAMPLE_NAMES; ++i)
    if (s && strcmp(s, RESAMPLE_NAMES[i]) == 0) {
      *out = (mmp_resample_t)i;
      return 0;
    }
  return mmp_error_set(MMP_EINVAL,
                       "unknown interpolation '%s' (bilinear, bicubic, box, hamming, lanczos)",
                       s ? s : "(null)");
}

const char *mmp_resample_name(mmp_resample_t r) {
  if ((unsigned)r < sizeof RESAMPLE_NAMES / sizeof *RESAMPLE_NAMES) return RESAMPLE_NAMES[r];
  return "?";
}

/* ---- images ---- */

int mmp_image_alloc(mmp_image_t *im, int w, int h, int c) {
  if (w <= 0 || h <= 0 || c <= 0 || (size_t)w > SIZE_MAX / (size_t)h / (size_t)c)
    return mmp_error_set(MMP_EINVAL, "bad image size %dx%dx%d", w, h, c);
  uint8_t *p = malloc((size_t)w * h * c);
  if (!p) return mmp_error_set(MMP_ENOMEM, "out of memory for a %dx%d image", w, h);
  free(im->data);
  im->data = p;
  im->w = w;
  im->h = h;
  im->c = c;
  return 0;
}

void mmp_image_clear(mmp_image_t *im) {
  if (!im) return;
  free(im->data);
  memset(im, 0, sizeof *im);
}

/* ---- resampling ---- */

#define PRECISION_BITS (32 - 8 - 2)

/* Coefficients for one axis, as Pillow's precompute_coeffs followed by
 * normalize_coeffs_8bpc: per output index a window [xmin, xmin + n) and n
 * fixed-point weights (stride ksize). */
typedef struct coeffs {
  int ksize;
  int *bounds; /* 2 per output: xmin, n */
  int32_t *k;
} coeffs_t;

static void coeffs_free(coeffs_t *c) {
  free(c->bounds);
  free(c->k);
}

static int coeffs_compute(int in_size, float in0, float in1, int out_size,
                          const resample_filter_t *f, coeffs_t *c) {
  double scale, filterscale, support;
  filterscale = scale = (double)(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  support = f->support * filterscale;
  int ksize = (int)ceil(support) * 2 + 1;
  if (out_size > INT_MAX / (ksize * (int)sizeof(double)))
    return mmp_error_set(MMP_EINVAL, "resize: output size %d too large", out_size);
  double *kk = malloc((size_t)out_size * ksize * sizeof *kk);
  c->bounds = malloc((size_t)out_size * 2 * sizeof *c->bounds);
  c->k = malloc((size_t)out_size * ksize * sizeof *c->k);
  c->ksize = ksize;
  if (!kk || !c->bounds || !c->k) {
    free(kk);
    coeffs_free(c);
    return mmp_error_set(MMP_ENOMEM, "resize: out of memory");
  }
  for (int xx = 0; xx < out_size; xx++) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = (int)(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = (int)(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double *k = &kk[(size_t)xx * ksize];
    int x;
    for (x = 0; x < xmax; x++) {
      double w = f->fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; x++)
      if (ww != 0.0) k[x] /= ww;
    for (; x < ksize; x++) k[x] = 0;
    c->bounds[xx * 2 + 0] = xmin;
    c->bounds[xx * 2 + 1] = xmax;
  }
  for (size_t i = 0; i < (size_t)out_size * ksize; i++) {
    if (kk[i] < 0)
      c->k[i] = (int32_t)(-0.5 + kk[i] * (1 << PRECISION_BITS));
    else
      c->k[i] = (int32_t)(0.5 + kk[i] * (1 << PRECISION_BITS));
  }
  free(kk);
  return 0;
}

static inline uint8_t clip8(int32_t v) {
  v >>= PRECISION_BITS; /* arithmetic shift, as PIL's lookup index */
  return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* out[rows, ow] from in rows [offset, offset + rows). Integer sums do not
 * depend on their order, so the loops may differ from PIL's. */
static void resample_horizontal(const mmp_image_t *in, int offset, mmp_image_t *out,
                                const coeffs_t *c) {
  const int ch = in->c;
  for (int yy = 0; yy < out->h; yy++) {
    const uint8_t *row = in->data + (size_t)(yy + offset) * in->w * ch;
    uint8_t *orow = out->data + (size_t)yy * out->w * ch;
    for (int xx = 0; xx < out->w; xx++) {
      int xmin = c->bounds[xx * 2], n = c->bounds[xx * 2 + 1];
      const int32_t *k = &c->k[(size_t)xx * c->ksize];
      const uint8_t *p = row + (size_t)xmin * ch;
      if (ch == 3) {
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < n; x++, p += 3) {
          s0 += p[0] * k[x];
          s1 += p[1] * k[x];
          s2 += p[2] * k[x];
        }
        orow[(size_t)xx * 3 + 0] = clip8(s0);
        orow[(size_t)xx * 3 + 1] = clip8(s1);
        orow[(size_t)xx * 3 + 2] = clip8(s2);
      } else {
        for (int b = 0; b < ch; b++) {
          int32_t ss = 1 << (PRECISION_BITS - 1);
          for (int x = 0; x < n; x++) ss += p[(size_t)x * ch + b] * k[x];
          orow[(size_t)xx * ch + b] = clip8(ss);
        }
      }
    }
  }
}

static int resample_vertical(const mmp_image_t *in, mmp_image_t *out, const coeffs_t *c) {
  const size_t stride = (size_t)in->w * in->c;
  int32_t *acc = malloc(stride * sizeof *acc);
  if (!acc) return mmp_error_set(MMP_ENOMEM, "resize: out of memory");
  for (int yy = 0; yy < out->h; yy++) {
    int ymin = c->bounds[yy * 2], n = c->bounds[yy * 2 + 1];
    const int32_t *k = &c->k[(size_t)yy * c->ksize];
    for (size_t i = 0; i < stride; i++) acc[i] = 1 << (PRECISION_BITS - 1);
    for (int y = 0; y < n; y++) {
      const uint8_t *row = in->data + (size_t)(ymin + y) * stride;
      const int32_t ky = k[y];
      for (size_t i = 0; i < stride; i++) acc[i] += row[i] * ky;
    }
    uint8_t *orow = out->data + (size_t)yy * stride;
    for (size_t i = 0; i < stride; i++) orow[i] = clip8(acc[i]);
  }
  free(acc);
  return 0;
}

int mmp_image_resize(const mmp_image_t *in, int w, int h, mmp_resample_t filter,
                     mmp_image_t *out) {
  if (!in || !in->data || !out || out == in)
    return mmp_error_set(MMP_EINVAL, "resize: bad arguments");
  if ((unsigned)filter >= sizeof FILTERS / sizeof *FILTERS || !FILTERS[filter].fn)
    return mmp_error_set(MMP_EINVAL, "resize: unsupported filter %d", (int)filter);
  if (w <= 0 || h <= 0) return mmp_error_set(MMP_EINVAL, "resize: bad size %dx%d", w, h);
  const resample_filter_t *f = &FILTERS[filter];
  int rc;
  if (w == in->w && h == in->h) { /* PIL: Image.resize returns a copy */
    if ((rc = mmp_image_alloc(out, w, h, in->c)) < 0) return rc;
    memcpy(out->data, in->data, (size_t)w * h * in->c);
    return 0;
  }
  int need_h = w != in->w, need_v = h != in->h;
  coeffs_t cv = {0}, chz = {0};
  mmp_image_t tmp = {0};
  if ((rc = coeffs_compute(in->h, 0.0f, (float)in->h, h, f, &cv)) < 0) return rc;
  int first = cv.bounds[0];
  int last = cv.bounds[h * 2 - 2] + cv.bounds[h * 2 - 1];
  const mmp_image_t *src = in;
  if (need_h) {
    if ((rc = coeffs_compute(in->w, 0.0f, (float)in->w, w, f, &chz)) < 0) goto out;
    for (int i = 0; i < h; i++) cv.bounds[i * 2] -= first;
    if ((rc = mmp_image_alloc(need_v ? &tmp : out, w, last - first, in->c)) < 0) goto out;
    resample_horizontal(in, first, need_v ? &tmp : out, &chz);
    src = &tmp;
  }
  if (need_v) {
    if ((rc = mmp_image_alloc(out, src->w, h, in->c)) < 0) goto out;
    if ((rc = resample_vertical(src, out, &cv)) < 0) goto out;
  }
  rc = 0;
out:
  coeffs_free(&cv);
  coeffs_free(&chz);
  mmp_image_clear(&tmp);
  return rc;
}

void mmp_image_resize_short_side(int w, int h, int size, int *ow, int *oh) {
  if (w <= h) {
    *ow = size;
    *oh = (int)((double)size * h / w);
  } else {
    *oh = size;
    *ow = (int)((double)size * w / h);
  }
}

/* ---- crops ---- */

int mmp_image_crop(const mmp_image_t *in, int x, int y, int w, int h, mmp_image_t *out) {
  if (!in || !in->data || !out || out == in)
    return mmp_error_set(MMP_EINVAL, "crop: bad arguments");
  int rc = mmp_image_alloc(out, w, h, in->c);
  if (rc < 0) return rc;
  const int ch = in->c;
  for (int yy = 0; yy < h; yy++) {
    uint8_t *orow = out->data + (size_t)yy * w * ch;
    int sy = y + yy;
    if (sy < 0 || sy >= in->h) {
      memset(orow, 0, (size_t)w * ch);
      continue;
    }
    for (int xx = 0; xx < w; xx++) {
      int sx = x + xx;
      if (sx < 0 || sx >= in->w)
        memset(orow + (size_t)xx * ch, 0, ch);
      else
        memcpy(orow + (size_t)xx * ch, in->data + ((size_t)sy * in->w + sx) * ch, ch);
    }
  }
  return 0;
}

/* Python's round() of n / 2 for an integer n: half to even. */
static int round_half_even_div2(int n) {
  int q = (int)floor(n / 2.0);
  if (n % 2 != 0 && (q % 2 != 0)) q += 1; /* exact .5: go to the even neighbour */
  return q;
}

void mmp_image_center_offsets(int in_w, int in_h, int w, int h, int *x, int *y) {
  /* torchvision pads (left = (w - in_w) // 2) before cropping when the image
   * is smaller; expressed as a negative offset into the original. */
  if (w > in_w) {
    int pad_l = (w - in_w) / 2, pad_r = (w - in_w + 1) / 2;
    int pw = in_w + pad_l + pad_r;
    *x = round_half_even_div2(pw - w) - pad_l;
  } else {
    *x = round_half_even_div2(in_w - w);
  }
  if (h > in_h) {
    int pad_t = (h - in_h) / 2, pad_b = (h - in_h + 1) / 2;
    int ph = in_h + pad_t + pad_b;
    *y = round_half_even_div2(ph - h) - pad_t;
  } else {
    *y = round_half_even_div2(in_h - h);
  }
}

/* ---- conversion ---- */

void mmp_image_to_float(const mmp_image_t *in, const float *mean, const float *std,
                        float *out) {
  /* a table per channel: each output is a function of one byte, computed
   * with torchvision's float32 operations (v / 255, - mean, / std) */
  const size_t hw = (size_t)in->w * in->h;
  float lut[256];
  for (int b = 0; b < in->c; b++) {
    for (int v = 0; v < 256; v++) {
      float x = (float)v / 255.0f;
      if (mean && std) {
        x = x - mean[b];
        x = x / std[b];
      }
      lut[v] = x;
    }
    float *o = out + (size_t)b * hw;
    const uint8_t *p = in->data + b;
    const int c = in->c;
    for (size_t i = 0; i < hw; i++) o[i] = lut[p[i * c]];
  }
}

void mmp_image_to_chw(const mmp_image_t *in, uint8_t *out) {
  const size_t hw = (size_t)in->w * in->h;
  for (int b = 0; b < in->c; b++)
    for (size_t i = 0; i < hw; i++) out[(size_t)b * hw + i] = in->data[i * in->c + b];
}

bool mmp_image_jpeg_available(void) {
#ifdef HAVE_JPEG
  return true;
#else
  return false;
#endif
}

#ifndef HAVE_JPEG
int mmp_image_jpeg_decode(const uint8_t *buf, size_t n, mmp_image_t *out) {
  (void)buf;
  (void)n;
  (void)out;
  return mmp_error_set(MMP_EUNSUPPORTED, "JPEG images need libjpeg (this build has none)");
}
#endif

int mmp_image_decode(const uint8_t *buf, size_t n, mmp_image_t *out) {
  if (!buf || !out) return mmp_error_set(MMP_EINVAL, "image: bad arguments");
  /* without libjpeg, mmp_image_jpeg_decode() is the stub above (MMP_EUNSUPPORTED) */
  if (n >= 2 && buf[0] == 0xFF && buf[1] == 0xD8) return mmp_image_jpeg_decode(buf, n, out);
  return mmp_image_png_decode(buf, n, false, out);
}

/* The whole of @path into a buffer grown as bytes arrive, never to a size
 * the file claims. (transfer full) *buf */
static int read_file(const char *path, uint8_t **buf, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return mmp_error_set(MMP_EIO, "%s: %s", path, strerror(errno));
  uint8_t *b = NULL;
  size_t len = 0, cap = 0, got;
  do {
    if (len == cap) {
      uint8_t *p = realloc(b, cap = cap ? cap * 2 : 65536);
      if (!p) {
        free(b);
        fclose(f);
        return mmp_error_set(MMP_ENOMEM, "out of memory reading %s", path);
      }
      b = p;
    }
    got = fread(b + len, 1, cap - len, f);
    len += got;
  } while (got > 0);
  int rd_err = ferror(f);
  fclose(f);
  if (rd_err) {
    free(b);
    return mmp_error_set(MMP_EIO, "%s: read error", path);
  }
  *buf = b;
  *n = len;
  return 0;
}

int mmp_image_png_load(const char *path, bool swap_rb, mmp_image_t *out) {
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = read_file(path, &buf, &n);
  if (rc) return rc;
  rc = mmp_image_png_decode(buf, n, swap_rb, out);
  free(buf);
  return rc < 0 ? mmp_error_prefix("%s: ", path) : 0;
}

int mmp_image_load(const char *path, mmp_image_t *out) {
  if (!path || !out) return mmp_error_set(MMP_EINVAL, "image: bad arguments");
  uint8_t *buf = NULL;
  size_t n = 0;
  int rc = read_file(path, &buf, &n);
  if (rc) return rc;
  rc = mmp_image_decode(buf, n, out);
  free(buf);
  return rc < 0 ? mmp_error_prefix("%s: ", path) : 0;
}

bool mmp_image_name_known(const char *name) {
  static const char *const ext[] = {".png", ".jpg", ".jpeg"};
  size_t l = strlen(name);
  for (size_t i = 0; i < sizeof ext / sizeof *ext; i++) {
    size_t e = strlen(ext[i]);
    if (l > e && !strcasecmp(name + l - e, ext[i])) return true;
  }
  return false;
}
