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
EXTRA_DIST += tests/gen_rng_numpy.py tests/fixtures/rng/numpy_rand.safetensors
EXTRA_DIST += tests/gen_ops.py tests/fixtures/ops/ops.safetensors tests/fixtures/ops/rng.safetensors
check_PROGRAMS += tests/test_core_grad
TESTS += tests/test_core_grad
tests_test_core_grad_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_grad_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_grad.py tests/genutil.py tests/fixtures/grad/grad.safetensors
check_PROGRAMS += tests/test_core_autograd
TESTS += tests/test_core_autograd
tests_test_core_autograd_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_autograd_LDADD = $(TEST_LDADD)
# checkpoint regions of the tape (mmp_tape_checkpoint)
check_PROGRAMS += tests/test_core_tape_checkpoint
TESTS += tests/test_core_tape_checkpoint
tests_test_core_tape_checkpoint_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_tape_checkpoint_LDADD = $(TEST_LDADD)
# atomic output files (mmpipe/file.h)
check_PROGRAMS += tests/test_core_file
TESTS += tests/test_core_file
tests_test_core_file_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_file_LDADD = $(TEST_LDADD)
# dropout (mmp_dropout) against torch's F.dropout
check_PROGRAMS += tests/test_core_dropout
TESTS += tests/test_core_dropout
tests_test_core_dropout_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_dropout_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_dropout.py tests/fixtures/rng/dropout.safetensors
