# bench/local.mk - build rules for bench (included from the top Makefile.am)
noinst_PROGRAMS += bench/ops
bench_ops_SOURCES = bench/ops.c
bench_ops_CFLAGS = $(AM_CFLAGS) $(OPENBLAS_CFLAGS)
bench_ops_LDADD = libmmpipe.la $(OPENBLAS_LIBS) -lm
# stories/s of the story datasets (datasets helper)
noinst_PROGRAMS += bench/dataset
bench_dataset_SOURCES = bench/dataset.c
bench_dataset_LDADD = libmmpipe.la
