#!/usr/bin/python3
"""tests/gen_h5_structures.py - story files in the HDF5 structures the reader walks itself.

The story reader (plugins/datasets/h5raw.c) reads each dataset's object
header, and the root's attributes, from the file's bytes before libhdf5
decodes them. These files are written by h5py/libhdf5 (never by hand) so
that the walk meets the structures real writers produce:

  h5struct_v2.h5       libver='latest': version-2 object headers ("OHDR"),
                       version-3 attribute messages, mmpipe_png_order = "RGB"
  h5struct_cont.h5     version-1 headers whose root holds 40 attributes
                       before mmpipe_png_order = "RGB": continuation chunks
  h5struct_refused.h5  one group per structure the reader refuses, each with
                       image0..image4 and text where image2 (or text) is:
                         external  - stored in an external file
                         gzip      - chunked and compressed
                         soft      - a soft link to image1
                         extlink   - an external link
                         enum      - an enum dataset
                         compound  - a compound text dataset
                       and one group "ok" that reads.
  h5struct_bad_snod.h5, h5struct_bad_heap.h5
                       corrupt version-1 groups (see corrupt() below).

The images are the PNG bytes of tests/fixtures/datasets/bad_dtype.h5's test
story 0 (small ones, read from that file, so the reads can be compared with
its), the text that of flintstones.h5's val story 0.

Run (from the source tree root): /usr/bin/python3 tests/gen_h5_structures.py
Needs python3-h5py and numpy (apt).
"""
import os

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "datasets")

with h5py.File(os.path.join(OUT, "bad_dtype.h5"), "r") as src:
    PNGS = [bytes(src["test"]["image%d" % i][0]) for i in range(5)]
with h5py.File(os.path.join(OUT, "flintstones.h5"), "r") as src:
    TEXT = src["val"]["text"][0]

VLEN_U8 = h5py.vlen_dtype(np.dtype("uint8"))
STR = h5py.string_dtype(encoding="utf-8")


def story_group(g, skip=()):
    for i in range(5):
        if "image%d" % i in skip:
            continue
        d = g.create_dataset("image%d" % i, (1,), dtype=VLEN_U8)
        d[0] = np.frombuffer(PNGS[i], np.uint8)
    if "text" not in skip:
        g.create_dataset("text", (1,), dtype=STR)[0] = TEXT


# version-2 object headers everywhere
with h5py.File(os.path.join(OUT, "h5struct_v2.h5"), "w", libver="latest", track_order=True) as f:
    f.attrs["mmpipe_png_order"] = np.bytes_("RGB")
    for split in ("train", "val"):
        story_group(f.create_group(split))

# version-1 headers with continuation chunks in the root's header
with h5py.File(os.path.join(OUT, "h5struct_cont.h5"), "w") as f:
    for i in range(40):
        f.attrs["note%02d" % i] = np.bytes_(("attribute %d " % i) * 8)
    f.attrs["mmpipe_png_order"] = np.bytes_("RGB")
    story_group(f.create_group("val"))

# refused structures
with h5py.File(os.path.join(OUT, "h5struct_refused.h5"), "w") as f:
    story_group(f.create_group("ok"))

    g = f.create_group("external")
    story_group(g, skip=("image2",))
    raw = os.path.join(OUT, "h5struct_external.bin")
    np.zeros(64, np.uint8).tofile(raw)
    g.create_dataset("image2", (64,), dtype=np.uint8, external=[("h5struct_external.bin", 0, 64)])

    g = f.create_group("gzip")
    story_group(g, skip=("image2",))
    d = g.create_dataset("image2", (1,), dtype=VLEN_U8, chunks=(1,), compression="gzip")
    d[0] = np.frombuffer(PNGS[2], np.uint8)

    g = f.create_group("soft")
    story_group(g, skip=("image2",))
    g["image2"] = h5py.SoftLink("/soft/image1")

    g = f.create_group("extlink")
    story_group(g, skip=("image2",))
    g["image2"] = h5py.ExternalLink("flintstones.h5", "/val/image2")

    g = f.create_group("enum")
    story_group(g, skip=("image2",))
    g.create_dataset("image2", data=np.zeros(1, np.uint8), dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="u1"))

    g = f.create_group("compound")
    story_group(g, skip=("text",))
    g.create_dataset("text", (1,), dtype=np.dtype([("caption", "S8"), ("n", "<i4")]))
print("wrote", OUT + "/h5struct_{v2,cont,refused}.h5, h5struct_external.bin")

# Corrupt group structures (version-1 groups: a B-tree of symbol nodes, names
# in a local heap), made from h5struct_refused.h5's bytes by the file
# format's layout, found by their signatures:
#   h5struct_bad_snod.h5  the "val" group's symbol node claims 200 entries
#                         (its node holds 2 * leaf K = 8)
#   h5struct_bad_heap.h5  the "val" group's local heap has no NUL after its
#                         last name (the rest of its data segment is "x")
def corrupt(name, edit):
    with h5py.File(os.path.join(OUT, name), "w") as f:
        story_group(f.create_group("val"))
    data = bytearray(open(os.path.join(OUT, name), "rb").read())
    edit(data)
    open(os.path.join(OUT, name), "wb").write(bytes(data))


def last_snod(data):
    # the val group's symbol node is the last one written
    at = data.rfind(b"SNOD")
    data[at + 6:at + 8] = (200).to_bytes(2, "little")


def last_heap(data):
    # the val group's local heap ("HEAP", version, 3 reserved, data size,
    # free list head, data address): no free list, and the bytes from the
    # last name's terminator to the segment's end all "x"
    at = data.rfind(b"HEAP")
    size = int.from_bytes(data[at + 8:at + 16], "little")
    seg = int.from_bytes(data[at + 24:at + 32], "little")
    data[at + 16:at + 24] = (1).to_bytes(8, "little")  # H5HL_FREE_NULL
    end = data.index(b"text\0", seg) + 4
    data[end:seg + size] = b"x" * (seg + size - end)


corrupt("h5struct_bad_snod.h5", last_snod)
corrupt("h5struct_bad_heap.h5", last_heap)
print("wrote", OUT + "/h5struct_bad_{snod,heap}.h5")
