/* io/h5util.c: parallel-HDF5 building blocks (io/h5util.h): MPI-IO files with
 * collective metadata, contiguous float32 datasets moved as flattened ranges by
 * collective transfers, split-independent checksums, atomic commit with a
 * `latest` pointer, stale .tmp removal and retention.
 *
 * Error discipline: a collective function does its local work recording any
 * failure in an h5u_err (message + file:line) instead of printing it, then all
 * ranks agree (MPI_Allreduce); only the lowest failing rank prints, so a
 * failure that every rank sees (a missing dataset) is reported once, and every
 * rank returns -1. HDF5's own error-stack printing is switched off while these
 * functions run; the innermost HDF5 reason is put in our message instead.
 * Rank 0 alone does the file-system steps of a commit (rename, fsync of the
 * directory, pointer file, removals) and broadcasts the result. */
#define _POSIX_C_SOURCE 200809L
#include "io/h5util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"

#define STR_ATTR_MAX 60000 /* earliest file format: an object header message stays < 64 KiB */

/* ------------------------------------------------------------------------------
 * Local errors, reported after agreement. */

void h5u_err_set(h5u_err *e, const char *file, int line, const char *func, const char *fmt, ...) {
  if (e->failed) return; /* keep the first cause */
  e->failed = 1;
  e->file = file;
  e->line = line;
  e->func = func;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
}

#define err_set h5u_err_set
#define LFAIL H5U_FAIL

int h5u_agree(MPI_Comm comm, int local_rc, int *failed_rank) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int mine = local_rc != 0 ? rank : size, lowest = size;
  MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, comm);
  if (failed_rank) *failed_rank = lowest < size ? lowest : -1;
  return lowest < size ? -1 : 0;
}

int h5u_finish(MPI_Comm comm, const h5u_err *e) {
  int who = -1, rank = 0;
  MPI_Comm_rank(comm, &rank);
  if (h5u_agree(comm, e->failed, &who) == 0) return 0;
  if (rank == who) vlm_error_at(e->file, e->line, e->func, "%s", e->msg);
  return -1;
}

/* ------------------------------------------------------------------------------
 * HDF5 error stack: silenced while we run, innermost reason fetched on failure. */

typedef struct {
  H5E_auto2_t fn;
  void *data;
} quiet_state;

static void quiet_on(quiet_state *q) {
  H5Eget_auto2(H5E_DEFAULT, &q->fn, &q->data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static void quiet_off(const quiet_state *q) { H5Eset_auto2(H5E_DEFAULT, q->fn, q->data); }

static herr_t reason_cb(unsigned n, const H5E_error2_t *e, void *data) {
  char *buf = data;
  if (n < 2 && e->desc && e->desc[0]) {
    size_t k = strlen(buf);
    snprintf(buf + k, 300 - k, "%s%s", k ? "; " : "", e->desc);
  }
  return 0;
}

/* The two innermost messages of the current HDF5 error stack (buf: 300 bytes). */
static const char *h5_reason(char *buf) {
  buf[0] = '\0';
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, reason_cb, buf);
  if (!buf[0]) snprintf(buf, 300, "no detail from HDF5");
  return buf;
}

static void close_id(hid_t *id, herr_t (*fn)(hid_t)) {
  if (*id >= 0) fn(*id);
  *id = -1;
}

static void dims_str(int ndim, const long *d, char *buf, size_t n) {
  size_t k = (size_t)snprintf(buf, n, "[");
  for (int i = 0; i < ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%ld", i ? ", " : "", d[i]);
  if (k < n) snprintf(buf + k, n - k, "]");
}

static void type_str(hid_t t, char *buf, size_t n) {
  H5T_class_t c = H5Tget_class(t);
  size_t bits = H5Tget_size(t) * 8;
  if (c == H5T_INTEGER)
    snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", bits);
  else if (c == H5T_FLOAT)
    snprintf(buf, n, "float%zu", bits);
  else if (c == H5T_STRING)
    snprintf(buf, n, "string");
  else
    snprintf(buf, n, "HDF5 type class %d", (int)c);
}

/* ------------------------------------------------------------------------------
 * Files. */

static int set_path(h5u_file *f, const char *path, const char *suffix, h5u_err *e) {
  if (snprintf(f->path, sizeof f->path, "%s%s", path, suffix) >= (int)sizeof f->path)
    LFAIL(e, "%.200s...: path too long (at most %d bytes)", path, H5U_PATH_LEN - 8);
  return 0;
}

static void file_init(h5u_file *f, MPI_Comm comm) {
  memset(f, 0, sizeof *f);
  f->id = -1;
  f->comm = comm;
  MPI_Comm_rank(comm, &f->rank);
  MPI_Comm_size(comm, &f->size);
  f->last_io_mode = (int)H5D_MPIO_NO_COLLECTIVE;
}

static hid_t make_fapl(MPI_Comm comm) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (fapl < 0) return -1;
  if (H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) < 0 ||
      H5Pset_all_coll_metadata_ops(fapl, 1) < 0 || H5Pset_coll_metadata_write(fapl, 1) < 0 ||
      H5Pset_alignment(fapl, H5U_ALIGN, H5U_ALIGN) < 0 ||
      H5Pset_libver_bounds(fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18) < 0) {
    H5Pclose(fapl);
    return -1;
  }
  return fapl;
}

static int create_local(h5u_file *f, h5u_err *e) {
  char why[300];
  hid_t fapl = make_fapl(f->comm);
  if (fapl < 0) LFAIL(e, "%s: cannot set up the MPI-IO file access properties: %s", f->path, h5_reason(why));
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
  f->id = fcpl >= 0 ? H5Fcreate(f->path, H5F_ACC_TRUNC, fcpl, fapl) : -1;
  if (f->id < 0) h5_reason(why);
  if (fcpl >= 0) H5Pclose(fcpl);
  H5Pclose(fapl);
  if (f->id < 0) {
    int en = errno;
    LFAIL(e, "%s: cannot create the HDF5 file (%s; %s)", f->path, why,
          en ? strerror(en) : "no errno");
  }
  f->writable = 1;
  return 0;
}

