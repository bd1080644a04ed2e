# tests/fuzz/local.mk - libFuzzer harnesses of every parser of outside input
# (included from tests/local.mk; doc/fuzzing.md).
#
# One list, FUZZ_HARNESSES, names them all. Each harness is built twice over:
#  - in a fuzzing build (./configure CC=clang --enable-fuzzing) it is linked
#    with libFuzzer and `make fuzz` runs it on tests/fuzz/corpus/<name>/
#    (tests/fuzz/run.sh, FUZZ_SECONDS each);
#  - in every other build it is a `make check` test: tests/fuzz/replay.c
#    feeds it each file of tests/fuzz/corpus/<name>/ and of
#    tests/fixtures/fuzz/<name>/ (the inputs of past findings), so a finding
#    stays fixed in the gcc and sanitizer builds too.
# To add a harness: write tests/fuzz/fuzz_<name>.c, add it to FUZZ_HARNESSES
# with its _SOURCES/_CPPFLAGS/_LDADD lines, seed tests/fuzz/corpus/<name>/.
FUZZ_HARNESSES = tests/fuzz/fuzz_safetensors tests/fuzz/fuzz_config tests/fuzz/fuzz_model_config
FUZZ_HARNESSES += tests/fuzz/fuzz_pickle tests/fuzz/fuzz_torch_zip
FUZZ_CPPFLAGS = $(TEST_CPPFLAGS) -DMMP_FUZZ_SRCDIR='"$(abs_top_srcdir)"'
FUZZ_LIBS = libmmpipe.la -lm
noinst_HEADERS += tests/fuzz/fuzz.h
EXTRA_DIST += tests/fuzz/run.sh tests/fuzz/gen_corpus.py tests/fuzz/corpus tests/fuzz/dict tests/fixtures/fuzz

if FUZZING
FUZZ_LINK_FLAGS = -no-install -fsanitize=fuzzer
FUZZ_MAIN =
noinst_PROGRAMS += $(FUZZ_HARNESSES)
else
FUZZ_LINK_FLAGS =
FUZZ_MAIN = tests/fuzz/libfuzzreplay.la
check_LTLIBRARIES += tests/fuzz/libfuzzreplay.la
tests_fuzz_libfuzzreplay_la_SOURCES = tests/fuzz/replay.c
tests_fuzz_libfuzzreplay_la_CPPFLAGS = $(FUZZ_CPPFLAGS)
check_PROGRAMS += $(FUZZ_HARNESSES)
TESTS += $(FUZZ_HARNESSES)
endif

# `make fuzz`: run each harness for FUZZ_SECONDS (default 60) on its corpus
FUZZ_SECONDS = 60
fuzz:
if FUZZING
	@$(MAKE) $(AM_MAKEFLAGS) all
	FUZZ_SECONDS='$(FUZZ_SECONDS)' $(SHELL) $(top_srcdir)/tests/fuzz/run.sh '$(abs_top_srcdir)' '$(abs_top_builddir)' $(FUZZ_HARNESSES)
else
	@echo "make fuzz: configure a build with clang first: ./configure CC=clang --enable-fuzzing (doc/fuzzing.md)"; exit 1
endif
.PHONY: fuzz

# safetensors: the header parser and every tensor read (core/safetensors.c)
tests_fuzz_fuzz_safetensors_SOURCES = tests/fuzz/fuzz_safetensors.c
tests_fuzz_fuzz_safetensors_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_safetensors_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_safetensors_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS)

# PyTorch checkpoints: the restricted pickle machine (its internal API, so
# core/pickle.c is compiled in) with the legacy container behind it, and a
# whole torch.save file (core/checkpoint.c; doc/checkpoint.md)
tests_fuzz_fuzz_pickle_SOURCES = tests/fuzz/fuzz_pickle.c core/pickle.c core/pickle.h
tests_fuzz_fuzz_pickle_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_pickle_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_pickle_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS)
tests_fuzz_fuzz_torch_zip_SOURCES = tests/fuzz/fuzz_torch_zip.c
tests_fuzz_fuzz_torch_zip_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_torch_zip_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_torch_zip_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS)

# configuration: a task file with an @include'd file from disk, -s overrides,
# key validation against a key table (core/config.c, core/registry.c)
tests_fuzz_fuzz_config_SOURCES = tests/fuzz/fuzz_config.c
tests_fuzz_fuzz_config_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_config_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_config_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS)

# every model's config.json, through the plugins (unet2d_condition, vae,
# clip_text) with the fixture weights
tests_fuzz_fuzz_model_config_SOURCES = tests/fuzz/fuzz_model_config.c
tests_fuzz_fuzz_model_config_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_model_config_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_model_config_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS)

# `pipeline clipscore`'s captions file (tools/clipscore_captions.c; jansson)
FUZZ_HARNESSES += tests/fuzz/fuzz_clipscore_captions
tests_fuzz_fuzz_clipscore_captions_SOURCES = tests/fuzz/fuzz_clipscore_captions.c
tests_fuzz_fuzz_clipscore_captions_CPPFLAGS = $(FUZZ_CPPFLAGS) $(JANSSON_CFLAGS)
tests_fuzz_fuzz_clipscore_captions_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_clipscore_captions_LDADD = $(FUZZ_MAIN) tools/libclipscorecaps.la $(FUZZ_LIBS) $(JANSSON_LIBS)

