"""COCO-format JSON files, read and checked: an instances file and an optional captions file.

Only the fields a dataset item needs are required; others (``info``, ``licenses``, ``area``,
``supercategory`` ...) are ignored. Everything a user's file can get wrong (not JSON, a missing
field, an annotation naming an image or category id the file does not define) is a
``DataError`` that names the file, the record and what is valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldmcore.errors import DataError

IMAGE_FIELDS = ("id", "file_name", "height", "width")
ANNOTATION_FIELDS = ("image_id", "category_id", "bbox")
CATEGORY_FIELDS = ("id", "name")
CAPTION_FIELDS = ("image_id", "caption")


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int
    annotations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CocoInstances:
    """Images (sorted by id) with their annotations, and the categories sorted by id.

    Label ``k`` (0..K-1) is the ``k``-th category in id order: ``category_ids[k]`` and
    ``category_names[k]``; ``label_of`` maps a category id to its label.
    """

    images: list[CocoImage]
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]

    @property
    def label_of(self) -> dict[int, int]:
        return {cid: k for k, cid in enumerate(self.category_ids)}


def read_json(path: Path, option: str) -> dict[str, Any]:
    """The JSON object in ``path`` (given as config ``option``), or a DataError saying why not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{option}={str(path)!r} is not a file; give a COCO-format JSON file.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{option}={str(path)!r} is not valid JSON ({exc}); give a COCO-format "
                        f"JSON file.") from None
    if not isinstance(doc, dict):
        raise DataError(f"{option}={str(path)!r} holds a JSON {type(doc).__name__}, not the "
                        f"object of a COCO file (keys 'images', 'annotations', ...).")
    return doc


def records(doc: dict[str, Any], key: str, fields: tuple[str, ...], where: str) -> list[dict[str, Any]]:
    """``doc[key]``: a list of objects, each holding ``fields``."""
    items = doc.get(key)
    if not isinstance(items, list):
        raise DataError(f"{where} has no list {key!r} (found keys: {sorted(doc)}); a COCO file "
                        f"holds 'images', 'annotations' and, for instances, 'categories'.")
    for i, item in enumerate(items):
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise DataError(f"{where}: {key}[{i}] lacks {', '.join(map(repr, missing))}; each "
                            f"entry of {key!r} needs {', '.join(map(repr, fields))}.")
    return items


def _ids(items: list[dict[str, Any]], key: str, where: str) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for item in items:
        i = item["id"]
        if not isinstance(i, int):
            raise DataError(f"{where}: {key} id {i!r} is not an integer.")
        if i in by_id:
            raise DataError(f"{where}: {key} id {i} occurs twice; ids must be unique.")
        by_id[i] = item
    return by_id


def _unknown(what: str, value: Any, valid: dict[int, Any], where: str, i: int, key: str) -> DataError:
    shown = ", ".join(map(str, sorted(valid)[:12])) + (" ..." if len(valid) > 12 else "")
    return DataError(f"{where}: {key}[{i}] names {what} {value!r}, which the file does not "
                     f"define; defined {what}s: {shown or 'none'}.")


def load_instances(path: Path, option: str = "data.annotations") -> CocoInstances:
    """Read an instances JSON: images, annotations (boxes, segmentations) and categories."""
    where = f"{option}={str(path)!r}"
    doc = read_json(path, option)
    images = _ids(records(doc, "images", IMAGE_FIELDS, where), "images", where)
    categories = _ids(records(doc, "categories", CATEGORY_FIELDS, where), "categories", where)
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for i, ann in enumerate(records(doc, "annotations", ANNOTATION_FIELDS, where)):
        if ann["image_id"] not in images:
            raise _unknown("image id", ann["image_id"], images, where, i, "annotations")
        if ann["category_id"] not in categories:
            raise _unknown("category id", ann["category_id"], categories, where, i, "annotations")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and box[2] >= 0 and box[3] >= 0):
            raise DataError(f"{where}: annotations[{i}].bbox is {box!r}; COCO boxes are "
                            f"[x, y, width, height] in pixels, width and height >= 0.")
        by_image[ann["image_id"]].append(ann)
    for image in images.values():
        if not all(isinstance(image[k], int) and image[k] > 0 for k in ("height", "width")):
            raise DataError(f"{where}: image {image['id']} has height {image['height']!r} and "
                            f"width {image['width']!r}; both must be positive integers.")
    order = sorted(categories)
    return CocoInstances(
        images=[CocoImage(i, str(images[i]["file_name"]), images[i]["height"], images[i]["width"],
                          by_image[i]) for i in sorted(images)],
        category_ids=tuple(order), category_names=tuple(str(categories[c]["name"]) for c in order))


def load_captions(path: Path, image_ids: set[int], option: str = "data.captions") -> dict[int, str]:
    """The first caption (in file order, stripped) of each of ``image_ids`` in a captions JSON.

    Captions of other images are skipped, so the full captions file of a split serves an
    instances file cut down to some of its images.
    """
    where = f"{option}={str(path)!r}"
    doc = read_json(path, option)
    captions: dict[int, str] = {}
    for i, ann in enumerate(records(doc, "annotations", CAPTION_FIELDS, where)):
        if not isinstance(ann["caption"], str):
            raise DataError(f"{where}: annotations[{i}].caption is not a string.")
        if ann["image_id"] in image_ids:
            captions.setdefault(ann["image_id"], ann["caption"].strip())
    return captions
