"""Render the kustomize layouts in deploy/kubernetes/ without kubectl (not installable here).

Only the subset those layouts use: ``namespace``, ``resources`` (files, or directories
holding a kustomization.yaml) and ``patches`` of RFC 6902 JSON patches selected by
``target`` kind and name. Anything else is refused, so a layout never silently renders
differently from ``kubectl kustomize``.
Usage: ``python -m tests.render_kustomize DIR > rendered.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

_KNOWN = {"apiVersion", "kind", "namespace", "resources", "patches"}


class KustomizeError(Exception):
    """A kustomization this renderer cannot render faithfully."""


def render(directory: Path) -> list[dict[str, Any]]:
    """Every object the kustomization in ``directory`` produces, patched, in order."""
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - _KNOWN
    if unknown:
        raise KustomizeError(f"{path}: fields this renderer does not support: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects += render(target)
        else:
            objects += [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
    if "namespace" in spec:
        for obj in objects:
            obj["metadata"]["namespace"] = spec["namespace"]
    for patch in spec.get("patches", []):
        if set(patch) != {"path", "target"} or set(patch["target"]) != {"kind", "name"}:
            raise KustomizeError(f"{path}: only `path` + `target: {{kind, name}}` patches")
        operations = yaml.safe_load((directory / patch["path"]).read_text())
        want = patch["target"]
        hits = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == want["kind"] and obj["metadata"]["name"] == want["name"]
        ]
        if len(hits) != 1:
            raise KustomizeError(f"{path}: patch target {want} matches {len(hits)} objects")
        try:
            objects[hits[0]] = jsonpatch.apply_patch(objects[hits[0]], operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise KustomizeError(f"{path}: {patch['path']} does not apply: {exc}") from None
    return objects


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


if __name__ == "__main__":
    sys.stdout.write(dump(render(Path(sys.argv[1]))))
