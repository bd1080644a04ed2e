# plugins/processors/local.mk - build rules for plugins/processors (included from the top Makefile.am)

# ---- image_resize and the image helpers (datasets helper) ----
# libimagecommon: PNG decoding and PIL-exact transforms, shared by
# image_resize, the story datasets and `pipeline dataset`.
if HAVE_PNG
noinst_LTLIBRARIES += plugins/processors/libimagecommon.la
plugins_processors_libimagecommon_la_SOURCES = \
	plugins/processors/imagecommon.c plugins/processors/imagecommon.h plugins/processors/imagepng.c
plugins_processors_libimagecommon_la_CFLAGS = $(AM_CFLAGS) $(LIBPNG_CFLAGS)
plugins_processors_libimagecommon_la_LIBADD = $(LIBPNG_LIBS) -lm
endif
if BUILD_PLUGIN_IMAGE_RESIZE
pkglib_LTLIBRARIES += plugins/processors/processor_image_resize.la
plugins_processors_processor_image_resize_la_SOURCES = plugins/processors/image_resize.c
plugins_processors_processor_image_resize_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_processors_processor_image_resize_la_LIBADD = $(PLUGIN_LIBADD) plugins/processors/libimagecommon.la
endif
