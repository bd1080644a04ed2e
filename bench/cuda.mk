# bench/cuda.mk - the CUDA backend benchmark (included from bench/local.mk). Built with `make bench/cuda`
# (not installed, not run by make check: it exits 77 without a GPU).
EXTRA_PROGRAMS = bench/cuda
bench_cuda_SOURCES = bench/cuda.c
bench_cuda_CPPFLAGS = $(AM_CPPFLAGS)
bench_cuda_LDADD = libmmpipe.la -lm
CLEANFILES += bench/cuda
