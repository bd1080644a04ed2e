/* core/cpu/cpu_features.c - the x86 features the CPU kernels dispatch on, read once with cpuid. */
#include "config.h"

#include <stdatomic.h>
#include <stdint.h>

#include "core/cpu/dispatch.h"

#ifdef MMP_HAVE_X86_DISPATCH
#include <cpuid.h>

/* XCR0: which register states the OS saves on a context switch */
static uint64_t xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

static int detect(void) {
  unsigned a, b, c, d;
  int f = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  /* AVX needs the OS to save YMM state (XCR0 bits 1-2), AVX-512 also the
   * opmask and ZMM state (bits 5-7) */
  if (!(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
  const uint64_t x = xcr0();
  if ((x & 0x6) != 0x6) return 0;
  const int fma = (c & bit_FMA) != 0;
  if (c & bit_F16C) f |= MMP_CPU_F16C;
  if (__get_cpuid_max(0, 0) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  if ((b & bit_AVX2) && fma) f |= MMP_CPU_AVX2;
  const unsigned avx512 = bit_AVX512F | bit_AVX512DQ | bit_AVX512BW | bit_AVX512VL;
  if ((x & 0xe6) == 0xe6 && (b & avx512) == avx512 && fma) f |= MMP_CPU_AVX512;
  /* AVX512_BF16: leaf 7, sub-leaf 1, EAX bit 5 */
  if ((f & MMP_CPU_AVX512) && a >= 1) {
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    if (a1 & (1u << 5)) f |= MMP_CPU_AVX512BF16;
  }
  return f;
}
#else
static int detect(void) { return 0; }
#endif

static atomic_int g_features = -1; /* -1: not read yet */

int mmp_cpu_features(void) {
  int v = atomic_load_explicit(&g_features, memory_order_relaxed);
  if (v < 0) {
    v = detect(); /* idempotent: racing first calls store the same value */
    atomic_store_explicit(&g_features, v, memory_order_relaxed);
  }
  return v;
}
