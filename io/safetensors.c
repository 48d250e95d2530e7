/* io/safetensors.c: strict reader and atomic writer of the safetensors format.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON header (an object
 * name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
 * "__metadata__" string map; may be padded with spaces), then the data section.
 * The reader checks everything in st_open before any tensor is used: N within
 * ST_MAX_HEADER and the file, well-formed JSON, known dtype, shape x element
 * size == end - begin, every range inside the data section, ranges neither
 * overlapping nor leaving gaps (the format requires a contiguous data section),
 * unique names. Tensors are read with pread, converted to fp32 exactly. The
 * writer writes PATH.tmp, fsyncs it, renames it to PATH and fsyncs the
 * directory, so PATH is either the old file or the complete new one. Only F32,
 * BF16 and F16 are handled; this file does not know about models. */
#define _POSIX_C_SOURCE 200809L
#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "io/safetensors.c assumes a little-endian host (safetensors data is little-endian)"
#endif

#define ST_MAX_INT 9007199254740992.0 /* 2^53: larger JSON integers are not exact */
#define ST_CHUNK ((size_t)1 << 20)    /* elements converted per buffer */

static const char *const DTYPE_NAME[] = {"F32", "BF16", "F16"};
static const int DTYPE_SIZE[] = {4, 2, 2};

/* ---- element conversions (exact widening; round-to-nearest-even narrowing) ---- */

static inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13)); /* inf, nan */
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return bits_f32(sign);
  /* subnormal: man * 2^-24, normalised */
  uint32_t e = 113;
  while (!(man & 0x400u)) man <<= 1, e--;
  return bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
  return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | (uint16_t)((ax >> 13) & 0x3ffu); /* nan */
  if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
  if (ax >= 0x38800000u) {                      /* normal half */
    uint32_t r = ax - (112u << 23);
    return sign | (uint16_t)((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
  }
  uint32_t e = ax >> 23;
  if (e < 102) return sign; /* below 2^-25: rounds to zero */
  uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126 - e; /* 14..24 */
  uint32_t m = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (m & 1u))) m++;
  return sign | (uint16_t)m;
}

/* ---- reader ---------------------------------------------------------------- */

static int pread_full(int fd, void *buf, size_t n, uint64_t off, const char *path) {
  char *p = buf;
  while (n > 0) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) VLM_FAIL("%s: read failed at byte %llu: %s", path, (unsigned long long)off,
                        strerror(errno));
    if (r == 0)
      VLM_FAIL("%s: unexpected end of file at byte %llu (file shrank while open?)", path,
               (unsigned long long)off);
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* A non-negative integer below 2^53 from a JSON number. */
static int json_u64(const cJSON *v, uint64_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  if (!(d >= 0) || d > ST_MAX_INT || d != floor(d)) return -1;
  *out = (uint64_t)d;
  return 0;
}

