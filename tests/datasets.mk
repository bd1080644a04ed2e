# tests/datasets.mk - tests of this area (included from tests/local.mk)
if HAVE_PNG
check_PROGRAMS += tests/test_plugin_image_resize
TESTS += tests/test_plugin_image_resize
tests_test_plugin_image_resize_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_image_resize_LDADD = $(TEST_LDADD)
# PNG writing: the fast run-length encoder against libpng's reading and zlib's inflate
check_PROGRAMS += tests/test_plugin_png_encode
TESTS += tests/test_plugin_png_encode
tests_test_plugin_png_encode_CPPFLAGS = $(TEST_CPPFLAGS) $(ZLIB_CFLAGS)
tests_test_plugin_png_encode_LDADD = plugins/processors/libimagecommon.la $(TEST_LDADD) $(ZLIB_LIBS)
if HAVE_JPEG
# JPEG decoding against PIL (tests/gen_fid_jpeg.py)
check_PROGRAMS += tests/test_plugin_image_jpeg
TESTS += tests/test_plugin_image_jpeg
tests_test_plugin_image_jpeg_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_plugin_image_jpeg_LDADD = plugins/processors/libimagecommon.la $(TEST_LDADD)
endif
if HAVE_HDF5
check_PROGRAMS += tests/test_plugin_story_datasets
TESTS += tests/test_plugin_story_datasets
tests_test_plugin_story_datasets_CPPFLAGS = $(TEST_CPPFLAGS) $(HDF5_CFLAGS)
tests_test_plugin_story_datasets_LDADD = plugins/datasets/libstorycommon.la $(TEST_LDADD)
# PororoSV's pickled .npy index files against NumPy's np.load (tests/gen_dataset_raw.py)
check_PROGRAMS += tests/test_plugin_npy_pickle
TESTS += tests/test_plugin_npy_pickle
tests_test_plugin_npy_pickle_CPPFLAGS = $(TEST_CPPFLAGS) $(JANSSON_CFLAGS)
tests_test_plugin_npy_pickle_LDADD = plugins/datasets/libstorycommon.la $(JANSSON_LIBS) $(TEST_LDADD)
endif
endif
EXTRA_DIST += tests/gen_datasets.py tests/gen_h5_structures.py tests/fixtures/datasets
check_PROGRAMS += tests/test_core_loader
TESTS += tests/test_core_loader
tests_test_core_loader_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_core_loader_LDADD = $(TEST_LDADD)
TESTS += tests/test_plugin_dataset_cmd.sh
EXTRA_DIST += tests/test_plugin_dataset_cmd.sh
# `pipeline dataset build` against AR-LDM's data_script/*_hdf5.py (tests/gen_dataset_raw.py)
TESTS += tests/test_plugin_dataset_build.sh
EXTRA_DIST += tests/test_plugin_dataset_build.sh tests/gen_dataset_raw.py tests/fixtures/dataset_raw
# AR-LDM's own StoryDataset classes read mmpipe's built files (skipped without the reference environment)
TESTS += tests/test_plugin_dataset_arldm_read.sh
EXTRA_DIST += tests/test_plugin_dataset_arldm_read.sh tests/check_arldm_reads_built.py
