# tests/checkpoint.mk - PyTorch checkpoints (included from tests/local.mk)
check_PROGRAMS += tests/test_core_checkpoint
TESTS += tests/test_core_checkpoint
tests_test_core_checkpoint_CPPFLAGS = $(TEST_CPPFLAGS) $(JANSSON_CFLAGS)
tests_test_core_checkpoint_LDADD = $(TEST_LDADD) $(JANSSON_LIBS)
EXTRA_DIST += tests/gen_checkpoints.py tests/fixtures/ckpt
TESTS += tests/test_core_convert.sh
EXTRA_DIST += tests/test_core_convert.sh
