/* One decoding step of Spark-Attention after the predictor scores, fp32, no padding keys
   (see seqzoo/kernels/_native.py and spark_attention_decode in torch_chunk.py).

   For each row (batch b, key/value head h, query g of the group), with s1 [T] the scaled predictor scores:
     theta   = min(mean(s1) + std(s1) * z, max(s1))      population std; -inf with select_all (T <= top_k:
                                                         every key is taken)
     p_t     = exp(s1_t - max(s1)) / sum over selected    the softmax over the selected keys (s1_t >= theta)
     w_t     = p_t * softplus(scale * dot(q2, k2_t))      the other dims' nonlinearity (softplus, threshold 20)
     out     = sum over selected t of w_t * v_t
   Keys and values are rows of caches with arbitrary batch / head strides (in floats) and contiguous rows. The
   selected keys are listed first, then summed with the rows a few keys ahead prefetched. */

#include <stdlib.h>

#include "native_common.h"

#define AHEAD 16 /* selected keys whose rows are prefetched ahead of the one being summed */

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Rows [r0, r1) of the step; sel: room for T indices. Returns the keys selected in these rows. */
static int64_t decode_rows(int64_t r0, int64_t r1, const float *s1, int64_t Hkv, int64_t G, int64_t T, double z,
                           int64_t select_all, const float *q2, int64_t D2, const float *k2, int64_t k2_sb,
                           int64_t k2_sh, const float *v, int64_t v_sb, int64_t v_sh, int64_t Dv, double scale,
                           float *out, int64_t *sel) {
    int64_t total = 0;
    for (int64_t row = r0; row < r1; ++row) {
        const int64_t b = row / (Hkv * G), h = (row / G) % Hkv;
        const float *s = s1 + row * T;
        const float *q = q2 + row * D2;
        const float *keys = k2 + b * k2_sb + h * k2_sh;
        const float *vals = v + b * v_sb + h * v_sh;
        float *o = out + row * Dv;
        double mean, var;
        float mx;
        sz_row_stats(s, T, &mean, &var, &mx);
        float theta = -INFINITY;
        if (!select_all) {
            theta = (float)(mean + sqrt(var > 1e-30 ? var : 1e-30) * z);
            if (theta > mx) theta = mx; /* the best key is always selected */
        }
        for (int64_t j = 0; j < Dv; ++j) o[j] = 0.0f;
        int64_t K = 0;
        for (int64_t t = 0; t < T; ++t)
            if (s[t] >= theta) sel[K++] = t;
        /* short scattered rows: prefetch AHEAD keys so that many memory reads are in flight at once */
        sz_prefetch_selected(sel, 0, AHEAD, K, keys, D2, vals, Dv);
        double denom = 0.0;
        for (int64_t n = 0; n < K; ++n) {
            sz_prefetch_selected(sel, n + AHEAD, n + AHEAD + 1, K, keys, D2, vals, Dv);
            const int64_t t = sel[n];
            const float e = expf(s[t] - mx);
            const float w = e * softplus((float)scale * sz_dot(q, keys + t * D2, D2));
            sz_axpy(o, w, vals + t * Dv, Dv);
            denom += e;
        }
        total += K;
        const float inv = (float)(1.0 / denom);
        for (int64_t j = 0; j < Dv; ++j) o[j] *= inv;
    }
    return total;
}

/* The rows (b, h, g) are split into `threads` contiguous runs (OpenMP, when built with it).
   Returns the number of (row, key) pairs selected, summed over rows (-1: out of memory). */
int64_t spark_attention_decode_step(const float *s1, int64_t B, int64_t Hkv, int64_t G, int64_t T, double z,
                                    int64_t select_all, const float *q2, int64_t D2, const float *k2,
                                    int64_t k2_sb, int64_t k2_sh, const float *v, int64_t v_sb, int64_t v_sh,
                                    int64_t Dv, double scale, float *out, int64_t threads) {
    const int64_t R = B * Hkv * G;
    /* a thread per row at most, and only for rows long enough to be worth one (~1k keys) */
    int64_t P = sz_threads(threads, T >= 1024 ? R : 1);
    const int64_t room = T > 0 ? T : 1;
    int64_t *sel = malloc((size_t)(P * room + P) * sizeof(int64_t));
    if (sel == NULL) return -1;
    int64_t *counts = sel + P * room;
    SZ_PARALLEL_FOR(P)
    for (int64_t p = 0; p < P; ++p)
        counts[p] = decode_rows(R * p / P, R * (p + 1) / P, s1, Hkv, G, T, z, select_all, q2, D2, k2, k2_sb, k2_sh,
                                v, v_sb, v_sh, Dv, scale, out, sel + p * room);
    int64_t total = 0;
    for (int64_t p = 0; p < P; ++p) total += counts[p];
    free(sel);
    return total;
}
