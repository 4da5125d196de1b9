// Variable-length attention (no mask inside a sequence, nothing across sequences): Qwen2.5-VL's window attention
// (one sequence per window), its full-attention blocks (one per image) and LTX-Video's self-attention (one per
// batch element). One work item = one (sequence, head); its K and V are packed once into per-thread scratch, then
// query rows go four at a time through scores -> softmax -> P @ V with whole score rows kept in cache.
// Paths: scalar; AVX-512 (fp32 FMA on converted data); AVX512-BF16 (vdpbf16ps for both products, bf16 inputs).
#include "fk_common.h"

namespace {
using namespace fk;

constexpr int R = 4;  // query rows per block

struct Args {
  int dtype;
  const void *q, *k, *v;
  void* out;
  const int32_t* cu;
  int64_t H, d, q_st, q_sh, k_st, k_sh, v_st, v_sh;
  float scale;
};

struct Scratch {  // per thread, sized for the longest sequence
  float* a;       // K^T (fp32 [d][Lp]) or K pairs (u32 [d/2][Lp])
  float* b;       // V (fp32 [Lp][dv]) or V pairs (u32 [Lp/2][dv])
  float* s;       // scores / probabilities [R][Lp]
  float* qb;      // query rows [R][d2]
  uint16_t* p16;  // probabilities in bf16 [R][Lp]
};

// ------------------------------------------------------------------------------------------------ scalar
void item_scalar(const Args& a, int64_t start, int64_t L, int64_t h, Scratch& w) {
  const int64_t d = a.d;
  for (int64_t i = 0; i < L; ++i) {
    const int64_t qo = (start + i) * a.q_st + h * a.q_sh;
    float m = -INFINITY;
    for (int64_t j = 0; j < L; ++j) {
      const int64_t ko = (start + j) * a.k_st + h * a.k_sh;
      float acc = 0.f;
      for (int64_t c = 0; c < d; ++c) acc += load1(a.dtype, a.q, qo + c) * load1(a.dtype, a.k, ko + c);
      w.s[j] = acc * a.scale;
      m = w.s[j] > m ? w.s[j] : m;
    }
    float sum = 0.f;
    for (int64_t j = 0; j < L; ++j) {
      w.s[j] = expf(w.s[j] - m);
      sum += w.s[j];
    }
    const int64_t oo = ((start + i) * a.H + h) * d;
    for (int64_t c = 0; c < d; ++c) {
      float acc = 0.f;
      for (int64_t j = 0; j < L; ++j) acc += w.s[j] * load1(a.dtype, a.v, (start + j) * a.v_st + h * a.v_sh + c);
      store1(a.dtype, a.out, oo + c, acc / sum, 1.f);
    }
  }
}

#if FK_X86
// ------------------------------------------------------------------------------------- AVX-512 helpers
// softmax of R rows of scores in place (columns >= L are padding); returns 1 / row sums
FK_TARGET_AVX512 void softmax_rows(float* s, int64_t L, int64_t Lp, float* inv_sum) {
  for (int r = 0; r < R; ++r) {
    float* row = s + r * Lp;
    for (int64_t j = L; j < Lp; ++j) row[j] = -INFINITY;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < Lp; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + j));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < Lp; j += 16) {
      __m512 p = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(row + j), m));
      _mm512_storeu_ps(row + j, p);
      sum = _mm512_add_ps(sum, p);
    }
    inv_sum[r] = 1.f / _mm512_reduce_add_ps(sum);
  }
}

FK_TARGET_AVX512 void store_rows(const Args& a, const __m512* acc, int nc, int64_t row0, int nr, int64_t h, int64_t c0,
                          const float* inv_sum) {
  for (int r = 0; r < nr; ++r)
    for (int c = 0; c < nc; ++c) {
      const int64_t col = c0 + 16 * c;
      if (col >= a.d) break;
      store16(a.dtype, a.out, ((row0 + r) * a.H + h) * a.d + col,
              _mm512_mul_ps(acc[r * nc + c], _mm512_set1_ps(inv_sum[r])), _mm512_set1_ps(1.f),
              tail_mask(a.d - col));
    }
}

