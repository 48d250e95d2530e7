/* io/image.c: decoding (libpng, libjpeg-turbo), conversion to 8-bit RGB as
 * PIL's convert("RGB") does, and PIL-compatible bicubic resizing (io/image.h).
 * Nothing here prints or sets the error state: bad images are reported through
 * an image_status and a reason string, since they only skip a sample, and the
 * functions are called from several OpenMP threads at once. It does not know
 * about datasets, conversations or the model. */
#define _POSIX_C_SOURCE 200809L
#include "io/image.h"

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* after stdio.h: jpeglib.h uses FILE */
#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

static const char *const STATUS_NAMES[IMG_STATUS_COUNT] = {
    [IMG_OK] = "ok",
    [IMG_MISSING] = "missing",
    [IMG_UNREADABLE] = "unreadable",
    [IMG_UNSUPPORTED] = "unsupported format",
    [IMG_CORRUPT] = "corrupt",
    [IMG_TOO_LARGE] = "too large",
    [IMG_NO_MEMORY] = "out of memory",
};

const char *image_status_name(int status) {
  return status >= 0 && status < IMG_STATUS_COUNT ? STATUS_NAMES[status] : "?";
}

void image_rgb_free(image_rgb *im) {
  free(im->rgb);
  im->rgb = NULL;
  im->width = im->height = 0;
}

static int fail_why(char *why, size_t n, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail_why(char *why, size_t n, int status, const char *fmt, ...) {
  if (why && n) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
  }
  return status;
}

/* width x height against the limit; also refuses sizes whose buffer overflows. */
static int check_size(long long w, long long h, long long max_pixels, char *why, size_t n) {
  if (w < 1 || h < 1) return fail_why(why, n, IMG_CORRUPT, "image has size %lldx%lld", w, h);
  if (max_pixels > 0 && w * h > max_pixels)
    return fail_why(why, n, IMG_TOO_LARGE,
                    "%lldx%lld = %lld pixels, more than the limit of %lld (--max-image-pixels)", w,
                    h, w * h, max_pixels);
  if ((unsigned long long)w * (unsigned long long)h > (unsigned long long)(SIZE_MAX / 8))
    return fail_why(why, n, IMG_TOO_LARGE, "%lldx%lld pixels do not fit in memory", w, h);
  return IMG_OK;
}

/* ------------------------------------------------------------------------------
 * PNG. libpng reports errors by longjmp; everything that must survive the jump
 * lives in the context struct, never in locals changed after setjmp. */

typedef struct {
  const uint8_t *data;
  size_t size, pos;
  char msg[160];
  uint8_t *pixels; /* decoded rows, channels per pixel after transforms */
  png_bytep *rows;
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
  png_ctx *c = png_get_error_ptr(png);
  snprintf(c->msg, sizeof c->msg, "%s", msg);
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg; /* benign (e.g. unknown ancillary chunk, extra data): like PIL, go on */
}

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
  png_ctx *c = png_get_io_ptr(png);
  if (n > c->size - c->pos) png_error(png, "file ends before the image data does (truncated)");
  memcpy(out, c->data + c->pos, n);
  c->pos += n;
}

