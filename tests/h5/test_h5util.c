/* tests/h5/test_h5util.c: io/h5util.c under MPI.
 *
 *   test_h5util write  DIR   (mpirun -np 3): ranges of N-d float32 datasets
 *       written collectively by uneven splits (one rank empty for some
 *       tensors), HDF5's actual I/O mode collective on every rank, values read
 *       back by other splits (overlapping ranges too), checksums equal whatever
 *       the split (sub-communicators of 1 and 2 ranks), string/int attributes,
 *       atomic commit (stale .tmp removed, keep-K, `latest`), an injected
 *       write failure mid-file and a failed rename leaving the previous file and
 *       `latest` untouched and loadable, a corrupted tensor caught by its
 *       checksum, bad files with clear errors. Leaves DIR/ranges.h5.
 *   test_h5util verify DIR   (mpirun -np 1 or 2): reads DIR/ranges.h5 written
 *       by 3 ranks with this rank count's split and verifies every checksum.
 *
 * Rank 0 prints one line per check (a check passes when it passed on every
 * rank) and "N passed, M failed"; the exit status is non-zero on failure. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/vlm.h"
#include "io/h5util.h"

static int g_rank, g_size, n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
  int all = 0;
  ok = ok != 0;
  MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all) n_pass++;
  else n_fail++;
  if (g_rank != 0) return;
  printf("%s ", all ? "ok  " : "FAIL");
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  printf("\n");
  fflush(stdout);
}

/* ---- the tensors: shapes and a value per global element ---- */

typedef struct {
  const char *path;
  int ndim;
  long shape[4];
} tensor_spec;

static const tensor_spec TENSORS[] = {
    {"/tensors/a.vector", 1, {7}},
    {"/tensors/b.tiny", 1, {2}}, /* fewer elements than ranks: one rank writes nothing */
    {"/tensors/c.matrix", 2, {5, 13}},
    {"/tensors/d.conv", 4, {3, 4, 5, 6}},
    {"/tensors/e.wide", 2, {1000, 37}},
    {"/tensors/f.cube", 3, {9, 1, 11}},
};
#define N_TENSORS ((int)(sizeof TENSORS / sizeof TENSORS[0]))

static long numel_of(const tensor_spec *t) {
  long n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->shape[d];
  return n;
}

static float value_at(int tensor, long i) {
  uint64_t z = (uint64_t)i * 0x9E3779B97F4A7C15ULL + (uint64_t)tensor * 77;
  z ^= z >> 29;
  z *= 0xBF58476D1CE4E5B9ULL;
  z ^= z >> 32;
  return (float)((double)(z % 2000001) / 1000.0 - 1000.0);
}

/* Split of n elements over `size` ranks: even chunks (ZeRO style) or a
 * skewed split whose boundaries fall inside rows. */
static void split(long n, int size, int rank, int skewed, long *lo, long *hi) {
  if (!skewed) {
    long chunk = (n + size - 1) / size;
    *lo = rank * chunk < n ? rank * chunk : n;
    *hi = (rank + 1) * chunk < n ? (rank + 1) * chunk : n;
    return;
  }
  /* rank r gets [n*r^2/size^2, n*(r+1)^2/size^2): small first, large last */
  *lo = n * rank * rank / ((long)size * size);
  *hi = n * (rank + 1) * (rank + 1) / ((long)size * size);
}

static float *fill(int t, long lo, long hi) {
  float *x = malloc((size_t)(hi > lo ? hi - lo : 1) * sizeof *x);
  for (long i = lo; i < hi; i++) x[i - lo] = value_at(t, i);
  return x;
}

/* Writes every tensor with the given split into an open writable file. */
static int write_all(h5u_file *f, int skewed) {
  if (h5u_group_create(f, "/tensors") != 0) return -1;
  for (int t = 0; t < N_TENSORS; t++) {
    const tensor_spec *s = &TENSORS[t];
    long lo, hi;
    split(numel_of(s), f->size, f->rank, skewed, &lo, &hi);
    float *x = fill(t, lo, hi);
    int rc = h5u_dataset_create_f32(f, s->path, s->ndim, s->shape);
    if (rc == 0) rc = h5u_write_tensor_f32(f, s->path, lo, hi, x);
    free(x);
    if (rc != 0) return -1;
  }
  return 0;
}

/* Reads every tensor with the given split (or whole on every rank) and
 * compares; returns the number of wrong elements on this rank, -1 on error. */
