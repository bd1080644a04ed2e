# plugins/datasets/local.mk - build rules for plugins/datasets (included from the top Makefile.am)

# libstorycommon: AR-LDM HDF5 reading and the story item engine, linked
# into each dataset module (and `pipeline dataset`).
if HAVE_HDF5
if HAVE_PNG
noinst_LTLIBRARIES += plugins/datasets/libstorycommon.la
plugins_datasets_libstorycommon_la_SOURCES = \
	plugins/datasets/storyfile.c plugins/datasets/storyfile.h \
	plugins/datasets/h5raw.c plugins/datasets/h5raw.h \
	plugins/datasets/story.c plugins/datasets/story.h
# inspect() and build(): verify files, write them from the raw releases
plugins_datasets_libstorycommon_la_SOURCES += \
	plugins/datasets/storyinspect.c \
	plugins/datasets/storybuild.c plugins/datasets/storybuild.h \
	plugins/datasets/npy.c plugins/datasets/npy.h \
	plugins/datasets/rawflintstones.c plugins/datasets/rawvist.c plugins/datasets/rawpororo.c
plugins_datasets_libstorycommon_la_CFLAGS = $(AM_CFLAGS) $(HDF5_CFLAGS) $(LIBPNG_CFLAGS) $(JANSSON_CFLAGS)
plugins_datasets_libstorycommon_la_LIBADD = plugins/processors/libimagecommon.la $(HDF5_LIBS) $(JANSSON_LIBS) -lpthread
endif
endif
if BUILD_PLUGIN_FLINTSTONES
pkglib_LTLIBRARIES += plugins/datasets/dataset_flintstones.la
plugins_datasets_dataset_flintstones_la_SOURCES = plugins/datasets/flintstones.c
plugins_datasets_dataset_flintstones_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_datasets_dataset_flintstones_la_LIBADD = $(PLUGIN_LIBADD) plugins/datasets/libstorycommon.la
endif
if BUILD_PLUGIN_PORORO
pkglib_LTLIBRARIES += plugins/datasets/dataset_pororo.la
plugins_datasets_dataset_pororo_la_SOURCES = plugins/datasets/pororo.c
plugins_datasets_dataset_pororo_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_datasets_dataset_pororo_la_LIBADD = $(PLUGIN_LIBADD) plugins/datasets/libstorycommon.la
endif
if BUILD_PLUGIN_VISTSIS
pkglib_LTLIBRARIES += plugins/datasets/dataset_vistsis.la
plugins_datasets_dataset_vistsis_la_SOURCES = plugins/datasets/vistsis.c
plugins_datasets_dataset_vistsis_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_datasets_dataset_vistsis_la_LIBADD = $(PLUGIN_LIBADD) plugins/datasets/libstorycommon.la
endif
if BUILD_PLUGIN_VISTDII
pkglib_LTLIBRARIES += plugins/datasets/dataset_vistdii.la
plugins_datasets_dataset_vistdii_la_SOURCES = plugins/datasets/vistdii.c
plugins_datasets_dataset_vistdii_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_datasets_dataset_vistdii_la_LIBADD = $(PLUGIN_LIBADD) plugins/datasets/libstorycommon.la
endif
