# tests/tensor.mk - tests of this area (included from tests/local.mk)
check_PROGRAMS += tests/test_core_tensor
TESTS += tests/test_core_tensor
tests_test_core_tensor_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_tensor_LDADD = $(TEST_LDADD)
check_PROGRAMS += tests/test_core_safetensors
TESTS += tests/test_core_safetensors
tests_test_core_safetensors_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_safetensors_LDADD = $(TEST_LDADD)
check_PROGRAMS += tests/test_core_ops tests/test_core_rng
TESTS += tests/test_core_ops tests/test_core_rng
tests_test_core_ops_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_ops_LDADD = $(TEST_LDADD)
tests_test_core_rng_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_rng_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_ops.py tests/fixtures/ops/ops.safetensors tests/fixtures/ops/rng.safetensors
