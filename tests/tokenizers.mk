# tests/tokenizers.mk - tests of this area (included from tests/local.mk)
# Tokenizers: ids identical to transformers/OpenAI (fixtures from
# tests/gen_tokenizers.py); the vocabulary files come from $MMP_SHARED_DATA.
EXTRA_DIST += tests/gen_tokenizers.py tests/fixtures/tokenizers
noinst_HEADERS += tests/tokfixture.h

if BUILD_PLUGIN_CLIP_TOKENIZER
check_PROGRAMS += tests/test_plugin_clip_tokenizer
TESTS += tests/test_plugin_clip_tokenizer
tests_test_plugin_clip_tokenizer_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_clip_tokenizer_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_clip_tokenizer_LDADD = plugins/processors/libtextcommon.la $(TEST_LDADD) $(JANSSON_LIBS) -lpthread
endif

if BUILD_PLUGIN_BERT_TOKENIZER
check_PROGRAMS += tests/test_plugin_bert_tokenizer
TESTS += tests/test_plugin_bert_tokenizer
tests_test_plugin_bert_tokenizer_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_bert_tokenizer_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_bert_tokenizer_LDADD = plugins/processors/libtextcommon.la $(TEST_LDADD) $(JANSSON_LIBS)
endif
