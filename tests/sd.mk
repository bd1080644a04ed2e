# tests/sd.mk - tests of this area (included from tests/local.mk)
# Component tests against diffusers/transformers fixtures (tests/gen_sd.py).
noinst_HEADERS += tests/sd_test.h tests/train_test.h
check_PROGRAMS += tests/test_plugin_unet2d_condition tests/test_plugin_vae tests/test_plugin_clip_text
TESTS += tests/test_plugin_unet2d_condition tests/test_plugin_vae tests/test_plugin_clip_text
tests_test_plugin_unet2d_condition_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_unet2d_condition_LDADD = $(TEST_LDADD)
tests_test_plugin_vae_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_vae_LDADD = $(TEST_LDADD)
tests_test_plugin_clip_text_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_clip_text_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_sd.py tests/gen_txt2img_noise.py tests/gen_vae_tiled.py tests/fixtures/sd
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_txt2img
TESTS += tests/test_plugin_txt2img
tests_test_plugin_txt2img_CPPFLAGS = $(TEST_CPPFLAGS) $(LIBPNG_CFLAGS)
tests_test_plugin_txt2img_LDADD = $(TEST_LDADD) $(LIBPNG_LIBS)
endif
TESTS += tests/test_plugin_txt2img_schedulers.sh
EXTRA_DIST += tests/test_plugin_txt2img_schedulers.sh
# vit, bert and blip encoders against transformers 4.30 and BLIP (tests/gen_blip.py)
noinst_HEADERS += tests/blip_test.h
check_PROGRAMS += tests/test_plugin_vit tests/test_plugin_bert tests/test_plugin_blip
TESTS += tests/test_plugin_vit tests/test_plugin_bert tests/test_plugin_blip
tests_test_plugin_vit_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_vit_LDADD = $(TEST_LDADD)
tests_test_plugin_bert_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_bert_LDADD = $(TEST_LDADD)
tests_test_plugin_blip_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_blip_LDADD = $(TEST_LDADD)
# the vit encoder's CLIP kind against transformers 4.30 (tests/gen_clip_vision.py)
check_PROGRAMS += tests/test_plugin_clip_vision
TESTS += tests/test_plugin_clip_vision
tests_test_plugin_clip_vision_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_clip_vision_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_blip.py tests/fixtures/blip
EXTRA_DIST += tests/gen_clip_vision.py
TESTS += tests/test_plugin_blip_forward.sh
EXTRA_DIST += tests/test_plugin_blip_forward.sh