static long read_all(h5u_file *f, int mode /* 0 even, 1 skewed, 2 whole */) {
  long bad = 0;
  for (int t = 0; t < N_TENSORS; t++) {
    const tensor_spec *s = &TENSORS[t];
    long n = numel_of(s), lo = 0, hi = n;
    if (mode < 2) split(n, f->size, f->rank, mode, &lo, &hi);
    float *x = malloc((size_t)(hi > lo ? hi - lo : 1) * sizeof *x);
    if (h5u_read_tensor_f32(f, s->path, lo, hi, x) != 0) {
      free(x);
      return -1;
    }
    for (long i = lo; i < hi; i++) {
      float want = value_at(t, i);
      if (memcmp(&x[i - lo], &want, 4) != 0) bad++;
    }
    free(x);
  }
  return bad;
}

static int all_collective(const h5u_file *f) {
  return f->n_transfers > 0 && f->n_collective == f->n_transfers;
}

static int file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0;
}

static void path_in(char *buf, size_t n, const char *dir, const char *name) {
  if (snprintf(buf, n, "%s/%s", dir, name) >= (int)n) buf[0] = '\0';
}

/* Writes DIR/NAME as a small checkpoint-like file with step as an attribute. */
static int write_step(const char *dir, long step, int keep) {
  char name[64], path[1200];
  h5u_step_name(name, sizeof name, "ckpt-", step, ".h5");
  path_in(path, sizeof path, dir, name);
  h5u_file f;
  if (h5u_create_tmp(&f, path, MPI_COMM_WORLD) != 0) return -1;
  int ok = write_all(&f, 0) == 0 && h5u_attr_write_int(&f, "/", "step", step) == 0;
  if (h5u_commit(&f, ok) != 0) return -1;
  if (h5u_pointer_write(dir, "latest", name, MPI_COMM_WORLD) != 0) return -1;
  return h5u_keep_last(dir, "ckpt-", ".h5", keep, "latest", MPI_COMM_WORLD);
}

/* The file `latest` names opens, has that step and verifies. */
static int latest_ok(const char *dir, long want_step) {
  char name[256], path[1200];
  if (h5u_pointer_read(dir, "latest", name, sizeof name) != 0) return 0;
  path_in(path, sizeof path, dir, name);
  h5u_file f;
  if (h5u_open(&f, path, MPI_COMM_WORLD, 0) != 0) return 0;
  long long step = -1;
  int ok = h5u_attr_read_int(&f, "/", "step", &step) == 0 && step == want_step &&
           read_all(&f, 1) == 0;
  h5u_close(&f);
  return ok;
}

static long count_files(const char *dir, const char *prefix, const char *suffix) {
  long n = 0;
  for (long s = 0; s < 20; s++) {
    char name[64], path[1200];
    h5u_step_name(name, sizeof name, prefix, s, suffix);
    path_in(path, sizeof path, dir, name);
    n += file_exists(path);
  }
  return n;
}

static void touch(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  if (fp) {
    fputs(text, fp);
    fclose(fp);
  }
}

