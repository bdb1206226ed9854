/* One decoding step of Spark-Attention after the predictor scores, fp32, no padding keys
   (see seqzoo/kernels/_native.py and spark_attention_decode in torch_chunk.py).

   For each row (batch b, key/value head h, query g of the group), with s1 [T] the scaled predictor scores:
     theta   = min(mean(s1) + std(s1) * z, max(s1))      population std; -inf with select_all (T <= top_k:
                                                         every key is taken)
     p_t     = exp(s1_t - max(s1)) / sum over selected    the softmax over the selected keys (s1_t >= theta)
     w_t     = p_t * softplus(scale * dot(q2, k2_t))      the other dims' nonlinearity (softplus, threshold 20)
     out     = sum over selected t of w_t * v_t
   Keys and values are rows of caches with arbitrary batch / head strides (in floats) and contiguous rows. */

#include <math.h>
#include <stdint.h>

static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
    float total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < n; ++j) total += a[j] * b[j];
    return total;
}

static float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* Returns the number of (row, key) pairs selected, summed over rows. */
int64_t spark_attention_decode_step(const float *s1, int64_t B, int64_t Hkv, int64_t G, int64_t T, double z,
                                    int64_t select_all, const float *q2, int64_t D2, const float *k2,
                                    int64_t k2_sb, int64_t k2_sh, const float *v, int64_t v_sb, int64_t v_sh,
                                    int64_t Dv, double scale, float *out) {
    int64_t total = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < Hkv; ++h)
            for (int64_t g = 0; g < G; ++g) {
                const int64_t row = (b * Hkv + h) * G + g;
                const float *s = s1 + row * T;
                const float *q = q2 + row * D2;
                const float *keys = k2 + b * k2_sb + h * k2_sh;
                const float *vals = v + b * v_sb + h * v_sh;
                float *o = out + row * Dv;
                float mx = -INFINITY;
                double sum = 0.0;
                for (int64_t t = 0; t < T; ++t) {
                    sum += s[t];
                    if (s[t] > mx) mx = s[t];
                }
                float theta = -INFINITY;
                if (!select_all) {
                    const double mean = sum / (double)T;
                    double sq = 0.0;
                    for (int64_t t = 0; t < T; ++t) {
                        const double c = s[t] - mean;
                        sq += c * c;
                    }
                    const double var = sq / (double)T;
                    theta = (float)(mean + sqrt(var > 1e-30 ? var : 1e-30) * z);
                    if (theta > mx) theta = mx; /* the best key is always selected */
                }
                for (int64_t j = 0; j < Dv; ++j) o[j] = 0.0f;
                double denom = 0.0;
                for (int64_t t = 0; t < T; ++t) {
                    if (!(s[t] >= theta)) continue;
                    const float e = expf(s[t] - mx);
                    const float w = e * softplus((float)scale * dot(q, keys + t * D2, D2));
                    const float *vt = vals + t * Dv;
                    for (int64_t j = 0; j < Dv; ++j) o[j] += w * vt[j];
                    denom += e;
                    ++total;
                }
                const float inv = (float)(1.0 / denom);
                for (int64_t j = 0; j < Dv; ++j) o[j] *= inv;
            }
    return total;
}