/* HDF5 creation is collective: all ranks call H5Fcreate even after a local
 * path error, so the ranks stay matched; a failure is agreed afterwards. */
static int create_common(h5u_file *f, const char *path, const char *suffix, MPI_Comm comm) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  file_init(f, comm);
  if (set_path(f, path, suffix, &e) == 0) {
    if (suffix[0]) snprintf(f->final, sizeof f->final, "%s", path);
    errno = 0;
    create_local(f, &e);
  }
  quiet_off(&q);
  if (h5u_finish(comm, &e) != 0) {
    h5u_close(f);
    return -1;
  }
  return 0;
}

int h5u_create(h5u_file *f, const char *path, MPI_Comm comm) { return create_common(f, path, "", comm); }

int h5u_create_tmp(h5u_file *f, const char *path, MPI_Comm comm) {
  return create_common(f, path, ".tmp", comm);
}

int h5u_open(h5u_file *f, const char *path, MPI_Comm comm, int writable) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  char why[300];
  file_init(f, comm);
  f->writable = writable != 0;
  struct stat sb;
  if (set_path(f, path, "", &e) != 0) {
  } else if (stat(path, &sb) != 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot open: %s", path, strerror(errno));
  } else if (!S_ISREG(sb.st_mode)) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: not a regular file", path);
  } else if (H5Fis_hdf5(path) <= 0) {
    err_set(&e, __FILE__, __LINE__, __func__,
            "%s: not an HDF5 file (no HDF5 signature; %lld bytes)", path, (long long)sb.st_size);
  }
  /* agree before the collective open, so that every rank opens or none does */
  quiet_off(&q);
  if (h5u_finish(comm, &e) != 0) return -1;
  quiet_on(&q);
  hid_t fapl = make_fapl(comm);
  if (fapl < 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot set up the MPI-IO file access: %s", path,
            h5_reason(why));
  } else {
    f->id = H5Fopen(path, writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl);
    if (f->id < 0)
      err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot open as HDF5 (%s): %s", path,
              writable ? "read-write" : "read-only", h5_reason(why));
    H5Pclose(fapl);
  }
  quiet_off(&q);
  if (h5u_finish(comm, &e) != 0) {
    h5u_close(f);
    return -1;
  }
  return 0;
}

static int close_local(h5u_file *f, h5u_err *e) {
  if (f->id < 0) return 0;
  char why[300];
  herr_t rc = 0;
  if (f->writable) rc = H5Fflush(f->id, H5F_SCOPE_GLOBAL); /* MPI_File_sync of every rank's data */
  if (rc < 0) h5_reason(why);
  herr_t rc2 = H5Fclose(f->id);
  f->id = -1;
  if (rc < 0) LFAIL(e, "%s: flushing the file failed: %s", f->path, why);
  if (rc2 < 0) LFAIL(e, "%s: closing the file failed: %s", f->path, h5_reason(why));
  return 0;
}

int h5u_close(h5u_file *f) {
  if (f->id < 0) return 0;
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  close_local(f, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

/* fsync of a directory (rank-local); `what` is the file it was done for. */
static int fsync_dir(const char *dir, const char *what, h5u_err *e) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) LFAIL(e, "%s: cannot open its directory %s to fsync it: %s", what, dir, strerror(errno));
  int rc = fsync(fd);
  int en = errno;
  close(fd);
  if (rc != 0 && en != EINVAL) LFAIL(e, "%s: fsync of directory %s failed: %s", what, dir, strerror(en));
  return 0;
}

/* fsync of the directory holding path (rank-local). */
static int fsync_dir_of(const char *path, h5u_err *e) {
  char dir[H5U_PATH_LEN];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == dir) dir[1] = '\0';
  else *slash = '\0';
  return fsync_dir(dir, path, e);
}

static int fsync_file(const char *path, h5u_err *e) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) LFAIL(e, "%s: cannot open it to fsync: %s", path, strerror(errno));
  int rc = fsync(fd);
  int en = errno;
  close(fd);
  if (rc != 0 && en != EINVAL) LFAIL(e, "%s: fsync failed: %s", path, strerror(en));
  return 0;
}

/* Rank 0's result of a file-system step, shared with every rank. */
static int bcast_result(MPI_Comm comm, h5u_err *e) {
  int failed = e->failed;
  MPI_Bcast(&failed, 1, MPI_INT, 0, comm);
  int rank;
  MPI_Comm_rank(comm, &rank);
  if (!failed) return 0;
  if (rank == 0) vlm_error_at(e->file, e->line, e->func, "%s", e->msg);
  return -1;
}

int h5u_commit(h5u_file *f, int local_ok) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  if (!f->final[0])
    err_set(&e, __FILE__, __LINE__, __func__, "%s: not made by h5u_create_tmp: nothing to commit",
            f->path);
  close_local(f, &e); /* collective: every rank closes, whatever happened before */
  quiet_off(&q);
  int who = -1;
  if (h5u_agree(f->comm, e.failed || !local_ok, &who) != 0) {
    /* a rank whose own write failed (local_ok == 0) has reported why already */
    if (e.failed) vlm_error_at(e.file, e.line, e.func, "%s", e.msg);
    if (f->rank == 0 && f->final[0]) {
      if (unlink(f->path) != 0 && errno != ENOENT)
        vlm_warn("%s: could not remove the unfinished file: %s\n", f->path, strerror(errno));
      char why[64];
      if (!local_ok) snprintf(why, sizeof why, "writing it failed, see above");
      else snprintf(why, sizeof why, "writing it failed on rank %d", who);
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: not committed (%s): removed %s; %s is left as it was", f->final, why,
                   f->path, f->final);
    }
    MPI_Barrier(f->comm);
    return -1;
  }
  h5u_err r0 = {0};
  if (f->rank == 0) {
    if (fsync_file(f->path, &r0) == 0) {
      if (rename(f->path, f->final) != 0)
        err_set(&r0, __FILE__, __LINE__, __func__,
                "%s: cannot rename the finished %s to it: %s; %s is left as it was", f->final,
                f->path, strerror(errno), f->final);
      else
        fsync_dir_of(f->final, &r0);
    }
    if (r0.failed) unlink(f->path);
  }
  return bcast_result(f->comm, &r0);
}

