# core/tensor.mk - tensor runtime, backends, safetensors, RNG (sources added to libmmpipe)
