#!/bin/sh
# tests/test_plugin_retrieval_html.sh - the retrieval task's search page
# (output_html) opened in a real browser: headless Chromium renders it with
# console logging on, and a checker page (a file:// parent reading the
# result page in an iframe, --allow-file-access-from-files) counts its
# <img> elements and those that decoded (complete, naturalWidth > 0). The
# gallery folder and file names hold a space, '#', '%', '&' and non-ASCII
# letters, the text queries markup characters: every thumbnail must load
# through its percent-encoded file:// URL, the count must equal the
# results of output_json plus the query images, the query text must stay
# text, and the page must log nothing to the console. Skips (TAP) when
# Chromium is not installed (CHROMIUM=path picks one; tests/browser.sh).
# TAP output.
set -u
B=${MMP_TEST_BUILDDIR:-.}
S=${MMP_TEST_SRCDIR:-.}
P="$B/tools/pipeline"
F=$(cd "$S/tests/fixtures/blip_retrieval" && pwd)
n=0; failed=0
ok() { n=$((n+1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed+1)); fi; }
. "$S/tests/browser.sh"
browser_find || { echo "1..0 # SKIP no Chromium (apt-get install chromium, or set CHROMIUM)"; exit 0; }
if [ ! -f "$B/plugins/tasks/.libs/task_retrieval.so" ]; then echo "1..0 # SKIP the retrieval task is not built"; exit 0; fi
for k in tasks encoders processors; do MMPIPE_PLUGIN_PATH="${MMPIPE_PLUGIN_PATH:+$MMPIPE_PLUGIN_PATH:}$B/plugins/$k/.libs"; done
export MMPIPE_PLUGIN_PATH
T=$(mktemp -d /tmp/mmp-retrieval-html-XXXXXX)
trap 'rm -rf "$T"' EXIT
# a gallery whose folder and file names need percent-encoding
G="$T/gal lery #1"
mkdir -p "$G"
cp "$F/images/img_00.png" "$G/img 00.png"
cp "$F/images/img_02.png" "$G/caf$(printf '\303\251')_02.png"
cp "$F/images/img_04.png" "$G/a#b%c&d_04.png"
cp "$F/images/img_06.png" "$G/img_06.png"
cp "$F/images/val2014/img_03.png" "$G/img_03.png"
printf 'a man riding a horse\ntwo dogs on the grass\na plate of food & a cup\n' >"$T/captions.txt"
ENC=$(($(wc -l <"$F/vocab.txt") + 1))
cat >"$T/search.cfg" <<CFG
task = { name = "retrieval"; mode = "search"; image_dir = "$G"; index = "$T/index";
         queries = ["a <b>bold</b> \"dog\" & cat", "two dogs"]; top_k = 3; k_test = 4;
         query_images = ["$G/img 00.png", "$G/a#b%c&d_04.png"]; captions = "$T/captions.txt";
         output_json = "$T/search.json"; output_html = "$T/search.html"; };
model = { name = "blip_retrieval"; config = "$F/med_config.json"; weights = "$F/model.pth";
          weights_prefix = "model."; num_heads = 4; enc_token_id = $ENC; };
tokenizer = { name = "bert_tokenizer"; vocab = "$F/vocab.txt"; max_length = 35; pre_caption = 30; };
image_processor = { name = "image_resize"; size = [32, 32]; interpolation = "bicubic";
                    mean = [0.48145466, 0.4578275, 0.40821073]; std = [0.26862954, 0.26130258, 0.27577711]; };
CFG
"$P" -q run "$T/search.cfg" >"$T/out" 2>"$T/err"
rc=$?
ok $rc "pipeline run (search, 2 text and 2 image queries) exits 0 ($rc)"
[ $rc = 0 ] || sed 's/^/#   /' "$T/err"
# thumbnails on the page: one per text-query result, one per image query
want=$(($(grep -c '"image": "' "$T/search.json" 2>/dev/null || echo 0) + 2))
# 1. the page itself, console logging on
browser_dom "$T" "$T/search.html" "$T/dom.html" "$T/chrome.err"
rc=$?
ok $rc "chromium --headless --dump-dom of the page exits 0 ($rc)"
[ $rc = 0 ] || grep -v dbus "$T/chrome.err" | tail -5 | sed 's/^/#   /'
got=$(grep -o '<img ' "$T/dom.html" | wc -l)
[ "$got" -eq "$want" ] && [ "$want" -ge 8 ]
ok $? "the rendered DOM has $got <img> elements: the $((want - 2)) results of output_json + 2 query images"
! grep -q 'CONSOLE' "$T/chrome.err"
ok $? "nothing logged to the browser console"
grep 'CONSOLE' "$T/chrome.err" | head -5 | sed 's/^/#   /'
grep -q '&lt;b&gt;bold&lt;/b&gt; "dog" &amp; cat' "$T/dom.html" && ! grep -q '<b>bold' "$T/dom.html"
ok $? "the query's markup characters stay text (no <b> element)"
# 2. which thumbnails decoded: a parent page reads the result page in an iframe
res=$(browser_images "$T" search.html)
[ "$res" = "RESULT imgs=$want loaded=$want broken=" ]
ok $? "every thumbnail loads and decodes in the browser ($res)"
echo "1..$n"
[ $failed = 0 ]