if HAVE_UTF8PROC
# tokenizer inputs: texts through the CLIP BPE and BERT WordPiece engines
FUZZ_HARNESSES += tests/fuzz/fuzz_tokenizer_text
tests_fuzz_fuzz_tokenizer_text_SOURCES = tests/fuzz/fuzz_tokenizer_text.c
tests_fuzz_fuzz_tokenizer_text_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_tokenizer_text_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_tokenizer_text_LDADD = $(FUZZ_MAIN) plugins/processors/libtextcommon.la $(FUZZ_LIBS)
# tokenizer files: vocab.json, merges.txt, special_tokens_map.json,
# added_tokens.json, a bpe .gz, vocab.txt, through the two plugins
FUZZ_HARNESSES += tests/fuzz/fuzz_tokenizer_files
tests_fuzz_fuzz_tokenizer_files_SOURCES = tests/fuzz/fuzz_tokenizer_files.c
tests_fuzz_fuzz_tokenizer_files_CPPFLAGS = $(FUZZ_CPPFLAGS) $(ZLIB_CFLAGS)
tests_fuzz_fuzz_tokenizer_files_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_tokenizer_files_LDADD = $(FUZZ_MAIN) $(FUZZ_LIBS) $(ZLIB_LIBS)
endif

if HAVE_PNG
# PNG decoding and the image transforms of image_resize and the datasets
FUZZ_HARNESSES += tests/fuzz/fuzz_png
tests_fuzz_fuzz_png_SOURCES = tests/fuzz/fuzz_png.c
tests_fuzz_fuzz_png_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_png_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_png_LDADD = $(FUZZ_MAIN) plugins/processors/libimagecommon.la $(FUZZ_LIBS)
if HAVE_JPEG
# JPEG decoding (PIL's rules, libjpeg) and the FID protocols' resize
FUZZ_HARNESSES += tests/fuzz/fuzz_jpeg
tests_fuzz_fuzz_jpeg_SOURCES = tests/fuzz/fuzz_jpeg.c
tests_fuzz_fuzz_jpeg_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_jpeg_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_jpeg_LDADD = $(FUZZ_MAIN) plugins/processors/libimagecommon.la $(FUZZ_LIBS)
# JPEG decoding, then the PNG encoding of `pipeline dataset build` round-tripped
FUZZ_HARNESSES += tests/fuzz/fuzz_jpeg_png
tests_fuzz_fuzz_jpeg_png_SOURCES = tests/fuzz/fuzz_jpeg_png.c
tests_fuzz_fuzz_jpeg_png_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_jpeg_png_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_jpeg_png_LDADD = $(FUZZ_MAIN) plugins/processors/libimagecommon.la $(FUZZ_LIBS)
endif
if HAVE_HDF5
# the story HDF5 reader, with a mutator that keeps the HDF5 structure
FUZZ_HARNESSES += tests/fuzz/fuzz_story
tests_fuzz_fuzz_story_SOURCES = tests/fuzz/fuzz_story.c
tests_fuzz_fuzz_story_CPPFLAGS = $(FUZZ_CPPFLAGS) $(HDF5_CFLAGS)
tests_fuzz_fuzz_story_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_story_LDADD = $(FUZZ_MAIN) plugins/datasets/libstorycommon.la $(FUZZ_LIBS) $(HDF5_LIBS)
endif
endif

if BUILD_PLUGIN_TRAIN
# the train task's caption list and a checkpoint's generator state
FUZZ_HARNESSES += tests/fuzz/fuzz_train
tests_fuzz_fuzz_train_SOURCES = tests/fuzz/fuzz_train.c
tests_fuzz_fuzz_train_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_train_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_train_LDADD = $(FUZZ_MAIN) plugins/common/libtraindata.la $(FUZZ_LIBS)
endif
if HAVE_PNG
if HAVE_HDF5
# .npy files (header, data bounds, object arrays through the plain-value pickle reader)
FUZZ_HARNESSES += tests/fuzz/fuzz_npy
tests_fuzz_fuzz_npy_SOURCES = tests/fuzz/fuzz_npy.c
tests_fuzz_fuzz_npy_CPPFLAGS = $(FUZZ_CPPFLAGS)
tests_fuzz_fuzz_npy_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_npy_LDADD = $(FUZZ_MAIN) plugins/datasets/libstorycommon.la $(FUZZ_LIBS)
# the raw releases through `pipeline dataset build` (JSON, pickle, JPEG, the HDF5 writer)
FUZZ_HARNESSES += tests/fuzz/fuzz_dataset_raw
tests_fuzz_fuzz_dataset_raw_SOURCES = tests/fuzz/fuzz_dataset_raw.c
tests_fuzz_fuzz_dataset_raw_CPPFLAGS = $(FUZZ_CPPFLAGS) $(HDF5_CFLAGS)
tests_fuzz_fuzz_dataset_raw_LDFLAGS = $(FUZZ_LINK_FLAGS)
tests_fuzz_fuzz_dataset_raw_LDADD = $(FUZZ_MAIN) plugins/datasets/libstorycommon.la $(FUZZ_LIBS) $(HDF5_LIBS)
endif
endif
