#!/bin/sh
# tests/test_plugin_half_weights_avx512.sh - test_plugin_half_weights with the
# AVX-512 kernels but without their BF16 dot products (MMPIPE_CPU_ISA=avx512):
# bf16 weights converted to fp32 while packing, so the fixture runs must be
# exact. On a CPU without AVX-512 this is the portable path again.
B=${MMP_TEST_BUILDDIR:-.}
MMPIPE_CPU_ISA=avx512 exec "$B/tests/test_plugin_half_weights"
