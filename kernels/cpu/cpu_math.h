/* kernels/cpu/cpu_math.h: small math helpers private to the CPU kernels.
 *
 * vlm_expf is an exp(x) for fp32 that the compiler can vectorise (glibc's expf is a
 * call that blocks vectorisation unless -ffast-math). Method: x = n*ln2 + r with
 * |r| <= ln2/2 (Cody-Waite, two-part ln2), exp(r) by its Taylor series to degree 7
 * (truncation < 6e-9 relative), times 2^n built in the exponent bits. Relative error
 * about 2 ulp. Inputs below -87 give 0; inputs above 88 are treated as 88 (every
 * caller feeds it max-subtracted or sign-folded arguments). Not a general libm.
 *
 * vlm_erff is an erf(x) for fp32, vectorisable, absolute error below 1e-7 (what GELU
 * needs: it enters as 0.5 * (1 + erf)); vlm_erff_e takes the exp(-x^2) it needs
 * from the caller (beyond |x| = 4, where erf is 1 in fp32, any e below exp(-16) gives
 * the same result). |x| < 1: x * P(x^2); 1 <= |x| < 4:
 * 1 - exp(-x^2) * Q(x), Q fitting erfc(x) * exp(x^2); beyond 4 erf is 1 in fp32. Both
 * branches are computed and one is selected (no branch in a vector loop). P and Q are
 * Chebyshev least-squares fits (degree 6 in 2x^2-1, degree 11 in (x-2.5)/1.5, fit
 * errors 1e-9 and 2e-8) made for vlmtrain with numpy against math.erf/erfc. */
#ifndef VLM_KERNELS_CPU_MATH_H
#define VLM_KERNELS_CPU_MATH_H

#include <stdint.h>

static inline float vlm_expf(float x) {
  const float log2e = 1.44269504088896341f;
  const float ln2_hi = 0.693145751953125f;     /* ln2 rounded to 16 bits: n*ln2_hi exact */
  const float ln2_lo = 1.42860682030941723e-6f; /* ln2 - ln2_hi */
  const float shifter = 12582912.0f;           /* 1.5 * 2^23: adding it rounds to integer */
  float xc = x > 88.0f ? 88.0f : (x < -87.0f ? -87.0f : x);
  float nf = (xc * log2e + shifter) - shifter;
  float r = (xc - nf * ln2_hi) - nf * ln2_lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  union {
    int32_t i;
    float f;
  } s;
  s.i = ((int32_t)nf + 127) << 23;
  float y = p * s.f;
  return x < -87.0f ? 0.0f : y;
}

/* erf(x) given e = exp(-x^2) (vlm_erff computes it; GELU's backward has it
 * already, as its exp(-x^2/2) at x*sqrt(2)). */
static inline float vlm_erff_e(float x, float e) {
  float a = x < 0.0f ? -x : x;
  /* |x| < 1: erf(x) / x as a polynomial in u = 2x^2 - 1 */
  float u = 2.0f * a * a - 1.0f;
  float p = 1.231640694e-06f;
  p = p * u - 1.766909025e-05f;
  p = p * u + 2.175119891e-04f;
  p = p * u - 2.285419519e-03f;
  p = p * u + 1.985249772e-02f;
  p = p * u - 1.405360973e-01f;
  p = p * u + 9.654687386e-01f;
  float small = a * p;
  /* 1 <= |x| < 4: erfc(x) * exp(x^2) as a polynomial in w = (x - 2.5) / 1.5 */
  float ac = a > 4.0f ? 4.0f : a;
  float w = (ac - 2.5f) * (1.0f / 1.5f);
  float q = -3.692937470e-05f;
  q = q * w + 9.640629665e-05f;
  q = q * w - 1.439469701e-04f;
  q = q * w + 3.678646642e-04f;
  q = q * w - 1.017119239e-03f;
  q = q * w + 2.425888219e-03f;
  q = q * w - 5.567332340e-03f;
  q = q * w + 1.248403471e-02f;
  q = q * w - 2.700572538e-02f;
  q = q * w + 5.611095852e-02f;
  q = q * w - 1.115210047e-01f;
  q = q * w + 2.108063575e-01f;
  float large = 1.0f - e * q;
  float r = a < 1.0f ? small : large;
  return x < 0.0f ? -r : r;
}

static inline float vlm_erff(float x) {
  float ac = x < 0.0f ? -x : x;
  ac = ac > 4.0f ? 4.0f : ac;
  return vlm_erff_e(x, vlm_expf(-ac * ac));
}

#endif
