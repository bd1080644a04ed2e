# plugins/encoders/local.mk - build rules for plugins/encoders (included from the top Makefile.am)

# ---- sd: CLIP text encoder and VAE (shared code: plugins/common, see plugins/models/local.mk)
if BUILD_PLUGIN_CLIP_TEXT
pkglib_LTLIBRARIES += plugins/encoders/encoder_clip_text.la
plugins_encoders_encoder_clip_text_la_SOURCES = plugins/encoders/clip_text.c
plugins_encoders_encoder_clip_text_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_clip_text_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_clip_text_la_LIBADD = $(SD_COMMON_LIBADD)
endif

if BUILD_PLUGIN_VAE
pkglib_LTLIBRARIES += plugins/encoders/encoder_vae.la
plugins_encoders_encoder_vae_la_SOURCES = plugins/encoders/vae.c
plugins_encoders_encoder_vae_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_vae_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_vae_la_LIBADD = $(SD_COMMON_LIBADD)
endif

if BUILD_PLUGIN_VIT
pkglib_LTLIBRARIES += plugins/encoders/encoder_vit.la
plugins_encoders_encoder_vit_la_SOURCES = plugins/encoders/vit.c
plugins_encoders_encoder_vit_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_vit_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_vit_la_LIBADD = $(SD_COMMON_LIBADD)
endif

if BUILD_PLUGIN_BERT
pkglib_LTLIBRARIES += plugins/encoders/encoder_bert.la
plugins_encoders_encoder_bert_la_SOURCES = plugins/encoders/bert.c
plugins_encoders_encoder_bert_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_bert_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_bert_la_LIBADD = $(SD_COMMON_LIBADD)
endif

if BUILD_PLUGIN_BLIP
pkglib_LTLIBRARIES += plugins/encoders/encoder_blip.la
plugins_encoders_encoder_blip_la_SOURCES = plugins/encoders/blip.c
plugins_encoders_encoder_blip_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_blip_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_blip_la_LIBADD = $(SD_COMMON_LIBADD)
endif

if BUILD_PLUGIN_BLIP_RETRIEVAL
pkglib_LTLIBRARIES += plugins/encoders/encoder_blip_retrieval.la
plugins_encoders_encoder_blip_retrieval_la_SOURCES = plugins/encoders/blip_retrieval.c
plugins_encoders_encoder_blip_retrieval_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_encoders_encoder_blip_retrieval_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_blip_retrieval_la_LIBADD = $(SD_COMMON_LIBADD)
endif

# ---- evaluation: pytorch-fid's FID Inception-v3
if BUILD_PLUGIN_INCEPTION_FID
pkglib_LTLIBRARIES += plugins/encoders/encoder_inception_fid.la
plugins_encoders_encoder_inception_fid_la_SOURCES = plugins/encoders/inception_fid.c
plugins_encoders_encoder_inception_fid_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_encoders_encoder_inception_fid_la_LIBADD = $(PLUGIN_LIBADD)
endif