/* Reads the whole PNG into c->pixels with `channels` 8-bit channels per pixel. */
static int png_decode(png_ctx *c, long long max_pixels, image_rgb *out, char *why, size_t wn) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
  if (!png) return fail_why(why, wn, IMG_NO_MEMORY, "libpng: cannot create a reader");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_read_struct(&png, NULL, NULL);
    return fail_why(why, wn, IMG_NO_MEMORY, "libpng: cannot create a reader");
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    free(c->rows);
    free(c->pixels);
    c->rows = NULL;
    c->pixels = NULL;
    return fail_why(why, wn, IMG_CORRUPT, "PNG: %s", c->msg);
  }
  png_set_read_fn(png, c, png_read_mem);
  /* the limit is ours; libpng's own default of 1,000,000 per side stays as a backstop */
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, ctype = 0, interlace = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
  int st = check_size((long long)w, (long long)h, max_pixels, why, wn);
  if (st != IMG_OK) {
    png_destroy_read_struct(&png, &info, NULL);
    return st;
  }
  if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (depth == 16) png_set_strip_16(png); /* keeps the high byte, as PIL's ";16B" unpackers do */
  (void)png_set_interlace_handling(png);
  png_read_update_info(png, info);
  int channels = png_get_channels(png, info);
  size_t rowbytes = png_get_rowbytes(png, info);
  if (channels < 1 || channels > 4 || rowbytes != (size_t)w * (size_t)channels)
    png_error(png, "unexpected layout after conversion to 8 bits");
  c->pixels = malloc(rowbytes * h);
  c->rows = malloc(sizeof(png_bytep) * h);
  if (!c->pixels || !c->rows) {
    snprintf(c->msg, sizeof c->msg, "out of memory for %ux%u pixels", (unsigned)w, (unsigned)h);
    png_destroy_read_struct(&png, &info, NULL);
    free(c->rows);
    free(c->pixels);
    c->rows = NULL;
    c->pixels = NULL;
    return fail_why(why, wn, IMG_NO_MEMORY, "PNG: %s", c->msg);
  }
  for (png_uint_32 y = 0; y < h; y++) c->rows[y] = c->pixels + (size_t)y * rowbytes;
  png_read_image(png, c->rows);
  png_read_end(png, NULL);
  png_destroy_read_struct(&png, &info, NULL);
  free(c->rows);
  c->rows = NULL;

  /* to RGB: gray replicated, alpha dropped */
  size_t np = (size_t)w * h;
  uint8_t *rgb = malloc(np * 3);
  if (!rgb) {
    free(c->pixels);
    c->pixels = NULL;
    return fail_why(why, wn, IMG_NO_MEMORY, "PNG: out of memory for %ux%u pixels", (unsigned)w,
                    (unsigned)h);
  }
  const uint8_t *p = c->pixels;
  for (size_t i = 0; i < np; i++, p += channels) {
    uint8_t *q = rgb + 3 * i;
    if (channels <= 2) {
      q[0] = q[1] = q[2] = p[0];
    } else {
      q[0] = p[0];
      q[1] = p[1];
      q[2] = p[2];
    }
  }
  free(c->pixels);
  c->pixels = NULL;
  out->width = (int)w;
  out->height = (int)h;
  out->rgb = rgb;
  return IMG_OK;
}

/* ------------------------------------------------------------------------------
 * JPEG. Same longjmp discipline. A warning that the data ended early (libjpeg
 * then fills the rest in grey) makes the image corrupt, as PIL refuses a
 * truncated JPEG; other warnings (extraneous bytes, ...) are tolerated as PIL
 * tolerates them. */

typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX + 32];
  int truncated;
  uint8_t *row; /* one decoded scanline */
  uint8_t *rgb; /* the output */
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
  jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
  char buf[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, buf);
  snprintf(c->msg, sizeof c->msg, "%s", buf);
  longjmp(c->jump, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level) {
  jpeg_ctx *c = (jpeg_ctx *)cinfo->err;
  if (level < 0) {
    c->mgr.num_warnings++;
    if (c->mgr.msg_code == JWRN_JPEG_EOF && !c->truncated) {
      c->truncated = 1;
      char buf[JMSG_LENGTH_MAX];
      (*cinfo->err->format_message)(cinfo, buf);
      snprintf(c->msg, sizeof c->msg, "%s", buf);
    }
  }
}

static uint8_t mul_div255(int a, int b) { return (uint8_t)((a * b + 127) / 255); }