/* ------------------------------------------------------------------------------
 * Pointer file, stale .tmp files, retention (rank 0 acts). */

static int join(char *buf, size_t n, const char *dir, const char *name, const char *suffix,
                h5u_err *e) {
  if (snprintf(buf, n, "%s/%s%s", dir, name, suffix) >= (int)n)
    LFAIL(e, "%.200s/%.200s: path too long", dir, name);
  return 0;
}

static int write_small_file(const char *path, const char *text, h5u_err *e) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) LFAIL(e, "%s: cannot create: %s", path, strerror(errno));
  size_t n = strlen(text), done = 0;
  while (done < n) {
    ssize_t w = write(fd, text + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      int en = errno;
      close(fd);
      LFAIL(e, "%s: write failed: %s", path, w < 0 ? strerror(en) : "no progress");
    }
    done += (size_t)w;
  }
  if (fsync(fd) != 0) {
    int en = errno;
    close(fd);
    LFAIL(e, "%s: fsync failed: %s", path, strerror(en));
  }
  if (close(fd) != 0) LFAIL(e, "%s: close failed: %s", path, strerror(errno));
  return 0;
}

static int pointer_write_local(const char *dir, const char *pointer, const char *name, h5u_err *e) {
  char path[H5U_PATH_LEN], tmp[H5U_PATH_LEN + 8], text[H5U_PATH_LEN];
  if (join(path, sizeof path, dir, pointer, "", e) || join(tmp, sizeof tmp, dir, pointer, ".tmp", e))
    return -1;
  if (!name[0] || strchr(name, '/') || strchr(name, '\n'))
    LFAIL(e, "%s: will not point at \"%.200s\": expected a file name in %s", path, name, dir);
  snprintf(text, sizeof text, "%s\n", name);
  if (write_small_file(tmp, text, e) != 0) {
    unlink(tmp);
    return -1;
  }
  if (rename(tmp, path) != 0) {
    int en = errno;
    unlink(tmp);
    LFAIL(e, "%s: cannot rename %s to it: %s; the pointer still names the previous file", path,
          tmp, strerror(en));
  }
  return fsync_dir_of(path, e);
}

int h5u_pointer_write(const char *dir, const char *pointer, const char *name, MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  h5u_err e = {0};
  if (rank == 0) pointer_write_local(dir, pointer, name, &e);
  return bcast_result(comm, &e);
}

int h5u_pointer_read(const char *dir, const char *pointer, char *name, size_t n) {
  char path[H5U_PATH_LEN];
  name[0] = '\0';
  if (snprintf(path, sizeof path, "%s/%s", dir, pointer) >= (int)sizeof path)
    VLM_FAIL("%.200s/%.200s: path too long", dir, pointer);
  FILE *fp = fopen(path, "r");
  if (!fp) {
    if (errno == ENOENT) return 1;
    VLM_FAIL("%s: cannot open: %s", path, strerror(errno));
  }
  char buf[H5U_PATH_LEN];
  size_t k = fread(buf, 1, sizeof buf - 1, fp);
  int bad = ferror(fp);
  fclose(fp);
  if (bad) VLM_FAIL("%s: read failed", path);
  buf[k] = '\0';
  while (k > 0 && (buf[k - 1] == '\n' || buf[k - 1] == '\r' || buf[k - 1] == ' ')) buf[--k] = '\0';
  if (k == 0) VLM_FAIL("%s: empty (expected the name of a file in %s)", path, dir);
  if (strchr(buf, '/') || strchr(buf, '\n'))
    VLM_FAIL("%s: holds \"%.200s\", expected one file name in %s", path, buf, dir);
  if (k >= n) VLM_FAIL("%s: the name it holds is longer than %zu bytes", path, n - 1);
  memcpy(name, buf, k + 1);
  return 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int remove_tmp_local(const char *dir, long *count, h5u_err *e) {
  DIR *d = opendir(dir);
  if (!d) LFAIL(e, "%s: cannot list the directory to remove stale .tmp files: %s", dir, strerror(errno));
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d)) != NULL) {
    if (!ends_with(de->d_name, ".tmp")) continue;
    char path[H5U_PATH_LEN];
    if (join(path, sizeof path, dir, de->d_name, "", e) != 0) {
      rc = -1;
      break;
    }
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue; /* only our regular files */
    if (unlink(path) != 0) {
      err_set(e, __FILE__, __LINE__, __func__, "%s: cannot remove the stale file: %s", path,
              strerror(errno));
      rc = -1;
      break;
    }
    (*count)++;
  }
  closedir(d);
  if (rc == 0 && *count > 0) rc = fsync_dir(dir, dir, e);
  return rc;
}

int h5u_remove_stale_tmp(const char *dir, long *n_removed, MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  h5u_err e = {0};
  long count = 0;
  if (rank == 0) remove_tmp_local(dir, &count, &e);
  MPI_Bcast(&count, 1, MPI_LONG, 0, comm);
  if (n_removed) *n_removed = count;
  return bcast_result(comm, &e);
}

int h5u_step_name(char *buf, size_t n, const char *prefix, long step, const char *suffix) {
  if (step < 0) return -1;
  int k = snprintf(buf, n, "%s%08ld%s", prefix, step, suffix);
  return k < 0 || (size_t)k >= n ? -1 : 0;
}

