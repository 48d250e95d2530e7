/* io/image.h: training images from disk to the dataset's pixels: decodes PNG
 * (libpng) and JPEG (libjpeg-turbo), chosen by the file's magic bytes, converts
 * every colour type to 8-bit RGB the way PIL's Image.convert("RGB") does, and
 * resizes to S x S with a bicubic filter that reproduces PIL's Image.resize(...,
 * BICUBIC), which is what Monkey's torchvision Resize does on PIL images
 * (docs/formats.md, "Real data"). Other formats (GIF, WebP, BMP, ...) are
 * refused with a reason.
 *
 * A bad image is not an error of the program but a reason to skip one sample,
 * and decoding runs inside OpenMP threads: these functions never print and
 * never touch the error state of common/vlm.h. They return an image_status
 * (IMG_OK = 0) and, on failure, a one-line reason in why[why_len]. */
#ifndef VLM_IO_IMAGE_H
#define VLM_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  IMG_OK = 0,
  IMG_MISSING,     /* no such file (or the path is empty) */
  IMG_UNREADABLE,  /* exists but cannot be read: permissions, a directory, an I/O error */
  IMG_UNSUPPORTED, /* neither PNG nor JPEG by its magic bytes */
  IMG_CORRUPT,     /* PNG or JPEG whose data is damaged or truncated */
  IMG_TOO_LARGE,   /* more pixels than the limit (checked from the header, before decoding) */
  IMG_NO_MEMORY,
  IMG_STATUS_COUNT
} image_status;

/* Short stable name of a status ("missing", "corrupt", ...), used in reports. */
const char *image_status_name(int status);

/* An 8-bit RGB image: rgb holds height x width x 3 bytes, row-major (malloc'd). */
typedef struct {
  int width, height;
  uint8_t *rgb;
} image_rgb;

void image_rgb_free(image_rgb *im);

/* Decodes a PNG or JPEG held in memory to 8-bit RGB:
 *   PNG: gray, gray+alpha, palette (with or without tRNS), RGB, RGBA, at 1..16
 *        bits. Alpha is dropped (not composited), as PIL's convert("RGB") does;
 *        16-bit samples keep their high byte; gray is replicated to R = G = B.
 *        No gamma or colour-profile correction (PIL applies none either).
 *   JPEG: gray, YCbCr, RGB, CMYK and YCCK. Four-component JPEGs are read in
 *        Adobe's inverted convention (as PIL does) and converted as PIL converts
 *        CMYK: R = round((255 - C) (255 - K) / 255), same for G/M and B/Y.
 *        A JPEG that ends before its image data does is corrupt.
 * Images of more than max_pixels pixels (width x height; <= 0: no limit) are
 * refused from the header alone. */
int image_decode_memory(const uint8_t *data, size_t n, long long max_pixels, image_rgb *out,
                        char *why, size_t why_len);
/* Same for a file (read whole into memory first). */
int image_decode_file(const char *path, long long max_pixels, image_rgb *out, char *why,
                      size_t why_len);

/* Resizes interleaved 8-bit images with PIL's bicubic resampling (a = -0.5):
 * separable, horizontal pass first, the filter's support widened by the
 * scale factor when shrinking (antialiasing), weights in fixed point with 22
 * fractional bits and each pass rounded to 8 bits. A dimension whose size does
 * not change is not filtered. dst holds dh x dw x channels bytes. Returns 0, or
 * -1 when out of memory. Pure function: thread-safe. */
int image_resize_bicubic(const uint8_t *src, int sw, int sh, int channels, uint8_t *dst, int dw,
                         int dh);

/* Decode a file and resize it to size x size RGB into dst (size*size*3 bytes). */
int image_load_resized(const char *path, int size, long long max_pixels, uint8_t *dst, char *why,
                       size_t why_len);

#endif
