/* core/cpu/dispatch.h - x86 feature detection and per-target kernel variants (internal).
 *
 * The CPU kernels are plain C loops that the compiler vectorises; the same
 * body is compiled once per x86 target and the caller picks the variant
 * for the machine at run time from one cached feature word:
 *
 *   static inline MMP_ALWAYS_INLINE void scale_body(float *y, int64_t n, float s) {
 *     for (int64_t i = 0; i < n; ++i) y[i] *= s;
 *   }
 *   MMP_VARIANTS_VOID(scale, (float *y, int64_t n, float s), (y, n, s))
 *   ...
 *   scale(y, n, 2.0f);   (AVX-512, AVX2+FMA or the build's baseline)
 *
 * Each variant is an ordinary function with __attribute__((target(...)))
 * into which the always-inline body is inlined, so it is vectorised for
 * that target. Unlike target_clones this needs no ifunc: nothing runs
 * while the dynamic loader relocates libmmpipe (see doc/architecture.md,
 * "CPU dispatch"), and GCC and Clang accept it alike, with or without
 * sanitizers. The feature check is one load and a branch per call; the
 * kernels call variants per row or per tile, never per element.
 */
#ifndef MMPIPE_CPU_DISPATCH_H
#define MMPIPE_CPU_DISPATCH_H

#if defined(__x86_64__) && defined(__GNUC__)
#define MMP_HAVE_X86_DISPATCH 1
#endif

/* Feature bits; each includes the OS's support for the register state
 * (XGETBV). */
enum {
  MMP_CPU_AVX2 = 1 << 0,   /* AVX2 and FMA */
  MMP_CPU_AVX512 = 1 << 1, /* AVX-512 F, DQ, BW, VL, and FMA */
  MMP_CPU_F16C = 1 << 2,   /* AVX and F16C */
  MMP_CPU_AVX512BF16 = 1 << 3 /* AVX-512 (above) and AVX512_BF16 (vdpbf16ps) */
};

/* The features of this CPU (0 on other architectures). Detected on the
 * first call (cpuid), cached; thread-safe. */
int mmp_cpu_features(void);

#define MMP_ALWAYS_INLINE __attribute__((always_inline))

#ifdef MMP_HAVE_X86_DISPATCH
#define MMP_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")))
#define MMP_TARGET_AVX2 __attribute__((target("avx2,fma")))

/* static ret name params: calls name##_body args compiled for AVX-512,
 * for AVX2+FMA, or for the baseline, whichever the CPU runs best. */
#define MMP_VARIANTS(ret, name, params, args)                                         \
  MMP_TARGET_AVX512 static ret name##_avx512 params { return name##_body args; }     \
  MMP_TARGET_AVX2 static ret name##_avx2 params { return name##_body args; }         \
  static ret name params {                                                          \
    const int f_ = mmp_cpu_features();                                              \
    if (f_ & MMP_CPU_AVX512) return name##_avx512 args;                             \
    if (f_ & MMP_CPU_AVX2) return name##_avx2 args;                                 \
    return name##_body args;                                                        \
  }
/* Same for a void function. */
#define MMP_VARIANTS_VOID(name, params, args)                                         \
  MMP_TARGET_AVX512 static void name##_avx512 params { name##_body args; }           \
  MMP_TARGET_AVX2 static void name##_avx2 params { name##_body args; }               \
  static void name params {                                                         \
    const int f_ = mmp_cpu_features();                                              \
    if (f_ & MMP_CPU_AVX512)                                                        \
      name##_avx512 args;                                                           \
    else if (f_ & MMP_CPU_AVX2)                                                     \
      name##_avx2 args;                                                             \
    else                                                                            \
      name##_body args;                                                             \
  }
#else
#define MMP_VARIANTS(ret, name, params, args) \
  static ret name params { return name##_body args; }
#define MMP_VARIANTS_VOID(name, params, args) \
  static void name params { name##_body args; }
#endif

#endif /* MMPIPE_CPU_DISPATCH_H */
