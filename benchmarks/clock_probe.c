/* benchmarks/clock_probe.c: measures the clock the cores really run at and the fp32
 * FMA throughput per cycle, as a cross-check of the peak that benchmarks/peak.py
 * derives from /proc/cpuinfo (under a hypervisor 'cpu MHz' is the nominal clock,
 * not the boost clock the cores run at, and the VM has no cycle counter).
 *
 * Not part of the CMake build (CMake builds bench_*.c only): peak.py compiles it
 * with `cc -O2 -march=native -fopenmp` into a temporary directory and runs it.
 *
 * Clock: a chain of dependent integer adds retires one add per cycle, so adds per
 * second = cycles per second. FMA: 12 independent accumulator chains of vector
 * FMAs (AVX-512 when the compiler targets it, else AVX2+FMA) keep every FMA pipe
 * busy; FLOP/cycle = FLOP per second / measured clock. Each thread of an OpenMP
 * team runs both; the best of 60 short repetitions (about 2 ms and 1 ms) is kept
 * per thread, so that time slices lost to other processes on a shared machine do
 * not count. Prints `key value` lines. */
#include <omp.h>
#include <stdio.h>
#include <time.h>
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* cycles per second of the calling thread: 32 dependent adds per iteration */
static double adds_per_second(long iters) {
  unsigned long x = 0;
  const double t0 = now();
  for (long i = 0; i < iters; i++) {
#if defined(__x86_64__)
    __asm__ volatile(
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
        : "+r"(x));
#else
    x += 32;
#endif
  }
  const double t = now() - t0;
  return (double)x / t;
}

/* fp32 FLOP per second of the calling thread (0 when no FMA ISA is targeted) */
static double fma_flops(long iters, int *lanes) {
#if defined(__AVX512F__)
  typedef __m512 vec;
#define VSET(x) _mm512_set1_ps(x)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
  *lanes = 16;
#elif defined(__AVX2__) && defined(__FMA__)
  typedef __m256 vec;
#define VSET(x) _mm256_set1_ps(x)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) (((float *)&(v))[0] + ((float *)&(v))[7])
  *lanes = 8;
#else
  (void)iters;
  *lanes = 0;
  return 0.0;
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  vec a0 = VSET(1.0f), a1 = VSET(1.1f), a2 = VSET(1.2f), a3 = VSET(1.3f);
  vec a4 = VSET(1.4f), a5 = VSET(1.5f), a6 = VSET(1.6f), a7 = VSET(1.7f);
  vec a8 = VSET(1.8f), a9 = VSET(1.9f), a10 = VSET(2.0f), a11 = VSET(2.1f);
  const vec m = VSET(0.999999f), c = VSET(1e-7f);
  const double t0 = now();
  for (long i = 0; i < iters; i++) {
    a0 = VFMA(a0, m, c), a1 = VFMA(a1, m, c), a2 = VFMA(a2, m, c), a3 = VFMA(a3, m, c);
    a4 = VFMA(a4, m, c), a5 = VFMA(a5, m, c), a6 = VFMA(a6, m, c), a7 = VFMA(a7, m, c);
    a8 = VFMA(a8, m, c), a9 = VFMA(a9, m, c), a10 = VFMA(a10, m, c), a11 = VFMA(a11, m, c);
  }
  const double t = now() - t0;
  vec s = a0;
  s = VFMA(s, a1, a2), s = VFMA(s, a3, a4), s = VFMA(s, a5, a6), s = VFMA(s, a7, a8);
  s = VFMA(s, a9, a10), s = VFMA(s, a11, m);
  volatile float sink = VSUM(s);
  (void)sink;
  return 12.0 * 2.0 * (double)*lanes * (double)iters / t;
#endif
}

int main(void) {
  const int nt = omp_get_max_threads();
  double hz_min = 1e300, hz_sum = 0.0, fl_sum = 0.0;
  int lanes = 0;
#pragma omp parallel reduction(min : hz_min) reduction(+ : hz_sum, fl_sum)
  {
    double hz = 0.0, fl = 0.0;
    int ln = 0;
    adds_per_second(2000000); /* let the core reach its clock */
    for (int r = 0; r < 60; r++) {
      double h = adds_per_second(200000), f = fma_flops(500000, &ln);
      if (h > hz) hz = h;
      if (f > fl) fl = f;
    }
    hz_min = hz;
    hz_sum = hz;
    fl_sum = fl;
#pragma omp master
    lanes = ln;
  }
  printf("threads %d\n", nt);
  printf("clock_mhz_mean %.1f\n", hz_sum / nt * 1e-6);
  printf("clock_mhz_min %.1f\n", hz_min * 1e-6);
  printf("fma_lanes %d\n", lanes);
  printf("fma_gflops_total %.2f\n", fl_sum * 1e-9);
  printf("fma_flop_per_cycle %.2f\n", fl_sum / hz_sum);
  return 0;
}