// ------------------------------------------------------------------------------------ AVX-512 (fp32 FMA)
template <int NV>
FK_TARGET_AVX512 inline void scores_f32(const float* kt, int64_t Lp, const float* qb, int64_t d, int64_t j0, float* s) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    __m512 kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_ps(kt + c * Lp + j0 + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_set1_ps(qb[r * d + c]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(qv, kv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(s + r * Lp + j0 + 16 * v, acc[r][v]);
}

template <int NC>
FK_TARGET_AVX512 inline void pv_f32(const Args& a, const float* vf, int64_t dv, const float* s, int64_t L, int64_t Lp,
                             int64_t c0, int64_t row0, int nr, int64_t h, const float* inv_sum) {
  __m512 acc[R * NC];
  for (int i = 0; i < R * NC; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t j = 0; j < L; ++j) {
    __m512 vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_ps(vf + j * dv + c0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 p = _mm512_set1_ps(s[r * Lp + j]);
      for (int c = 0; c < NC; ++c) acc[r * NC + c] = _mm512_fmadd_ps(p, vv[c], acc[r * NC + c]);
    }
  }
  store_rows(a, acc, NC, row0, nr, h, c0, inv_sum);
}

FK_TARGET_AVX512 void item_avx512(const Args& a, int64_t start, int64_t L, int64_t h, Scratch& w) {
  const int64_t d = a.d, Lp = round_up(L, 16), dv = round_up(d, 16);
  float* kt = w.a;  // [d][Lp]
  float* vf = w.b;  // [L][dv]
  for (int64_t j = 0; j < L; ++j) {
    const int64_t ko = (start + j) * a.k_st + h * a.k_sh, vo = (start + j) * a.v_st + h * a.v_sh;
    for (int64_t c = 0; c < d; ++c) kt[c * Lp + j] = load1(a.dtype, a.k, ko + c);
    for (int64_t c = 0; c < dv; c += 16)
      _mm512_storeu_ps(vf + j * dv + c, load16(a.dtype, a.v, vo + c, c < d ? tail_mask(d - c) : 0));
  }
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = L; j < Lp; ++j) kt[c * Lp + j] = 0.f;
  float inv_sum[R];
  for (int64_t i0 = 0; i0 < L; i0 += R) {
    const int nr = (int)(L - i0 < R ? L - i0 : R);
    for (int r = 0; r < R; ++r)
      for (int64_t c = 0; c < d; ++c)
        w.qb[r * d + c] = r < nr ? load1(a.dtype, a.q, (start + i0 + r) * a.q_st + h * a.q_sh + c) * a.scale : 0.f;
    int64_t j0 = 0;
    for (; j0 + 64 <= Lp; j0 += 64) scores_f32<4>(kt, Lp, w.qb, d, j0, w.s);
    for (; j0 < Lp; j0 += 16) scores_f32<1>(kt, Lp, w.qb, d, j0, w.s);
    softmax_rows(w.s, L, Lp, inv_sum);
    int64_t c0 = 0;
    for (; c0 + 64 <= dv; c0 += 64) pv_f32<4>(a, vf, dv, w.s, L, Lp, c0, start + i0, nr, h, inv_sum);
    for (; c0 < dv; c0 += 16) pv_f32<1>(a, vf, dv, w.s, L, Lp, c0, start + i0, nr, h, inv_sum);
  }
}

// --------------------------------------------------------------------------- AVX512-BF16 (vdpbf16ps)
inline uint32_t pair(const uint16_t* p, int64_t i, int64_t stride, bool has_second) {
  return (uint32_t)p[i] | (has_second ? (uint32_t)p[i + stride] << 16 : 0u);
}

template <int NV>
FK_TARGET_AVX512BF16 inline void scores_bf16(const uint32_t* kp, int64_t Lp, const uint32_t* qp, int64_t d2, int64_t j0,
                                      float scale, float* s) {
  __m512 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t c2 = 0; c2 < d2; ++c2) {
    __m512i kv[NV];
    for (int v = 0; v < NV; ++v) kv[v] = _mm512_loadu_si512(kp + c2 * Lp + j0 + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512i qv = _mm512_set1_epi32((int)qp[r * d2 + c2]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)qv, (__m512bh)kv[v]);
    }
  }
  const __m512 sc = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(s + r * Lp + j0 + 16 * v, _mm512_mul_ps(acc[r][v], sc));
}

