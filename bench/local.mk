# bench/local.mk - build rules for bench (included from the top Makefile.am)
noinst_PROGRAMS += bench/ops
bench_ops_SOURCES = bench/ops.c
bench_ops_CFLAGS = $(AM_CFLAGS) $(OPENBLAS_CFLAGS)
bench_ops_LDADD = libmmpipe.la $(OPENBLAS_LIBS) -lm
include bench/cuda.mk
