#!/bin/sh
# tests/test_plugin_half_weights_generic.sh - test_plugin_half_weights again on
# the portable code path (MMPIPE_CPU_ISA=generic: the C packers and micro-kernel
# instead of the AVX-512 ones), so that CI checks both paths on a machine that
# has AVX-512.
B=${MMP_TEST_BUILDDIR:-.}
# MMPIPE_CPU_BLAS=builtin: the f32 runs it compares against use the same
# portable kernel (not OpenBLAS, the f32 default without AVX-512)
MMPIPE_CPU_ISA=generic MMPIPE_CPU_BLAS=builtin exec "$B/tests/test_plugin_half_weights"
