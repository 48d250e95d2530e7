/* io/safetensors.h: strict reader and atomic writer of the safetensors format
 * (8-byte little-endian header length, JSON header, raw little-endian data).
 * The reader validates everything before any tensor is used: header length
 * bound, JSON well-formed, dtype known, shape * dtype size == byte range,
 * ranges inside the file, not overlapping and covering the data section. */
#ifndef VLM_IO_SAFETENSORS_H
#define VLM_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { ST_F32 = 0, ST_BF16 = 1, ST_F16 = 2 } st_dtype;

#define ST_NAME_LEN 160
#define ST_MAX_HEADER (100u * 1024u * 1024u) /* 100 MiB: larger is rejected */

typedef struct {
  char name[ST_NAME_LEN];
  st_dtype dtype;
  int ndim;
  long shape[8];
  long numel;
  uint64_t begin, end; /* byte range relative to the start of the data section */
} st_tensor;

typedef struct {
  char path[1024];
  int fd;
  uint64_t file_size, header_len, data_start;
  st_tensor *t;
  int n;
} st_file;

/* Opens and validates; errors name the file and the tensor. */
int st_open(st_file *f, const char *path);
/* Index of a tensor by name, or -1. */
int st_find(const st_file *f, const char *name);
/* Reads tensor idx converted to fp32 into dst[numel]. */
int st_read_f32(const st_file *f, int idx, float *dst);
/* Reads elements [lo, hi) of the flattened tensor idx, converted to fp32. */
int st_read_range_f32(const st_file *f, int idx, long lo, long hi, float *dst);
void st_close(st_file *f);

/* One tensor to write: fp32 data, stored as `dtype` (F32 or BF16, round to nearest even). */
typedef struct {
  const char *name;
  const float *data;
  int ndim;
  long shape[4];
} st_write_item;

/* Writes PATH.tmp, fsyncs, renames to PATH: never a half file under PATH. */
int st_write(const char *path, const st_write_item *items, int n, st_dtype dtype);

#endif