static void shape_str(const st_tensor *t, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < t->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%ld", i ? ", " : "", t->shape[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

static int parse_entry(st_tensor *t, const char *name, const cJSON *e, uint64_t data_size,
                       const char *path) {
  size_t nl = strlen(name);
  if (nl >= ST_NAME_LEN)
    VLM_FAIL("%s: tensor name \"%.60s...\" is %zu bytes long, at most %d allowed", path, name, nl,
             ST_NAME_LEN - 1);
  memcpy(t->name, name, nl + 1);
  if (!cJSON_IsObject(e)) VLM_FAIL("%s: tensor \"%s\": header entry is not a JSON object", path, name);
  for (const cJSON *k = e->child; k; k = k->next)
    if (strcmp(k->string, "dtype") != 0 && strcmp(k->string, "shape") != 0 &&
        strcmp(k->string, "data_offsets") != 0)
      VLM_FAIL("%s: tensor \"%s\": unexpected key \"%.60s\" in its header entry", path, name,
               k->string);

  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
  if (!cJSON_IsString(dt)) VLM_FAIL("%s: tensor \"%s\": \"dtype\" missing or not a string", path, name);
  const char *d = dt->valuestring;
  if (strcmp(d, "F32") == 0) t->dtype = ST_F32;
  else if (strcmp(d, "BF16") == 0) t->dtype = ST_BF16;
  else if (strcmp(d, "F16") == 0) t->dtype = ST_F16;
  else {
    static const char *const other[] = {"F64", "I64", "U64", "I32", "U32", "I16", "U16", "I8",
                                        "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3",
                                        "F6_E3M2", "C64"};
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
      if (strcmp(d, other[i]) == 0)
        VLM_FAIL("%s: tensor \"%s\": dtype %s is not supported (vlmtrain reads F32, BF16 and F16)",
                 path, name, d);
    VLM_FAIL("%s: tensor \"%s\": unknown dtype \"%.40s\"", path, name, d);
  }

  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
  if (!cJSON_IsArray(sh)) VLM_FAIL("%s: tensor \"%s\": \"shape\" missing or not a list", path, name);
  int nd = cJSON_GetArraySize(sh);
  if (nd > 8) VLM_FAIL("%s: tensor \"%s\": %d dimensions, at most 8 supported", path, name, nd);
  t->ndim = nd;
  uint64_t numel = 1;
  int i = 0;
  for (const cJSON *s = sh->child; s; s = s->next, i++) {
    uint64_t dim;
    if (json_u64(s, &dim) != 0)
      VLM_FAIL("%s: tensor \"%s\": shape[%d] is not a non-negative integer", path, name, i);
    t->shape[i] = (long)dim;
    if (dim != 0 && numel > ((uint64_t)1 << 60) / dim)
      VLM_FAIL("%s: tensor \"%s\": shape has more than 2^60 elements", path, name);
    numel *= dim;
  }
  t->numel = (long)numel;

  const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
  if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
      json_u64(cJSON_GetArrayItem(off, 0), &t->begin) != 0 ||
      json_u64(cJSON_GetArrayItem(off, 1), &t->end) != 0)
    VLM_FAIL("%s: tensor \"%s\": \"data_offsets\" must be a list of two non-negative integers", path,
             name);
  if (t->begin > t->end)
    VLM_FAIL("%s: tensor \"%s\": data_offsets [%llu, %llu] end before they begin", path, name,
             (unsigned long long)t->begin, (unsigned long long)t->end);
  if (t->end > data_size)
    VLM_FAIL("%s: tensor \"%s\": data_offsets [%llu, %llu] reach past the end of the data section "
             "(%llu bytes): file truncated or header corrupt",
             path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
             (unsigned long long)data_size);
  uint64_t need = numel * (uint64_t)DTYPE_SIZE[t->dtype];
  if (need != t->end - t->begin) {
    char s[160];
    shape_str(t, s, sizeof s);
    VLM_FAIL("%s: tensor \"%s\": shape %s of %s needs %llu bytes, but data_offsets [%llu, %llu] "
             "hold %llu",
             path, name, s, d, (unsigned long long)need, (unsigned long long)t->begin,
             (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
  }
  return 0;
}

static const st_tensor *g_sort_base; /* qsort has no context argument in C11 */

static int cmp_by_offset(const void *a, const void *b) {
  const st_tensor *x = &g_sort_base[*(const int *)a], *y = &g_sort_base[*(const int *)b];
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  if (x->end != y->end) return x->end < y->end ? -1 : 1;
  return 0;
}

static int cmp_by_name(const void *a, const void *b) {
  return strcmp(g_sort_base[*(const int *)a].name, g_sort_base[*(const int *)b].name);
}

/* Names unique; ranges sorted by offset tile [0, data_size) exactly. */
static int check_layout(const st_file *f, uint64_t data_size) {
  if (f->n == 0) {
    if (data_size != 0)
      VLM_FAIL("%s: no tensors, but %llu data bytes after the header", f->path,
               (unsigned long long)data_size);
    return 0;
  }
  int *idx = malloc((size_t)f->n * sizeof *idx);
  if (!idx) VLM_FAIL("%s: out of memory", f->path);
  for (int i = 0; i < f->n; i++) idx[i] = i;
  g_sort_base = f->t;
  qsort(idx, (size_t)f->n, sizeof *idx, cmp_by_name);
  for (int i = 1; i < f->n; i++)
    if (strcmp(f->t[idx[i]].name, f->t[idx[i - 1]].name) == 0) {
      vlm_error_at(__FILE__, __LINE__, __func__, "%s: tensor \"%s\" appears twice in the header",
                   f->path, f->t[idx[i]].name);
      free(idx);
      return -1;
    }
  qsort(idx, (size_t)f->n, sizeof *idx, cmp_by_offset);
  uint64_t pos = 0;
  int prev = -1;
  for (int i = 0; i < f->n; i++) {
    const st_tensor *t = &f->t[idx[i]];
    if (t->begin < pos) {
      const st_tensor *p = &f->t[prev];
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: tensors \"%s\" [%llu, %llu] and \"%s\" [%llu, %llu] overlap in the data "
                   "section",
                   f->path, p->name, (unsigned long long)p->begin, (unsigned long long)p->end,
                   t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
      free(idx);
      return -1;
    }
    if (t->begin > pos) {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: data bytes [%llu, %llu) before tensor \"%s\" belong to no tensor (the "
                   "format requires a contiguous data section)",
                   f->path, (unsigned long long)pos, (unsigned long long)t->begin, t->name);
      free(idx);
      return -1;
    }
    pos = t->end;
    prev = idx[i];
  }
  free(idx);
  if (pos != data_size)
    VLM_FAIL("%s: %llu data bytes after the last tensor belong to no tensor (data section %llu "
             "bytes, tensors end at %llu)",
             f->path, (unsigned long long)(data_size - pos), (unsigned long long)data_size,
             (unsigned long long)pos);
  return 0;
}

static int parse_header(st_file *f, const char *hdr, uint64_t n, uint64_t data_size) {
  if (hdr[0] != '{')
    VLM_FAIL("%s: the header does not start with '{': not a safetensors file", f->path);
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)n, &end, 0);
  if (!root)
    VLM_FAIL("%s: the header is not valid JSON (error near header byte %ld of %llu)", f->path,
             end ? (long)(end - hdr) : -1L, (unsigned long long)n);
  int rc = -1;
  for (const char *p = end; p < hdr + n; p++)
    if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: unexpected bytes after the header JSON (at header byte %ld)", f->path,
                   (long)(p - hdr));
      goto done;
    }
  if (!cJSON_IsObject(root)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: the header is not a JSON object", f->path);
    goto done;
  }
  int count = 0, n_meta = 0;
  for (const cJSON *e = root->child; e; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0) {
      if (++n_meta > 1) {
        vlm_error_at(__FILE__, __LINE__, __func__, "%s: \"__metadata__\" appears twice", f->path);
        goto done;
      }
      if (!cJSON_IsObject(e)) {
        vlm_error_at(__FILE__, __LINE__, __func__,
                     "%s: \"__metadata__\" must be an object of strings", f->path);
        goto done;
      }
      for (const cJSON *m = e->child; m; m = m->next)
        if (!cJSON_IsString(m)) {
          vlm_error_at(__FILE__, __LINE__, __func__,
                       "%s: \"__metadata__\" value \"%.60s\" is not a string", f->path, m->string);
          goto done;
        }
    } else {
      count++;
    }
  }
  f->t = calloc(count ? (size_t)count : 1, sizeof *f->t);
  if (!f->t) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory for %d tensors", f->path, count);
    goto done;
  }
  for (const cJSON *e = root->child; e; e = e->next) {
    if (strcmp(e->string, "__metadata__") == 0) continue;
    VLM_CHECK_GOTO(parse_entry(&f->t[f->n], e->string, e, data_size, f->path), done);
    f->n++;
  }
  VLM_CHECK_GOTO(check_layout(f, data_size), done);
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

