#!/bin/sh
# tests/test_core_dist.sh - data parallelism over MPI: tests/test_core_dist under
# `mpirun -np 2` (one thread per rank). Skipped (77) in a build without MPI or without mpirun.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
MPIRUN=${MMP_MPIRUN:-}
if [ -z "$MPIRUN" ]; then
  echo "1..0 # SKIP built without MPI, or mpirun not found (configure --with-mpi; apt-get install openmpi-bin)"
  exit 77
fi
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
# Sanitizer builds: Open MPI leaves thousands of allocations at exit, many
# from its dlclose'd components (unsymbolisable, so no suppression list
# matches them): leak checking is off for the ranks, ASan's other checks and
# UBSan stay on. Busy-waiting ranks would steal the other rank's core: yield
# when idle. Containers often forbid the single-copy (CMA) shared-memory
# path: plain copies.
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"; export ASAN_OPTIONS
env=
for v in MMP_TEST_SRCDIR MMP_TEST_BUILDDIR MMPIPE_PLUGIN_PATH ASAN_OPTIONS UBSAN_OPTIONS; do
  eval "[ -n \"\${$v+x}\" ]" && env="$env -x $v"
done
exec "$MPIRUN" -np 2 --oversubscribe $root --bind-to none \
  --mca mpi_yield_when_idle 1 --mca btl_vader_single_copy_mechanism none \
  -x MMPIPE_THREADS=1 $env "$B/tests/test_core_dist"