long h5u_step_of(const char *name, const char *prefix, const char *suffix) {
  size_t np = strlen(prefix), ns = strlen(suffix), n = strlen(name);
  if (n <= np + ns || strncmp(name, prefix, np) != 0 || strcmp(name + n - ns, suffix) != 0) return -1;
  long step = 0;
  for (size_t i = np; i < n - ns; i++) {
    if (name[i] < '0' || name[i] > '9') return -1;
    if (step > (1L << 58)) return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

typedef struct {
  long step;
  char name[256];
} step_file;

static int cmp_step_desc(const void *a, const void *b) {
  long x = ((const step_file *)a)->step, y = ((const step_file *)b)->step;
  return x > y ? -1 : x < y ? 1 : 0;
}

static int keep_last_local(const char *dir, const char *prefix, const char *suffix, int keep,
                           const char *pointer, h5u_err *e) {
  char protect[H5U_PATH_LEN] = "";
  if (pointer) {
    int prc = h5u_pointer_read(dir, pointer, protect, sizeof protect);
    if (prc < 0) LFAIL(e, "%s/%s: unreadable, so no old file is removed", dir, pointer);
  }
  DIR *d = opendir(dir);
  if (!d) LFAIL(e, "%s: cannot list the directory: %s", dir, strerror(errno));
  step_file *list = NULL;
  int n = 0, cap = 0, rc = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    long step = h5u_step_of(de->d_name, prefix, suffix);
    if (step < 0 || strlen(de->d_name) >= sizeof list->name) continue;
    char path[H5U_PATH_LEN];
    struct stat sb;
    if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path ||
        lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
      continue; /* only regular files are ours to remove */
    if (n == cap) {
      cap = cap ? 2 * cap : 16;
      step_file *nl = realloc(list, (size_t)cap * sizeof *list);
      if (!nl) {
        err_set(e, __FILE__, __LINE__, __func__, "%s: out of memory listing files", dir);
        rc = -1;
        break;
      }
      list = nl;
    }
    list[n].step = step;
    snprintf(list[n].name, sizeof list[n].name, "%s", de->d_name);
    n++;
  }
  closedir(d);
  if (rc == 0 && n > keep) {
    qsort(list, (size_t)n, sizeof *list, cmp_step_desc);
    for (int i = keep; i < n && rc == 0; i++) {
      if (strcmp(list[i].name, protect) == 0) continue;
      char path[H5U_PATH_LEN];
      if (join(path, sizeof path, dir, list[i].name, "", e) != 0 ||
          (unlink(path) != 0 && errno != ENOENT)) {
        if (!e->failed)
          err_set(e, __FILE__, __LINE__, __func__, "%s: cannot remove the old file: %s", path,
                  strerror(errno));
        rc = -1;
      }
    }
  }
  free(list);
  return rc;
}

int h5u_keep_last(const char *dir, const char *prefix, const char *suffix, int keep,
                  const char *pointer, MPI_Comm comm) {
  int rank;
  MPI_Comm_rank(comm, &rank);
  h5u_err e = {0};
  if (rank == 0 && keep >= 1) keep_last_local(dir, prefix, suffix, keep, pointer, &e);
  return bcast_result(comm, &e);
}

/* ------------------------------------------------------------------------------
 * Objects and attributes. */

static int exists_local(h5u_file *f, const char *path, int *found, h5u_err *e) {
  *found = 0;
  if (strcmp(path, "/") == 0) {
    *found = 1;
    return 0;
  }
  char part[H5U_PATH_LEN];
  if (strlen(path) >= sizeof part) LFAIL(e, "%s: object path too long: %.100s...", f->path, path);
  for (const char *p = path + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      size_t k = (size_t)(p - path);
      memcpy(part, path, k);
      part[k] = '\0';
      htri_t ex = H5Lexists(f->id, part, H5P_DEFAULT);
      if (ex < 0) {
        char why[300];
        LFAIL(e, "%s: cannot look up %s: %s", f->path, part, h5_reason(why));
      }
      if (ex == 0) return 0;
      if (*p == '\0') break;
    }
  }
  *found = 1;
  return 0;
}

int h5u_exists(h5u_file *f, const char *path) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  int found = 0;
  exists_local(f, path, &found, &e);
  quiet_off(&q);
  if (h5u_finish(f->comm, &e) != 0) return -1;
  return found;
}

int h5u_group_create(h5u_file *f, const char *path) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  char why[300];
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), gcpl = H5Pcreate(H5P_GROUP_CREATE);
  if (lcpl < 0 || gcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0 ||
      H5Pset_obj_track_times(gcpl, 0) < 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: group %s: property setup failed: %s", f->path,
            path, h5_reason(why));
  } else {
    hid_t g = H5Gcreate2(f->id, path, lcpl, gcpl, H5P_DEFAULT);
    if (g < 0)
      err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot create group %s: %s", f->path, path,
              h5_reason(why));
    else
      H5Gclose(g);
  }
  if (lcpl >= 0) H5Pclose(lcpl);
  if (gcpl >= 0) H5Pclose(gcpl);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

typedef struct {
  char **names;
  int n, cap, oom;
} name_list;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
  (void)g;
  (void)info;
  name_list *l = data;
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 64;
    char **nn = realloc(l->names, (size_t)cap * sizeof *nn);
    if (!nn) {
      l->oom = 1;
      return -1;
    }
    l->names = nn;
    l->cap = cap;
  }
  if (!(l->names[l->n] = strdup(name))) {
    l->oom = 1;
    return -1;
  }
  l->n++;
  return 0;
}

int h5u_list(h5u_file *f, const char *path, char ***names, int *n) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  char why[300];
  name_list l = {0};
  hid_t g = H5Gopen2(f->id, path, H5P_DEFAULT);
  if (g < 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot open group %s: %s", f->path, path,
            h5_reason(why));
  } else {
    hsize_t idx = 0;
    if (H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, list_cb, &l) < 0)
      err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot list group %s: %s", f->path, path,
              l.oom ? "out of memory" : h5_reason(why));
    H5Gclose(g);
  }
  quiet_off(&q);
  if (h5u_finish(f->comm, &e) != 0) {
    h5u_names_free(l.names, l.n);
    *names = NULL;
    *n = 0;
    return -1;
  }
  *names = l.names;
  *n = l.n;
  return 0;
}

