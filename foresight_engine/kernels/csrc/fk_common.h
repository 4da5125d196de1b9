// Shared helpers of the CPU kernels: scalar conversions (the exact rounding rules every path follows) and the
// AVX-512 building blocks. Vector code is compiled per function with target attributes, so one binary carries
// the scalar, AVX-512 and AVX512-BF16 paths and picks one at run time (fk_isa()).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fk_api.h"

#if defined(__x86_64__)
#define FK_X86 1
#include <immintrin.h>
#else
#define FK_X86 0  // other CPUs build the scalar paths only
#endif

#define FK_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define FK_TARGET_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

namespace fk {

int isa();  // level in use (fk_dispatch.cpp)

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// round to nearest even, NaN stays NaN (torch's rule)
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

// float8 e4m3fn of a value already clamped to [-448, 448]: round to nearest even, subnormals included
inline uint8_t f32_to_e4m3(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint8_t sign = (uint8_t)((u >> 24) & 0x80);
  float a = fabsf(f);
  if (a != a) return (uint8_t)(sign | 0x7f);
  if (a >= 448.f) return (uint8_t)(sign | 0x7e);
  if (a < 0.015625f) return (uint8_t)(sign | (uint8_t)nearbyintf(a * 512.f));  // m * 2^-9; m = 8 is 2^-6 (0x08)
  uint32_t ua;
  memcpy(&ua, &a, 4);
  ua += 0x7ffffu + ((ua >> 20) & 1u);  // keep 3 mantissa bits, ties to even
  int e = (int)((ua >> 23) & 0xff) - 127 + 7;
  uint32_t m = (ua >> 20) & 7u;
  if (e > 15 || (e == 15 && m == 7)) return (uint8_t)(sign | 0x7e);
  return (uint8_t)(sign | (e << 3) | m);
}

inline int8_t f32_to_i8(float q) {  // q = y / scale
  float r = nearbyintf(q);
  r = r < -128.f ? -128.f : (r > 127.f ? 127.f : r);
  return (int8_t)r;
}

inline float load1(int dtype, const void* p, int64_t i) {
  return dtype == FK_BF16 ? bf16_to_f32(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}

// store y (fp32) as out_dtype; quantized types divide by `qscale` first
inline void store1(int out_dtype, void* p, int64_t i, float y, float qscale) {
  switch (out_dtype) {
    case FK_F32: ((float*)p)[i] = y; break;
    case FK_BF16: ((uint16_t*)p)[i] = f32_to_bf16(y); break;
    case FK_I8: ((int8_t*)p)[i] = f32_to_i8(y / qscale); break;
    default: {
      float q = y / qscale;
      q = q < -448.f ? -448.f : (q > 448.f ? 448.f : q);
      ((uint8_t*)p)[i] = f32_to_e4m3(q);
    }
  }
}

inline void* aligned(size_t bytes) {
  void* p = nullptr;
  return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : nullptr;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// at most `threads`, and no more than `work / grain` of them: a small call stays on the calling thread (like torch's
// parallel_for grain), so it never waits for a second thread that a busy machine has descheduled
inline int threads_for(int64_t work, int64_t grain, int threads) {
  const int64_t useful = work / grain;
  return (int)(useful < 1 ? 1 : (useful < threads ? useful : (threads > 0 ? threads : 1)));
}

// f(row, vectorized) for every row on OpenMP threads (torch's pool: same libgomp); vectorized is true where this
// is x86 and the CPU (and the cap) allow AVX-512. `row_elements` sizes the work (grain: 32768 elements per thread).
template <class F>
void for_each_row(int64_t rows, int64_t row_elements, int threads, F f) {
  const bool vectorized = FK_X86 && isa() >= FK_AVX512;
#pragma omp parallel for num_threads(threads_for(rows * row_elements, 32768, threads)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) f(r, vectorized);
}

#if FK_X86
// ---------------------------------------------------------------------------------------------- AVX-512
FK_TARGET_AVX512 inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }

FK_TARGET_AVX512 inline __m512 load16(int dtype, const void* p, int64_t i, __mmask16 m) {
  if (dtype == FK_BF16) {
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t*)p + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  return _mm512_maskz_loadu_ps(m, (const float*)p + i);
}

// fp32 -> bf16 with round to nearest even in integer arithmetic (AVX512F; the BF16 level uses vcvtneps2bf16)
FK_TARGET_AVX512 inline __m256i to_bf16_rne(__m512 y) {
  __m512i u = _mm512_castps_si512(y);
  __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  __mmask16 nan = _mm512_cmp_ps_mask(y, y, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

// store 16 fp32 lanes as out_dtype (quantized types: y / qscale, saturated, ties to even). bf16 is rounded in
// integer arithmetic rather than with vcvtneps2bf16, which flushes subnormals: the result equals torch's rounding.
FK_TARGET_AVX512 inline void store16(int out_dtype, void* p, int64_t i, __m512 y, __m512 qscale, __mmask16 m) {
  switch (out_dtype) {
    case FK_F32: _mm512_mask_storeu_ps((float*)p + i, m, y); break;
    case FK_BF16:
      _mm256_mask_storeu_epi16((uint16_t*)p + i, m, to_bf16_rne(y));
      break;
    case FK_I8: {
      __m512 q = _mm512_roundscale_ps(_mm512_div_ps(y, qscale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-128.f)), _mm512_set1_ps(127.f));
      _mm_mask_storeu_epi8((int8_t*)p + i, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q)));
      break;
    }
    default: {  // fp8: the rounding is scalar (no e4m3 conversion instruction on x86)
      alignas(64) float tmp[16];
      __m512 q = _mm512_div_ps(y, qscale);
      q = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-448.f)), _mm512_set1_ps(448.f));
      _mm512_store_ps(tmp, q);
      for (int l = 0; l < 16; ++l)
        if (m >> l & 1) ((uint8_t*)p)[i + l] = f32_to_e4m3(tmp[l]);
    }
  }
}

// e^x for x <= 0 (softmax after max subtraction): 2^n * p(r), |relative error| < 2e-7
FK_TARGET_AVX512 inline __m512 exp_neg(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}
#endif  // FK_X86

}  // namespace fk
