/* Helpers shared by the C kernels of CPU decoding (see seqzoo/kernels/_native.py). Plain C99, fp32. The
   reductions keep 8 (sz_dot: 32) independent partial results so that the compiler vectorizes them without
   reassociation flags. */

#ifndef SEQZOO_NATIVE_COMMON_H
#define SEQZOO_NATIVE_COMMON_H

#include <math.h>
#include <stdint.h>

/* Built with -fopenmp when the compiler has it: the process then shares PyTorch's OpenMP runtime (the same
   libgomp.so.1 by soname) and its warm threads. Without it every loop runs on one thread. */
#ifdef _OPENMP
#include <omp.h>
#define SZ_PRAGMA(x) _Pragma(#x)
#define SZ_PARALLEL_FOR(n) SZ_PRAGMA(omp parallel for num_threads(n) schedule(static) if(n > 1))
#define SZ_PARALLEL(n) SZ_PRAGMA(omp parallel num_threads(n) if(n > 1))
#define SZ_BARRIER SZ_PRAGMA(omp barrier)
static inline int64_t sz_thread_id(void) { return omp_get_thread_num(); }
static inline int64_t sz_team_size(void) { return omp_get_num_threads(); }
#else
#define SZ_PARALLEL_FOR(n)
#define SZ_PARALLEL(n)
#define SZ_BARRIER
static inline int64_t sz_thread_id(void) { return 0; }
static inline int64_t sz_team_size(void) { return 1; }
#endif

/* How many threads to use: at most `requested`, at most `useful` (work items worth a thread), at least 1;
   1 when built without OpenMP. */
static inline int64_t sz_threads(int64_t requested, int64_t useful) {
#ifdef _OPENMP
    int64_t n = requested < useful ? requested : useful;
    return n > 1 ? n : 1;
#else
    (void)requested;
    (void)useful;
    return 1;
#endif
}

/* 32 partial sums: four 8-wide vector accumulators, so that a long dot product is limited by memory, not by
   the latency of one accumulator's chain of fused multiply-adds. */
static inline float sz_dot(const float *a, const float *b, int64_t n) {
    float acc[32] = {0};
    int64_t j = 0;
    for (; j + 32 <= n; j += 32)
        for (int l = 0; l < 32; ++l) acc[l] += a[j + l] * b[j + l];
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
    for (int l = 0; l < 8; ++l) acc[l] += (acc[l + 8] + acc[l + 16]) + acc[l + 24];
    float total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < n; ++j) total += a[j] * b[j];
    return total;
}

/* out += w * row */
static inline void sz_axpy(float *out, float w, const float *row, int64_t n) {
    for (int64_t j = 0; j < n; ++j) out[j] += w * row[j];
}

/* Ask for the cache lines of a row that will be read soon (16 floats: one 64-byte line). */
static inline void sz_prefetch_row(const float *row, int64_t n) {
    for (int64_t j = 0; j < n; j += 16) __builtin_prefetch(row + j, 0, 3);
}

/* Prefetch row idx[n] of a [*, na] and of b [*, nb] (row-major), for n = n0 .. n1 - 1 within [0, count): the
   rows of the selected entries that the loop summing them will reach `ahead` entries later. */
static inline void sz_prefetch_selected(const int64_t *idx, int64_t n0, int64_t n1, int64_t count,
                                        const float *a, int64_t na, const float *b, int64_t nb) {
    for (int64_t n = n0; n < n1 && n < count; ++n) {
        sz_prefetch_row(a + idx[n] * na, na);
        sz_prefetch_row(b + idx[n] * nb, nb);
    }
}

/* Mean, population variance (two passes) and maximum of x[0..n), n >= 1. */
static inline void sz_row_stats(const float *x, int64_t n, double *mean, double *var, float *max) {
    float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0}, mx[8];
    for (int l = 0; l < 8; ++l) mx[l] = -INFINITY;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) {
            sum[l] += x[j + l];
            mx[l] = x[j + l] > mx[l] ? x[j + l] : mx[l];
        }
    double total = 0.0;
    float best = -INFINITY;
    for (int l = 0; l < 8; ++l) {
        total += sum[l];
        best = mx[l] > best ? mx[l] : best;
    }
    for (; j < n; ++j) {
        total += x[j];
        best = x[j] > best ? x[j] : best;
    }
    const double m = total / (double)n;
    const float mf = (float)m;
    float sq[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (j = 0; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) {
            const float c = x[j + l] - mf;
            sq[l] += c * c;
        }
    double sqs = 0.0;
    for (int l = 0; l < 8; ++l) sqs += sq[l];
    for (; j < n; ++j) sqs += ((double)x[j] - mf) * ((double)x[j] - mf);
    *mean = m;
    *var = sqs / (double)n;
    *max = best;
}

#endif
