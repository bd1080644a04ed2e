# tests/local.mk - test programs (TAP), run by `make check`.
TEST_EXTENSIONS = .test .sh
LOG_DRIVER = env AM_TAP_AWK='$(AWK)' $(SHELL) $(top_srcdir)/build-aux/tap-driver.sh
TEST_LOG_DRIVER = $(LOG_DRIVER)
SH_LOG_DRIVER = $(LOG_DRIVER)
# intercept_tls_get_addr=0: the sanitizer runtime of clang 14 (and gcc 12)
# takes a dynamic TLS block malloc() placed 16 bytes past a page boundary
# for a glibc 2.19 block with a header, and LeakSanitizer's tracer then
# crashes at exit ("Tracer caught signal 11", google/sanitizers#1322). mmpipe
# keeps no heap pointers in dynamic TLS (its TLS is libmmpipe's, static).
AM_TESTS_ENVIRONMENT = \
	MMP_TEST_SRCDIR='$(abs_top_srcdir)'; export MMP_TEST_SRCDIR; \
	MMP_TEST_BUILDDIR='$(abs_top_builddir)'; export MMP_TEST_BUILDDIR; \
	MMP_SHARED_DATA="$${MMP_SHARED_DATA:-$(abs_top_srcdir)/../shared/data}"; export MMP_SHARED_DATA; \
	MMPIPE_PLUGIN_PATH=; export MMPIPE_PLUGIN_PATH; \
	MMP_MPIRUN='$(MPIRUN)'; export MMP_MPIRUN; \
	MMPIPE_THREADS="$${MMPIPE_THREADS:-2}"; export MMPIPE_THREADS; \
	ASAN_OPTIONS="$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:intercept_tls_get_addr=0}"; export ASAN_OPTIONS; \
	UBSAN_OPTIONS="$${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"; export UBSAN_OPTIONS;
TEST_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tests
TEST_LDADD = libmmpipe.la -lm
noinst_HEADERS += tests/tap.h

include tests/core.mk
include tests/tensor.mk
include tests/kernels.mk
include tests/schedulers.mk
include tests/tokenizers.mk
include tests/datasets.mk
include tests/sd.mk
include tests/cuda.mk
include tests/checkpoint.mk
include tests/retrieval.mk
include tests/fuzz/local.mk
