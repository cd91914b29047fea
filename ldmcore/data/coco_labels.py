"""Labels of a COCO instances file, and the plugin overrides that fit them.

``python -m ldmcore.data.coco_labels INSTANCES.json`` prints K (the number of categories), the
label 0..K-1 of each category (sorted by id, as ``data=coco`` assigns them) and the overrides
``conditions.layout.num_classes=K``, ``conditions.layout.class_names=[...]`` and
``conditions.segmap.num_classes=K+1`` to put on the ``ldm train`` command line.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ldmcore.data.coco_json import CocoInstances, load_instances
from ldmcore.errors import DataError


def overrides(annotations: Path) -> list[str]:
    """The Hydra overrides that size the layout and segmap plugins for this file's categories."""
    return _overrides_for(load_instances(Path(annotations), "annotations"))


def _overrides_for(instances: CocoInstances) -> list[str]:
    k = len(instances.category_ids)
    names = json.dumps(list(instances.category_names), separators=(",", ":"))
    return [f"conditions.layout.num_classes={k}", f"conditions.layout.class_names={names}",
            f"conditions.segmap.num_classes={k + 1}"]


def describe(annotations: Path) -> str:
    """The label of each category of an instances JSON and the plugin overrides that fit it."""
    instances = load_instances(Path(annotations), "annotations")
    k = len(instances.category_ids)
    lines = [f"{k} categories; label = index in category-id order:"]
    lines += [f"  {label:4d}  id {cid:<6d} {name}" for label, (cid, name)
              in enumerate(zip(instances.category_ids, instances.category_names))]
    lines.append("overrides: " + " ".join(shlex.quote(o) for o in _overrides_for(instances)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ldmcore.data.coco_labels INSTANCES.json", file=sys.stderr)
        return 2
    try:
        print(describe(Path(args[0])))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
