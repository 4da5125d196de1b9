// Run-time instruction-set dispatch: the best level this CPU (and OS) supports, optionally capped by the caller.
#include "fk_common.h"

namespace {

int detect() {
  __builtin_cpu_init();
  bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (!avx512) return FK_SCALAR;
  return __builtin_cpu_supports("avx512bf16") ? FK_AVX512_BF16 : FK_AVX512;
}

const int cpu_level = detect();
int level = cpu_level;

}  // namespace

namespace fk {
int isa() { return level; }
}  // namespace fk

extern "C" {

int fk_version(void) { return 1; }
int fk_cpu_isa(void) { return cpu_level; }
int fk_isa(void) { return level; }

int fk_set_isa(int requested) {
  level = requested < FK_SCALAR ? FK_SCALAR : (requested > cpu_level ? cpu_level : requested);
  return level;
}

int fk_cpu_has_vnni(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vnni") ? 1 : 0;
}

}  // extern "C"
