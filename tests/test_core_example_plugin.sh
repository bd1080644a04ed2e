#!/bin/sh
# tests/test_core_example_plugin.sh - build doc/examples/print_config with the
# pkg-config flags (as a third-party author would) and run it through the loader.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
T=$(mktemp -d /tmp/mmp-example-XXXXXX)
trap 'rm -rf "$T"' EXIT
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
command -v pkg-config >/dev/null || { echo "1..0 # SKIP pkg-config not installed"; exit 0; }
export PKG_CONFIG_PATH="$B${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
flags=$(pkg-config --cflags --libs mmpipe 2>"$T/err"); ok $? "pkg-config mmpipe (uninstalled) works"
echo "$flags" | grep -q -- "-lmmpipe"; ok $? "flags link libmmpipe: $flags"
${CC:-cc} -std=c11 -Wall -Wextra -Werror -shared -fPIC -fvisibility=hidden $SAN_FLAGS \
  -o "$T/task_print_config.so" "$S/doc/examples/print_config/print_config.c" $flags 2>"$T/err"
r=$?; ok $r "the example compiles with only the public headers"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"
MMPIPE_PLUGIN_PATH="$T" "$B/tools/pipeline" run "$S/doc/examples/print_config/example.cfg" >"$T/out" 2>"$T/err"
r=$?; ok $r "pipeline runs it through the loader"; [ $r = 0 ] || sed 's/^/#   /' "$T/err"
grep -qF "# hello from an out-of-tree plugin" "$T/out"; ok $? "its header key was read"
grep -qF "annotate = true;  # default" "$T/out"; ok $? "it printed the merged configuration with defaults"
MMPIPE_PLUGIN_PATH="$T" "$B/tools/pipeline" describe task print_config >"$T/out" 2>&1
grep -qF "prints its merged configuration" "$T/out"; ok $? "describe shows it"
echo "1..$n"
[ $failed = 0 ]