static int jpeg_decode(const uint8_t *data, size_t n, long long max_pixels, image_rgb *out,
                       char *why, size_t wn) {
  struct jpeg_decompress_struct cinfo;
  jpeg_ctx c;
  memset(&c, 0, sizeof c);
  cinfo.err = jpeg_std_error(&c.mgr);
  c.mgr.error_exit = jpeg_on_error;
  c.mgr.emit_message = jpeg_on_message;
  if (setjmp(c.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(c.row);
    free(c.rgb);
    return fail_why(why, wn, IMG_CORRUPT, "JPEG: %s", c.msg);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, (unsigned long)n);
  jpeg_read_header(&cinfo, TRUE);
  int st = check_size(cinfo.image_width, cinfo.image_height, max_pixels, why, wn);
  if (st != IMG_OK) {
    jpeg_destroy_decompress(&cinfo);
    return st;
  }
  int cmyk = 0;
  switch (cinfo.jpeg_color_space) {
    case JCS_GRAYSCALE:
      cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case JCS_CMYK:
    case JCS_YCCK:
      cinfo.out_color_space = JCS_CMYK; /* libjpeg turns YCCK into CMYK */
      cmyk = 1;
      break;
    default:
      cinfo.out_color_space = JCS_RGB;
      break;
  }
  jpeg_start_decompress(&cinfo);
  const size_t w = cinfo.output_width, h = cinfo.output_height;
  const int comps = cinfo.output_components;
  if (!(comps == 1 || comps == 3 || (comps == 4 && cmyk))) {
    snprintf(c.msg, sizeof c.msg, "unexpected %d output components", comps);
    longjmp(c.jump, 1);
  }
  c.row = malloc(w * (size_t)comps);
  c.rgb = malloc(w * h * 3);
  if (!c.row || !c.rgb) {
    free(c.row);
    free(c.rgb);
    jpeg_destroy_decompress(&cinfo);
    return fail_why(why, wn, IMG_NO_MEMORY, "JPEG: out of memory for %zux%zu pixels", w, h);
  }
  while (cinfo.output_scanline < h) {
    size_t y = cinfo.output_scanline;
    JSAMPROW rowp = c.row;
    if (jpeg_read_scanlines(&cinfo, &rowp, 1) != 1) {
      snprintf(c.msg, sizeof c.msg, "no progress reading scanline %zu", y);
      longjmp(c.jump, 1);
    }
    uint8_t *q = c.rgb + y * w * 3;
    const uint8_t *p = c.row;
    for (size_t x = 0; x < w; x++, q += 3) {
      if (comps == 1) {
        q[0] = q[1] = q[2] = p[x];
      } else if (comps == 3) {
        memcpy(q, p + 3 * x, 3);
      } else {
        /* Adobe stores CMYK inverted: stored s = 255 - C. With nk = 255 - K = s_k,
         * R = nk - round(C nk / 255) = round(s_c s_k / 255). */
        const uint8_t *s = p + 4 * x;
        q[0] = mul_div255(s[0], s[3]);
        q[1] = mul_div255(s[1], s[3]);
        q[2] = mul_div255(s[2], s[3]);
      }
    }
  }
  if (c.truncated) longjmp(c.jump, 1);
  jpeg_finish_decompress(&cinfo);
  if (c.truncated) longjmp(c.jump, 1);
  jpeg_destroy_decompress(&cinfo);
  free(c.row);
  out->width = (int)w;
  out->height = (int)h;
  out->rgb = c.rgb;
  return IMG_OK;
}

/* ------------------------------------------------------------------------------
 * Entry points. */

int image_decode_memory(const uint8_t *data, size_t n, long long max_pixels, image_rgb *out,
                        char *why, size_t why_len) {
  out->width = out->height = 0;
  out->rgb = NULL;
  if (why && why_len) why[0] = '\0';
  static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (n >= 8 && memcmp(data, png_magic, 8) == 0) {
    png_ctx c;
    memset(&c, 0, sizeof c);
    c.data = data;
    c.size = n;
    return png_decode(&c, max_pixels, out, why, why_len);
  }
  if (n >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
    return jpeg_decode(data, n, max_pixels, out, why, why_len);
  if (n == 0) return fail_why(why, why_len, IMG_CORRUPT, "empty file");
  const char *kind = "unknown magic bytes";
  if (n >= 6 && (memcmp(data, "GIF87a", 6) == 0 || memcmp(data, "GIF89a", 6) == 0))
    kind = "GIF";
  else if (n >= 12 && memcmp(data, "RIFF", 4) == 0 && memcmp(data + 8, "WEBP", 4) == 0)
    kind = "WebP";
  else if (n >= 2 && data[0] == 'B' && data[1] == 'M')
    kind = "BMP";
  else if (n >= 4 && (memcmp(data, "II*\0", 4) == 0 || memcmp(data, "MM\0*", 4) == 0))
    kind = "TIFF";
  return fail_why(why, why_len, IMG_UNSUPPORTED, "not PNG or JPEG (%s); only PNG and JPEG are read",
                  kind);
}

int image_decode_file(const char *path, long long max_pixels, image_rgb *out, char *why,
                      size_t why_len) {
  out->width = out->height = 0;
  out->rgb = NULL;
  if (!path || !path[0]) return fail_why(why, why_len, IMG_MISSING, "empty image path");
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    char msg[128];
    if (strerror_r(e, msg, sizeof msg) != 0) snprintf(msg, sizeof msg, "error %d", e);
    return fail_why(why, why_len, e == ENOENT || e == ENOTDIR ? IMG_MISSING : IMG_UNREADABLE,
                    "%s: %s", path, msg); /* strerror_r: several threads decode at once */
  }
  struct stat sb;
  if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    fclose(f);
    return fail_why(why, why_len, IMG_UNREADABLE, "%s: not a regular file", path);
  }
  size_t n = (size_t)sb.st_size;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    fclose(f);
    return fail_why(why, why_len, IMG_NO_MEMORY, "%s: out of memory for %zu bytes", path, n);
  }
  size_t got = n ? fread(buf, 1, n, f) : 0;
  int read_err = ferror(f);
  fclose(f);
  if (got != n || read_err) {
    free(buf);
    return fail_why(why, why_len, IMG_UNREADABLE, "%s: read %zu of %zu bytes", path, got, n);
  }
  char inner[200] = "";
  int st = image_decode_memory(buf, n, max_pixels, out, inner, sizeof inner);
  free(buf);
  if (st != IMG_OK) return fail_why(why, why_len, st, "%s: %s", path, inner);
  return IMG_OK;
}