void h5u_names_free(char **names, int n) {
  for (int i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* Opens attribute NAME of OBJ, checking it holds one value. */
static int attr_open(h5u_file *f, const char *obj, const char *name, hid_t *oid, hid_t *aid,
                     h5u_err *e) {
  char why[300];
  *oid = *aid = -1;
  *oid = H5Oopen(f->id, obj, H5P_DEFAULT);
  if (*oid < 0) LFAIL(e, "%s: cannot open object %s: %s", f->path, obj, h5_reason(why));
  htri_t ex = H5Aexists(*oid, name);
  if (ex <= 0) {
    close_id(oid, H5Oclose);
    LFAIL(e, "%s: %s has no attribute '%s'", f->path, obj, name);
  }
  *aid = H5Aopen(*oid, name, H5P_DEFAULT);
  if (*aid < 0) {
    h5_reason(why);
    close_id(oid, H5Oclose);
    LFAIL(e, "%s: %s: cannot open attribute '%s': %s", f->path, obj, name, why);
  }
  hid_t sp = H5Aget_space(*aid);
  hssize_t npts = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  if (sp >= 0) H5Sclose(sp);
  if (npts != 1) {
    close_id(aid, H5Aclose);
    close_id(oid, H5Oclose);
    LFAIL(e, "%s: %s: attribute '%s' must hold one value, found %lld", f->path, obj, name,
          (long long)npts);
  }
  return 0;
}

/* Creates (replacing) scalar attribute NAME of type ftype on OBJ and writes buf. */
static int attr_write(h5u_file *f, const char *obj, const char *name, hid_t ftype, hid_t mtype,
                      const void *buf, h5u_err *e) {
  char why[300];
  hid_t o = H5Oopen(f->id, obj, H5P_DEFAULT);
  if (o < 0) LFAIL(e, "%s: cannot open object %s to set attribute '%s': %s", f->path, obj, name,
                   h5_reason(why));
  int rc = -1;
  hid_t sp = -1, a = -1;
  htri_t ex = H5Aexists(o, name);
  if (ex > 0 && H5Adelete(o, name) < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s: cannot replace attribute '%s': %s", f->path,
            obj, name, h5_reason(why));
    goto done;
  }
  sp = H5Screate(H5S_SCALAR);
  a = sp >= 0 ? H5Acreate2(o, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (a < 0 || H5Awrite(a, mtype, buf) < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s: cannot write attribute '%s': %s", f->path,
            obj, name, h5_reason(why));
    goto done;
  }
  rc = 0;
done:
  close_id(&a, H5Aclose);
  close_id(&sp, H5Sclose);
  H5Oclose(o);
  return rc;
}

int h5u_attr_write_string(h5u_file *f, const char *obj, const char *name, const char *value) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  size_t len = strlen(value);
  if (len > STR_ATTR_MAX) {
    err_set(&e, __FILE__, __LINE__, __func__,
            "%s: %s: attribute '%s' of %zu bytes is longer than the %d bytes an attribute may hold "
            "in the default file format",
            f->path, obj, name, len, STR_ATTR_MAX);
  } else {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0 || H5Tset_size(t, H5T_VARIABLE) < 0 || H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
      char why[300];
      err_set(&e, __FILE__, __LINE__, __func__, "%s: string type setup failed: %s", f->path,
              h5_reason(why));
    } else {
      attr_write(f, obj, name, t, t, &value, &e);
    }
    if (t >= 0) H5Tclose(t);
  }
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

int h5u_attr_write_int(h5u_file *f, const char *obj, const char *name, long long value) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  attr_write(f, obj, name, H5T_STD_I64LE, H5T_NATIVE_LLONG, &value, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

int h5u_attr_exists(h5u_file *f, const char *obj, const char *name) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  char why[300];
  int found = 0;
  hid_t o = H5Oopen(f->id, obj, H5P_DEFAULT);
  if (o < 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot open object %s: %s", f->path, obj,
            h5_reason(why));
  } else {
    htri_t ex = H5Aexists(o, name);
    if (ex < 0)
      err_set(&e, __FILE__, __LINE__, __func__, "%s: %s: cannot look up attribute '%s': %s",
              f->path, obj, name, h5_reason(why));
    found = ex > 0;
    H5Oclose(o);
  }
  quiet_off(&q);
  if (h5u_finish(f->comm, &e) != 0) return -1;
  return found;
}

static int attr_read_string_local(h5u_file *f, const char *obj, const char *name, char **value,
                                  h5u_err *e) {
  hid_t o, a;
  if (attr_open(f, obj, name, &o, &a, e) != 0) return -1;
  char why[300], found[64];
  int rc = -1;
  hid_t ft = H5Aget_type(a), mt = -1;
  if (ft < 0 || H5Tget_class(ft) != H5T_STRING) {
    if (ft >= 0) type_str(ft, found, sizeof found);
    else snprintf(found, sizeof found, "?");
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s: attribute '%s': expected a string, found %s",
            f->path, obj, name, found);
    goto done;
  }
  if (H5Tis_variable_str(ft) > 0) {
    mt = H5Tcopy(H5T_C_S1);
    char *s = NULL;
    if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0 ||
        H5Aread(a, mt, &s) < 0) {
      err_set(e, __FILE__, __LINE__, __func__, "%s: %s: cannot read attribute '%s': %s", f->path,
              obj, name, h5_reason(why));
      goto done;
    }
    *value = strdup(s ? s : "");
    H5free_memory(s);
  } else {
    size_t sz = H5Tget_size(ft);
    char *buf = calloc(sz + 1, 1);
    if (!buf || H5Aread(a, ft, buf) < 0) {
      err_set(e, __FILE__, __LINE__, __func__, "%s: %s: cannot read attribute '%s': %s", f->path,
              obj, name, buf ? h5_reason(why) : "out of memory");
      free(buf);
      goto done;
    }
    size_t len = strnlen(buf, sz);
    while (len > 0 && buf[len - 1] == ' ') len--; /* space-padded strings */
    buf[len] = '\0';
    *value = buf;
  }
  if (!*value) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: out of memory", f->path);
    goto done;
  }
  rc = 0;
