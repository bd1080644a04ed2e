/* tests/fuzz/fuzz_dataset_raw.c - libFuzzer harness: the raw releases `pipeline dataset build` reads
 * (plugins/datasets/rawflintstones.c, rawvist.c, rawpororo.c): FlintstonesSV's split JSON,
 * following pickle and annotation JSON; VIST's six SIS/DII JSON files and one image; PororoSV's
 * four .npy index files and one PNG strip; through the whole build (plan, drops, report, an HDF5
 * file of the stories that remain).
 *
 * Input: a byte choosing the dataset (modulo 3: 0 flintstones, 1 VIST, 2 pororo), then the files
 * cut at "\n%%\n": flintstones: split json, pickle, annotations json; VIST: sis train, val, test,
 * dii train, val, test, then the bytes of 1000.jpg; pororo: descriptions.npy, img_cache4.npy,
 * following_cache4.npy, train_seen_unseen_ids.npy, then the bytes of 0.png. */
#include "plugins/datasets/story.h"
#include "plugins/datasets/storybuild.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  fuzz_quiet();
  return 0;
}

static const char *const FL[] = {"train-val-test_split.json", "following_cache4.pkl",
                                 "flintstones_annotations_v1-0.json"};
static const char *const VI[] = {"train.story-in-sequence.json", "val.story-in-sequence.json",
                                 "test.story-in-sequence.json", "train.description-in-isolation.json",
                                 "val.description-in-isolation.json", "test.description-in-isolation.json",
                                 "1000.jpg"};
static const char *const PO[] = {"descriptions.npy", "img_cache4.npy", "following_cache4.npy",
                                 "train_seen_unseen_ids.npy", "0.png"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  int which = data[0] % 3;
  bool vist = which == 1;
  const char *const *names = which == 0 ? FL : which == 1 ? VI : PO;
  size_t want = which == 0 ? 3 : which == 1 ? 7 : 5;
  const uint8_t *sec[7];
  size_t len[7];
  size_t n = fuzz_sections(data + 1, size - 1, "\n%%\n", sec, len, want);
  char path[PATH_MAX], out[PATH_MAX], opt[3][PATH_MAX + 16];
  for (size_t i = 0; i < want; i++) {
    if (i < n) fuzz_write(names[i], sec[i], len[i], path, sizeof path);
    else fuzz_unlink(names[i]);
  }
  snprintf(out, sizeof out, "%s/out.h5", fuzz_dir());
  snprintf(opt[0], sizeof opt[0], "sis_dir=%s", fuzz_dir());
  snprintf(opt[1], sizeof opt[1], "dii_dir=%s", fuzz_dir());
  snprintf(opt[2], sizeof opt[2], "img_dir=%s", fuzz_dir());
  const char *options[] = {opt[0], opt[1], opt[2], NULL};
  story_desc_t d = {.name = which == 0 ? "flintstones" : which == 1 ? "vistsis" : "pororo",
                    .text_name = vist ? "sis" : "text"};
  mmp_dataset_build_t req = {.struct_size = sizeof req, .raw_dir = fuzz_dir(), .out_path = out,
                             .options = vist ? options : NULL, .threads = 1,
                             .flags = MMP_DATASET_BUILD_NO_RESUME | MMP_DATASET_BUILD_QUIET, .limit = 8};
  if (which == 1) story_build_vist(&d, &req, NULL);
  else if (which == 2) story_build_pororo(&d, &req, NULL);
  else story_build_flintstones(&d, &req, NULL);
  fuzz_unlink("out.h5");
  fuzz_unlink("out.h5.partial");
  fuzz_unlink("out.h5.compact");
  fuzz_unlink("out.h5.report.json");
  fuzz_unlink("out.h5.report.json.tmp");
  mmp_error_clear();
  return 0;
}