/* ------------------------------------------------------------------------------
 * Bicubic resampling, PIL's algorithm (written from its documented behaviour):
 * for each output coordinate i, the centre in input coordinates is
 * (i + 0.5) * scale with scale = in / out; the kernel is the cubic convolution
 * with a = -0.5 and support 2, stretched by max(scale, 1) so that shrinking
 * averages over every input pixel it covers; taps run over input indices
 * [int(centre - support + 0.5), int(centre + support + 0.5)) clipped to the
 * image, each weighted by kernel((j - centre + 0.5) / stretch), and the weights
 * are normalised to sum 1. They are then rounded to fixed point with 22
 * fractional bits (half away from zero); each output byte is
 * clamp((2^21 + sum(w_j p_j)) >> 22, 0, 255). Horizontal pass first, then the
 * vertical pass over the 8-bit intermediate. */

#define RS_BITS 22

static double cubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

typedef struct {
  int ksize;  /* taps per output coordinate (fixed stride in w) */
  int *first; /* first input index per output */
  int *count; /* taps per output */
  int32_t *w; /* out x ksize fixed-point weights */
} taps;

static void taps_free(taps *t) {
  free(t->first);
  free(t->count);
  free(t->w);
  t->first = t->count = NULL;
  t->w = NULL;
}

static int taps_make(taps *t, int in, int out) {
  const double scale = (double)in / (double)out;
  const double stretch = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * stretch;
  t->ksize = (int)ceil(support) * 2 + 1;
  t->first = malloc(sizeof(int) * (size_t)out);
  t->count = malloc(sizeof(int) * (size_t)out);
  t->w = calloc((size_t)out * (size_t)t->ksize, sizeof(int32_t));
  double *k = malloc(sizeof(double) * (size_t)t->ksize);
  if (!t->first || !t->count || !t->w || !k) {
    free(k);
    taps_free(t);
    return -1;
  }
  for (int i = 0; i < out; i++) {
    const double centre = (i + 0.5) * scale;
    int lo = (int)(centre - support + 0.5);
    int hi = (int)(centre + support + 0.5);
    if (lo < 0) lo = 0;
    if (hi > in) hi = in;
    int cnt = hi - lo;
    if (cnt > t->ksize) cnt = t->ksize; /* cannot happen; keeps writes in bounds */
    double sum = 0.0;
    for (int j = 0; j < cnt; j++) {
      k[j] = cubic_kernel((j + lo - centre + 0.5) / stretch);
      sum += k[j];
    }
    int32_t *wi = t->w + (size_t)i * t->ksize;
    for (int j = 0; j < cnt; j++) {
      double v = sum != 0.0 ? k[j] / sum : k[j];
      double f = v * (double)(1 << RS_BITS);
      wi[j] = (int32_t)(f < 0 ? f - 0.5 : f + 0.5);
    }
    t->first[i] = lo;
    t->count[i] = cnt;
  }
  free(k);
  return 0;
}

