# core/cpu/local.mk - CPU kernels and thread pool (sources added to libmmpipe)
