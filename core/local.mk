# core/local.mk - libmmpipe: registry, loader, config, tensors, backends, io.
lib_LTLIBRARIES += libmmpipe.la
libmmpipe_la_SOURCES = \
	core/error.c core/log.c core/config.c core/registry.c \
	core/context.c core/context.h core/tensormap.c core/component.c core/util.c core/util.h \
	core/file.c
libmmpipe_la_CFLAGS = $(AM_CFLAGS) -fvisibility=default $(LIBCONFIG_CFLAGS) $(JANSSON_CFLAGS) $(OPENBLAS_CFLAGS) $(ZLIB_CFLAGS) $(LIBZIP_CFLAGS)
libmmpipe_la_LIBADD = $(LTDL_LIBS) $(LIBCONFIG_LIBS) $(JANSSON_LIBS) $(OPENBLAS_LIBS) $(ZLIB_LIBS) $(LIBZIP_LIBS) -lm -lpthread
libmmpipe_la_LDFLAGS = -version-info 0:0:0 -export-symbols-regex '^mmp_[a-z]' $(MMP_SAN_CFLAGS)
nobase_include_HEADERS += \
	include/mmpipe/mmpipe.h include/mmpipe/error.h include/mmpipe/log.h \
	include/mmpipe/config.h include/mmpipe/plugin.h include/mmpipe/tensor.h \
	include/mmpipe/core.h include/mmpipe/safetensors.h include/mmpipe/rng.h \
	include/mmpipe/checkpoint.h include/mmpipe/file.h
include core/tensor.mk
include core/cpu/local.mk

# feature statistics and the Frechet distance (FID; LAPACK from OpenBLAS)
libmmpipe_la_SOURCES += core/frechet.c
nobase_include_HEADERS += include/mmpipe/frechet.h

# the generic dataset loader (datasets helper; dataset-agnostic, core API only)
libmmpipe_la_SOURCES += core/loader.c
nobase_include_HEADERS += include/mmpipe/loader.h

# PyTorch checkpoints: the restricted pickle machine and the zip/legacy containers
libmmpipe_la_SOURCES += core/pickle.c core/pickle.h core/checkpoint.c core/checkpoint_write.c
# plain pickled values for data files (include/mmpipe/pickle.h)
libmmpipe_la_SOURCES += core/pickle_api.c
nobase_include_HEADERS += include/mmpipe/pickle.h

# data parallelism: MPI when configured (--with-mpi), else a group of one (include/mmpipe/dist.h)
libmmpipe_la_SOURCES += core/dist.c
nobase_include_HEADERS += include/mmpipe/dist.h
if HAVE_MPI
libmmpipe_la_CFLAGS += $(MPI_CFLAGS)
libmmpipe_la_LIBADD += $(MPI_LIBS)
endif