int st_open(st_file *f, const char *path) {
  memset(f, 0, sizeof *f);
  f->fd = -1;
  if (strlen(path) >= sizeof f->path) VLM_FAIL("%.100s...: path too long", path);
  snprintf(f->path, sizeof f->path, "%s", path);
  f->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) VLM_FAIL("%s: cannot open: %s", path, strerror(errno));
  char *hdr = NULL;
  struct stat sb;
  if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: not a regular file", path);
    goto fail;
  }
  f->file_size = (uint64_t)sb.st_size;
  if (f->file_size < 8) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: truncated: %llu bytes, shorter than the 8-byte header length", path,
                 (unsigned long long)f->file_size);
    goto fail;
  }
  unsigned char lenb[8];
  VLM_CHECK_GOTO(pread_full(f->fd, lenb, 8, 0, path), fail);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | lenb[i];
  f->header_len = n;
  if (n > ST_MAX_HEADER) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: header length %llu exceeds the limit of %u bytes (100 MiB): not a "
                 "safetensors file, or corrupt",
                 path, (unsigned long long)n, ST_MAX_HEADER);
    goto fail;
  }
  if (n > f->file_size - 8) {
    vlm_error_at(__FILE__, __LINE__, __func__,
                 "%s: header length %llu is larger than the rest of the file (%llu bytes): "
                 "truncated, or not a safetensors file",
                 path, (unsigned long long)n, (unsigned long long)(f->file_size - 8));
    goto fail;
  }
  if (n < 2) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: header length %llu is too small for a header",
                 path, (unsigned long long)n);
    goto fail;
  }
  f->data_start = 8 + n;
  hdr = malloc((size_t)n + 1);
  if (!hdr) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: out of memory for a %llu-byte header", path,
                 (unsigned long long)n);
    goto fail;
  }
  VLM_CHECK_GOTO(pread_full(f->fd, hdr, (size_t)n, 8, path), fail);
  hdr[n] = '\0';
  VLM_CHECK_GOTO(parse_header(f, hdr, n, f->file_size - f->data_start), fail);
  free(hdr);
  return 0;
