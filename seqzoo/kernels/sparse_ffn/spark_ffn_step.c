/* One token of a Spark-FFN after its predictor scores, fp32 (see seqzoo/kernels/_native.py).

   s [F]        the predictor scores W1 x[:r]
   theta        mean(s) + std(s) * z (population std), computed here in double and rounded to float
   a_i          gelu_tanh(s_i - theta) for s_i > theta (relu(s - theta) is 0 elsewhere, and gelu(0) = 0)
   out [Dm]     sum over survivors i of a_i * dot(w_value[i], xv) * w_down[i]

   One pass over s for each statistic, then one over the survivors, each reading its two weight rows
   (w_value [F, Dv] and w_down [F, Dm], row-major and contiguous) once. Returns the number of survivors. */

#include <math.h>
#include <stdint.h>
#include <string.h>

static float dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
    float total = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; j < n; ++j) total += a[j] * b[j];
    return total;
}

static float gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

int64_t spark_ffn_step(const float *s, int64_t F, double z, const float *xv, const float *w_value, int64_t Dv,
                       const float *w_down, int64_t Dm, float *out) {
    double sum = 0.0, sq = 0.0;
    for (int64_t i = 0; i < F; ++i) sum += s[i];
    const double mean = sum / (double)F;
    for (int64_t i = 0; i < F; ++i) {
        const double c = s[i] - mean;
        sq += c * c;
    }
    const double var = sq / (double)F;
    const float theta = (float)(mean + sqrt(var > 1e-30 ? var : 1e-30) * z);
    memset(out, 0, (size_t)Dm * sizeof(float));
    int64_t kept = 0;
    for (int64_t i = 0; i < F; ++i) {
        if (!(s[i] > theta)) continue;
        const float h = gelu_tanh(s[i] - theta) * dot(w_value + i * Dv, xv, Dv);
        const float *row = w_down + i * Dm;
        for (int64_t j = 0; j < Dm; ++j) out[j] += h * row[j];
        ++kept;
    }
    return kept;
}
