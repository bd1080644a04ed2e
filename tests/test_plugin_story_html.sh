#!/bin/sh
# tests/test_plugin_story_html.sh - the story task's contact sheet (index.html) opened in a real
# browser: the tiny AR-LDM of tests/gen_arldm.py draws the two stories of the tiny pororo-layout
# dataset into a folder whose name holds a space, '#' and a non-ASCII letter; headless Chromium
# (tests/browser.sh) renders the page with console logging on. Every frame must load and decode,
# each caption must appear under its frame as text, and the page must log nothing. Skips (TAP)
# without Chromium or the pororo plugin. TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
. "$S/tests/browser.sh"
browser_find || { echo "1..0 # SKIP no Chromium (apt-get install chromium, or set CHROMIUM)"; exit 0; }
. "$S/tests/story_tiny.sh"
story_tiny_setup || { echo "1..0 # SKIP pipeline, plugins or fixtures missing"; exit 0; }
T=$(mktemp -d /tmp/mmp-story-html-XXXXXX)
trap 'rm -rf "$T"' EXIT
O="$T/run #1 caf$(printf '\303\251')"
story_tiny_cfg visualization "$O" 2 >"$T/story.cfg"
"$P" -q run "$T/story.cfg" >"$T/log" 2>&1
r=$?; ok $r "the story task draws the dataset's two stories"
[ $r = 0 ] || sed 's/^/#   /' "$T/log"
browser_dom "$T" "$O/index.html" "$T/dom.html" "$T/chrome.err"
r=$?; ok $r "chromium --headless --dump-dom of index.html exits 0 ($r)"
[ $r = 0 ] || grep -v dbus "$T/chrome.err" | tail -5 | sed 's/^/#   /'
! grep -q 'CONSOLE' "$T/chrome.err"
ok $? "nothing logged to the browser console"
grep 'CONSOLE' "$T/chrome.err" | head -5 | sed 's/^/#   /'
# the captions of the tiny dataset (tests/gen_arldm.py), under their frames
caps=0
for c in "pororo is playing in the snow" "loopy looks at the big tree" "eddy and crong eating cake" \
  "the red bird flies" "pororo smiles at loopy" "crong kicks a blue ball" "the dog runs to eddy" \
  "loopy sits on a chair" "pororo opens the door" "a happy friend sleeps"; do
  grep -q "<span class=\"cap\">$c</span>" "$T/dom.html" && caps=$((caps + 1))
done
[ $caps = 10 ]; ok $? "the rendered page shows the 10 captions under their frames ($caps)"
res=$(browser_images "$O" index.html)
[ "$res" = "RESULT imgs=10 loaded=10 broken=" ]
ok $? "every frame loads and decodes in the browser ($res)"
echo "1..$n"
[ $failed = 0 ]