# FID: the Inception encoder and `pipeline fid` against pytorch-fid (tests/gen_fid.py)
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_inception_fid
TESTS += tests/test_plugin_inception_fid tests/test_plugin_fid_cmd.sh
tests_test_plugin_inception_fid_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_inception_fid_LDADD = $(TEST_LDADD) plugins/processors/libimagecommon.la
endif
EXTRA_DIST += tests/test_plugin_fid_cmd.sh
# `pipeline clipscore` against transformers 4.30's CLIPModel (tests/gen_clipscore.py)
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_clipscore
TESTS += tests/test_plugin_clipscore
tests_test_plugin_clipscore_CPPFLAGS = $(TEST_CPPFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_clipscore_LDADD = $(TEST_LDADD) plugins/processors/libimagecommon.la $(JANSSON_LIBS)
endif
EXTRA_DIST += tests/gen_clipscore.py tests/fixtures/clipscore
# AR-LDM's parts read by prefix out of one AR-LDM state dict (tests/gen_arldm.py)
check_PROGRAMS += tests/test_plugin_arldm_parts
TESTS += tests/test_plugin_arldm_parts
tests_test_plugin_arldm_parts_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_arldm_parts_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_arldm.py tests/fixtures/arldm
# the story task (AR-LDM sample()) against tests/gen_arldm.py
# (the story plugin needs libpng; the test reads its strips)
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_story
TESTS += tests/test_plugin_story
tests_test_plugin_story_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_story_LDADD = $(TEST_LDADD) plugins/processors/libimagecommon.la
endif
TESTS += tests/test_plugin_story_demo.sh
EXTRA_DIST += tests/test_plugin_story_demo.sh
# calculate_fid: the story task's FID equals pipeline fid's on the same image sets
TESTS += tests/test_plugin_story_fid.sh
EXTRA_DIST += tests/test_plugin_story_fid.sh
TESTS += tests/test_plugin_story_html.sh tests/test_plugin_story_sigint.sh
EXTRA_DIST += tests/test_plugin_story_html.sh tests/browser.sh tests/test_plugin_story_sigint.sh tests/story_tiny.sh
# `pipeline arldm-init`: an AR-LDM state dict from the tiny SD and BLIP fixtures
check_PROGRAMS += tests/test_tool_arldm_init
TESTS += tests/test_tool_arldm_init
tests_test_tool_arldm_init_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_tool_arldm_init_LDADD = $(TEST_LDADD)
TESTS += tests/test_tool_arldm_init_story.sh
EXTRA_DIST += tests/test_tool_arldm_init_story.sh
# `pipeline init-weights` on BLIP's med_config.json (the story demo's BLIP)
TESTS += tests/test_tool_init_weights_blip.sh
EXTRA_DIST += tests/test_tool_init_weights_blip.sh

# half-precision weights (issue 19): each component and a txt2img run, on the
# automatic path (AVX-512-BF16 dot products where present), AVX-512 without
# them, and the portable path
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_half_weights
TESTS += tests/test_plugin_half_weights tests/test_plugin_half_weights_avx512.sh tests/test_plugin_half_weights_generic.sh
tests_test_plugin_half_weights_CPPFLAGS = $(TEST_CPPFLAGS) $(LIBPNG_CFLAGS)
tests_test_plugin_half_weights_LDADD = $(TEST_LDADD) $(LIBPNG_LIBS)
endif
EXTRA_DIST += tests/test_plugin_half_weights_avx512.sh tests/test_plugin_half_weights_generic.sh
# the tape through the whole tiny UNet against PyTorch (tests/gen_unet_grad.py)
check_PROGRAMS += tests/test_plugin_unet_grad
TESTS += tests/test_plugin_unet_grad
tests_test_plugin_unet_grad_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_unet_grad_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_unet_grad.py tests/fixtures/grad/unet_grad.safetensors
# gradient_checkpointing = true: the same gradients with less memory held by the tape
check_PROGRAMS += tests/test_plugin_unet_ckpt
TESTS += tests/test_plugin_unet_ckpt
tests_test_plugin_unet_ckpt_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_unet_ckpt_LDADD = $(TEST_LDADD)
check_PROGRAMS += tests/test_plugin_clip_grad
TESTS += tests/test_plugin_clip_grad
tests_test_plugin_clip_grad_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_clip_grad_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_clip_grad.py tests/fixtures/grad/clip_grad.safetensors
# AR-LDM's training step (plugins/common/arldm.c) against ARLDM.forward (tests/gen_arldm_train.py)
check_PROGRAMS += tests/test_plugin_arldm_train
TESTS += tests/test_plugin_arldm_train
tests_test_plugin_arldm_train_CPPFLAGS = $(TEST_CPPFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_arldm_train_LDADD = plugins/common/libsdcommon.la $(TEST_LDADD) $(JANSSON_LIBS)
EXTRA_DIST += tests/gen_arldm_train.py tests/fixtures/arldm/train_step.safetensors
# the tape through the blip encoder against BLIP's code (tests/gen_blip_grad.py)
check_PROGRAMS += tests/test_plugin_blip_grad
TESTS += tests/test_plugin_blip_grad
tests_test_plugin_blip_grad_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_blip_grad_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_blip_grad.py tests/fixtures/grad/blip_grad.safetensors tests/fixtures/grad/blip_grad_med_config.json
# the blip encoder in train mode (BERT dropout) against BLIP's code (tests/gen_blip_dropout.py)
check_PROGRAMS += tests/test_plugin_blip_dropout
TESTS += tests/test_plugin_blip_dropout
tests_test_plugin_blip_dropout_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_blip_dropout_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_blip_dropout.py tests/fixtures/grad/blip_dropout.safetensors
# the train task: SD fine-tuning against PyTorch (tests/gen_train_sd.py),
# checkpoint + resume bit for bit, SIGINT
if BUILD_PLUGIN_TRAIN
check_PROGRAMS += tests/test_plugin_train
TESTS += tests/test_plugin_train tests/test_plugin_train_sigint.sh tests/test_plugin_train_mpi.sh
tests_test_plugin_train_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_train_LDADD = $(TEST_LDADD)
# mode = "arldm": the tiny AR-LDM on the tiny story file (tests/gen_arldm_trainrun.py)
if HAVE_HDF5
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_train_arldm
TESTS += tests/test_plugin_train_arldm
tests_test_plugin_train_arldm_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_train_arldm_LDADD = $(TEST_LDADD)
endif
endif
endif
EXTRA_DIST += tests/gen_arldm_trainrun.py tests/fixtures/arldm/story_train.h5
EXTRA_DIST += tests/gen_train_sd.py tests/fixtures/train tests/test_plugin_train_sigint.sh tests/test_plugin_train_mpi.sh
# data parallelism (include/mmpipe/dist.h): 2 ranks under mpirun train the tiny UNet like one process
check_PROGRAMS += tests/test_core_dist
TESTS += tests/test_core_dist.sh
tests_test_core_dist_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_dist_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/test_core_dist.sh
