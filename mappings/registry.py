"""A cache of compiled mappings that picks up edited files without a restart.

A changed file is compiled again; if the new version fails validation, one clear error is logged and
the last good version stays in service. Only a mapping that never compiled raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from hubbridge.connectors.base import TargetField
from hubbridge.errors import ConfigErrors
from hubbridge.mappings.compile import CompiledMapping, load_mapping

log = structlog.get_logger(__name__)

Signature = tuple[tuple[str, int, int], ...]
Loader = Callable[[Path, Mapping[str, TargetField] | None], CompiledMapping]


def _signature(files: tuple[Path, ...]) -> Signature:
    sig = []
    for f in files:
        try:
            st = os.stat(f)
            sig.append((str(f), st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((str(f), -1, -1))
    return tuple(sig)


@dataclass
class _Entry:
    good: CompiledMapping | None = None
    good_sig: Signature = ()
    targets: Mapping[str, TargetField] | None = None
    refused_sig: Signature | None = None
    checked_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class MappingCache:
    """Compiled mappings by file path, re-checked at most every `check_seconds` (0: on every get)."""

    def __init__(self, check_seconds: float = 1.0, loader: Loader | None = None) -> None:
        self.check_seconds = check_seconds
        self._load: Loader = loader or load_mapping
        self._entries: dict[Path, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, path: Path | str, target_fields: Mapping[str, TargetField] | None = None) -> CompiledMapping:
        """The current good version of the mapping at `path`; raises ConfigErrors only if none ever loaded."""
        key = Path(path).resolve()
        entry = self._entries.get(key)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(key, _Entry())
        now = time.monotonic()
        good = entry.good
        if (
            good is not None
            and now - entry.checked_at < self.check_seconds
            and (target_fields is entry.targets or target_fields == entry.targets)
        ):
            return good
        with entry.lock:
            return self._refresh(key, Path(path), entry, target_fields, now)

    def _refresh(
        self,
        key: Path,
        path: Path,
        entry: _Entry,
        target_fields: Mapping[str, TargetField] | None,
        now: float,
    ) -> CompiledMapping:
        same_targets = target_fields is entry.targets or target_fields == entry.targets
        if entry.good is not None:
            current = _signature(entry.good.files)
            if current == entry.good_sig and same_targets:
                entry.checked_at = now
                return entry.good
        else:
            current = _signature((key,))
        if entry.refused_sig is not None and current == entry.refused_sig and same_targets:
            entry.checked_at = now
            if entry.good is not None:
                return entry.good
        try:
            compiled = self._load(path, target_fields)
        except ConfigErrors as exc:
            entry.refused_sig = current
            entry.checked_at = now
            if entry.good is None:
                raise
            if current != entry.good_sig or not same_targets:
                log.error(
                    "mapping refused; last good version stays in service",
                    mapping=entry.good.name,
                    path=str(path),
                    serving_version=entry.good.version,
                    errors=[str(e) for e in exc.errors],
                )
            return entry.good
        previous = entry.good
        entry.good = compiled
        entry.good_sig = _signature(compiled.files)
        entry.targets = target_fields
        entry.refused_sig = None
        entry.checked_at = now
        if previous is not None and previous.version != compiled.version:
            log.info("mapping reloaded", mapping=compiled.name, path=str(path),
                     version=compiled.version, previous_version=previous.version)
        return compiled

    def clear(self) -> None:
        """Forget every cached mapping."""
        with self._lock:
            self._entries.clear()
