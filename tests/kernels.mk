# tests/kernels.mk - tests of this area (included from tests/local.mk)
check_PROGRAMS += tests/test_core_kernels
TESTS += tests/test_core_kernels
tests_test_core_kernels_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_kernels_LDADD = $(TEST_LDADD)
