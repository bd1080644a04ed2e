#!/bin/sh
# tests/test_core_pipeline.sh - the `pipeline` command end to end: run, config,
# plugins, describe, exit codes, error messages, Ctrl-C. TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
T=$(mktemp -d /tmp/mmp-cli-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
# expect_rc WANT DESCRIPTION CMD... : run, keep stdout/stderr in $T/out $T/err
expect_rc() { want=$1; shift; d=$1; shift; "$@" >"$T/out" 2>"$T/err"; rc=$?; [ "$rc" = "$want" ]; r=$?; ok $r "$d (exit $rc, want $want)"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"; }
grep_err() { grep -qF -- "$1" "$T/err"; r=$?; ok $r "stderr says: $1"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"; }
grep_out() { grep -qF -- "$1" "$T/out"; r=$?; ok $r "stdout says: $1"; [ $r = 0 ] || sed 's/^/#   /' "$T/out"; }

mkdir -p "$T/plugins"
cp "$B/tests/plugins/.libs/task_good.so" "$T/plugins/"
MMPIPE_PLUGIN_PATH="$T/plugins"; export MMPIPE_PLUGIN_PATH

expect_rc 0 "--help" "$P" --help
grep_out "Exit codes"
expect_rc 0 "--version" "$P" --version
grep_out "plugin ABI 1."
expect_rc 2 "no command is a usage error" "$P"
expect_rc 2 "unknown command" "$P" rnu
grep_err "unknown command 'rnu' (did you mean 'run'?)"
for c in run config plugins describe forward tensors randn dataset init-weights arldm-init; do
  expect_rc 0 "$c --help" "$P" $c --help
done

cat >"$T/task.cfg" <<CFG
# a task for the good test plugin
task = {
  name = "good";
  count = 2;
  output = "result.txt";
};
CFG
expect_rc 0 "run a task" "$P" run "$T/task.cfg" -s task.message=hi -s 'task.items=["p","q"]'
printf 'message=hi\ncount=2\nratio=0.5\nflag=0\nitems=p,q\n' >"$T/want"
cmp -s "$T/result.txt" "$T/want"; ok $? "task output reflects file, overrides and defaults"

expect_rc 0 "config prints the merged configuration" "$P" config "$T/task.cfg" -s task.flag=true
grep_out "count = 2;  # file $T/task.cfg:4"
grep_out "flag = true;  # override (-s)"
grep_out "ratio = 0.5;  # default"

cat >"$T/bad.cfg" <<CFG
task = {
  name = "good";
  cuont = 2;
  ratio = "high";
};
threds = 4;
CFG
expect_rc 3 "config errors exit 3 before any work" "$P" run "$T/bad.cfg"
grep_err "$T/bad.cfg:3: task 'good' (group 'task') has no key 'cuont' (did you mean 'count'?)"
grep_err "$T/bad.cfg:4: task 'good' (group 'task') key 'ratio' must be float, found string"
grep_err "needs key 'output'"
grep_err "$T/bad.cfg:6: unknown top-level setting 'threds' (did you mean 'threads'?)"
printf 'task = { name = "god"; output = "x"; };\n' >"$T/typo.cfg"
expect_rc 3 "unknown implementation is a config error" "$P" run "$T/typo.cfg"
grep_err "unknown task 'god' (did you mean 'good'?)"
printf 'task = { name = ; };\n' >"$T/syntax.cfg"
expect_rc 3 "syntax error exits 3" "$P" run "$T/syntax.cfg"
grep_err "$T/syntax.cfg:1:"
expect_rc 5 "missing task file exits 5" "$P" run "$T/none.cfg"
expect_rc 3 "malformed -s exits 3" "$P" run "$T/task.cfg" -s novalue

expect_rc 0 "plugins lists the good module" "$P" plugins
grep_out "good_helper"
grep_out "task_good.so"
expect_rc 0 "plugins KIND filters" "$P" plugins encoder
grep -q "^task " "$T/out"; [ $? != 0 ]; ok $? "the task is filtered out"
expect_rc 2 "plugins with a bad kind" "$P" plugins schedulerz
cp "$B/tests/plugins/.libs/task_badabi.so" "$T/plugins/"
expect_rc 4 "plugins with a broken module exits 4" "$P" plugins
grep_err "task_badabi.so: plugin 'badabi' was built for plugin ABI 2.1"
grep_out "good_helper"
rm "$T/plugins/task_badabi.so"

expect_rc 0 "describe" "$P" describe task good
grep_out "output"
grep_out "(required)"
grep_out "ratio"
expect_rc 4 "describe an unknown implementation" "$P" describe task goood
grep_err "did you mean 'good'"

# Ctrl-C: stops at a safe point, exit 130, nothing under the final name
printf 'task = { name = "good"; steps = 500; output = "slow.txt"; };\n' >"$T/slow.cfg"
"$P" run "$T/slow.cfg" >"$T/out" 2>"$T/err" &
pid=$!
# wait until the task is running (its temporary output exists), then interrupt
i=0; while [ ! -e "$T/slow.txt.tmp" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
sleep 0.2
kill -INT $pid
wait $pid; rc=$?
[ $rc = 130 ]; ok $? "SIGINT exits 130 (got $rc)"
[ ! -e "$T/slow.txt" ] && [ ! -e "$T/slow.txt.tmp" ]; ok $? "no output left behind after SIGINT"
grep_err "interrupted"
# progress lines when not on a terminal
printf 'task = { name = "good"; steps = 3; output = "p.txt"; };\n' >"$T/p.cfg"
expect_rc 0 "progress run" "$P" run "$T/p.cfg"
grep_err "good: 3/3"
expect_rc 0 "quiet run prints nothing" "$P" -q run "$T/p.cfg"
[ ! -s "$T/err" ]; ok $? "nothing on stderr with -q"

echo "1..$n"
[ $failed = 0 ]
