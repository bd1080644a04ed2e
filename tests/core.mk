# tests/core.mk - tests of the core: config, registry/loader, the pipeline command.

# Test modules: one good, and one per way of being broken.
TEST_MODULE_LDFLAGS = -module -avoid-version -shared -rpath /nowhere $(MMP_SAN_CFLAGS)
check_LTLIBRARIES += tests/plugins/task_good.la tests/plugins/task_badabi.la \
	tests/plugins/task_noversion.la tests/plugins/task_dup.la tests/plugins/task_failinit.la \
	tests/plugins/task_failcreate.la tests/plugins/task_noentry.la
tests_plugins_task_good_la_SOURCES = tests/plugins/good.c
tests_plugins_task_good_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_good_la_LIBADD = libmmpipe.la
tests_plugins_task_badabi_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_badabi_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_ABI
tests_plugins_task_badabi_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_badabi_la_LIBADD = libmmpipe.la
tests_plugins_task_noversion_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_noversion_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_NOVERSION
tests_plugins_task_noversion_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_noversion_la_LIBADD = libmmpipe.la
tests_plugins_task_dup_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_dup_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_DUP
tests_plugins_task_dup_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_dup_la_LIBADD = libmmpipe.la
tests_plugins_task_failinit_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_failinit_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_INIT
tests_plugins_task_failinit_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_failinit_la_LIBADD = libmmpipe.la
tests_plugins_task_failcreate_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_failcreate_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_CREATE
tests_plugins_task_failcreate_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_failcreate_la_LIBADD = libmmpipe.la
tests_plugins_task_noentry_la_SOURCES = tests/plugins/broken.c
tests_plugins_task_noentry_la_CPPFLAGS = $(AM_CPPFLAGS) -DBROKEN_NOENTRY
tests_plugins_task_noentry_la_LDFLAGS = $(TEST_MODULE_LDFLAGS)
tests_plugins_task_noentry_la_LIBADD = libmmpipe.la

check_PROGRAMS += tests/test_core_config tests/test_core_registry
TESTS += tests/test_core_config tests/test_core_registry
tests_test_core_config_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_config_LDADD = $(TEST_LDADD)
tests_test_core_registry_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_registry_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/data tests/plugins/good.c tests/plugins/broken.c
TESTS += tests/test_core_pipeline.sh
EXTRA_DIST += tests/test_core_pipeline.sh
TESTS += tests/test_core_example_plugin.sh
EXTRA_DIST += tests/test_core_example_plugin.sh mmpipe-uninstalled.pc.in
AM_TESTS_ENVIRONMENT += SAN_FLAGS='$(MMP_SAN_CFLAGS)'; export SAN_FLAGS; CC='$(CC)'; export CC;
# the pool, driven directly: core/pool.c is compiled into the test (its
# mmp__ functions are internal to libmmpipe)
check_PROGRAMS += tests/test_core_pool
TESTS += tests/test_core_pool
tests_test_core_pool_SOURCES = tests/test_core_pool.c core/pool.c
tests_test_core_pool_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_pool_LDADD = $(TEST_LDADD) -lpthread

# feature statistics and the Frechet distance against scipy (tests/gen_fid.py, tests/gen_frechet_large.py)
check_PROGRAMS += tests/test_core_frechet
TESTS += tests/test_core_frechet
tests_test_core_frechet_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_frechet_LDADD = $(TEST_LDADD)
EXTRA_DIST += tests/gen_fid.py tests/gen_frechet_large.py tests/gen_fid_jpeg.py tests/gen_fid_story.py tests/gen_fid_pth.py tests/fixtures/fid
EXTRA_DIST += tests/fixtures/fuzz
