# plugins/models/local.mk - build rules for plugins/models (included from the top Makefile.am)

# ---- sd: internals shared by clip_text, vae, unet2d_condition and txt2img
# (config.json, weight loading and name mapping, building blocks). A noinst
# convenience library: its objects are linked into each module, symbols hidden.
noinst_LTLIBRARIES += plugins/common/libsdcommon.la
plugins_common_libsdcommon_la_SOURCES = plugins/common/sd_common.h \
	plugins/common/sd_weights.c plugins/common/sd_nn.c \
	plugins/common/towers.h plugins/common/towers.c plugins/common/vit.c plugins/common/bert.c \
	plugins/common/sampling.h plugins/common/sampling.c \
	plugins/common/arldm.h plugins/common/arldm.c \
	plugins/common/topk.h plugins/common/topk.c
plugins_common_libsdcommon_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
SD_COMMON_LIBADD = plugins/common/libsdcommon.la $(PLUGIN_LIBADD) $(JANSSON_LIBS) -lm

if BUILD_PLUGIN_UNET2D_CONDITION
pkglib_LTLIBRARIES += plugins/models/model_unet2d_condition.la
plugins_models_model_unet2d_condition_la_SOURCES = plugins/models/unet2d_condition.c
plugins_models_model_unet2d_condition_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_models_model_unet2d_condition_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_models_model_unet2d_condition_la_LIBADD = $(SD_COMMON_LIBADD)
endif