done:
  close_id(&mt, H5Tclose);
  close_id(&ft, H5Tclose);
  H5Aclose(a);
  H5Oclose(o);
  return rc;
}

int h5u_attr_read_string(h5u_file *f, const char *obj, const char *name, char **value) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  *value = NULL;
  attr_read_string_local(f, obj, name, value, &e);
  quiet_off(&q);
  if (h5u_finish(f->comm, &e) != 0) {
    free(*value);
    *value = NULL;
    return -1;
  }
  return 0;
}

/* An integer attribute read as type mtype (NATIVE_LLONG or NATIVE_UINT64). */
static int attr_read_integer(h5u_file *f, const char *obj, const char *name, hid_t mtype, void *out,
                             h5u_err *e) {
  hid_t o, a;
  if (attr_open(f, obj, name, &o, &a, e) != 0) return -1;
  char why[300], found[64];
  int rc = 0;
  hid_t ft = H5Aget_type(a);
  if (ft < 0 || H5Tget_class(ft) != H5T_INTEGER) {
    if (ft >= 0) type_str(ft, found, sizeof found);
    else snprintf(found, sizeof found, "?");
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s: attribute '%s': expected an integer, found %s",
            f->path, obj, name, found);
    rc = -1;
  } else if (H5Aread(a, mtype, out) < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s: cannot read attribute '%s': %s", f->path, obj,
            name, h5_reason(why));
    rc = -1;
  }
  close_id(&ft, H5Tclose);
  H5Aclose(a);
  H5Oclose(o);
  return rc;
}

