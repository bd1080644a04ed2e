# plugins/processors/local.mk - build rules for plugins/processors (included from the top Makefile.am)

# Tokenizers: text helpers, ftfy port and the two engines in one convenience
# library linked into each tokenizer module (and into their tests).
if HAVE_UTF8PROC
noinst_LTLIBRARIES += plugins/processors/libtextcommon.la
plugins_processors_libtextcommon_la_SOURCES = \
	plugins/processors/textcommon.c plugins/processors/textcommon.h \
	plugins/processors/ftfy.c plugins/processors/ftfy.h plugins/processors/textdata.h \
	plugins/processors/cliptok.c plugins/processors/cliptok.h \
	plugins/processors/berttok.c plugins/processors/berttok.h \
	plugins/processors/tokplugin.c plugins/processors/tokplugin.h
plugins_processors_libtextcommon_la_CFLAGS = $(AM_CFLAGS) $(UTF8PROC_CFLAGS) $(JANSSON_CFLAGS) $(ZLIB_CFLAGS)
plugins_processors_libtextcommon_la_LIBADD = $(UTF8PROC_LIBS) $(JANSSON_LIBS) $(ZLIB_LIBS)
endif
EXTRA_DIST += plugins/processors/gen_textdata.py

if BUILD_PLUGIN_CLIP_TOKENIZER
pkglib_LTLIBRARIES += plugins/processors/processor_clip_tokenizer.la
plugins_processors_processor_clip_tokenizer_la_SOURCES = plugins/processors/clip_tokenizer.c
plugins_processors_processor_clip_tokenizer_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
plugins_processors_processor_clip_tokenizer_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_processors_processor_clip_tokenizer_la_LIBADD = plugins/processors/libtextcommon.la $(PLUGIN_LIBADD)
endif

if BUILD_PLUGIN_BERT_TOKENIZER
pkglib_LTLIBRARIES += plugins/processors/processor_bert_tokenizer.la
plugins_processors_processor_bert_tokenizer_la_SOURCES = plugins/processors/bert_tokenizer.c
plugins_processors_processor_bert_tokenizer_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_processors_processor_bert_tokenizer_la_LIBADD = plugins/processors/libtextcommon.la $(PLUGIN_LIBADD)
endif

# ---- image_resize and the image helpers (datasets helper) ----
# libimagecommon: PNG decoding and PIL-exact transforms, shared by
# image_resize, the story datasets and `pipeline dataset`.
if HAVE_PNG
noinst_LTLIBRARIES += plugins/processors/libimagecommon.la
plugins_processors_libimagecommon_la_SOURCES = \
	plugins/processors/imagecommon.c plugins/processors/imagecommon.h plugins/processors/imagepng.c \
	plugins/processors/deflaterle.c plugins/processors/deflaterle.h
plugins_processors_libimagecommon_la_CFLAGS = $(AM_CFLAGS) $(LIBPNG_CFLAGS) $(ZLIB_CFLAGS)
plugins_processors_libimagecommon_la_LIBADD = $(LIBPNG_LIBS) $(ZLIB_LIBS) -lm
if HAVE_JPEG
plugins_processors_libimagecommon_la_SOURCES += plugins/processors/imagejpeg.c
plugins_processors_libimagecommon_la_CFLAGS += $(LIBJPEG_CFLAGS)
plugins_processors_libimagecommon_la_LIBADD += $(LIBJPEG_LIBS)
endif
# libfidfeat: FID features and statistics of uint8 images through an
# inception_fid encoder, shared by `pipeline fid` and the story task.
noinst_LTLIBRARIES += plugins/common/libfidfeat.la
plugins_common_libfidfeat_la_SOURCES = plugins/common/fidfeat.c plugins/common/fidfeat.h
plugins_common_libfidfeat_la_CFLAGS = $(AM_CFLAGS) $(LIBPNG_CFLAGS)
plugins_common_libfidfeat_la_LIBADD = plugins/processors/libimagecommon.la
endif
if BUILD_PLUGIN_IMAGE_RESIZE
pkglib_LTLIBRARIES += plugins/processors/processor_image_resize.la
plugins_processors_processor_image_resize_la_SOURCES = plugins/processors/image_resize.c
plugins_processors_processor_image_resize_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_processors_processor_image_resize_la_LIBADD = $(PLUGIN_LIBADD) plugins/processors/libimagecommon.la
endif
