# tests/browser.sh - headless Chromium for the tests of generated HTML pages
# (sourced by tests/test_plugin_*_html.sh; POSIX sh).
#
#   . "$S/tests/browser.sh"
#   browser_find || { echo "1..0 # SKIP no Chromium (apt-get install chromium, or set CHROMIUM)"; exit 0; }
#   browser_dom "$T" "$T/page.html" "$T/dom.html" "$T/chrome.err"   # DOM after load, console logged
#   res=$(browser_images "$T" page.html)                              # "RESULT imgs=N loaded=N broken=..."
#
# browser_dom renders a page with console logging on: a page that logs an
# error shows 'CONSOLE' lines in the error file. browser_images opens a
# checker page beside the page under test (a file:// parent reading it in an
# iframe, --allow-file-access-from-files) that counts its <img> elements and
# those that decoded (complete, naturalWidth > 0).

# Sets CH to Chromium (CHROMIUM=path picks one); fails when there is none.
browser_find() {
  CH=${CHROMIUM:-}
  if [ -z "$CH" ]; then
    for c in chromium chromium-browser google-chrome; do
      if command -v "$c" >/dev/null 2>&1; then CH=$(command -v "$c"); break; fi
    done
  fi
  [ -n "$CH" ]
}

# file_url PATH: the file:// URL of an absolute PATH, every byte but
# [A-Za-z0-9/._~-] percent-encoded (a '#' or a space in a folder name).
file_url() {
  printf 'file://'
  printf '%s' "$1" | od -An -v -tx1 | tr -s ' \n' '\n\n' | awk '
    BEGIN { for (i = 0; i < 256; i++) h[sprintf("%02x", i)] = i }
    NF { c = h[$1]
         if ((c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c == 47 || c == 46 || c == 95 || c == 126 || c == 45)
           printf "%c", c
         else printf "%%%s", toupper($1) }'
}

# browser_dom TMPDIR PAGE DOM_OUT ERR_OUT: the rendered DOM of PAGE; Chromium's exit status.
browser_dom() {
  timeout 120 "$CH" --headless --disable-gpu --no-sandbox --no-first-run --disable-extensions \
    --user-data-dir="$1/profile" --enable-logging=stderr --v=0 --dump-dom "$(file_url "$2")" >"$3" 2>"$4"
}

# browser_images DIR PAGE: PAGE (a file name in DIR) loaded in an iframe;
# prints the checker's result line.
browser_images() {
  cat >"$1/.browser-check.html" <<HTML
<!DOCTYPE html><html><head><meta charset="utf-8"><script>
window.addEventListener("load", function () {
  var r = document.getElementById("r"), d = document.getElementById("f").contentDocument;
  if (!d) { r.textContent = "RESULT no-access"; return; }
  var im = d.images, good = 0, bad = [];
  for (var i = 0; i < im.length; i++)
    if (im[i].complete && im[i].naturalWidth > 0) good++; else bad.push(im[i].getAttribute("src"));
  r.textContent = "RESULT imgs=" + im.length + " loaded=" + good + " broken=" + bad.join(" ");
});
</script></head><body><iframe id="f" src="$2"></iframe><pre id="r">RESULT none</pre></body></html>
HTML
  timeout 120 "$CH" --headless --disable-gpu --no-sandbox --no-first-run --disable-extensions \
    --user-data-dir="$1/profile" --allow-file-access-from-files --dump-dom "$(file_url "$1/.browser-check.html")" \
    >"$1/.browser-check.out" 2>"$1/.browser-check.err"
  grep -o 'RESULT [^<]*' "$1/.browser-check.out" | tail -1
  rm -f "$1/.browser-check.html" "$1/.browser-check.out" "$1/.browser-check.err"
}