fail:
  free(hdr);
  st_close(f);
  return -1;
}

int st_find(const st_file *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (strcmp(f->t[i].name, name) == 0) return i;
  return -1;
}

int st_read_range_f32(const st_file *f, int idx, long lo, long hi, float *dst) {
  if (idx < 0 || idx >= f->n) VLM_FAIL("%s: tensor index %d out of range [0, %d)", f->path, idx, f->n);
  const st_tensor *t = &f->t[idx];
  if (lo < 0 || hi > t->numel || lo > hi)
    VLM_FAIL("%s: tensor \"%s\": element range [%ld, %ld) outside [0, %ld)", f->path, t->name, lo,
             hi, t->numel);
  if (hi == lo) return 0;
  const size_t esz = t->dtype == ST_F32 ? 4 : 2;
  uint64_t off = f->data_start + t->begin + (uint64_t)lo * esz;
  const long n = hi - lo;
  if (t->dtype == ST_F32) {
    VLM_CHECK(pread_full(f->fd, dst, (size_t)n * 4, off, f->path));
    return 0;
  }
  size_t chunk = (size_t)n < ST_CHUNK ? (size_t)n : ST_CHUNK;
  uint16_t *buf = malloc(chunk * sizeof *buf);
  if (!buf) VLM_FAIL("%s: out of memory reading tensor \"%s\"", f->path, t->name);
  for (size_t done = 0; done < (size_t)n;) {
    size_t k = (size_t)n - done < chunk ? (size_t)n - done : chunk;
    if (pread_full(f->fd, buf, k * 2, off + done * 2, f->path) != 0) {
      free(buf);
      VLM_FAIL("%s: reading tensor \"%s\" failed", f->path, t->name);
    }
    if (t->dtype == ST_BF16)
      for (size_t i = 0; i < k; i++) dst[done + i] = bf16_to_f32(buf[i]);
    else
      for (size_t i = 0; i < k; i++) dst[done + i] = f16_to_f32(buf[i]);
    done += k;
  }
  free(buf);
  return 0;
}

int st_read_f32(const st_file *f, int idx, float *dst) {
  if (idx < 0 || idx >= f->n) VLM_FAIL("%s: tensor index %d out of range [0, %d)", f->path, idx, f->n);
  return st_read_range_f32(f, idx, 0, f->t[idx].numel, dst);
}

