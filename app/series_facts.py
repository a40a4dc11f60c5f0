"""What a study's images say about it that the study level does not: slice thickness, read on demand for one study.

Used by the order-select warning ("CT head, 5 mm slices") for the one study it names, within the
hook's deadline: DICOM PS3.18 §10.6 SearchForSeries (Modality), then per cross-sectional series
(CT, MR, PT; at most four, in parallel) one SearchForInstances with `includefield=SliceThickness`
and `limit=1`. SliceThickness (0018,0050) is an instance-level attribute; reading one instance
per series is what a viewer's study browser does too.

Verified against the sandbox DICOMweb archive. Documented, not verified here: Orthanc keeps only
its "main DICOM tags" in its index, so it answers SliceThickness from the stored file (slower, still
within the deadline for four series); dcm4chee-arc answers it from its database when configured as
an instance attribute. Any failure simply leaves the fact out of the card.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from . import dicomjson
from .archives.base import ArchiveClient
from .archives.config import ArchiveConfig
from .archives.dicomweb import ACCEPT
from .errors import AppError
from .http import Deadline

log = logging.getLogger(__name__)

CROSS_SECTIONAL = frozenset({"CT", "MR", "PT"})
MAX_SERIES = 4
MAX_BYTES = 512 * 1024


def slice_thicknesses(client: ArchiveClient, base: str, study_uid: str, deadline: Deadline) -> tuple[float, ...]:
    """The distinct slice thicknesses (mm) of the study's cross-sectional series; () when unknown."""
    try:
        answer = client.get(f"{base}/studies/{study_uid}/series", deadline=deadline, accept=ACCEPT,
                            params=[("includefield", "Modality")])
        items = client.json(answer, empty=[])
    except AppError as exc:
        log.info("series of a warned-about study not read: %s", exc.code)
        return ()
    # DICOM JSON read directly (app/dicomjson.py), as on every other path that reads QIDO answers.
    series = [i for i in (items if isinstance(items, list) else []) if isinstance(i, dict)
              and (dicomjson.string(i, "Modality") or "").upper() in CROSS_SECTIONAL
              and dicomjson.string(i, "SeriesInstanceUID")]

    def thickness(series_uid: str) -> float | None:
        try:
            answer = client.get(f"{base}/studies/{study_uid}/series/{series_uid}/instances", deadline=deadline,
                                accept=ACCEPT, params=[("includefield", "SliceThickness"), ("limit", "1")])
            found = client.json(answer, empty=[])
        except AppError:
            return None
        first = found[0] if isinstance(found, list) and found and isinstance(found[0], dict) else None
        values = dicomjson.values(first, "SliceThickness") if first is not None else []
        value = values[0] if values else None
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    uids = [str(dicomjson.string(d, "SeriesInstanceUID")) for d in series[:MAX_SERIES]]
    if not uids:
        return ()
    with ThreadPoolExecutor(max_workers=len(uids), thread_name_prefix="series") as pool:
        values = list(pool.map(thickness, uids))
    return tuple(sorted({v for v in values if v is not None and v > 0}))


def describe(thicknesses: tuple[float, ...]) -> str | None:
    """ "5 mm slices", "1.25 to 5 mm slices"; None when unknown."""
    if not thicknesses:
        return None
    low, high = f"{thicknesses[0]:g}", f"{thicknesses[-1]:g}"
    return f"{low} mm slices" if low == high else f"{low} to {high} mm slices"


class FactsCache:
    """Slice thicknesses by (archive, study UID), bounded: a study's images do not change once acquired."""

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], tuple[float, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> tuple[float, ...] | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: tuple[str, str], value: tuple[float, ...]) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def for_study(archives: dict[str, ArchiveConfig], sources: list[str], make_client: Callable[[ArchiveConfig],
              ArchiveClient], iss: str, study_uid: str, deadline: Deadline,
              cache: FactsCache | None = None) -> tuple[float, ...]:
    """Slice thicknesses from the first DICOMweb archive that holds the study, if any (cached when known)."""
    for source in sources:
        archive = archives.get(source)
        if archive is None or archive.kind != "dicomweb":
            continue
        known = cache.get((archive.id, study_uid)) if cache is not None else None
        if known is not None:
            return known
        try:
            client = make_client(archive)
        except AppError as exc:
            log.info("archive %s: no credentials for series facts (%s)", archive.id, exc.code)
            return ()
        found = slice_thicknesses(client, archive.resolved_base(iss).rstrip("/"), study_uid, deadline)
        if found and cache is not None:
            cache.put((archive.id, study_uid), found)
        return found
    return ()
