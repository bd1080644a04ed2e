# plugins/tasks/local.mk - task plugins

# ---- sd: text-to-image (shared code: plugins/common, see plugins/models/local.mk)
if BUILD_PLUGIN_TXT2IMG
pkglib_LTLIBRARIES += plugins/tasks/task_txt2img.la
plugins_tasks_task_txt2img_la_SOURCES = plugins/tasks/txt2img.c
plugins_tasks_task_txt2img_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_tasks_task_txt2img_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_txt2img_la_LIBADD = $(SD_COMMON_LIBADD) plugins/processors/libimagecommon.la
endif

# The demo's tiny random weights (examples/txt2img-tiny.cfg), made at build
# time from the committed configs by `pipeline init-weights`.
if BUILD_PLUGIN_UNET2D_CONDITION
if BUILD_PLUGIN_VAE
if BUILD_PLUGIN_CLIP_TEXT
SD_TINY_WEIGHTS = examples/tiny/unet/diffusion_pytorch_model.safetensors \
	examples/tiny/vae/diffusion_pytorch_model.safetensors \
	examples/tiny/text_encoder/model.safetensors
noinst_DATA += $(SD_TINY_WEIGHTS)
CLEANFILES += $(SD_TINY_WEIGHTS)
SD_INIT_WEIGHTS = $(top_builddir)/tools/pipeline init-weights -q
examples/tiny/unet/diffusion_pytorch_model.safetensors: $(srcdir)/examples/tiny/unet/config.json \
		tools/pipeline$(EXEEXT) plugins/models/model_unet2d_condition.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(SD_INIT_WEIGHTS) $(srcdir)/examples/tiny/unet/config.json $@ --seed 1
examples/tiny/vae/diffusion_pytorch_model.safetensors: $(srcdir)/examples/tiny/vae/config.json \
		tools/pipeline$(EXEEXT) plugins/encoders/encoder_vae.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(SD_INIT_WEIGHTS) $(srcdir)/examples/tiny/vae/config.json $@ --seed 1
examples/tiny/text_encoder/model.safetensors: $(srcdir)/examples/tiny/text_encoder/config.json \
		tools/pipeline$(EXEEXT) plugins/encoders/encoder_clip_text.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(SD_INIT_WEIGHTS) $(srcdir)/examples/tiny/text_encoder/config.json $@ --seed 1
endif
endif
endif

# The story demo's tiny AR-LDM (examples/story-tiny.cfg), made at build time
# as AR-LDM's constructor makes one before training: random SD parts and a
# random BLIP from the committed configs (`pipeline init-weights`, seed 1),
# then `pipeline arldm-init` (S = 32, the tokenizers' special ids, 32x32 BLIP
# images). The parts are kept in a diffusers layout beside their configs.
if BUILD_PLUGIN_STORY
if BUILD_PLUGIN_UNET2D_CONDITION
if BUILD_PLUGIN_VAE
if BUILD_PLUGIN_CLIP_TEXT
if BUILD_PLUGIN_BLIP
STORY_TINY = examples/tiny-arldm
STORY_TINY_PARTS = $(STORY_TINY)/unet/diffusion_pytorch_model.safetensors \
	$(STORY_TINY)/vae/diffusion_pytorch_model.safetensors \
	$(STORY_TINY)/text_encoder/model.safetensors $(STORY_TINY)/blip.safetensors
noinst_DATA += $(STORY_TINY)/arldm.safetensors
CLEANFILES += $(STORY_TINY_PARTS) $(STORY_TINY)/arldm.safetensors
STORY_INIT_WEIGHTS = $(top_builddir)/tools/pipeline init-weights -q --seed 1
$(STORY_TINY)/unet/diffusion_pytorch_model.safetensors: $(srcdir)/$(STORY_TINY)/unet/config.json \
		tools/pipeline$(EXEEXT) plugins/models/model_unet2d_condition.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(STORY_INIT_WEIGHTS) $(srcdir)/$(STORY_TINY)/unet/config.json $@
