# tests/cuda.mk - tests of the CUDA backend (included from tests/local.mk). Both build in every
# configuration: test_core_cuda skips ("1..0 # SKIP no CUDA device") without a GPU or without
# the CUDA backend; test_core_cuda_select checks device selection with and without one.
check_PROGRAMS += tests/test_core_cuda tests/test_core_cuda_select
TESTS += tests/test_core_cuda tests/test_core_cuda_select
tests_test_core_cuda_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_cuda_LDADD = $(TEST_LDADD)
tests_test_core_cuda_select_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_cuda_select_LDADD = $(TEST_LDADD)
if SANITIZERS
tests_test_core_cuda_CPPFLAGS += -DMMP_TEST_SANITIZED
endif
