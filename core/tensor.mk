# core/tensor.mk - tensor runtime, backends, safetensors, RNG (sources added to libmmpipe)
libmmpipe_la_SOURCES += \
	core/tensor_impl.h core/tensor.c core/tensor_ops.c \
	core/backend.c core/backend_cpu.c core/backend_cpu_grad.c core/grad.c core/autograd.c core/optim.c core/pool.c core/pool.h core/safetensors.c core/rng.c core/philox.h
nobase_include_HEADERS += include/mmpipe/backend.h include/mmpipe/grad.h include/mmpipe/autograd.h include/mmpipe/optim.h
include core/cuda/local.mk
