# bench/local.mk - build rules for bench (included from the top Makefile.am)
noinst_PROGRAMS += bench/ops
bench_ops_SOURCES = bench/ops.c
bench_ops_CFLAGS = $(AM_CFLAGS) $(OPENBLAS_CFLAGS)
bench_ops_LDADD = libmmpipe.la $(OPENBLAS_LIBS) -lm
# stories/s of the story datasets (datasets helper)
noinst_PROGRAMS += bench/dataset
bench_dataset_SOURCES = bench/dataset.c
bench_dataset_LDADD = libmmpipe.la

# ---- sd: latent-diffusion benchmarks (SD-1.5 sizes; configs in bench/sd15/).
# Run from the source tree root, e.g. `bench/unet --threads 2 --compare-torch`
# (MMP_BENCH_SRCDIR points elsewhere).
if BUILD_PLUGIN_UNET2D_CONDITION
noinst_PROGRAMS += bench/unet
bench_unet_SOURCES = bench/unet.c bench/sd_bench.h
bench_unet_LDADD = libmmpipe.la
# one SD-1.5 UNet training step beside PyTorch's (bench/torch_train.py)
noinst_PROGRAMS += bench/train
bench_train_SOURCES = bench/train.c
bench_train_LDADD = libmmpipe.la
# training steps alone or data-parallel under mpirun (include/mmpipe/dist.h)
noinst_PROGRAMS += bench/dist
bench_dist_SOURCES = bench/dist.c
bench_dist_LDADD = libmmpipe.la
endif
if BUILD_PLUGIN_VAE
noinst_PROGRAMS += bench/vae
bench_vae_SOURCES = bench/vae.c bench/sd_bench.h
bench_vae_LDADD = libmmpipe.la
endif
if BUILD_PLUGIN_CLIP_TEXT
noinst_PROGRAMS += bench/clip
bench_clip_SOURCES = bench/clip.c bench/sd_bench.h
bench_clip_LDADD = libmmpipe.la
endif
if BUILD_PLUGIN_BLIP
noinst_PROGRAMS += bench/blip
bench_blip_SOURCES = bench/blip.c bench/sd_bench.h
bench_blip_LDADD = libmmpipe.la
endif
EXTRA_DIST += bench/sd15 bench/torch_sd.py bench/torch_train.py bench/blip_large bench/torch_blip.py
# FID: features/s of the 64x64 protocol and the distance for 2048-d statistics (bench/torch_fid.py beside)
noinst_PROGRAMS += bench/fid
bench_fid_SOURCES = bench/fid.c
bench_fid_LDADD = libmmpipe.la
EXTRA_DIST += bench/torch_fid.py
# one AR-LDM story by the story task and by ARLDM.sample() in the same run (a script: both sides)
EXTRA_DIST += bench/arldm.py
include bench/cuda.mk

# BLIP retrieval (ViT-B/16 at 384², doc/performance.md)
if BUILD_PLUGIN_BLIP_RETRIEVAL
noinst_PROGRAMS += bench/retrieval
bench_retrieval_SOURCES = bench/retrieval.c bench/sd_bench.h
bench_retrieval_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
bench_retrieval_LDADD = plugins/common/libsdcommon.la libmmpipe.la $(JANSSON_LIBS) -lm
endif
EXTRA_DIST += bench/blip_base bench/torch_retrieval.py
# forward vs backward time of the training ops (doc/training.md)
noinst_PROGRAMS += bench/grad
bench_grad_SOURCES = bench/grad.c
bench_grad_LDADD = libmmpipe.la
# bench/dataset-build.sh: stories/s of `pipeline dataset build` against AR-LDM's data scripts
EXTRA_DIST += bench/dataset-build.sh