int h5u_attr_read_int(h5u_file *f, const char *obj, const char *name, long long *value) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  attr_read_integer(f, obj, name, H5T_NATIVE_LLONG, value, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

/* ------------------------------------------------------------------------------
 * Datasets and flattened ranges. */

int h5u_dataset_create_f32(h5u_file *f, const char *path, int ndim, const long *shape) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  char why[300];
  hsize_t dims[H5U_MAX_DIMS];
  hid_t sp = -1, dcpl = -1, ds = -1;
  if (ndim < 1 || ndim > H5U_MAX_DIMS) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: dataset %s: %d dimensions, expected 1 to %d",
            f->path, path, ndim, H5U_MAX_DIMS);
    goto done;
  }
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0) {
      err_set(&e, __FILE__, __LINE__, __func__, "%s: dataset %s: negative dimension %ld", f->path,
              path, shape[d]);
      goto done;
    }
    dims[d] = (hsize_t)shape[d];
  }
  sp = H5Screate_simple(ndim, dims, NULL);
  dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (sp < 0 || dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 ||
      H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0 ||
      H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 || H5Pset_obj_track_times(dcpl, 0) < 0) {
    err_set(&e, __FILE__, __LINE__, __func__, "%s: dataset %s: property setup failed: %s", f->path,
            path, h5_reason(why));
    goto done;
  }
  ds = H5Dcreate2(f->id, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  if (ds < 0) {
    char s[200];
    dims_str(ndim, shape, s, sizeof s);
    err_set(&e, __FILE__, __LINE__, __func__, "%s: cannot create dataset %s (float32 %s): %s",
            f->path, path, s, h5_reason(why));
  }
done:
  close_id(&ds, H5Dclose);
  close_id(&dcpl, H5Pclose);
  close_id(&sp, H5Sclose);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

/* Opens a float32 dataset and its dims. */
static int dataset_open_f32(h5u_file *f, const char *path, hid_t *ds, int *ndim, hsize_t *dims,
                            h5u_err *e) {
  char why[300];
  int found = 0;
  *ds = -1;
  if (exists_local(f, path, &found, e) != 0) return -1;
  if (!found) LFAIL(e, "%s: dataset %s is missing", f->path, path);
  *ds = H5Dopen2(f->id, path, H5P_DEFAULT);
  if (*ds < 0) LFAIL(e, "%s: %s is not a readable dataset: %s", f->path, path, h5_reason(why));
  hid_t t = H5Dget_type(*ds), sp = H5Dget_space(*ds);
  int ok_type = t >= 0 && H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 4;
  char found_t[64] = "?";
  if (t >= 0 && !ok_type) type_str(t, found_t, sizeof found_t);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  if (nd >= 1 && nd <= H5U_MAX_DIMS) H5Sget_simple_extent_dims(sp, dims, NULL);
  close_id(&t, H5Tclose);
  close_id(&sp, H5Sclose);
  if (!ok_type) {
    close_id(ds, H5Dclose);
    LFAIL(e, "%s: dataset %s holds %s, expected float32", f->path, path, found_t);
  }
  if (nd < 1 || nd > H5U_MAX_DIMS) {
    close_id(ds, H5Dclose);
    LFAIL(e, "%s: dataset %s has %d dimensions, expected 1 to %d", f->path, path, nd, H5U_MAX_DIMS);
  }
  *ndim = nd;
  return 0;
}

int h5u_dataset_shape(h5u_file *f, const char *path, int *ndim, long *shape) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  hid_t ds;
  hsize_t dims[H5U_MAX_DIMS];
  if (dataset_open_f32(f, path, &ds, ndim, dims, &e) == 0) {
    for (int d = 0; d < *ndim; d++) shape[d] = (long)dims[d];
    H5Dclose(ds);
  }
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

/* Selects the row-major flattened element range [lo, hi) of an N-d dataspace
 * as a union of at most 2 ndim - 1 blocks: from lo, take the largest aligned
 * run of whole sub-blocks (rows, planes, ...) that fits, and repeat. */
static herr_t select_flat_range(hid_t space, int ndim, const hsize_t *dims, hsize_t lo, hsize_t hi) {
  if (lo >= hi) return H5Sselect_none(space);
  hsize_t unit[H5U_MAX_DIMS]; /* elements in one step of dimension d */
  unit[ndim - 1] = 1;
  for (int d = ndim - 2; d >= 0; d--) unit[d] = unit[d + 1] * dims[d + 1];
  int first = 1;
  while (lo < hi) {
    int d = 0;
    while (d < ndim - 1 && !(lo % unit[d] == 0 && lo + unit[d] <= hi)) d++;
    hsize_t at = (lo / unit[d]) % dims[d];
    hsize_t steps = (hi - lo) / unit[d];
    if (steps > dims[d] - at) steps = dims[d] - at;
    hsize_t start[H5U_MAX_DIMS], count[H5U_MAX_DIMS];
    for (int k = 0; k < ndim; k++) {
      if (k < d) start[k] = (lo / unit[k]) % dims[k], count[k] = 1;
      else if (k == d) start[k] = at, count[k] = steps;
      else start[k] = 0, count[k] = dims[k];
    }
    if (H5Sselect_hyperslab(space, first ? H5S_SELECT_SET : H5S_SELECT_OR, start, NULL, count,
                            NULL) < 0)
      return -1;
    first = 0;
    lo += steps * unit[d];
  }
  return 0;
}

static int g_fault_rank = -1;
static long g_fault_after = -1;

void h5u_inject_write_fault(int rank, long after) {
  g_fault_rank = rank;
  g_fault_after = after;
}

static int transfer(h5u_file *f, const char *path, long lo, long hi, void *buf, int write,
                    h5u_err *e) {
  char why[300];
  hid_t ds = -1, fs = -1, ms = -1, dxpl = -1;
  int nd = 0, rc = -1;
  hsize_t dims[H5U_MAX_DIMS];
  const char *verb = write ? "write" : "read";
  if (write && !f->writable) LFAIL(e, "%s: opened read-only, cannot write %s", f->path, path);
  /* even after a local failure this rank must take part in the collective
   * transfer below, with an empty selection, so that the others do not hang */
  int ok = dataset_open_f32(f, path, &ds, &nd, dims, e) == 0;
  hsize_t n = 1;
  for (int d = 0; ok && d < nd; d++) n *= dims[d];
  if (ok && (lo < 0 || hi < lo || (hsize_t)hi > n)) {
    err_set(e, __FILE__, __LINE__, __func__,
            "%s: %s of %s: element range [%ld, %ld) outside the dataset's %llu elements", f->path,
            verb, path, lo, hi, (unsigned long long)n);
    ok = 0;
  }
  if (ds < 0) return -1; /* nothing to take part in: every rank fails the same way here */
  hsize_t cnt = ok && hi > lo ? (hsize_t)(hi - lo) : 1;
  fs = H5Dget_space(ds);
  ms = H5Screate_simple(1, &cnt, NULL);
  dxpl = H5Pcreate(H5P_DATASET_XFER);
  if (fs < 0 || ms < 0 || dxpl < 0 || H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s of %s: setup failed: %s", f->path, verb, path,
            h5_reason(why));
    goto done;
  }
  if (!ok || hi == lo) {
    H5Sselect_none(fs);
    H5Sselect_none(ms);
  } else if (select_flat_range(fs, nd, dims, (hsize_t)lo, (hsize_t)hi) < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: %s of %s: cannot select elements [%ld, %ld): %s",
            f->path, verb, path, lo, hi, h5_reason(why));
    H5Sselect_none(fs);
    H5Sselect_none(ms);
  }
  float dummy = 0.0f;
  void *p = buf && hi > lo ? buf : &dummy;
  herr_t st = write ? H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, p)
                    : H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, p);
  if (st < 0) {
    err_set(e, __FILE__, __LINE__, __func__, "%s: collective %s of %s, elements [%ld, %ld), failed: %s",
            f->path, verb, path, lo, hi, h5_reason(why));
    goto done;
  }
  H5D_mpio_actual_io_mode_t mode = H5D_MPIO_NO_COLLECTIVE;
  if (H5Pget_mpio_actual_io_mode(dxpl, &mode) >= 0) f->last_io_mode = (int)mode;
  f->n_transfers++;
  if (mode != H5D_MPIO_NO_COLLECTIVE) f->n_collective++;
  if (write && g_fault_after >= 0 && f->rank == g_fault_rank && g_fault_after-- == 0) {
    g_fault_rank = -1;
    err_set(e, __FILE__, __LINE__, __func__,
            "%s: write of %s, elements [%ld, %ld), failed: injected I/O error (test)", f->path,
            path, lo, hi);
    goto done;
  }
  rc = ok ? 0 : -1;
done:
  close_id(&dxpl, H5Pclose);
  close_id(&ms, H5Sclose);
  close_id(&fs, H5Sclose);
  close_id(&ds, H5Dclose);
  return rc;
}

