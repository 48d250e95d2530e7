/* io/h5util.h: the parallel-HDF5 building blocks every vlmtrain writer and
 * reader of model files and checkpoints uses. It opens files with the MPI-IO
 * driver and collective metadata, creates contiguous float32 datasets, moves a
 * flattened element range [lo, hi) of an N-d dataset per rank with collective
 * transfers (and records whether HDF5 really did collective I/O), keeps a
 * per-tensor checksum that does not depend on how the tensor was split across
 * ranks, and commits files atomically (NAME.tmp -> NAME, a `latest` pointer,
 * stale .tmp removal, keep the last K). It knows nothing about models: names
 * and shapes come from the caller (io/model_h5.h, the checkpoint code).
 *
 * Every function taking an h5u_file or a communicator is collective over that
 * communicator and returns the same status on every rank (0 or -1): a failure
 * on one rank is agreed on with MPI_Allreduce, the rank that failed reports
 * why, the others report which rank failed. Errors name the file and what
 * failed (common/vlm.h conventions). */
#ifndef VLM_IO_H5UTIL_H
#define VLM_IO_H5UTIL_H

#include <hdf5.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#define H5U_PATH_LEN 1024
#define H5U_MAX_DIMS 8
#define H5U_ALIGN ((hsize_t)1 << 20) /* H5Pset_alignment: objects >= 1 MiB start on 1 MiB */

typedef struct {
  hid_t id;                    /* HDF5 file, -1 when closed */
  MPI_Comm comm;               /* every call is collective over it (not owned) */
  int rank, size;              /* in comm */
  int writable;
  char path[H5U_PATH_LEN];     /* the file as opened (NAME.tmp while being written) */
  char final[H5U_PATH_LEN];    /* h5u_create_tmp: the name it gets at h5u_commit; else "" */
  /* what HDF5 did (H5Pget_mpio_actual_io_mode after each dataset transfer) */
  long n_transfers;            /* h5u_write_range_f32 / h5u_read_range_f32 calls */
  long n_collective;           /* of which HDF5 reported collective I/O on this rank */
  int last_io_mode;            /* H5D_mpio_actual_io_mode_t of the latest transfer */
} h5u_file;

/* ---- agreement ------------------------------------------------------------ */

/* Collective: 0 when local_rc == 0 on every rank of comm, else -1, with the
 * lowest failing rank in *failed_rank (may be NULL). Reports nothing. */
int h5u_agree(MPI_Comm comm, int local_rc, int *failed_rank);

/* A local failure kept for reporting after agreement, so that a failure every
 * rank sees is printed once: record it with H5U_FAIL(&e, fmt, ...) (which
 * returns -1 from the enclosing function) or h5u_err_set, then call
 * h5u_finish(comm, &e) on every rank: 0 when no rank failed; else the lowest
 * failing rank prints its message (vlm_error_at, with the file:line where it
 * was recorded) and every rank gets -1. */
typedef struct {
  int failed;
  const char *file, *func;
  int line;
  char msg[1536];
} h5u_err;

