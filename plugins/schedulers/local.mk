# plugins/schedulers/local.mk - build rules for plugins/schedulers (included from the top Makefile.am)

# Schedule math, key tables and validation shared by the scheduler modules: a
# noinst convenience library (PIC objects linked into each module, symbols hidden).
noinst_LTLIBRARIES += plugins/schedulers/libschedcommon.la
plugins_schedulers_libschedcommon_la_SOURCES = \
	plugins/schedulers/common.c plugins/schedulers/common.h \
	plugins/schedulers/sigmas.c plugins/schedulers/sigmas.h
SCHED_COMMON_LIBADD = plugins/schedulers/libschedcommon.la $(PLUGIN_LIBADD) -lm

if BUILD_PLUGIN_DDPM
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_ddpm.la
plugins_schedulers_scheduler_ddpm_la_SOURCES = plugins/schedulers/ddpm.c
plugins_schedulers_scheduler_ddpm_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_ddpm_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif

if BUILD_PLUGIN_DDIM
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_ddim.la
plugins_schedulers_scheduler_ddim_la_SOURCES = plugins/schedulers/ddim.c
plugins_schedulers_scheduler_ddim_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_ddim_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif

if BUILD_PLUGIN_PNDM
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_pndm.la
plugins_schedulers_scheduler_pndm_la_SOURCES = plugins/schedulers/pndm.c
plugins_schedulers_scheduler_pndm_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_pndm_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif

if BUILD_PLUGIN_EULER
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_euler.la
plugins_schedulers_scheduler_euler_la_SOURCES = plugins/schedulers/euler.c
plugins_schedulers_scheduler_euler_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_euler_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif

if BUILD_PLUGIN_EULER_ANCESTRAL
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_euler_ancestral.la
plugins_schedulers_scheduler_euler_ancestral_la_SOURCES = plugins/schedulers/euler_ancestral.c
plugins_schedulers_scheduler_euler_ancestral_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_euler_ancestral_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif

if BUILD_PLUGIN_DPMPP_2M
pkglib_LTLIBRARIES += plugins/schedulers/scheduler_dpmpp_2m.la
plugins_schedulers_scheduler_dpmpp_2m_la_SOURCES = plugins/schedulers/dpmpp_2m.c
plugins_schedulers_scheduler_dpmpp_2m_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_schedulers_scheduler_dpmpp_2m_la_LIBADD = $(SCHED_COMMON_LIBADD)
endif