template <int NC>
FK_TARGET_AVX512BF16 inline void pv_bf16(const Args& a, const uint32_t* vp, int64_t dv, const uint16_t* p16, int64_t Lp,
                                  int64_t c0, int64_t row0, int nr, int64_t h, const float* inv_sum) {
  __m512 acc[R * NC];
  for (int i = 0; i < R * NC; ++i) acc[i] = _mm512_setzero_ps();
  const uint32_t* pp = (const uint32_t*)p16;  // probability pairs (p[2j], p[2j+1])
  for (int64_t j2 = 0; j2 < Lp / 2; ++j2) {
    __m512i vv[NC];
    for (int c = 0; c < NC; ++c) vv[c] = _mm512_loadu_si512(vp + j2 * dv + c0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512i pv = _mm512_set1_epi32((int)pp[r * (Lp / 2) + j2]);
      for (int c = 0; c < NC; ++c) acc[r * NC + c] = _mm512_dpbf16_ps(acc[r * NC + c], (__m512bh)pv, (__m512bh)vv[c]);
    }
  }
  store_rows(a, acc, NC, row0, nr, h, c0, inv_sum);
}

FK_TARGET_AVX512BF16 void item_avx512_bf16(const Args& a, int64_t start, int64_t L, int64_t h, Scratch& w) {
  const int64_t d = a.d, d2 = (d + 1) / 2, Lp = round_up(L, 16), dv = round_up(d, 16);
  const uint16_t *q = (const uint16_t*)a.q, *k = (const uint16_t*)a.k, *v = (const uint16_t*)a.v;
  uint32_t* kp = (uint32_t*)w.a;  // [d2][Lp]: (K[j][2c], K[j][2c+1])
  uint32_t* vp = (uint32_t*)w.b;  // [Lp/2][dv]: (V[2j][c], V[2j+1][c])
  uint32_t* qp = (uint32_t*)w.qb;  // [R][d2]
  for (int64_t j = 0; j < Lp; ++j) {
    const int64_t ko = (start + j) * a.k_st + h * a.k_sh;
    for (int64_t c2 = 0; c2 < d2; ++c2) kp[c2 * Lp + j] = j < L ? pair(k, ko + 2 * c2, 1, 2 * c2 + 1 < d) : 0u;
  }
  for (int64_t j2 = 0; j2 < Lp / 2; ++j2) {
    const int64_t j = 2 * j2, vo = (start + j) * a.v_st + h * a.v_sh;
    for (int64_t c = 0; c < dv; ++c)
      vp[j2 * dv + c] = (j < L && c < d) ? pair(v, vo + c, a.v_st, j + 1 < L) : 0u;
  }
  float inv_sum[R];
  for (int64_t i0 = 0; i0 < L; i0 += R) {
    const int nr = (int)(L - i0 < R ? L - i0 : R);
    for (int r = 0; r < R; ++r) {
      const int64_t qo = (start + i0 + r) * a.q_st + h * a.q_sh;
      for (int64_t c2 = 0; c2 < d2; ++c2) qp[r * d2 + c2] = r < nr ? pair(q, qo + 2 * c2, 1, 2 * c2 + 1 < d) : 0u;
    }
    int64_t j0 = 0;
    for (; j0 + 64 <= Lp; j0 += 64) scores_bf16<4>(kp, Lp, qp, d2, j0, a.scale, w.s);
    for (; j0 < Lp; j0 += 16) scores_bf16<1>(kp, Lp, qp, d2, j0, a.scale, w.s);
    softmax_rows(w.s, L, Lp, inv_sum);
    for (int r = 0; r < R; ++r)  // probabilities to bf16 pairs (padding columns are exp(-inf) = 0)
      for (int64_t j = 0; j < Lp; j += 32) {
        __m512bh b = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(w.s + r * Lp + j + 16), _mm512_loadu_ps(w.s + r * Lp + j));
        if (j + 32 <= Lp)
          _mm512_storeu_si512(w.p16 + r * Lp + j, (__m512i)b);
        else
          _mm256_storeu_si256((__m256i*)(w.p16 + r * Lp + j), _mm512_castsi512_si256((__m512i)b));
      }
    int64_t c0 = 0;
    for (; c0 + 64 <= dv; c0 += 64) pv_bf16<4>(a, vp, dv, w.p16, Lp, c0, start + i0, nr, h, inv_sum);
    for (; c0 < dv; c0 += 16) pv_bf16<1>(a, vp, dv, w.p16, Lp, c0, start + i0, nr, h, inv_sum);
  }
}

