#!/bin/sh
# tests/test_plugin_half_weights_avx512.sh - test_plugin_half_weights with the
# AVX-512-BF16 dot products for bf16 weights (MMPIPE_CPU_ISA=avx512bf16, opt-in;
# activations rounded to bf16, looser tolerances). On a CPU without
# AVX512_BF16 this is the AVX-512 (or portable) path and the tolerances hold.
B=${MMP_TEST_BUILDDIR:-.}
MMPIPE_CPU_ISA=avx512bf16 exec "$B/tests/test_plugin_half_weights"
