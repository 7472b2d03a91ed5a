"""Bytes rendered once per snapshot, by each output for itself.

A snapshot is immutable and compared by identity, so an output keeps its rendering in a
weak map keyed by the snapshot: a hot endpoint answers from memory, and the bytes go when
the refresher replaces (or the pool evicts) the snapshot.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from sidecar.cache.refresher import Snapshot


class Rendered:
    def __init__(self, render: Callable[[Snapshot], bytes]) -> None:
        self._render = render
        self._cache: weakref.WeakKeyDictionary[Snapshot, bytes] = weakref.WeakKeyDictionary()

    def __call__(self, snapshot: Snapshot) -> bytes:
        body = self._cache.get(snapshot)
        if body is None:
            body = self._cache[snapshot] = self._render(snapshot)
        return body
