#!/bin/sh
# tests/fuzz/run.sh - run libFuzzer harnesses one after the other (`make fuzz`).
#
#   tests/fuzz/run.sh SRCDIR BUILDDIR tests/fuzz/fuzz_NAME...
#
# Each harness runs for $FUZZ_SECONDS (default 60) on a working copy of its
# corpus ($FUZZ_OUT/NAME/corpus, seeded from SRCDIR/tests/fuzz/corpus/NAME/),
# with SRCDIR/tests/fuzz/dict/NAME.dict when there is one, $FUZZ_ARGS added;
# the names in $FUZZ_SKIP are not run ("SKIP: NAME").
# Prints one line per harness, "PASS: NAME (...)" or "FAIL: NAME (...)", with
# the wall and CPU seconds (user + system, from the shell's `times`), the
# executions, coverage (edges of mmpipe's code) and features reached; a
# crash, leak, sanitizer report, timeout or out-of-memory leaves its input in
# $FUZZ_OUT/NAME/ and the log in $FUZZ_OUT/NAME/log. Exits 1 if any failed.
set -u
# as tests/local.mk's: LeakSanitizer's tracer crashes on a dynamic TLS block
# the runtime misreads (google/sanitizers#1322) unless it leaves them alone
ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}intercept_tls_get_addr=0"; export ASAN_OPTIONS
src=$1; build=$2; shift 2
secs=${FUZZ_SECONDS:-60}
out=${FUZZ_OUT:-$build/fuzz-out}
failed=0
# CPU seconds (user + system) of the children so far: the second line of
# `times`, run in this shell (a command substitution would time its subshell)
child_cpu() {
  sed -n 2p "$1" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } printf "%d\n", n }'
}
for h in "$@"; do
  name=$(basename "$h")
  # FUZZ_SKIP: harnesses with an open finding (doc/fuzzing.md) that a short
  # run meets again; they still replay their corpus and past findings in make check
  case " ${FUZZ_SKIP:-} " in
    *" $name "*) echo "SKIP: $name (FUZZ_SKIP: open finding, doc/fuzzing.md)"; continue ;;
  esac
  dir=$out/$name
  mkdir -p "$dir/corpus"
  rm -f "$dir"/crash-* "$dir"/leak-* "$dir"/timeout-* "$dir"/oom-* "$dir"/slow-unit-*
  set -- -max_total_time="$secs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/"
  [ -f "$src/tests/fuzz/dict/$name.dict" ] && set -- "$@" -dict="$src/tests/fuzz/dict/$name.dict"
  start=$(date +%s)
  times >"$dir/times"
  cpu0=$(child_cpu "$dir/times")
  # shellcheck disable=SC2086
  "$build/$h" "$@" ${FUZZ_ARGS:-} "$dir/corpus" "$src/tests/fuzz/corpus/$name" >"$dir/log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  times >"$dir/times"
  cpu=$(($(child_cpu "$dir/times") - cpu0))
  execs=$(grep -a '^stat::number_of_executed_units:' "$dir/log" | tail -1 | sed 's/.*: *//')
  # the last status line; -fork mode writes "#N: cov: C ft: F corp: K exec/s ..."
  last=$(grep -aE '^#[0-9]+:?[[:space:]].*cov: ' "$dir/log" | tail -1 |
    sed 's/^#\([0-9]*\): /#\1 /; s/corp: \([0-9]*\) /corp: \1\/ /')
  [ -n "$execs" ] || execs=$(echo "$last" | sed -n 's/^#\([0-9]*\)[[:space:]].*/\1/p')
  cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
  ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
  corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p')
  found=$(ls "$dir" | grep -cE '^(crash|leak|timeout|oom)-')
  info="${took}s, cpu ${cpu}s, ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
  if [ "$rc" = 0 ] && [ "$found" = 0 ]; then
    echo "PASS: $name ($info)"
  else
    failed=1
    echo "FAIL: $name ($info; exit $rc; see $dir/log)"
    grep -aE '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$dir/log" | head -5
    ls "$dir" | grep -E '^(crash|leak|timeout|oom)-' | sed "s|^|  input: $dir/|"
  fi
done
exit $failed
