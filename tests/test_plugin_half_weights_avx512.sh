#!/bin/sh
# tests/test_plugin_half_weights_avx512.sh - test_plugin_half_weights with the
# AVX-512 kernels but not the AVX-512-BF16 dot products (MMPIPE_CPU_ISA=avx512):
# compute_dtype = "bf16" then takes the fp32 kernel with the bf16 roundings, so
# that CI checks that path on a machine that has AVX512_BF16. On a CPU without
# AVX-512 this is the portable path.
B=${MMP_TEST_BUILDDIR:-.}
MMPIPE_CPU_ISA=avx512 exec "$B/tests/test_plugin_half_weights"
