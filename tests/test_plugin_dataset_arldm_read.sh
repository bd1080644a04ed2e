#!/bin/sh
# tests/test_plugin_dataset_arldm_read.sh - AR-LDM's own StoryDataset classes read `pipeline dataset build`'s
# files as their own (tests/check_arldm_reads_built.py; skipped without the reference environment).
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
[ -e "$B/plugins/datasets/dataset_flintstones.la" ] || { echo "1..0 # SKIP dataset plugins not built (libhdf5, libpng)"; exit 0; }
PY=${MMP_REF_PYTHON:-/usr/bin/python3}
[ -x "$PY" ] || { echo "1..0 # SKIP no reference Python ($PY)"; exit 0; }
export MMPIPE_PLUGIN_PATH="$B/plugins/datasets/.libs:$B/plugins/processors/.libs"
# the tokenizer files (tests/gen_datasets.py's SHARED): beside the checkout or a worktree's
if [ ! -d "${MMP_SHARED_DATA:-/nonexistent}" ]; then
  for d in "$S/../shared/data" "$S/../../shared/data"; do [ -d "$d" ] && { export MMP_SHARED_DATA="$d"; break; }; done
fi
export PYTHONPATH="${MMP_REF_PYTHONPATH:-/root/refenv/site}"
T=$(mktemp -d /tmp/mmp-arldmread-XXXXXX)
trap 'rm -rf "$T"' EXIT
"$PY" "$S/tests/check_arldm_reads_built.py" "$(cd "$B" && pwd)/tools/pipeline" "$T"
r=$?
[ $r = 77 ] && exit 0 # its "1..0 # SKIP" line says why
exit $r
