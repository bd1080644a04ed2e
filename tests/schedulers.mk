# tests/schedulers.mk - tests of this area (included from tests/local.mk)

# The six scheduler plugins against diffusers 0.19.3 golden data
# (tests/fixtures/schedulers, from tests/gen_schedulers.py), through the
# registry and the `pipeline forward` driver; config and run-time errors.
check_PROGRAMS += tests/test_plugin_schedulers
TESTS += tests/test_plugin_schedulers
tests_test_plugin_schedulers_SOURCES = tests/test_plugin_schedulers.c tools/forward_scheduler.c
tests_test_plugin_schedulers_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_schedulers_LDADD = $(TEST_LDADD)

# `pipeline forward` on golden cases, end to end
TESTS += tests/test_plugin_schedulers_forward.sh
EXTRA_DIST += tests/test_plugin_schedulers_forward.sh tests/gen_schedulers.py tests/fixtures/schedulers
