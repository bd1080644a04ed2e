#!/usr/bin/python3
"""tests/gen_fid_story.py - AR-LDM's FID of a story dataset's test frames against generated images.

    PYTHONPATH=/root/refenv/site:/root/refsrc/pytorch-fid/src:/root/refsrc/ARLDM /usr/bin/python3 tests/gen_fid_story.py

Run after tests/gen_fid.py and tests/gen_datasets.py (it reads the narrow
Inception weights, the generated images tests/fixtures/fid/arldm_gen/ and the
story fixture tests/fixtures/datasets/pororo.h5). Needs python3-h5py and
python3-opencv.

The real images are what AR-LDM's predict_step passes to inception_feature
when calculate_fid is on: the test split's original_images, which its
datasets/pororo.py __getitem__ makes as cv2.imdecode(h5['image<i>'][index],
IMREAD_COLOR)[idx * 128:(idx + 1) * 128] for i = 0..4 (idx = 0 here, as the
dataset fixtures' frame_index = 0: AR-LDM draws it with Python's random),
without frame 0 for continuation, as uint8 arrays, then
Image.fromarray(im, 'RGB'). That loop is written out here (AR-LDM's dataset
class needs its tokenizers); main.py's fid_augment + inception_feature and
fid_utils.calculate_fid_given_features are AR-LDM's as in tests/gen_fid.py.

Writes tests/fixtures/fid/expected_story.txt: "arldm dataset:pororo:<task>
arldm_gen FID" per task (tests/test_plugin_fid_cmd.sh turns the dataset
token into a config of the pororo plugin on the same file).
"""
import os

import cv2
import h5py
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models.inception as tvi
import torchvision.transforms as TF
from PIL import Image
from safetensors.torch import load_file

import pytorch_fid.inception as pfi
import fid_utils  # AR-LDM's

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "fid")
R = 16
_Basic = tvi.BasicConv2d


class NarrowBasicConv2d(_Basic):
    def __init__(self, in_channels, out_channels, **kw):
        super().__init__(in_channels if in_channels == 3 else in_channels // R, out_channels // R, **kw)


tvi.BasicConv2d = NarrowBasicConv2d
_orig_load = tvi.Inception3.load_state_dict
tvi.Inception3.load_state_dict = lambda self, sd, strict=True: None if sd is None else _orig_load(self, sd, strict)
pfi.load_state_dict_from_url = lambda *a, **k: None
model = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
w = load_file(os.path.join(OUT, "inception_w16.safetensors"))
names = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None], ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
         ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
         ["Mixed_7a", "Mixed_7b", "Mixed_7c", None]]
sd = model.state_dict()
for k in sd:
    if not k.endswith("num_batches_tracked"):
        p = k.split(".")
        sd[k] = w[".".join([names[int(p[1])][int(p[2])]] + p[3:])]
model.load_state_dict(sd)
DIM = 2048 // R
fid_augment = TF.Compose([TF.Resize([64, 64]), TF.ToTensor(), TF.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


def inception_feature(images):  # main.py ARLDM.inception_feature
    images = torch.stack([fid_augment(image) for image in images])
    images = images.type(torch.FloatTensor)
    images = (images + 1) / 2
    images = F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False)
    pred = model(images)[0]
    if pred.shape[2] != 1 or pred.shape[3] != 1:
        pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
    return pred.reshape(-1, DIM)


h5 = h5py.File(os.path.join(HERE, "fixtures", "datasets", "pororo.h5"), "r")["test"]
gen_dir = os.path.join(OUT, "arldm_gen")
gen_imgs = [Image.open(os.path.join(gen_dir, f)).convert("RGB") for f in sorted(os.listdir(gen_dir))]
lines = []
with torch.no_grad():
    gen = inception_feature(gen_imgs).numpy()
    for task in ["visualization", "continuation"]:
        ori = []
        for index in range(len(h5["text"])):
            images = []
            for i in range(5):
                im = cv2.imdecode(h5["image%d" % i][index], cv2.IMREAD_COLOR)
                idx = 0
                images.append(im[idx * 128: (idx + 1) * 128])
            images = images[1:] if task == "continuation" else images
            original_images = torch.from_numpy(np.array(images)).numpy().astype("uint8")
            ori.append(inception_feature([Image.fromarray(im, "RGB") for im in original_images]).numpy())
        ori = np.concatenate(ori)
        fid = fid_utils.calculate_fid_given_features(ori, gen)
        lines.append("arldm dataset:pororo:%s arldm_gen %.17g" % (task, fid))
        print(task, ori.shape, fid)
with open(os.path.join(OUT, "expected_story.txt"), "w") as f:
    f.write("# protocol REAL GEN FID (written by tests/gen_fid_story.py)\n")
    f.write("\n".join(lines) + "\n")