#endif  // FK_X86

}  // namespace

extern "C" int fk_varlen_attention(int dtype, const void* q, const void* k, const void* v, void* out,
                                   const int32_t* cu_seqlens, int64_t num_seqs, int64_t heads, int64_t head_dim,
                                   int64_t q_st, int64_t q_sh, int64_t k_st, int64_t k_sh, int64_t v_st, int64_t v_sh,
                                   float softmax_scale, int threads) {
  if (dtype != FK_F32 && dtype != FK_BF16) return FK_BAD_DTYPE;
  if (num_seqs < 0 || heads <= 0 || head_dim <= 0) return FK_BAD_SHAPE;
  int64_t max_len = 0, macs = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const int64_t len = (int64_t)cu_seqlens[i + 1] - cu_seqlens[i];
    if (len < 0) return FK_BAD_SHAPE;
    max_len = len > max_len ? len : max_len;
    macs += 2 * len * len * head_dim * heads;
  }
  const Args a{dtype, q, k, v, out, cu_seqlens, heads, head_dim, q_st, q_sh, k_st, k_sh, v_st, v_sh, softmax_scale};
  const int level = fk::isa();
  [[maybe_unused]] const int path = level >= FK_AVX512_BF16 && dtype == FK_BF16 ? 2 : (level >= FK_AVX512 ? 1 : 0);
  const int64_t Lp = round_up(max_len + 1, 32), dv = round_up(head_dim, 16), d2 = round_up(head_dim, 2);
  const int64_t items = num_seqs * heads;
  int status = FK_OK;
#pragma omp parallel num_threads(fk::threads_for(macs, 1 << 20, threads))
  {
    Scratch w{(float*)aligned(sizeof(float) * d2 * Lp), (float*)aligned(sizeof(float) * Lp * dv),
              (float*)aligned(sizeof(float) * R * Lp), (float*)aligned(sizeof(float) * R * d2),
              (uint16_t*)aligned(sizeof(uint16_t) * R * Lp)};
    const bool ok = w.a && w.b && w.s && w.qb && w.p16;
    if (!ok) {
#pragma omp atomic write
      status = FK_NO_MEMORY;
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t seq = it / heads, h = it % heads, start = cu_seqlens[seq];
      const int64_t L = (int64_t)cu_seqlens[seq + 1] - start;
      if (!ok || L == 0) continue;
#if FK_X86
      if (path == 2) {
        item_avx512_bf16(a, start, L, h, w);
        continue;
      }
      if (path == 1) {
        item_avx512(a, start, L, h, w);
        continue;
      }
#endif
      item_scalar(a, start, L, h, w);
    }
    free(w.a);
    free(w.b);
    free(w.s);
    free(w.qb);
    free(w.p16);
  }
  return status;
}
