# plugins/tasks/local.mk - task plugins

# ---- sd: text-to-image (shared code: plugins/common, see plugins/models/local.mk)
if BUILD_PLUGIN_TXT2IMG
pkglib_LTLIBRARIES += plugins/tasks/task_txt2img.la
plugins_tasks_task_txt2img_la_SOURCES = plugins/tasks/txt2img.c
plugins_tasks_task_txt2img_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS) $(LIBPNG_CFLAGS)
plugins_tasks_task_txt2img_la_LDFLAGS = $(PLUGIN_LDFLAGS)
plugins_tasks_task_txt2img_la_LIBADD = $(SD_COMMON_LIBADD) $(LIBPNG_LIBS)
endif