void h5u_err_set(h5u_err *e, const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define H5U_FAIL(e, ...)                                          \
  do {                                                            \
    h5u_err_set((e), __FILE__, __LINE__, __func__, __VA_ARGS__);  \
    return -1;                                                    \
  } while (0)
int h5u_finish(MPI_Comm comm, const h5u_err *e);

/* ---- files ------------------------------------------------------------------ */

/* Creates (truncates) PATH for writing: MPI-IO driver on comm, collective
 * metadata reads and writes, 1 MiB alignment, the default (earliest) file format
 * so HDF5 1.10 tools read it. */
int h5u_create(h5u_file *f, const char *path, MPI_Comm comm);
/* Creates PATH.tmp; h5u_commit later makes it PATH. */
int h5u_create_tmp(h5u_file *f, const char *path, MPI_Comm comm);
/* Opens an existing file read-only (writable = 0) or read-write. Checks that it
 * exists and is HDF5 first ("FILE: not an HDF5 file"). */
int h5u_open(h5u_file *f, const char *path, MPI_Comm comm, int writable);
/* Closes (collective). Safe on a closed file. */
int h5u_close(h5u_file *f);
/* Ends a file made by h5u_create_tmp: closes it on every rank, agrees on
 * local_ok (non-zero: this rank's part succeeded), then rank 0 renames
 * PATH.tmp to PATH and fsyncs the directory. On any failure PATH.tmp is removed
 * and PATH is left as it was. */
int h5u_commit(h5u_file *f, int local_ok);

/* ---- pointer file, stale files, retention (rank 0 acts, all agree) --------- */

/* Makes DIR/POINTER contain NAME (one line): POINTER.tmp written and fsynced,
 * renamed to POINTER, directory fsynced. */
int h5u_pointer_write(const char *dir, const char *pointer, const char *name, MPI_Comm comm);
/* Local (any rank, no MPI): reads DIR/POINTER into name[n]. 1 when it does not
 * exist (name = ""), 0 when read, -1 on error (reported). */
int h5u_pointer_read(const char *dir, const char *pointer, char *name, size_t n);
/* Removes the regular files DIR/ *.tmp left by an interrupted writer. The count
 * removed goes to *n_removed (may be NULL). */
int h5u_remove_stale_tmp(const char *dir, long *n_removed, MPI_Comm comm);
/* "PREFIX<step, 8+ digits>SUFFIX", e.g. h5u_step_name(b, n, "ckpt-", 100, ".h5")
 * -> "ckpt-00000100.h5". -1 if it does not fit. */
int h5u_step_name(char *buf, size_t n, const char *prefix, long step, const char *suffix);
/* Parses a name made by h5u_step_name: the step, or -1 when it is not one. */
long h5u_step_of(const char *name, const char *prefix, const char *suffix);
/* Keeps the `keep` files DIR/PREFIX<step>SUFFIX with the highest steps and
 * removes the older ones; never removes the file DIR/POINTER names (pointer may
 * be NULL). keep < 1 keeps everything. */
int h5u_keep_last(const char *dir, const char *prefix, const char *suffix, int keep,
                  const char *pointer, MPI_Comm comm);

/* ---- objects and attributes (collective: every rank makes every call) ----- */

/* 1 when the link PATH exists (every group on the way too), 0 when not, -1 on error. */
int h5u_exists(h5u_file *f, const char *path);
/* Creates a group (and the groups on the way). */
int h5u_group_create(h5u_file *f, const char *path);
/* Names of the links in group PATH, in name order: *names is an array of
 * malloc'd strings (h5u_names_free). */
int h5u_list(h5u_file *f, const char *path, char ***names, int *n);
void h5u_names_free(char **names, int n);

/* Attributes on the object OBJ ("/" for the root). Strings are stored as
 * variable-length UTF-8 (what h5py writes for a str), integers as int64,
 * checksums as uint64. The readers accept fixed-length strings and any
 * integer width, and name the file, object and attribute in errors. */
int h5u_attr_write_string(h5u_file *f, const char *obj, const char *name, const char *value);
int h5u_attr_write_int(h5u_file *f, const char *obj, const char *name, long long value);
/* 1 when OBJ has attribute NAME, 0 when not, -1 on error. */
int h5u_attr_exists(h5u_file *f, const char *obj, const char *name);
/* *value: malloc'd, NUL-terminated (free it). */
int h5u_attr_read_string(h5u_file *f, const char *obj, const char *name, char **value);
int h5u_attr_read_int(h5u_file *f, const char *obj, const char *name, long long *value);

/* ---- float32 datasets and flattened ranges --------------------------------- */

/* Creates a contiguous float32 (little-endian IEEE) dataset at its global shape
 * (1 <= ndim <= H5U_MAX_DIMS), space allocated early, never filled. The groups
 * on the way must exist. */
int h5u_dataset_create_f32(h5u_file *f, const char *path, int ndim, const long *shape);
/* Shape of a dataset, checked to be float32 (found types are named in errors). */
int h5u_dataset_shape(h5u_file *f, const char *path, int *ndim, long *shape);
/* Each rank writes elements [lo, hi) of the row-major flattened dataset from
 * src[0 .. hi-lo) in one collective transfer; a rank with lo == hi selects
 * nothing but takes part. Ranges of different ranks should not overlap. */
int h5u_write_range_f32(h5u_file *f, const char *path, long lo, long hi, const float *src);
/* Each rank reads its range [lo, hi) into dst (ranges may overlap). */
int h5u_read_range_f32(h5u_file *f, const char *path, long lo, long hi, float *dst);

/* ---- checksums ---------------------------------------------------------------
 * vlm-sum64 of a tensor of n float32 elements with bit patterns x[i]:
 *   term(i) = mix(x[i] XOR (i * 0x9E3779B97F4A7C15))   (64-bit, wrapping)
 *   sum     = term(0) + ... + term(n-1)                   (mod 2^64)
 *   checksum = mix(sum + n * 0xD6E8FEB86659FD93)
 * with mix(z) = splitmix64's finaliser (z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
 * z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31). A sum of per-element
 * terms: any split of the tensor gives the same value. Stored as the uint64
 * attribute "checksum" of the dataset (docs/formats.md). */
#define H5U_CHECKSUM_ATTR "checksum"
#define H5U_CHECKSUM_NAME "vlm-sum64"

/* Local part: the sum of term(i) for i in [lo, hi), x[0] being element lo. */
uint64_t h5u_sum64_part(long lo, long hi, const float *x);
/* The checksum from the sum of all terms of an n-element tensor. */
uint64_t h5u_sum64_final(uint64_t sum, long n);
/* Collective: the sum of every rank's part (disjoint ranges), mod 2^64. */
int h5u_sum64_reduce(MPI_Comm comm, uint64_t part, uint64_t *sum);
/* Collective: the checksum of an n-element tensor from each rank's range
 * [lo, hi) of it. Ranges may overlap (each element is counted once); their
 * union must be [0, n), else an error ("cannot verify"). */
int h5u_sum64_global(MPI_Comm comm, long n, long lo, long hi, const float *x, uint64_t *checksum);
int h5u_checksum_write(h5u_file *f, const char *path, uint64_t checksum);
/* 1 and *checksum when the dataset has one, 0 when it has none, -1 on error. */
int h5u_checksum_read(h5u_file *f, const char *path, uint64_t *checksum);

/* Convenience for whole tensors written by disjoint ranges that together cover
 * it (the usual save): the range write, then the checksum attribute. */
int h5u_write_tensor_f32(h5u_file *f, const char *path, long lo, long hi, const float *src);
/* Reads each rank's range and verifies the stored checksum (ranges may overlap;
 * their union must cover the tensor). 0: read and verified; 1: read, but the
 * dataset has no checksum (the caller decides whether to warn); -1: error, a
 * mismatch naming the file and dataset. */
int h5u_read_tensor_f32(h5u_file *f, const char *path, long lo, long hi, float *dst);

/* ---- fault injection (tests only) --------------------------------------------
 * Makes h5u_write_range_f32 on rank `rank` of the file's communicator report an
 * I/O error after `after` more successful calls (after < 0: off), once, so that
 * tests can prove a failure mid-write leaves the previous files intact. */
void h5u_inject_write_fault(int rank, long after);

#endif
