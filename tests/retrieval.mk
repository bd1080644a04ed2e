# tests/retrieval.mk - BLIP image-text retrieval (included from tests/local.mk):
# the blip_retrieval encoder and the retrieval/features tasks against
# salesforce/BLIP (tests/gen_blip_retrieval.py)
if HAVE_UTF8PROC
check_PROGRAMS += tests/test_plugin_blip_retrieval
TESTS += tests/test_plugin_blip_retrieval
tests_test_plugin_blip_retrieval_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_blip_retrieval_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_blip_retrieval_LDADD = plugins/processors/libtextcommon.la $(TEST_LDADD) $(JANSSON_LIBS)
endif
EXTRA_DIST += tests/gen_blip_retrieval.py tests/gen_blip_retrieval_jpeg.py tests/fixtures/blip_retrieval
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_retrieval
TESTS += tests/test_plugin_retrieval
tests_test_plugin_retrieval_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_retrieval_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_retrieval_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
endif
TESTS += tests/test_plugin_retrieval_cmd.sh
EXTRA_DIST += tests/test_plugin_retrieval_cmd.sh
# the search page rendered by headless Chromium (skips without it)
TESTS += tests/test_plugin_retrieval_html.sh
EXTRA_DIST += tests/test_plugin_retrieval_html.sh