void st_close(st_file *f) {
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  free(f->t);
  f->t = NULL;
  f->n = 0;
}

/* ---- writer ---------------------------------------------------------------- */

typedef struct {
  char *p;
  size_t len, cap;
} strbuf;

static int sb_put(strbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

static int sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_printf(strbuf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp) return -1;
  return sb_put(b, tmp, (size_t)n);
}

/* A JSON string literal for `s` (quotes and escapes by cJSON). */
static int sb_json_string(strbuf *b, const char *s) {
  cJSON *j = cJSON_CreateString(s);
  if (!j) return -1;
  char *txt = cJSON_PrintUnformatted(j);
  cJSON_Delete(j);
  if (!txt) return -1;
  int rc = sb_put(b, txt, strlen(txt));
  cJSON_free(txt);
  return rc;
}

static int write_full(int fd, const void *buf, size_t n, const char *path) {
  const char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) VLM_FAIL("%s: write failed: %s", path, strerror(errno));
    if (w == 0) VLM_FAIL("%s: write made no progress", path);
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int fsync_parent_dir(const char *path) {
  char dir[1100];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == dir) dir[1] = '\0';
  else *slash = '\0';
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) VLM_FAIL("%s: cannot open its directory %s to fsync it: %s", path, dir, strerror(errno));
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  if (rc != 0 && e != EINVAL) VLM_FAIL("%s: fsync of directory %s failed: %s", path, dir, strerror(e));
  return 0;
}

static const char *const *g_name_base;
static int cmp_names(const void *a, const void *b) {
  return strcmp(g_name_base[*(const int *)a], g_name_base[*(const int *)b]);
}

static int check_items(const char *path, const st_write_item *items, int n) {
  if (n < 0) VLM_FAIL("%s: negative tensor count %d", path, n);
  for (int i = 0; i < n; i++) {
    const st_write_item *it = &items[i];
    if (!it->name || !it->name[0]) VLM_FAIL("%s: tensor %d has no name", path, i);
    if (strlen(it->name) >= ST_NAME_LEN)
      VLM_FAIL("%s: tensor name \"%.60s...\" longer than %d bytes", path, it->name, ST_NAME_LEN - 1);
    if (strcmp(it->name, "__metadata__") == 0)
      VLM_FAIL("%s: \"__metadata__\" is reserved, not a tensor name", path);
    if (it->ndim < 0 || it->ndim > 4)
      VLM_FAIL("%s: tensor \"%s\": ndim %d outside [0, 4]", path, it->name, it->ndim);
    long numel = 1;
    for (int d = 0; d < it->ndim; d++) {
      if (it->shape[d] < 0)
        VLM_FAIL("%s: tensor \"%s\": negative dimension %ld", path, it->name, it->shape[d]);
      numel *= it->shape[d];
    }
    if (numel > 0 && !it->data) VLM_FAIL("%s: tensor \"%s\": no data", path, it->name);
  }
  if (n < 2) return 0;
  const char **names = malloc((size_t)n * sizeof *names);
  int *idx = malloc((size_t)n * sizeof *idx);
  if (!names || !idx) {
    free(names);
    free(idx);
    VLM_FAIL("%s: out of memory", path);
  }
  for (int i = 0; i < n; i++) names[i] = items[i].name, idx[i] = i;
  g_name_base = names;
  qsort(idx, (size_t)n, sizeof *idx, cmp_names);
  int dup = -1;
  for (int i = 1; i < n && dup < 0; i++)
    if (strcmp(names[idx[i]], names[idx[i - 1]]) == 0) dup = idx[i];
  free(names);
  free(idx);
  if (dup >= 0) VLM_FAIL("%s: tensor name \"%s\" given twice", path, items[dup].name);
  return 0;
}

static long item_numel(const st_write_item *it) {
  long k = 1;
  for (int d = 0; d < it->ndim; d++) k *= it->shape[d];
  return k;
}

