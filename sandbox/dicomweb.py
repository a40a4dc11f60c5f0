"""The sandbox DICOMweb archive (``/dicomweb``): QIDO-RS search, WADO-RS metadata/retrieve/rendered.

All DICOM JSON is produced by pydicom's ``Dataset.to_json_dict`` (PS3.18 Annex F). Matching
follows PS3.4 C.2.2.2: single value, wildcard (``*``, ``?``), list (comma) and range (dates)
matching. PatientID matching is exact unless the sandbox is configured with
``dicomweb_patient_id_case_insensitive`` - then, like an Orthanc that normalises identifiers, a
query for ``SB100001`` also returns the trap study of another patient stored as ``sb100001``.
A query that omits IssuerOfPatientID also returns the other clinic's ``SB100001`` (see data.py).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Response, request
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from . import dicomgen
from .data import SandboxSeries, SandboxStudy
from .runtime import dicomweb_base, runtime

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")
DICOM_JSON = "application/dicom+json"

# PS3.18 Table 10.6.3-3/4/5: attributes returned by default at each level.
STUDY_DEFAULT = ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
                 "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_DEFAULT = ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "StudyInstanceUID",
                  "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate", "InstanceAvailability")
INSTANCE_DEFAULT = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                    "SeriesInstanceUID", "StudyInstanceUID")
STUDY_MATCH = {"PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "StudyDate",
               "ModalitiesInStudy", "AccessionNumber", "StudyInstanceUID", "StudyDescription",
               "ReferringPhysicianName"}
SERIES_MATCH = {"Modality", "SeriesInstanceUID", "SeriesNumber", "BodyPartExamined"}
INSTANCE_MATCH = {"SOPInstanceUID", "SOPClassUID", "InstanceNumber"}
CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "accept", "viewport", "quality", "charset"}
MAX_LIMIT = 10_000


class DicomwebError(Exception):
    """A client error in a DICOMweb request, answered as plain text with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@bp.errorhandler(DicomwebError)
def _error(exc: DicomwebError):
    return Response(exc.message, exc.status, mimetype="text/plain")


@bp.before_request
def _auth_and_faults():
    rt = runtime()
    creds = rt.config.dicomweb_basic_auth
    if creds is not None:
        auth = request.authorization
        if auth is None or auth.type != "basic" or not (
                secrets.compare_digest((auth.username or "").encode(), creds[0].encode())
                and secrets.compare_digest((auth.password or "").encode(), creds[1].encode())):
            return Response("authentication required", 401, {"WWW-Authenticate": 'Basic realm="sandbox-pacs"'})
    return rt.disturb("dicomweb")


def _studies() -> dict[str, SandboxStudy]:
    rt = runtime()
    return rt.pacs_by_uid


def _study(uid: str) -> SandboxStudy:
    study = _studies().get(uid)
    if study is None:
        raise DicomwebError(404, f"Study {uid} is not in this archive.")
    return study


def _series(study: SandboxStudy, uid: str) -> SandboxSeries:
    for series in study.series:
        if series.uid == uid:
            return series
    raise DicomwebError(404, f"Series {uid} is not in study {study.uid}.")


def _instance(study: SandboxStudy, series: SandboxSeries, uid: str) -> Dataset:
    for ds in dicomgen.study_datasets(study):
        if ds.SOPInstanceUID == uid and ds.SeriesInstanceUID == series.uid:
            return ds
    raise DicomwebError(404, f"Instance {uid} is not in series {series.uid}.")


def _keyword(name: str) -> str:
    """An attribute keyword from a keyword or an 8-hex-digit tag (PS3.18 8.3.4.1)."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or name
    return name


def _string_match(have: str, want: str, *, case_insensitive: bool = False) -> bool:
    if case_insensitive:
        have, want = have.upper(), want.upper()
    if "*" in want or "?" in want:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in want)
        return re.fullmatch(pattern, have, flags=re.DOTALL) is not None
    return have == want


def _date_match(have: str, want: str) -> bool:
    if "-" not in want:
        return have == want
    low, _, high = want.partition("-")
    return (not low or have >= low) and (not high or have <= high)


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    elem = ds.data_element(keyword)
    if elem is None:  # only for a string that is not a DICOM keyword, which `in` has already ruled out
        return []
    value = elem.value
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def _matches(ds: Dataset, keyword: str, want: str) -> bool:
    if want == "" or want == "*":
        return True
    have = _values(ds, keyword)
    if not have:
        return False
    options = [w for w in re.split(r"[,\\]", want) if w] if keyword.endswith("UID") or keyword in (
        "ModalitiesInStudy", "Modality") else [want]
    ci = keyword == "PatientName" or (keyword == "PatientID" and runtime().config.dicomweb_patient_id_case_insensitive)
    for h in have:
        for w in options:
            if keyword.endswith("Date"):
                if _date_match(h, w):
                    return True
            elif _string_match(h, w, case_insensitive=ci):
                return True
    return False


def _query(allowed: set[str]) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(matching keys, includefields, ignored keys) from the query string."""
    filters, include, ignored = [], [], []
    for name, value in request.args.items(multi=True):
        if name == "includefield":
            include += [_keyword(v) for v in value.split(",") if v]
            continue
        if name in CONTROL:
            continue
        keyword = _keyword(name)
        if keyword in allowed:
            filters.append((keyword, value))
        else:
            ignored.append(name)
    return filters, include, ignored


