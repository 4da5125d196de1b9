// Fused adaptive-norm modulation: y = rmsnorm(x) * (1 + scale) + shift, optionally quantized (int8 / fp8 e4m3fn,
// one per-tensor scale) for the next GEMM. One read of x, scale and shift, one write of y, per row.
#include "fk_common.h"

namespace {
using namespace fk;

struct Args {
  int dtype;
  const void *x, *scale, *shift;
  int64_t S, D, scale_sb, scale_ss, shift_sb, shift_ss;
  float eps;
  int out_dtype;
  float qscale;
  void* out;
};

void row_scalar(const Args& a, int64_t row) {
  const int64_t b = row / a.S, s = row % a.S, xo = row * a.D;
  const int64_t so = b * a.scale_sb + s * a.scale_ss, ho = b * a.shift_sb + s * a.shift_ss;
  float ss = 0.f;
  for (int64_t d = 0; d < a.D; ++d) {
    float v = load1(a.dtype, a.x, xo + d);
    ss += v * v;
  }
  const float inv = 1.f / sqrtf(ss / (float)a.D + a.eps);
  for (int64_t d = 0; d < a.D; ++d) {
    float y = load1(a.dtype, a.x, xo + d) * inv * (1.f + load1(a.dtype, a.scale, so + d)) +
              load1(a.dtype, a.shift, ho + d);
    store1(a.out_dtype, a.out, xo + d, y, a.qscale);
  }
}

#if FK_X86
FK_TARGET_AVX512 void row_avx512(const Args& a, int64_t row) {
  const int64_t b = row / a.S, s = row % a.S, xo = row * a.D;
  const int64_t so = b * a.scale_sb + s * a.scale_ss, ho = b * a.shift_sb + s * a.shift_ss;
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 32 <= a.D; d += 32) {
    __m512 v0 = load16(a.dtype, a.x, xo + d, 0xffff), v1 = load16(a.dtype, a.x, xo + d + 16, 0xffff);
    acc0 = _mm512_fmadd_ps(v0, v0, acc0);
    acc1 = _mm512_fmadd_ps(v1, v1, acc1);
  }
  for (; d < a.D; d += 16) {
    __m512 v = load16(a.dtype, a.x, xo + d, tail_mask(a.D - d));
    acc0 = _mm512_fmadd_ps(v, v, acc0);
  }
  const float inv = 1.f / sqrtf(_mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) / (float)a.D + a.eps);
  const __m512 vinv = _mm512_set1_ps(inv), one = _mm512_set1_ps(1.f), qs = _mm512_set1_ps(a.qscale);
  for (d = 0; d < a.D; d += 16) {
    const __mmask16 m = tail_mask(a.D - d);
    __m512 v = _mm512_mul_ps(load16(a.dtype, a.x, xo + d, m), vinv);
    __m512 sc = _mm512_add_ps(load16(a.dtype, a.scale, so + d, m), one);
    __m512 y = _mm512_add_ps(_mm512_mul_ps(v, sc), load16(a.dtype, a.shift, ho + d, m));
    store16(a.out_dtype, a.out, xo + d, y, qs, m);
  }
}

#endif  // FK_X86

}  // namespace

extern "C" int fk_rmsnorm_modulate(int dtype, const void* x, const void* scale, const void* shift, int64_t B,
                                   int64_t S, int64_t D, int64_t scale_sb, int64_t scale_ss, int64_t shift_sb,
                                   int64_t shift_ss, float eps, int out_dtype, float quant_scale, void* out,
                                   int threads) {
  if (dtype != FK_F32 && dtype != FK_BF16) return FK_BAD_DTYPE;
  if (out_dtype != dtype && out_dtype != FK_I8 && out_dtype != FK_F8E4M3) return FK_BAD_DTYPE;
  if (B < 0 || S < 0 || D <= 0) return FK_BAD_SHAPE;
  const Args a{dtype, x, scale, shift, S, D, scale_sb, scale_ss, shift_sb, shift_ss, eps, out_dtype, quant_scale, out};
  fk::for_each_row(B * S, D, threads, [&](int64_t r, [[maybe_unused]] bool vectorized) {
#if FK_X86
    if (vectorized) return row_avx512(a, r);
#endif
    row_scalar(a, r);
  });
  return FK_OK;
}