/* Header JSON padded with spaces so that the data starts 8-byte aligned. */
static int build_header(strbuf *b, const st_write_item *items, int n, st_dtype dtype) {
  if (sb_put(b, "{\"__metadata__\":{\"format\":\"pt\"}", 31) != 0) return -1;
  uint64_t off = 0;
  for (int i = 0; i < n; i++) {
    const st_write_item *it = &items[i];
    uint64_t bytes = (uint64_t)item_numel(it) * (uint64_t)DTYPE_SIZE[dtype];
    if (sb_put(b, ",", 1) || sb_json_string(b, it->name) ||
        sb_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", DTYPE_NAME[dtype]))
      return -1;
    for (int d = 0; d < it->ndim; d++)
      if (sb_printf(b, "%s%ld", d ? "," : "", it->shape[d])) return -1;
    if (sb_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                  (unsigned long long)(off + bytes)))
      return -1;
    off += bytes;
  }
  if (sb_put(b, "}", 1) != 0) return -1;
  while ((8 + b->len) % 8 != 0)
    if (sb_put(b, " ", 1) != 0) return -1;
  return 0;
}

static int write_data(int fd, const st_write_item *it, st_dtype dtype, uint16_t *buf,
                      const char *tmp) {
  size_t numel = (size_t)item_numel(it);
  if (dtype == ST_F32) {
    VLM_CHECK(write_full(fd, it->data, numel * 4, tmp));
    return 0;
  }
  for (size_t done = 0; done < numel;) {
    size_t k = numel - done < ST_CHUNK ? numel - done : ST_CHUNK;
    if (dtype == ST_BF16)
      for (size_t i = 0; i < k; i++) buf[i] = f32_to_bf16(it->data[done + i]);
    else
      for (size_t i = 0; i < k; i++) buf[i] = f32_to_f16(it->data[done + i]);
    VLM_CHECK(write_full(fd, buf, k * 2, tmp));
    done += k;
  }
  return 0;
}

int st_write(const char *path, const st_write_item *items, int n, st_dtype dtype) {
  if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
    VLM_FAIL("%s: cannot write dtype %d (F32, BF16 or F16)", path, (int)dtype);
  VLM_CHECK(check_items(path, items, n));
  char tmp[1100];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
    VLM_FAIL("%.100s...: path too long", path);
  strbuf hdr = {0};
  if (build_header(&hdr, items, n, dtype) != 0) {
    free(hdr.p);
    VLM_FAIL("%s: out of memory building the header", path);
  }
  if (hdr.len > ST_MAX_HEADER) {
    size_t len = hdr.len;
    free(hdr.p);
    VLM_FAIL("%s: header of %zu bytes exceeds the %u-byte limit", path, len, ST_MAX_HEADER);
  }
  uint16_t *buf = NULL;
  if (dtype != ST_F32 && !(buf = malloc(ST_CHUNK * sizeof *buf))) {
    free(hdr.p);
    VLM_FAIL("%s: out of memory", path);
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    free(hdr.p);
    free(buf);
    VLM_FAIL("%s: cannot create: %s", tmp, strerror(e));
  }
  unsigned char lenb[8];
  uint64_t hl = hdr.len;
  for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(hl >> (8 * i));
  VLM_CHECK_GOTO(write_full(fd, lenb, 8, tmp), fail);
  VLM_CHECK_GOTO(write_full(fd, hdr.p, hdr.len, tmp), fail);
  for (int i = 0; i < n; i++) VLM_CHECK_GOTO(write_data(fd, &items[i], dtype, buf, tmp), fail);
  if (fsync(fd) != 0) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: fsync failed: %s", tmp, strerror(errno));
    goto fail;
  }
  int rc = close(fd);
  fd = -1;
  if (rc != 0) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: close failed: %s", tmp, strerror(errno));
    goto fail;
  }
  if (rename(tmp, path) != 0) {
    vlm_error_at(__FILE__, __LINE__, __func__, "%s: cannot rename %s to it: %s", path, tmp,
                 strerror(errno));
    goto fail;
  }
  free(hdr.p);
  free(buf);
  VLM_CHECK(fsync_parent_dir(path));
  return 0;
fail:
  if (fd >= 0) close(fd);
  unlink(tmp);
  free(hdr.p);
  free(buf);
  return -1;
}
