/* One token of a Spark-FFN, fp32 (see seqzoo/kernels/_native.py).

   x [D]        the token; x[:r] feeds the predictor, x[r:] the value branch
   s [F]        s_i = dot(w_pred[i], x[:r])                     the predictor scores, w_pred [F, r]
   theta        mean(s) + std(s) * z (population std), in double, rounded to float
   a_i          gelu_tanh(s_i - theta) for s_i > theta (relu(s - theta) is 0 elsewhere, and gelu(0) = 0)
   out [Dm]     sum over survivors i of a_i * dot(w_value[i], x[r:]) * w_down[i]     w_value [F, D - r], w_down [F, Dm]

   The F neurons are split into `threads` contiguous runs (OpenMP, when built with it): each thread scores its
   run, the statistics are combined, then each thread sums its own survivors into its own buffer (their rows
   read once, a few survivors ahead prefetched), and the buffers are added in thread order. All weights are
   row-major and contiguous. Returns the number of survivors (-1: out of memory). */

#include <stdlib.h>
#include <string.h>

#include "native_common.h"

#define AHEAD 4 /* survivors whose rows are prefetched ahead of the one being summed */

static float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

/* Sum the survivors among neurons [i0, i1) into acc; kept: room for i1 - i0 indices. */
static int64_t sum_survivors(int64_t i0, int64_t i1, const float *s, float theta, const float *xv,
                             const float *w_value, int64_t Dv, const float *w_down, int64_t Dm, float *acc,
                             int64_t *kept) {
    int64_t K = 0;
    for (int64_t i = i0; i < i1; ++i)
        if (s[i] > theta) kept[K++] = i;
    sz_prefetch_selected(kept, 0, AHEAD, K, w_value, Dv, w_down, Dm);
    for (int64_t n = 0; n < K; ++n) {
        sz_prefetch_selected(kept, n + AHEAD, n + AHEAD + 1, K, w_value, Dv, w_down, Dm);
        const int64_t i = kept[n];
        const float h = gelu_tanh(s[i] - theta) * sz_dot(w_value + i * Dv, xv, Dv);
        sz_axpy(acc, h, w_down + i * Dm, Dm);
    }
    return K;
}

int64_t spark_ffn_step(const float *x, int64_t D, int64_t r, const float *w_pred, int64_t F, double z,
                       const float *w_value, const float *w_down, int64_t Dm, float *out, int64_t threads) {
    const int64_t Dv = D - r;
    /* a thread per 1024 neurons at most: below that a second thread costs more than it saves */
    const int64_t P = sz_threads(threads, F / 1024);
    float *s = malloc((size_t)F * sizeof(float));
    float *partial = calloc((size_t)((P - 1) * Dm + 1), sizeof(float));
    int64_t *kept = malloc((size_t)F * sizeof(int64_t));
    double *sums = calloc((size_t)(3 * P), sizeof(double)); /* per thread: sum, sum of squares, survivors */
    if (s == NULL || partial == NULL || kept == NULL || sums == NULL) {
        free(s), free(partial), free(kept), free(sums);
        return -1;
    }
    memset(out, 0, (size_t)Dm * sizeof(float));
    SZ_PARALLEL(P) {
        const int64_t p = sz_thread_id(), team = sz_team_size();
        const int64_t i0 = F * p / team, i1 = F * (p + 1) / team;
        double sum = 0.0;
        for (int64_t i = i0; i < i1; ++i) {
            s[i] = sz_dot(w_pred + i * r, x, r);
            sum += s[i];
        }
        sums[3 * p] = sum;
        SZ_BARRIER
        double total = 0.0;
        for (int64_t q = 0; q < team; ++q) total += sums[3 * q];
        const double mean = total / (double)F;
        const float mf = (float)mean;
        double sq = 0.0;
        for (int64_t i = i0; i < i1; ++i) sq += ((double)s[i] - mf) * ((double)s[i] - mf);
        sums[3 * p + 1] = sq;
        SZ_BARRIER
        double sqs = 0.0;
        for (int64_t q = 0; q < team; ++q) sqs += sums[3 * q + 1];
        const double var = sqs / (double)F;
        const float th = (float)(mean + sqrt(var > 1e-30 ? var : 1e-30) * z);
        sums[3 * p + 2] = (double)sum_survivors(i0, i1, s, th, x + r, w_value, Dv, w_down, Dm,
                                                p == 0 ? out : partial + (p - 1) * Dm, kept + i0);
    }
    int64_t K = 0;
    for (int64_t p = 0; p < P; ++p) K += (int64_t)sums[3 * p + 2];
    for (int64_t p = 1; p < P; ++p)
        for (int64_t j = 0; j < Dm; ++j) out[j] += partial[(p - 1) * Dm + j];
    free(s), free(partial), free(kept), free(sums);
    return K;
}
