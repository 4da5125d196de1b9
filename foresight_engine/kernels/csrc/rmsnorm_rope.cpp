// Query/key RMSNorm (across heads, with weight) fused with the interleaved-pair rotary embedding of LTX-Video:
// out[2p] = y[2p] cos_p - y[2p+1] sin_p, out[2p+1] = y[2p+1] cos_p + y[2p] sin_p, y = rmsnorm(x) * w.
// q and k of a token share the compact tables (cos, sin [S, D/2] fp32), so they are read once for both.
#include "fk_common.h"

namespace {
using namespace fk;

struct Args {
  int dtype;
  const float *cos, *sin;
  int64_t cs_b, S, D;
  float eps;
};

void row_scalar(const Args& a, const void* x, const void* w, void* out, int64_t row) {
  const int64_t xo = row * a.D, co = (row / a.S) * a.cs_b + (row % a.S) * (a.D / 2);
  float ss = 0.f;
  for (int64_t d = 0; d < a.D; ++d) {
    float v = load1(a.dtype, x, xo + d);
    ss += v * v;
  }
  const float inv = 1.f / sqrtf(ss / (float)a.D + a.eps);
  for (int64_t p = 0; p < a.D / 2; ++p) {
    float e = load1(a.dtype, x, xo + 2 * p) * inv * load1(a.dtype, w, 2 * p);
    float o = load1(a.dtype, x, xo + 2 * p + 1) * inv * load1(a.dtype, w, 2 * p + 1);
    float c = a.cos[co + p], s = a.sin[co + p];
    store1(a.dtype, out, xo + 2 * p, e * c - o * s, 1.f);
    store1(a.dtype, out, xo + 2 * p + 1, o * c + e * s, 1.f);
  }
}

#if FK_X86
FK_TARGET_AVX512 void row_avx512(const Args& a, const void* x, const void* w, void* out, int64_t row) {
  const int64_t xo = row * a.D, co = (row / a.S) * a.cs_b + (row % a.S) * (a.D / 2);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < a.D; d += 16) {
    __m512 v = load16(a.dtype, x, xo + d, tail_mask(a.D - d));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const __m512 vinv = _mm512_set1_ps(1.f / sqrtf(_mm512_reduce_add_ps(acc) / (float)a.D + a.eps));
  const __m512i pairs = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t d = 0; d < a.D; d += 16) {
    const __mmask16 m = tail_mask(a.D - d);
    const int64_t left = (a.D - d) / 2;
    const __mmask8 m8 = left >= 8 ? (__mmask8)0xff : (__mmask8)((1u << left) - 1u);
    __m512 y = _mm512_mul_ps(_mm512_mul_ps(load16(a.dtype, x, xo + d, m), vinv), load16(a.dtype, w, d, m));
    __m512 swapped = _mm512_permute_ps(y, 0xB1);  // [y1, y0, y3, y2, ...]
    __m512 c = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, a.cos + co + d / 2)));
    __m512 s = _mm512_permutexvar_ps(pairs, _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m8, a.sin + co + d / 2)));
    // even lanes y*c - swapped*s, odd lanes y*c + swapped*s
    store16(a.dtype, out, xo + d, _mm512_fmaddsub_ps(y, c, _mm512_mul_ps(swapped, s)), one, m);
  }
}

#endif  // FK_X86

}  // namespace

extern "C" int fk_rmsnorm_rope(int dtype, const void* q, const void* k, const void* q_weight, const void* k_weight,
                               const float* cos, const float* sin, int64_t cs_b, int64_t B, int64_t S, int64_t D,
                               float eps, void* q_out, void* k_out, int threads) {
  if (dtype != FK_F32 && dtype != FK_BF16) return FK_BAD_DTYPE;
  if (B < 0 || S < 0 || D <= 0 || D % 2) return FK_BAD_SHAPE;
  const Args a{dtype, cos, sin, cs_b, S, D, eps};
  fk::for_each_row(B * S, 2 * D, threads, [&](int64_t r, [[maybe_unused]] bool vectorized) {
#if FK_X86
    if (vectorized) {
      row_avx512(a, q, q_weight, q_out, r);
      return row_avx512(a, k, k_weight, k_out, r);
    }
#endif
    row_scalar(a, q, q_weight, q_out, r);
    row_scalar(a, k, k_weight, k_out, r);
  });
  return FK_OK;
}