int h5u_write_range_f32(h5u_file *f, const char *path, long lo, long hi, const float *src) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  transfer(f, path, lo, hi, (void *)src, 1, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

int h5u_read_range_f32(h5u_file *f, const char *path, long lo, long hi, float *dst) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  transfer(f, path, lo, hi, dst, 0, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

/* ------------------------------------------------------------------------------
 * Checksums (definition in io/h5util.h). */

static inline uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 27;
  z *= 0x94D049BB133111EBULL;
  z ^= z >> 31;
  return z;
}

uint64_t h5u_sum64_part(long lo, long hi, const float *x) {
  uint64_t sum = 0;
  const uint64_t k = 0x9E3779B97F4A7C15ULL;
  uint64_t key = (uint64_t)lo * k;
  for (long i = 0; i < hi - lo; i++, key += k) {
    uint32_t bits;
    memcpy(&bits, &x[i], 4);
    sum += mix64(key ^ (uint64_t)bits);
  }
  return sum;
}

uint64_t h5u_sum64_final(uint64_t sum, long n) {
  return mix64(sum + (uint64_t)n * 0xD6E8FEB86659FD93ULL);
}

int h5u_sum64_global(MPI_Comm comm, long n, long lo, long hi, const float *x, uint64_t *checksum) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  long long mine[2] = {lo, hi};
  long long *all = malloc((size_t)size * 2 * sizeof *all);
  int *order = malloc((size_t)size * sizeof *order);
  int oom = !all || !order, any_oom = 0;
  MPI_Allreduce(&oom, &any_oom, 1, MPI_INT, MPI_MAX, comm);
  if (any_oom) {
    free(all);
    free(order);
    if (oom) VLM_FAIL("checksum: out of memory for %d ranks", size);
    return -1;
  }
  MPI_Allgather(mine, 2, MPI_LONG_LONG, all, 2, MPI_LONG_LONG, comm);
  /* ranks in order of lo (then rank); each one counts the part of its range
   * not already counted by the ranks before it */
  for (int r = 0; r < size; r++) order[r] = r;
  for (int i = 1; i < size; i++) /* insertion sort: stable, size is small */
    for (int j = i; j > 0 && all[2 * order[j]] < all[2 * order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  long long covered = 0, my_lo = lo, my_hi = lo;
  int gap = 0;
  for (int i = 0; i < size; i++) {
    int r = order[i];
    long long a = all[2 * r], b = all[2 * r + 1];
    if (b <= a) continue;
    if (a > covered) gap = 1;
    long long from = a > covered ? a : covered;
    if (r == rank && b > from) my_lo = from, my_hi = b;
    if (b > covered) covered = b;
  }
  free(all);
  free(order);
  if (gap || covered != n) {
    if (rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "checksum: cannot verify: the ranks' element ranges do not cover the tensor's "
                   "%ld elements (%s)",
                   n, gap ? "a gap between ranges" : "the ranges end early");
    return -1;
  }
  uint64_t sum = 0;
  VLM_CHECK(h5u_sum64_reduce(comm, h5u_sum64_part((long)my_lo, (long)my_hi, x + (my_lo - lo)), &sum));
  *checksum = h5u_sum64_final(sum, n);
  return 0;
}

int h5u_checksum_write(h5u_file *f, const char *path, uint64_t checksum) {
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  attr_write(f, path, H5U_CHECKSUM_ATTR, H5T_STD_U64LE, H5T_NATIVE_UINT64, &checksum, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e);
}

int h5u_checksum_read(h5u_file *f, const char *path, uint64_t *checksum) {
  int ex = h5u_attr_exists(f, path, H5U_CHECKSUM_ATTR);
  if (ex <= 0) return ex;
  quiet_state q;
  quiet_on(&q);
  h5u_err e = {0};
  attr_read_integer(f, path, H5U_CHECKSUM_ATTR, H5T_NATIVE_UINT64, checksum, &e);
  quiet_off(&q);
  return h5u_finish(f->comm, &e) == 0 ? 1 : -1;
}

static long dataset_numel(const int ndim, const long *shape) {
  long n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  return n;
}

int h5u_sum64_reduce(MPI_Comm comm, uint64_t part, uint64_t *sum) {
  int size;
  MPI_Comm_size(comm, &size);
  uint64_t *parts = malloc((size_t)size * sizeof *parts);
  int oom = !parts, any = 0;
  MPI_Allreduce(&oom, &any, 1, MPI_INT, MPI_MAX, comm);
  if (any) {
    free(parts);
    if (oom) VLM_FAIL("checksum: out of memory for %d ranks", size);
    return -1;
  }
  MPI_Allgather(&part, 1, MPI_UINT64_T, parts, 1, MPI_UINT64_T, comm);
  uint64_t total = 0;
  for (int r = 0; r < size; r++) total += parts[r]; /* mod 2^64, defined for unsigned */
  free(parts);
  *sum = total;
  return 0;
}

int h5u_write_tensor_f32(h5u_file *f, const char *path, long lo, long hi, const float *src) {
  int nd;
  long shape[H5U_MAX_DIMS];
  uint64_t sum = 0;
  VLM_CHECK(h5u_dataset_shape(f, path, &nd, shape));
  VLM_CHECK(h5u_write_range_f32(f, path, lo, hi, src));
  VLM_CHECK(h5u_sum64_reduce(f->comm, h5u_sum64_part(lo, hi, src), &sum));
  VLM_CHECK(h5u_checksum_write(f, path, h5u_sum64_final(sum, dataset_numel(nd, shape))));
  return 0;
}

int h5u_read_tensor_f32(h5u_file *f, const char *path, long lo, long hi, float *dst) {
  int nd;
  long shape[H5U_MAX_DIMS];
  VLM_CHECK(h5u_dataset_shape(f, path, &nd, shape));
  VLM_CHECK(h5u_read_range_f32(f, path, lo, hi, dst));
  uint64_t stored = 0, computed = 0;
  int has = h5u_checksum_read(f, path, &stored);
  if (has < 0) return -1;
  if (has == 0) return 1;
  long n = dataset_numel(nd, shape);
  if (h5u_sum64_global(f->comm, n, lo, hi, dst, &computed) != 0) {
    if (f->rank == 0) vlm_error_at(__FILE__, __LINE__, __func__, "%s: %s: checksum not verified", f->path, path);
    return -1;
  }
  if (computed != stored) {
    if (f->rank == 0)
      vlm_error_at(__FILE__, __LINE__, __func__,
                   "%s: dataset %s: checksum mismatch (stored 0x%016llx, computed 0x%016llx from "
                   "the data read): the tensor's data is corrupt",
                   f->path, path, (unsigned long long)stored, (unsigned long long)computed);
    return -1;
  }
  return 0;
}
