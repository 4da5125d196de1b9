// foresight-engine native kernels: the C ABI loaded by foresight_engine/kernels/_native.py (ctypes).
// No libtorch linkage: tensors cross as raw pointers + sizes + element strides, so the library builds in seconds
// against nothing but a C++ compiler, and one build serves every torch version.
#pragma once
#include <stdint.h>

#ifndef FK_EXPORT
#define FK_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

// element types (the Python side maps torch dtypes onto these)
enum { FK_F32 = 0, FK_BF16 = 1, FK_I8 = 2, FK_F8E4M3 = 3 };
// instruction-set levels, chosen by cpuid at load time (FORESIGHT_KERNELS_ISA=scalar|avx512 caps them)
enum { FK_SCALAR = 0, FK_AVX512 = 1, FK_AVX512_BF16 = 2 };
// return codes
enum { FK_OK = 0, FK_BAD_DTYPE = 1, FK_BAD_SHAPE = 2, FK_NO_MEMORY = 3 };

FK_EXPORT int fk_version(void);
FK_EXPORT int fk_cpu_isa(void);            // best level this CPU supports
FK_EXPORT int fk_isa(void);                // level in use
FK_EXPORT int fk_set_isa(int level);       // cap the level (never above fk_cpu_isa()); returns the level in use
FK_EXPORT int fk_cpu_has_vnni(void);       // reported only: no op here has an int8 dot product

// y = rmsnorm(x) * (1 + scale) + shift over the last dim D, then stored as out_dtype: x's dtype, or int8 / fp8
// e4m3fn quantized with one per-tensor scale (x / quant_scale, round half to even, saturated).
// x, out: contiguous [B, S, D]; scale/shift: innermost stride 1, element strides (sb, ss) for b and s (0 = broadcast).
FK_EXPORT int fk_rmsnorm_modulate(int dtype, const void* x, const void* scale, const void* shift, int64_t B, int64_t S,
                        int64_t D, int64_t scale_sb, int64_t scale_ss, int64_t shift_sb, int64_t shift_ss,
                        float eps, int out_dtype, float quant_scale, void* out, int threads);

// q, k -> rope(rmsnorm(q) * q_weight), rope(rmsnorm(k) * k_weight): RMSNorm over the last dim D (all heads), then
// interleaved-pair rotary embedding with compact tables cos, sin fp32 [B|1, S, D/2] (batch stride cs_b, 0 = shared).
// q, k, q_out, k_out: contiguous [B, S, D]; weights [D] in the tensors' dtype.
FK_EXPORT int fk_rmsnorm_rope(int dtype, const void* q, const void* k, const void* q_weight, const void* k_weight,
                    const float* cos, const float* sin, int64_t cs_b, int64_t B, int64_t S, int64_t D, float eps,
                    void* q_out, void* k_out, int threads);

// Variable-length attention without a mask: sequence i is tokens [cu_seqlens[i], cu_seqlens[i+1]).
// q, k, v: [T, H, d] with element strides (token, head) and unit stride over d; out: contiguous [T, H, d].
FK_EXPORT int fk_varlen_attention(int dtype, const void* q, const void* k, const void* v, void* out, const int32_t* cu_seqlens,
                        int64_t num_seqs, int64_t heads, int64_t head_dim, int64_t q_st, int64_t q_sh, int64_t k_st,
                        int64_t k_sh, int64_t v_st, int64_t v_sh, float softmax_scale, int threads);

#ifdef __cplusplus
}
#endif
