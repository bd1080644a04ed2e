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
# Open MPI's leaks at exit are its own (sanitizer builds); busy-waiting ranks
# would steal the other rank's core: yield when idle; containers often
# forbid the single-copy (CMA) shared-memory path: plain copies.
LSAN_OPTIONS="suppressions=$S/tests/lsan-mpi.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"; export LSAN_OPTIONS
env=
for v in MMP_TEST_SRCDIR MMP_TEST_BUILDDIR MMPIPE_PLUGIN_PATH ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS; do
  eval "[ -n \"\${$v+x}\" ]" && env="$env -x $v"
done
exec "$MPIRUN" -np 2 --oversubscribe $root --bind-to none \
  --mca mpi_yield_when_idle 1 --mca btl_vader_single_copy_mechanism none \
  -x MMPIPE_THREADS=1 $env "$B/tests/test_core_dist"
