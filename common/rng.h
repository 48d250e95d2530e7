/* common/rng.h: a small deterministic random generator (splitmix64 seeding a
 * xoshiro256** state) for initialisation, synthetic data and shuffling. The same
 * seed gives the same stream on every machine. */
#ifndef VLM_COMMON_RNG_H
#define VLM_COMMON_RNG_H
#include <stdint.h>

typedef struct { uint64_t s[4]; } vlm_rng;

void rng_seed(vlm_rng *r, uint64_t seed);
uint64_t rng_u64(vlm_rng *r);
double rng_uniform(vlm_rng *r);             /* [0, 1) */
double rng_normal(vlm_rng *r);              /* standard normal (Box-Muller) */
long rng_below(vlm_rng *r, long n);         /* integer in [0, n) */
void rng_shuffle_long(vlm_rng *r, long *a, long n); /* Fisher-Yates */

#endif
