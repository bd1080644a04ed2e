# core/cpu/local.mk - CPU kernels and thread pool (sources added to libmmpipe)
libmmpipe_la_SOURCES += \
	core/cpu/kernels.h core/cpu/gemm.h core/cpu/dispatch.h \
	core/cpu/threadpool.c core/cpu/cpu_features.c core/cpu/gemm.c core/cpu/gemm_avx512.c \
	core/cpu/conv2d.c core/cpu/attention.c core/cpu/norm.c core/cpu/activation.c core/cpu/backward.c core/cpu/pool2d.c