static int run_write(const char *dir) {
  char path[1200], ckdir[1200];
  mkdir(dir, 0755);
  path_in(path, sizeof path, dir, "ranges.h5");

  /* 1. uneven splits written collectively */
  if (g_rank == 0) unlink(path);
  MPI_Barrier(MPI_COMM_WORLD);
  h5u_file f;
  int rc = h5u_create_tmp(&f, path, MPI_COMM_WORLD);
  check(rc == 0 && f.id >= 0, "create %s.tmp with the MPI-IO driver on %d ranks", path, g_size);
  if (rc != 0) return -1;
  rc = write_all(&f, 1);
  check(rc == 0, "write 6 tensors (1-d to 4-d) by skewed ranges, one rank empty for some");
  check(all_collective(&f), "HDF5 reports collective I/O for every transfer on every rank "
        "(rank %d: %ld of %ld, last mode %d)", g_rank, f.n_collective, f.n_transfers,
        f.last_io_mode);
  rc = h5u_attr_write_string(&f, "/", "format", "h5util-test") ||
       h5u_attr_write_int(&f, "/", "version", 3);
  check(rc == 0, "string and integer attributes written collectively");
  char tmp[1300];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  check(file_exists(tmp) && !file_exists(path), "while writing only %s.tmp exists", path);
  rc = h5u_commit(&f, 1);
  check(rc == 0 && file_exists(path) && !file_exists(tmp), "commit renames .tmp to the name");

  /* 2. read back with other splits */
  rc = h5u_open(&f, path, MPI_COMM_WORLD, 0);
  long bad_even = rc == 0 ? read_all(&f, 0) : -1;
  long bad_whole = rc == 0 ? read_all(&f, 2) : -1;
  check(bad_even == 0, "read back by even ranges: values bit-identical, checksums verified");
  check(bad_whole == 0, "read back whole on every rank (overlapping ranges): checksums verified");
  check(all_collective(&f), "reads were collective too (rank %d: %ld of %ld)", g_rank,
        f.n_collective, f.n_transfers);
  char *fmt = NULL;
  long long ver = 0;
  rc = h5u_attr_read_string(&f, "/", "format", &fmt) || h5u_attr_read_int(&f, "/", "version", &ver);
  check(rc == 0 && fmt && strcmp(fmt, "h5util-test") == 0 && ver == 3,
        "attributes read back (format \"%s\", version %lld)", fmt ? fmt : "?", ver);
  free(fmt);
  char **names = NULL;
  int n_names = 0;
  rc = h5u_list(&f, "/tensors", &names, &n_names);
  check(rc == 0 && n_names == N_TENSORS && strcmp(names[0], "a.vector") == 0,
        "h5u_list: %d datasets with dots kept in their names", n_names);
  h5u_names_free(names, n_names);

  /* 3. checksums do not depend on the split: sub-communicators of 1 and 2 ranks */
  int same = 1;
  for (int t = 0; t < N_TENSORS; t++) {
    uint64_t stored = 0;
    if (h5u_checksum_read(&f, TENSORS[t].path, &stored) != 1) same = 0;
    for (int sub = 1; sub <= 2; sub++) {
      MPI_Comm c;
      MPI_Comm_split(MPI_COMM_WORLD, g_rank < sub ? 0 : MPI_UNDEFINED, g_rank, &c);
      if (c == MPI_COMM_NULL) continue;
      long n = numel_of(&TENSORS[t]), lo, hi;
      split(n, sub, g_rank, 1, &lo, &hi);
      float *x = fill(t, lo, hi);
      uint64_t sum = 0;
      if (h5u_sum64_global(c, n, lo, hi, x, &sum) != 0 || sum != stored) same = 0;
      free(x);
      MPI_Comm_free(&c);
    }
  }
  check(same, "checksum of every tensor equal over 1, 2 and 3 ranks");
  uint64_t a = h5u_sum64_final(h5u_sum64_part(0, 3, (const float[]){1, 2, 3}), 3);
  uint64_t b = h5u_sum64_final(h5u_sum64_part(0, 3, (const float[]){2, 1, 3}), 3);
  check(a != b, "checksum depends on element positions (swapped elements detected)");
  h5u_close(&f);

  /* 4. bad files */
  vlm_set_quiet_errors(1);
  char bad[1200];
  path_in(bad, sizeof bad, dir, "not-hdf5.h5");
  if (g_rank == 0) touch(bad, "this is text, not HDF5\n");
  MPI_Barrier(MPI_COMM_WORLD);
  rc = h5u_open(&f, bad, MPI_COMM_WORLD, 0);
  check(rc != 0 && (g_rank != 0 || (strstr(vlm_last_error(), "not an HDF5 file") &&
                                     strstr(vlm_last_error(), "not-hdf5.h5"))),
        "a text file: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  path_in(bad, sizeof bad, dir, "missing.h5");
  rc = h5u_open(&f, bad, MPI_COMM_WORLD, 0);
  check(rc != 0 && (g_rank != 0 || strstr(vlm_last_error(), "missing.h5")),
        "a missing file: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  rc = h5u_open(&f, path, MPI_COMM_WORLD, 0);
  float dummy[4];
  int rc2 = rc == 0 ? h5u_read_range_f32(&f, "/tensors/nope", 0, 1, dummy) : 0;
  check(rc == 0 && rc2 != 0 &&
            (g_rank != 0 || (strstr(vlm_last_error(), "/tensors/nope") &&
                             strstr(vlm_last_error(), "missing"))),
        "a missing dataset: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  rc2 = h5u_read_range_f32(&f, "/tensors/a.vector", 3, 9, dummy);
  check(rc2 != 0 && (g_rank != 0 || strstr(vlm_last_error(), "outside")),
        "a range past the end: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  h5u_close(&f);
  vlm_set_quiet_errors(0);

  /* 5. a corrupted tensor: flip bytes inside /tensors/e.wide of a copy */
  char corrupt[1200];
  path_in(corrupt, sizeof corrupt, dir, "corrupt.h5");
  rc = h5u_create(&f, corrupt, MPI_COMM_WORLD) || write_all(&f, 0) || h5u_close(&f);
  haddr_t off = HADDR_UNDEF;
  if (rc == 0 && g_rank == 0) {
    hid_t fid = H5Fopen(corrupt, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(fid, "/tensors/e.wide", H5P_DEFAULT);
    off = H5Dget_offset(ds);
    H5Dclose(ds);
    H5Fclose(fid);
    int fd = open(corrupt, O_RDWR);
    unsigned char byte = 0;
    if (fd >= 0 && off != HADDR_UNDEF && pread(fd, &byte, 1, (off_t)off + 4001) == 1) {
      byte ^= 0x10;
      if (pwrite(fd, &byte, 1, (off_t)off + 4001) != 1) off = HADDR_UNDEF;
    }
    if (fd >= 0) close(fd);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  vlm_set_quiet_errors(1);
  rc = rc ? rc : h5u_open(&f, corrupt, MPI_COMM_WORLD, 0);
  float *x = malloc(37000 * sizeof *x);
  long lo, hi;
  split(37000, g_size, g_rank, 0, &lo, &hi);
  rc2 = rc == 0 ? h5u_read_tensor_f32(&f, "/tensors/e.wide", lo, hi, x) : 0;
  check(rc == 0 && rc2 != 0 &&
            (g_rank != 0 || (strstr(vlm_last_error(), "checksum mismatch") &&
                             strstr(vlm_last_error(), "/tensors/e.wide") &&
                             strstr(vlm_last_error(), "corrupt.h5"))),
        "one flipped bit in a tensor: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  rc2 = rc == 0 ? h5u_read_tensor_f32(&f, "/tensors/c.matrix", 0, 65, x) : -1;
  check(rc2 == 0, "the other tensors of that file still verify");
  free(x);
  h5u_close(&f);
  vlm_set_quiet_errors(0);

  /* 6. atomic commit: stale .tmp, keep-K, latest, failures */
  path_in(ckdir, sizeof ckdir, dir, "ckpt");
  if (g_rank == 0) {
    mkdir(ckdir, 0755);
    for (long s = 0; s < 20; s++) { /* a clean start */
      char name[64], p[1300];
      h5u_step_name(name, sizeof name, "ckpt-", s, ".h5");
      path_in(p, sizeof p, ckdir, name);
      unlink(p);
    }
    path_in(bad, sizeof bad, ckdir, "ckpt-00000099.h5.tmp");
    touch(bad, "half a file");
    path_in(bad, sizeof bad, ckdir, "latest.tmp");
    touch(bad, "ckpt-00000099.h5");
    path_in(bad, sizeof bad, ckdir, "keep.tmp");
    mkdir(bad, 0755);
    path_in(bad, sizeof bad, ckdir, "latest");
    unlink(bad);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  long removed = -1;
  rc = h5u_remove_stale_tmp(ckdir, &removed, MPI_COMM_WORLD);
  path_in(bad, sizeof bad, ckdir, "keep.tmp");
  check(rc == 0 && removed == 2 && file_exists(bad),
        "stale .tmp files removed at start (%ld), a directory named *.tmp left alone", removed);
  rc = 0;
  for (long s = 1; s <= 4 && rc == 0; s++) rc = write_step(ckdir, s, 2);
  check(rc == 0 && count_files(ckdir, "ckpt-", ".h5") == 2 && latest_ok(ckdir, 4),
        "steps 1-4 with keep 2: %ld files remain, latest names step 4 and verifies",
        count_files(ckdir, "ckpt-", ".h5"));
  check(h5u_step_of("ckpt-00000123.h5", "ckpt-", ".h5") == 123 &&
            h5u_step_of("ckpt-12a.h5", "ckpt-", ".h5") == -1 &&
            h5u_step_of("ckpt-.h5", "ckpt-", ".h5") == -1,
        "step numbers parsed from names, others ignored");

  /* injected I/O error on rank 1 after 3 successful writes of step 5 */
  char name5[64], p5[1300], p5tmp[1400];
  h5u_step_name(name5, sizeof name5, "ckpt-", 5, ".h5");
  path_in(p5, sizeof p5, ckdir, name5);
  snprintf(p5tmp, sizeof p5tmp, "%s.tmp", p5);
  vlm_set_quiet_errors(1);
  h5u_inject_write_fault(1, 3);
  rc = write_step(ckdir, 5, 2);
  h5u_inject_write_fault(-1, -1);
  vlm_set_quiet_errors(0);
  int r1_saw = g_rank != 1 || strstr(vlm_last_error(), "injected") != NULL;
  int r0_saw = g_rank != 0 || (strstr(vlm_last_error(), "not committed") &&
                               strstr(vlm_last_error(), name5));
  check(rc != 0 && r1_saw && r0_saw, "a write failing on rank 1 mid-file fails on every rank: \"%s\"",
        g_rank == 0 ? vlm_last_error() : "");
  check(!file_exists(p5) && !file_exists(p5tmp) && latest_ok(ckdir, 4) &&
            count_files(ckdir, "ckpt-", ".h5") == 2,
        "after it: no step-5 file or .tmp, latest still names step 4, which verifies");

  /* the final name is taken by a non-empty directory: the rename fails */
  if (g_rank == 0) {
    mkdir(p5, 0755);
    char inner[1400];
    snprintf(inner, sizeof inner, "%s/x", p5);
    touch(inner, "x");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  vlm_set_quiet_errors(1);
  rc = write_step(ckdir, 5, 2);
  vlm_set_quiet_errors(0);
  check(rc != 0 && (g_rank != 0 || (strstr(vlm_last_error(), "cannot rename") &&
                                     strstr(vlm_last_error(), name5))),
        "a failed rename: \"%s\"", g_rank == 0 ? vlm_last_error() : "");
  check(!file_exists(p5tmp) && latest_ok(ckdir, 4), "after it: no .tmp left, latest still step 4");
  if (g_rank == 0) {
    char inner[1400];
    snprintf(inner, sizeof inner, "%s/x", p5);
    unlink(inner);
    rmdir(p5);
  }
  MPI_Barrier(MPI_COMM_WORLD);

  /* the pointer cannot be replaced (latest.tmp is a directory): the new file is
   * complete but `latest` keeps naming the previous one */
  path_in(bad, sizeof bad, ckdir, "latest.tmp");
  if (g_rank == 0) mkdir(bad, 0755);
  MPI_Barrier(MPI_COMM_WORLD);
  vlm_set_quiet_errors(1);
  rc = write_step(ckdir, 5, 2);
  vlm_set_quiet_errors(0);
  check(rc != 0 && latest_ok(ckdir, 4) &&
            (g_rank != 0 || strstr(vlm_last_error(), "latest.tmp")),
        "a failed pointer update leaves latest at step 4: \"%s\"",
        g_rank == 0 ? vlm_last_error() : "");
  if (g_rank == 0) rmdir(bad);
  MPI_Barrier(MPI_COMM_WORLD);
  rc = write_step(ckdir, 6, 2);
  check(rc == 0 && latest_ok(ckdir, 6) && count_files(ckdir, "ckpt-", ".h5") == 2,
        "then step 6 commits, keep 2 leaves %ld files", count_files(ckdir, "ckpt-", ".h5"));
  /* keep-K never removes the file latest names */
  rc = h5u_pointer_write(ckdir, "latest", "ckpt-00000005.h5", MPI_COMM_WORLD) ||
       h5u_keep_last(ckdir, "ckpt-", ".h5", 1, "latest", MPI_COMM_WORLD);
  char p6[1300];
  path_in(p6, sizeof p6, ckdir, "ckpt-00000006.h5");
  check(rc == 0 && file_exists(p5) && file_exists(p6) && latest_ok(ckdir, 5),
        "keep 1 keeps the newest and the file latest names");
  return 0;
}

static int run_verify(const char *dir) {
  char path[1200];
  path_in(path, sizeof path, dir, "ranges.h5");
  h5u_file f;
  int rc = h5u_open(&f, path, MPI_COMM_WORLD, 0);
  check(rc == 0, "open %s (written by 3 ranks) on %d rank(s)", path, g_size);
  if (rc != 0) return -1;
  check(read_all(&f, 0) == 0, "%d rank(s), even split: values bit-identical, every checksum verified",
        g_size);
  check(read_all(&f, 1) == 0, "%d rank(s), skewed split: the same", g_size);
  check(all_collective(&f), "reads collective (rank %d: %ld of %ld)", g_rank, f.n_collective,
        f.n_transfers);
  h5u_close(&f);
  return 0;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  vlm_set_rank(g_rank);
  if (argc != 3 || (strcmp(argv[1], "write") && strcmp(argv[1], "verify"))) {
    if (g_rank == 0) fprintf(stderr, "usage: test_h5util write|verify DIR\n");
    MPI_Finalize();
    return 2;
  }
  if (strcmp(argv[1], "write") == 0) run_write(argv[2]);
  else run_verify(argv[2]);
  if (g_rank == 0) printf("%d passed, %d failed\n", n_pass, n_fail);
  MPI_Finalize();
  return n_fail ? 1 : 0;
}
