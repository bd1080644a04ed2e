# tools/local.mk - the `pipeline` command
bin_PROGRAMS += tools/pipeline
tools_pipeline_SOURCES = tools/pipeline.c tools/commands.h tools/cmd_core.c tools/cmd_forward.c
tools_pipeline_SOURCES += tools/cmd_tensors.c tools/cmd_randn.c
tools_pipeline_SOURCES += tools/cmd_init_weights.c
tools_pipeline_SOURCES += tools/cmd_arldm_init.c
tools_pipeline_SOURCES += tools/cmd_convert.c
tools_pipeline_LDADD = libmmpipe.la $(JANSSON_LIBS)
tools_pipeline_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tools_pipeline_SOURCES += tools/forward_scheduler.c

# `pipeline dataset` (datasets helper): its own convenience library so that
# it can be built with the story readers when libhdf5 and libpng are there.
noinst_LTLIBRARIES += tools/libcmddataset.la
tools_libcmddataset_la_SOURCES = tools/cmd_dataset.c
if HAVE_PNG
tools_libcmddataset_la_CPPFLAGS = $(AM_CPPFLAGS) -DMMP_WITH_PNG
tools_libcmddataset_la_LIBADD = plugins/processors/libimagecommon.la
endif
tools_pipeline_LDADD += tools/libcmddataset.la

# `pipeline fid`: image folders need libpng (plugins/processors/libimagecommon)
noinst_LTLIBRARIES += tools/libcmdfid.la
tools_libcmdfid_la_SOURCES = tools/cmd_fid.c
if HAVE_PNG
tools_libcmdfid_la_CPPFLAGS = $(AM_CPPFLAGS) -DMMP_WITH_PNG
tools_libcmdfid_la_LIBADD = plugins/common/libfidfeat.la
endif
tools_pipeline_LDADD += tools/libcmdfid.la

# `pipeline clipscore`: CLIP-T / CLIP-I of image folders (libpng, jansson);
# the captions file's walk in its own library for tests/fuzz/fuzz_clipscore_captions
noinst_LTLIBRARIES += tools/libclipscorecaps.la
tools_libclipscorecaps_la_SOURCES = tools/clipscore_captions.c tools/clipscore_captions.h
tools_libclipscorecaps_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tools_libclipscorecaps_la_LIBADD = $(JANSSON_LIBS)
noinst_LTLIBRARIES += tools/libcmdclipscore.la
tools_libcmdclipscore_la_SOURCES = tools/cmd_clipscore.c
tools_libcmdclipscore_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
tools_libcmdclipscore_la_LIBADD = tools/libclipscorecaps.la $(JANSSON_LIBS) -lm
if HAVE_PNG
tools_libcmdclipscore_la_CPPFLAGS = $(AM_CPPFLAGS) -DMMP_WITH_PNG
tools_libcmdclipscore_la_LIBADD += plugins/processors/libimagecommon.la
endif
tools_pipeline_LDADD += tools/libcmdclipscore.la