$(STORY_TINY)/vae/diffusion_pytorch_model.safetensors: $(srcdir)/$(STORY_TINY)/vae/config.json \
		tools/pipeline$(EXEEXT) plugins/encoders/encoder_vae.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(STORY_INIT_WEIGHTS) $(srcdir)/$(STORY_TINY)/vae/config.json $@
$(STORY_TINY)/text_encoder/model.safetensors: $(srcdir)/$(STORY_TINY)/text_encoder/config.json \
		tools/pipeline$(EXEEXT) plugins/encoders/encoder_clip_text.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(STORY_INIT_WEIGHTS) $(srcdir)/$(STORY_TINY)/text_encoder/config.json $@
$(STORY_TINY)/blip.safetensors: $(srcdir)/$(STORY_TINY)/med_config.json \
		tools/pipeline$(EXEEXT) plugins/encoders/encoder_blip.la
	$(AM_V_GEN)$(MKDIR_P) $(@D) && $(STORY_INIT_WEIGHTS) $(srcdir)/$(STORY_TINY)/med_config.json $@
# CLIP: <|startoftext|> 912, <|endoftext|> 913 (also the pad) of
# examples/tiny/tokenizer; BLIP: [CLS] 2, [SEP] 3, [PAD] 0 of
# tiny-arldm/blip_tokenizer/vocab.txt. The token tables already have the
# tokenizers' sizes (the configs' vocab_size), so nothing is resized.
$(STORY_TINY)/arldm.safetensors: $(STORY_TINY_PARTS) tools/pipeline$(EXEEXT)
	$(AM_V_GEN)$(top_builddir)/tools/pipeline arldm-init -q --sd $(STORY_TINY) --blip $(STORY_TINY)/blip.safetensors \
	  --max-length 32 --clip-ids 912,913,913 --blip-ids 2,3,0 --image-size 32 --seed 1 --out $@
endif
endif
endif
endif
endif

# ---- story: AR-LDM story visualization and continuation
if BUILD_PLUGIN_STORY
pkglib_LTLIBRARIES += plugins/tasks/task_story.la
plugins_tasks_task_story_la_SOURCES = plugins/tasks/story.c
plugins_tasks_task_story_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS) $(LIBPNG_CFLAGS)
plugins_tasks_task_story_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_story_la_LIBADD = $(SD_COMMON_LIBADD) plugins/common/libfidfeat.la
endif

# ---- retrieval: BLIP image-text retrieval and its evaluation
if BUILD_PLUGIN_RETRIEVAL
pkglib_LTLIBRARIES += plugins/tasks/task_retrieval.la
plugins_tasks_task_retrieval_la_SOURCES = plugins/tasks/retrieval.c
plugins_tasks_task_retrieval_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_tasks_task_retrieval_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_retrieval_la_LIBADD = $(SD_COMMON_LIBADD) plugins/processors/libimagecommon.la
endif

# ---- features: LAVIS-style extract_features with a BLIP model
if BUILD_PLUGIN_FEATURES
pkglib_LTLIBRARIES += plugins/tasks/task_features.la
plugins_tasks_task_features_la_SOURCES = plugins/tasks/features.c
plugins_tasks_task_features_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_tasks_task_features_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_features_la_LIBADD = $(SD_COMMON_LIBADD) plugins/processors/libimagecommon.la
endif

# ---- train: training (Stable Diffusion fine-tuning; doc/training.md)
if BUILD_PLUGIN_TRAIN
# the caption list parser, shared with tests/fuzz/fuzz_train
noinst_LTLIBRARIES += plugins/common/libtraindata.la
plugins_common_libtraindata_la_SOURCES = plugins/common/train_data.c plugins/common/train_data.h
pkglib_LTLIBRARIES += plugins/tasks/task_train.la
plugins_tasks_task_train_la_SOURCES = plugins/tasks/train.c plugins/common/train_sd.c plugins/common/train_arldm.c plugins/common/train_step.h
plugins_tasks_task_train_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS) $(LIBPNG_CFLAGS)
plugins_tasks_task_train_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_train_la_LIBADD = $(SD_COMMON_LIBADD) plugins/processors/libimagecommon.la plugins/common/libtraindata.la
endif