static inline uint8_t clamp_shift(int64_t acc) {
  int64_t v = acc >> RS_BITS;
  return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* Along rows: src h x sw x ch -> dst h x dw x ch. */
static void pass_horizontal(const uint8_t *src, int sw, int h, int ch, uint8_t *dst, int dw,
                            const taps *t) {
  for (int y = 0; y < h; y++) {
    const uint8_t *row = src + (size_t)y * sw * ch;
    uint8_t *orow = dst + (size_t)y * dw * ch;
    for (int x = 0; x < dw; x++) {
      const int32_t *w = t->w + (size_t)x * t->ksize;
      const uint8_t *p = row + (size_t)t->first[x] * ch;
      for (int c = 0; c < ch; c++) {
        int64_t acc = (int64_t)1 << (RS_BITS - 1);
        for (int j = 0; j < t->count[x]; j++) acc += (int64_t)p[(size_t)j * ch + c] * w[j];
        orow[(size_t)x * ch + c] = clamp_shift(acc);
      }
    }
  }
}

/* Along columns: src sh x w x ch -> dst dh x w x ch. */
static void pass_vertical(const uint8_t *src, int w, int ch, uint8_t *dst, int dh, const taps *t) {
  const size_t stride = (size_t)w * ch;
  for (int y = 0; y < dh; y++) {
    const int32_t *wt = t->w + (size_t)y * t->ksize;
    const uint8_t *base = src + (size_t)t->first[y] * stride;
    uint8_t *orow = dst + (size_t)y * stride;
    for (size_t i = 0; i < stride; i++) {
      int64_t acc = (int64_t)1 << (RS_BITS - 1);
      for (int j = 0; j < t->count[y]; j++) acc += (int64_t)base[(size_t)j * stride + i] * wt[j];
      orow[i] = clamp_shift(acc);
    }
  }
}

int image_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, uint8_t *dst, int dw,
                         int dh) {
  if (sw < 1 || sh < 1 || dw < 1 || dh < 1 || channels < 1) return -1;
  const int need_h = sw != dw, need_v = sh != dh;
  if (!need_h && !need_v) {
    memcpy(dst, src, (size_t)sw * sh * channels);
    return 0;
  }
  taps th = {0}, tv = {0};
  uint8_t *tmp = NULL;
  int rc = -1;
  if (need_h && taps_make(&th, sw, dw) != 0) goto out;
  if (need_v && taps_make(&tv, sh, dh) != 0) goto out;
  if (need_h && need_v) {
    tmp = malloc((size_t)sh * dw * channels);
    if (!tmp) goto out;
    pass_horizontal(src, sw, sh, channels, tmp, dw, &th);
    pass_vertical(tmp, dw, channels, dst, dh, &tv);
  } else if (need_h) {
    pass_horizontal(src, sw, sh, channels, dst, dw, &th);
  } else {
    pass_vertical(src, sw, channels, dst, dh, &tv);
  }
  rc = 0;
out:
  free(tmp);
  if (need_h) taps_free(&th);
  if (need_v) taps_free(&tv);
  return rc;
}

int image_load_resized(const char *path, int size, long long max_pixels, uint8_t *dst, char *why,
                       size_t why_len) {
  image_rgb im;
  int st = image_decode_file(path, max_pixels, &im, why, why_len);
  if (st != IMG_OK) return st;
  int rc = image_resize_bicubic(im.rgb, im.width, im.height, 3, dst, size, size);
  image_rgb_free(&im);
  if (rc != 0)
    return fail_why(why, why_len, IMG_NO_MEMORY, "%s: out of memory resizing to %dx%d", path, size,
                    size);
  return IMG_OK;
}