def _int_arg(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise DicomwebError(400, f'Argument "{name}" must be a non-negative integer.')
    return min(int(raw), maximum)


def _select(full: Dataset, defaults: Iterable[str], filters: list[tuple[str, str]], include: list[str],
            retrieve_url: str) -> dict[str, Any]:
    keep = set(defaults) | {k for k, _ in filters}
    everything = "all" in include
    keep |= set(include)
    out = Dataset()
    for elem in full:
        if everything or elem.keyword in keep:
            out.add(elem)
    out.RetrieveURL = retrieve_url
    return out.to_json_dict()


def _json(items: list[dict[str, Any]], ignored: list[str]) -> Response:
    headers = {}
    if ignored:
        # PS3.18 8.3.4.6: unsupported matching keys are ignored and reported in a Warning header.
        headers["Warning"] = f'299 sandbox-pacs "The following parameters were ignored: {", ".join(ignored)}"'
    return Response(json.dumps(items), 200, headers, mimetype=DICOM_JSON)


def _page(items: list[Any]) -> list[Any]:
    offset = _int_arg("offset", 0, 1_000_000)
    limit = _int_arg("limit", MAX_LIMIT, MAX_LIMIT)
    return items[offset: offset + limit]


def _candidates(filters: list[tuple[str, str]]) -> Iterable[SandboxStudy]:
    """A cheap pre-filter on PatientID so a 5000-study archive does not build 5000 datasets."""
    wanted = [v for k, v in filters if k == "PatientID" and v and not set(v) & set("*?,\\")]
    studies = _studies().values()
    if not wanted:
        return studies
    ci = runtime().config.dicomweb_patient_id_case_insensitive
    want = wanted[0].upper() if ci else wanted[0]
    return [s for s in studies if (s.dicom_patient.patient_id.upper() if ci else s.dicom_patient.patient_id) == want]


@bp.get("/studies")
def search_studies():
    """QIDO-RS SearchForStudies."""
    filters, include, ignored = _query(STUDY_MATCH)
    base = dicomweb_base()
    found = []
    for study in _candidates(filters):
        full = dicomgen.study_level_dataset(study)
        if all(_matches(full, k, v) for k, v in filters):
            found.append((study, full))
    found.sort(key=lambda pair: (pair[0].started, pair[0].uid))
    items = [_select(full, STUDY_DEFAULT, filters, include, f"{base}/studies/{study.uid}")
             for study, full in _page(found)]
    return _json(items, ignored)


@bp.get("/studies/<study_uid>/series")
def search_series(study_uid: str):
    """QIDO-RS SearchForSeries within a study."""
    study = _study(study_uid)
    filters, include, ignored = _query(SERIES_MATCH)
    base = dicomweb_base()
    items = []
    for series in study.series:
        full = dicomgen.series_level_dataset(study, series)
        if all(_matches(full, k, v) for k, v in filters):
            items.append(_select(full, SERIES_DEFAULT, filters, include,
                                 f"{base}/studies/{study.uid}/series/{series.uid}"))
    return _json(_page(items), ignored)


@bp.get("/studies/<study_uid>/series/<series_uid>/instances")
def search_instances(study_uid: str, series_uid: str):
    """QIDO-RS SearchForInstances within a series."""
    study = _study(study_uid)
    series = _series(study, series_uid)
    filters, include, ignored = _query(INSTANCE_MATCH)
    base = dicomweb_base()
    items = []
    for ds in dicomgen.study_datasets(study):
        if ds.SeriesInstanceUID != series.uid or not all(_matches(ds, k, v) for k, v in filters):
            continue
        items.append(_select(_without_pixels(ds), INSTANCE_DEFAULT, filters, include,
                             f"{base}/studies/{study.uid}/series/{series.uid}/instances/{ds.SOPInstanceUID}"))
    return _json(_page(items), ignored)


def _without_pixels(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.keyword != "PixelData":
            out.add(elem)
    return out


def _metadata(datasets: list[Dataset], study: SandboxStudy) -> Response:
    base = dicomweb_base()
    items = []
    for ds in datasets:
        url = f"{base}/studies/{study.uid}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"

        def bulk(_elem: Any, url: str = url) -> str:
            return url

        items.append(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=bulk))
    return _json(items, [])


@bp.get("/studies/<study_uid>/metadata")
def study_metadata(study_uid: str):
    """WADO-RS RetrieveStudyMetadata (PixelData as a BulkDataURI)."""
    study = _study(study_uid)
    return _metadata(dicomgen.study_datasets(study), study)


@bp.get("/studies/<study_uid>/series/<series_uid>/metadata")
def series_metadata(study_uid: str, series_uid: str):
    study = _study(study_uid)
    series = _series(study, series_uid)
    return _metadata([d for d in dicomgen.study_datasets(study) if d.SeriesInstanceUID == series.uid], study)


def _multipart(parts: list[bytes], content_type: str) -> Response:
    boundary = secrets.token_hex(16)
    chunks = []
    for part in parts:
        chunks += [f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode(), part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(chunks), 200, {
        "Content-Type": f'multipart/related; type="{content_type}"; boundary={boundary}'})


@bp.get("/studies/<study_uid>")
def retrieve_study(study_uid: str):
    """WADO-RS RetrieveStudy as multipart/related; type="application/dicom"."""
    return _multipart(dicomgen.study_files_bytes(_study(study_uid)), "application/dicom")


@bp.get("/studies/<study_uid>/series/<series_uid>")
def retrieve_series(study_uid: str, series_uid: str):
    """WADO-RS RetrieveSeries as multipart/related; type="application/dicom"."""
    study = _study(study_uid)
    series = _series(study, series_uid)
    return _multipart([dicomgen.to_part10(d) for d in dicomgen.study_datasets(study)
                       if d.SeriesInstanceUID == series.uid], "application/dicom")


@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>")
def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str):
    study = _study(study_uid)
    ds = _instance(study, _series(study, series_uid), sop_uid)
    return _multipart([dicomgen.to_part10(ds)], "application/dicom")


