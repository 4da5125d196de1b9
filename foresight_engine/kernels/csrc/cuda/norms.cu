// CUDA versions of the two memory-bound fused ops (same math and rounding as the CPU kernels and the Triton ones):
// the GPU path where Triton is absent (torch builds without it, callers outside Python such as a C++ runner).
// C ABI, raw pointers, the caller's stream; the per-tensor quantization scale is read on the device, so a CUDA
// graph can capture the call and calibration can change the scale without a re-capture.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

enum { FK_F32 = 0, FK_BF16 = 1, FK_I8 = 2, FK_F8E4M3 = 3 };
enum { FK_OK = 0, FK_BAD_DTYPE = 1, FK_BAD_SHAPE = 2, FK_CUDA_ERROR = 4 };
constexpr int kThreads = 256;

__device__ __forceinline__ float ld(int dtype, const void* p, int64_t i) {
  return dtype == FK_BF16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

__device__ __forceinline__ void st(int out_dtype, void* p, int64_t i, float y, float qscale) {
  switch (out_dtype) {
    case FK_F32: static_cast<float*>(p)[i] = y; break;
    case FK_BF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(y); break;
    case FK_I8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(fminf(fmaxf(rintf(__fdiv_rn(y, qscale)), -128.f), 127.f)); break;
    default:  // saturated, round to nearest even
      static_cast<__nv_fp8_e4m3*>(p)[i] = __nv_fp8_e4m3(fminf(fmaxf(__fdiv_rn(y, qscale), -448.f), 448.f));
  }
}

// sum over the block (kThreads threads)
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (threadIdx.x < 32)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __shared__ float total;
  if (threadIdx.x == 0) total = v;
  __syncthreads();
  return total;
}

__device__ float inv_rms(int dtype, const void* x, int64_t xo, int64_t D, float eps) {
  float ss = 0.f;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    float v = ld(dtype, x, xo + d);
    ss += v * v;
  }
  return rsqrtf(block_sum(ss) / static_cast<float>(D) + eps);
}

__global__ void __launch_bounds__(kThreads)
rmsnorm_modulate_kernel(int dtype, const void* x, const void* scale, const void* shift, int64_t S, int64_t D,
                        int64_t scale_sb, int64_t scale_ss, int64_t shift_sb, int64_t shift_ss, float eps,
                        int out_dtype, const float* quant_scale, void* out) {
  const int64_t row = blockIdx.x, b = row / S, s = row % S, xo = row * D;
  const int64_t so = b * scale_sb + s * scale_ss, ho = b * shift_sb + s * shift_ss;
  const float inv = inv_rms(dtype, x, xo, D, eps);
  const float qscale = quant_scale ? *quant_scale : 1.f;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    float y = ld(dtype, x, xo + d) * inv * (1.f + ld(dtype, scale, so + d)) + ld(dtype, shift, ho + d);
    st(out_dtype, out, xo + d, y, qscale);
  }
}

__global__ void __launch_bounds__(kThreads)
rmsnorm_rope_kernel(int dtype, const void* x, const void* w, const float* cos, const float* sin, int64_t cs_b,
                    int64_t S, int64_t D, float eps, void* out) {
  const int64_t row = blockIdx.x, xo = row * D, co = (row / S) * cs_b + (row % S) * (D / 2);
  const float inv = inv_rms(dtype, x, xo, D, eps);
  for (int64_t p = threadIdx.x; p < D / 2; p += kThreads) {
    float e = ld(dtype, x, xo + 2 * p) * inv * ld(dtype, w, 2 * p);
    float o = ld(dtype, x, xo + 2 * p + 1) * inv * ld(dtype, w, 2 * p + 1);
    float c = cos[co + p], sn = sin[co + p];
    st(dtype, out, xo + 2 * p, e * c - o * sn, 1.f);
    st(dtype, out, xo + 2 * p + 1, o * c + e * sn, 1.f);
  }
}

int status() { return cudaGetLastError() == cudaSuccess ? FK_OK : FK_CUDA_ERROR; }

}  // namespace

extern "C" __attribute__((visibility("default"))) int fk_cuda_version(void) { return 1; }

extern "C" __attribute__((visibility("default"))) int fk_cuda_rmsnorm_modulate(
    int dtype, const void* x, const void* scale, const void* shift, int64_t B, int64_t S, int64_t D, int64_t scale_sb,
    int64_t scale_ss, int64_t shift_sb, int64_t shift_ss, float eps, int out_dtype, const float* quant_scale,
    void* out, void* stream) {
  if (dtype != FK_F32 && dtype != FK_BF16) return FK_BAD_DTYPE;
  if (out_dtype != dtype && out_dtype != FK_I8 && out_dtype != FK_F8E4M3) return FK_BAD_DTYPE;
  if (B * S <= 0 || D <= 0 || B * S > 2147483647LL) return FK_BAD_SHAPE;
  rmsnorm_modulate_kernel<<<static_cast<unsigned>(B * S), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      dtype, x, scale, shift, S, D, scale_sb, scale_ss, shift_sb, shift_ss, eps, out_dtype, quant_scale, out);
  return status();
}

extern "C" __attribute__((visibility("default"))) int fk_cuda_rmsnorm_rope(
    int dtype, const void* q, const void* k, const void* q_weight, const void* k_weight, const float* cos,
    const float* sin, int64_t cs_b, int64_t B, int64_t S, int64_t D, float eps, void* q_out, void* k_out,
    void* stream) {
  if (dtype != FK_F32 && dtype != FK_BF16) return FK_BAD_DTYPE;
  if (B * S <= 0 || D <= 0 || D % 2 || B * S > 2147483647LL) return FK_BAD_SHAPE;
  const unsigned rows = static_cast<unsigned>(B * S);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  rmsnorm_rope_kernel<<<rows, kThreads, 0, st>>>(dtype, q, q_weight, cos, sin, cs_b, S, D, eps, q_out);
  rmsnorm_rope_kernel<<<rows, kThreads, 0, st>>>(dtype, k, k_weight, cos, sin, cs_b, S, D, eps, k_out);
  return status();
}
