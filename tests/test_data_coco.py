"""COCO-format data: masks decoded from polygons and RLE match the drawn pixels; boxes follow the
resize and centre crop; categories map to contiguous labels; bad files are clear DataErrors."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ldmcore.config import load
from ldmcore.build import build_dataset
from ldmcore.data.datasets import collate
from ldmcore.data.coco_labels import describe, main, overrides
from ldmcore.data.masks import MaskFormatError, decode_counts, decode_rle, rasterize_polygon
from ldmcore.errors import DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
# listed out of id order on purpose: labels follow the sorted ids 3, 7, 12
CATEGORIES = [{"id": 12, "name": "blob"}, {"id": 3, "name": "tri"}, {"id": 7, "name": "box"}]
CATEGORIES_BY_ID = ("tri", "box", "blob")
TRI, BOX, BLOB = 0, 1, 2


# -- an independent RLE writer, from the format's description ----------------------------------

def runs_of(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, background first (a leading 0 when the first pixel is set)."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def compress(runs: list[int]) -> str:
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            group, x = x & 0x1F, x >> 5
            last = x == -1 if group & 0x10 else x == 0
            out.append(chr(48 + (group if last else group | 0x20)))
            if last:
                break
    return "".join(out)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return (y + 0.5 - cy) ** 2 + (x + 0.5 - cx) ** 2 < r ** 2


# -- the tiny data set --------------------------------------------------------------------------

def write_coco(root: Path) -> dict[str, Any]:
    """Three images: polygons (a), uncompressed + compressed RLE (b), no annotations (c)."""
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    s = 24
    # a: a red rectangle polygon and a green right triangle, pixel centres inside each
    a = np.zeros((s, s, 3), np.uint8)
    rect = np.zeros((s, s), bool)
    rect[4:12, 2:20] = True
    y, x = np.mgrid[:s, :s]
    # corners (4, 12) (4, 22) (14, 22); a centre on an edge counts on the left/top side only
    tri = (x + 0.5 >= 4) & (y + 0.5 < 22) & ((x + 0.5 - 4) < (y + 0.5 - 12))
    a[rect] = RED
    a[tri] = GREEN
    # b: a blue crowd disk (uncompressed RLE) and a red disk (compressed RLE) on top of it
    b = np.zeros((s, s, 3), np.uint8)
    crowd, small = disk(s, s, 12, 12, 9), disk(s, s, 10, 16, 3.5)
    b[crowd] = BLUE
    b[small] = RED
    Image.fromarray(a).save(images / "a.png")
    Image.fromarray(b).save(images / "sub" / "b.png")
    Image.fromarray(np.zeros((16, 32, 3), np.uint8)).save(images / "c.png")

    def rle(mask: np.ndarray, compressed: bool) -> dict[str, Any]:
        runs = runs_of(mask)
        return {"size": list(mask.shape), "counts": compress(runs) if compressed else runs}

    instances = {
        "info": {"description": "tiny"}, "licenses": [],
        "images": [{"id": 5, "file_name": "sub/b.png", "height": s, "width": s},
                   {"id": 1, "file_name": "a.png", "height": s, "width": s},
                   {"id": 9, "file_name": "c.png", "height": 16, "width": 32}],
        "categories": CATEGORIES,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 4, 18, 8], "iscrowd": 0,
             "segmentation": [[2, 4, 20, 4, 20, 12, 2, 12]], "area": 144},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [4, 12, 10, 10], "iscrowd": 0,
             "segmentation": [[4, 12, 4, 22, 14, 22]]},
            {"id": 3, "image_id": 5, "category_id": 12, "bbox": [3, 3, 18, 18], "iscrowd": 1,
             "segmentation": rle(crowd, compressed=False)},
            {"id": 4, "image_id": 5, "category_id": 7, "bbox": [12.5, 6.5, 7, 7], "iscrowd": 1,
             "segmentation": rle(small, compressed=True)}]}
    captions = {"images": instances["images"], "annotations": [
        {"id": 1, "image_id": 1, "caption": "  a red bar over a green triangle \n"},
        {"id": 2, "image_id": 1, "caption": "a second caption"},
        {"id": 3, "image_id": 5, "caption": "a red disk on a blue disk"},
        {"id": 4, "image_id": 404, "caption": "an image of another split"}]}
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "captions.json").write_text(json.dumps(captions))
    expected_a = np.zeros((s, s), np.int64)
    expected_a[rect] = 1 + BOX  # the larger box is painted first
    expected_a[tri] = 1 + TRI
    expected_b = np.zeros((s, s), np.int64)
    expected_b[crowd] = 1 + BLOB
    expected_b[small] = 1 + BOX
    return {"root": root, "images": images, "a": expected_a, "b": expected_b, "size": s,
            "instances": instances, "captions": captions}


@pytest.fixture
def coco(tmp_path: Path) -> dict[str, Any]:
    return write_coco(tmp_path)


def dataset(c: dict[str, Any], **kw: Any):
    kw = {"path": c["images"], "annotations": c["root"] / "instances.json", "image_size": c["size"],
          "missing_captions": "empty", "captions": c["root"] / "captions.json", **kw}
    return build_dataset("coco", **kw)


# -- masks --------------------------------------------------------------------------------------

def test_compressed_counts_decode_to_hand_worked_runs() -> None:
    # "T3": 100 = 4 + 3 * 32, the first group flagged "more" (0x20); "I": the run two before
    # minus 7 (a negative delta, sign bit 0x10); "4": the first run plus 4
    assert decode_counts("324") == [3, 2, 4]
    assert decode_counts("T3") == [100]
    assert decode_counts("0:2I") == [0, 10, 2, 3]
    assert decode_counts("1114") == [1, 1, 1, 5]
    for bad in ("T", "3~"):  # ends inside a run; a character outside 48..111
        with pytest.raises(MaskFormatError):
            decode_counts(bad)
    # column-major: runs fill the first column top to bottom, then the next
    assert decode_rle({"size": [2, 3], "counts": [1, 2, 3]}).tolist() == [[False, True, False],
                                                                          [True, False, False]]


def test_rle_round_trips_and_polygons_cover_pixel_centres() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((17, 23)) < 0.3
    for counts in (runs_of(mask), compress(runs_of(mask))):
        assert np.array_equal(decode_rle({"size": [17, 23], "counts": counts}), mask)
    # the polygon of a COCO box with integer corners covers exactly w x h pixels
    rect = rasterize_polygon([2, 3, 9, 3, 9, 8, 2, 8], 12, 12)
    assert rect.sum() == 35 and rect[3:8, 2:9].all()
    # a triangle covers the pixels whose centres satisfy its three half-planes (closed form)
    y, x = np.mgrid[:30, :30] + 0.5
    tri = rasterize_polygon([0, 0, 20, 0, 0, 20], 30, 30)
    assert np.array_equal(tri, x + y < 20)
    assert abs(tri.sum() - 200) < 20  # about the geometric area, 20 * 20 / 2


def test_decoded_masks_match_the_drawn_pixels(coco: dict[str, Any]) -> None:
    ds = dataset(coco)
    # images in id order: a (1), b (5), c (9); at image_size = the image size, no resampling
    a, b, c = ds[0], ds[1], ds[2]
    assert torch.equal(a["mask"], torch.from_numpy(coco["a"]))
    assert torch.equal(b["mask"], torch.from_numpy(coco["b"]))
    for item in (a, b):
        rgb = ((item["image"] + 1) * 127.5).round().long()
        for label, colour in ((TRI, GREEN), (BOX, RED), (BLOB, BLUE)):
            where = item["mask"] == label + 1
            if where.any():
                assert (rgb[:, where] == torch.tensor(colour)[:, None]).all()
        assert (rgb[:, item["mask"] == 0] == 0).all()
    assert c["mask"].shape == (24, 24) and not c["mask"].any()


def test_labels_follow_sorted_category_ids_and_boxes_are_normalised(coco: dict[str, Any]) -> None:
    ds = dataset(coco)
    assert ds.categories == CATEGORIES_BY_ID
    assert ds.label_of == {3: TRI, 7: BOX, 12: BLOB}
    a, b, c = ds[0], ds[1], ds[2]
    # largest box first
    assert a["labels"].tolist() == [BOX, TRI] and b["labels"].tolist() == [BLOB, BOX]
    assert torch.allclose(a["bboxes"], torch.tensor([[2, 4, 20, 12], [4, 12, 14, 22]]) / 24.0)
    assert torch.allclose(b["bboxes"][1], torch.tensor([12.5, 6.5, 19.5, 13.5]) / 24.0)
    assert c["bboxes"].shape == (0, 4) and c["labels"].shape == (0,)
    batch = collate([ds[i] for i in range(3)])  # ragged boxes stay a list
    assert isinstance(batch["bboxes"], list) and batch["mask"].shape == (3, 24, 24)
    assert "3 categories" in describe(coco["root"] / "instances.json")


def test_boxes_and_mask_follow_the_resize_and_centre_crop(tmp_path: Path) -> None:
    # a 40x80 image at image_size 20: the shorter side 40 -> 20 scales by 1/2 to 20x40, then
    # the centre 20x20 crop keeps original x in [20, 60)
    root = tmp_path / "img"
    root.mkdir()
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(root / "wide.png")
    boxes = {"inside": [30, 10, 20, 10], "outside": [0, 0, 10, 40], "cut": [10, 20, 20, 20]}
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": box,
             "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                               box[1] + box[3], box[0], box[1] + box[3]]]}
            for i, box in enumerate(boxes.values())]
    (tmp_path / "i.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "wide.png", "height": 40, "width": 80}],
        "categories": [{"id": 1, "name": "thing"}], "annotations": anns}))
    item = build_dataset("coco", path=root, annotations=tmp_path / "i.json", image_size=20)[0]
    got = sorted(item["bboxes"].tolist())
    # cut: x 10..30 -> 5..15 resized -> clipped to the crop 10..30 -> 0..5; y 20..40 -> 10..20
    assert np.allclose(got, [[0.0, 0.5, 0.25, 1.0], [0.25, 0.25, 0.75, 0.5]])
    expected = np.zeros((20, 20), np.int64)
    expected[5:10, 5:15] = 1
    expected[10:20, 0:5] = 1
    assert np.array_equal(item["mask"].numpy(), expected)


def test_hflip_moves_image_mask_and_boxes_together(coco: dict[str, Any]) -> None:
    ds = dataset(coco, hflip=True)
    plain = dataset(coco)[0]
    seen = set()
    for _ in range(30):
        item = ds[0]
        flipped = not torch.equal(item["mask"], plain["mask"])
        seen.add(flipped)
        if flipped:
            assert torch.equal(item["mask"], plain["mask"].flip(-1))
            assert torch.equal(item["image"], plain["image"].flip(-1))
            mirrored = plain["bboxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([1, 0, 1, 0])
            assert torch.allclose(item["bboxes"], mirrored, atol=1e-6)
    assert seen == {True, False}


def test_captions_first_per_image_and_missing_ones_named(coco: dict[str, Any]) -> None:
    ds = dataset(coco)
    assert [ds[i]["caption"] for i in range(3)] == ["a red bar over a green triangle",
                                                    "a red disk on a blue disk", ""]
    with pytest.raises(DataError, match=r"1 of 3 images have no caption.*'c.png'.*missing_captions=empty"):
        dataset(coco, missing_captions="error")
    assert "caption" not in dataset(coco, captions=None)[0]


# -- bad input ----------------------------------------------------------------------------------

def _edit(key: str, i: int, **fields: Any):
    def edit(doc: dict[str, Any]) -> None:
        doc[key][i].update(fields)
        for name, value in fields.items():
            if value is None:
                del doc[key][i][name]
    return edit


@pytest.mark.parametrize("edit, words", [
    (_edit("annotations", 0, category_id=8), ["category id 8", "defined category ids: 3, 7, 12"]),
    (_edit("annotations", 1, image_id=2), ["image id 2", "1, 5, 9"]),
    (_edit("annotations", 0, bbox=None), ["annotations[0] lacks 'bbox'"]),
    (_edit("annotations", 0, bbox=[1, 2, -3, 4]), ["[x, y, width, height]"]),
    (_edit("images", 0, file_name="gone.png"), ["'gone.png'", "not under data.path"]),
    (_edit("categories", 1, id=12), ["categories id 12 occurs twice"]),
    (lambda doc: doc.pop("categories"), ["no list 'categories'"]),
])
def test_bad_instances_are_data_errors_naming_the_problem(coco: dict[str, Any], edit, words) -> None:
    doc = json.loads(json.dumps(coco["instances"]))
    edit(doc)
    (coco["root"] / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        dataset(coco)
    for word in words:
        assert word in str(err.value)


def test_unreadable_files_and_bad_segmentations_are_data_errors(coco: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="is not a file"):
        dataset(coco, annotations=coco["root"] / "nope.json")
    with pytest.raises(DataError, match="needs data.path=IMAGE_FOLDER"):
        build_dataset("coco", path=coco["images"])
    text = (coco["root"] / "instances.json").read_text()
    (coco["root"] / "broken.json").write_text(text[:-40])
    with pytest.raises(DataError, match="is not valid JSON"):
        dataset(coco, annotations=coco["root"] / "broken.json")
    doc = json.loads(text)
    doc["annotations"][2]["segmentation"]["size"] = [12, 48]  # as many pixels, another shape
    (coco["root"] / "instances.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"annotation 3 of image 'sub/b.png'.*RLE size \[12, 48\]"):
        dataset(coco)[1]
    assert main([str(coco["root"] / "broken.json")]) == 2


def test_config_takes_coco_paths_and_rejects_unknown_keys(coco: dict[str, Any]) -> None:
    cfg = load(["data=coco", f"data.path={coco['images']}", f"data.annotations={coco['root'] / 'instances.json'}"])
    assert cfg.data.name == "coco" and cfg.data.captions is None and cfg.data.missing_captions == "error"
    from ldmcore.errors import ConfigError
    with pytest.raises(ConfigError, match="annotation"):
        load(["data=coco", "data.path=/x", "data.annotations=/y.json", "+data.annotation_file=/z"])


# -- end to end ---------------------------------------------------------------------------------

def test_text_layout_segmap_model_trains_on_coco_and_samples(coco: dict[str, Any], tmp_path: Path) -> None:
    from tests.test_plugins import SMOKE

    from ldmcore.runfolder import load_run
    from ldmcore.sample import parse_request, run_sampling
    from ldmcore.train import train

    # the overrides the labels tool prints, as printed (shell-quoted)
    printed = describe(coco["root"] / "instances.json").splitlines()[-1].removeprefix("overrides: ")
    assert shlex.split(printed) == overrides(coco["root"] / "instances.json")
    run = train(load(["condition=[text,layout,segmap]", "data=coco", f"data.path={coco['images']}",
                      f"data.annotations={coco['root'] / 'instances.json'}",
                      f"data.captions={coco['root'] / 'captions.json'}", "data.missing_captions=empty",
                      "data.hflip=false", "data.num_workers=0", *shlex.split(printed),
                      f"run_dir={tmp_path / 'run'}",
                      *(o for o in SMOKE if not o.startswith(("data.num_items", "trainer.batch_size",
                                                              "autoencoder.train.batch_size"))),
                      "trainer.batch_size=3", "autoencoder.train.batch_size=3"]))  # the 3 images
    cfg, model, _ = load_run(run.root)
    assert cfg.data.name == "coco" and set(model.conditioner.encoders) == {"text", "layout", "segmap"}
    assert cfg.conditions["layout"]["class_names"] == list(CATEGORIES_BY_ID)
    assert cfg.conditions["segmap"]["num_classes"] == 4
    segmap = np.zeros((16, 16), np.uint8)
    segmap[2:9, 3:10] = 1 + BLOB
    Image.fromarray(segmap).save(tmp_path / "map.png")
    out = run_sampling(parse_request([f"run={run.root}", "cond.text=a red disk on a blue disk",
                                      f"cond.layout=[[0.1,0.1,0.6,0.6,{BLOB}]]",  # label by index
                                      f"cond.segmap={tmp_path / 'map.png'}", "n=2", "precision=fp32",
                                      f"out={tmp_path / 'samples'}"]))
    records = json.loads((out / "samples.json").read_text())["samples"]
    assert len(records) == 2
    assert np.asarray(Image.open(out / records[0]["file"])).shape == (16, 16, 3)