@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/frames/<frames>")
def retrieve_frames(study_uid: str, series_uid: str, sop_uid: str, frames: str):
    study = _study(study_uid)
    ds = _instance(study, _series(study, series_uid), sop_uid)
    if frames != "1":
        raise DicomwebError(404, "These instances have a single frame (frame 1).")
    return _multipart([bytes(ds.PixelData)], "application/octet-stream")


# --- rendered and thumbnail ---------------------------------------------------------------------


def _viewport(default: tuple[int, int] | None) -> tuple[int, int] | None:
    raw = request.args.get("viewport")
    if raw is None:
        return default
    match = re.fullmatch(r"(\d{1,4}),(\d{1,4})", raw)
    if not match or not all(0 < int(v) <= 4096 for v in match.groups()):
        raise DicomwebError(400, 'Argument "viewport" must be "width,height" in pixels (1-4096).')
    return int(match[1]), int(match[2])


def _image_format() -> str:
    wanted = request.args.get("accept")
    if wanted:
        options = {"image/png": "png", "image/jpeg": "jpeg"}
        if wanted not in options:
            raise DicomwebError(406, "Rendered media types are image/png and image/jpeg.")
        return options[wanted]
    best = request.accept_mimetypes.best_match(["image/png", "image/jpeg"]) if request.accept_mimetypes else "image/png"
    if best is None:
        raise DicomwebError(406, "Rendered media types are image/png and image/jpeg.")
    return "jpeg" if best == "image/jpeg" else "png"


def _rendered(pick: Callable[[], Dataset], default_viewport: tuple[int, int] | None) -> Response:
    fmt = _image_format()
    viewport = _viewport(default_viewport)
    return Response(dicomgen.render(pick(), viewport, fmt), 200, mimetype=f"image/{fmt}")


def _representative(study: SandboxStudy, series: SandboxSeries | None = None) -> Dataset:
    series = series or study.series[0]
    datasets = [d for d in dicomgen.study_datasets(study) if d.SeriesInstanceUID == series.uid]
    return datasets[len(datasets) // 2]


for _kind, _default in (("rendered", None), ("thumbnail", (128, 128))):

    def _study_image(study_uid: str, _d=_default) -> Response:
        # Study/series-level rendered: one representative image, not every frame (a simplification
        # of PS3.18 9.5, documented for the sandbox).
        study = _study(study_uid)
        return _rendered(lambda: _representative(study), _d)

    def _series_image(study_uid: str, series_uid: str, _d=_default) -> Response:
        study = _study(study_uid)
        series = _series(study, series_uid)
        return _rendered(lambda: _representative(study, series), _d)

    def _instance_image(study_uid: str, series_uid: str, sop_uid: str, _d=_default) -> Response:
        study = _study(study_uid)
        series = _series(study, series_uid)
        return _rendered(lambda: _instance(study, series, sop_uid), _d)

    bp.add_url_rule(f"/studies/<study_uid>/{_kind}", f"study_{_kind}", _study_image)
    bp.add_url_rule(f"/studies/<study_uid>/series/<series_uid>/{_kind}", f"series_{_kind}", _series_image)
    bp.add_url_rule(f"/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/{_kind}",
                    f"instance_{_kind}", _instance_image)

