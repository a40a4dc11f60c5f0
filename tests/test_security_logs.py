"""PHI in logs: hostile archive values never reach the app log; access entries stay out of it (finding 8)."""

from __future__ import annotations

import logging
import threading

import pydicom.config
from test_archive_dicomweb import pacs, search, study_json

HOSTILE_NAME = "EVIL^<img src=x onerror=alert(1)>^^^^^^^^^^^"
HOSTILE_BIRTH = "1970-13-45<b>"
LONG_DESCRIPTION = "SECRET-DESCRIPTION-" * 5


def test_hostile_dicom_values_are_not_quoted_into_the_log(httpserver, jane, caplog):
    caplog.set_level(logging.DEBUG)
    httpserver.expect_request("/dicom-web/studies").respond_with_json([
        study_json("1.1", **{"00100010": {"vr": "PN", "Value": [{"Alphabetic": HOSTILE_NAME}]},
                             "00081030": {"vr": "LO", "Value": [LONG_DESCRIPTION]}}),
        study_json("1.2", **{"00100030": {"vr": "DA", "Value": [HOSTILE_BIRTH]}}),
    ])
    httpserver.expect_request("/dicom-web/studies/1.1/series").respond_with_json([])
    result, _ = search(pacs(httpserver.url_for("/dicom-web")), jane)
    for value in ("onerror", "1970-13-45", "SECRET-DESCRIPTION"):
        assert value not in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    # An unreadable birth date never hides an identifier-matched study (issue 10): it is shown with
    # a badge, and the value itself is quoted nowhere.
    assert sorted(s.uid for s in result.studies) == ["1.1", "1.2"]
    assert "identity: birth date unreadable" in next(s for s in result.studies if s.uid == "1.2").badges


def test_pydicom_validation_is_set_once_for_every_thread():
    import app.archives.dicomweb  # noqa: F401  # importing the reader sets it, at start-up

    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(pydicom.config.settings.reading_validation_mode))
    worker.start()
    worker.join(timeout=10)
    assert seen == [pydicom.config.IGNORE]


def test_the_access_logger_does_not_propagate_to_the_general_log(tmp_path):
    from app import create_app

    create_app({"LAUNCH_CONFIG": {"client_id": "c", "client_name": "c", "scope": "launch",
                                  "issuers": [{"iss": "https://ehr.example.org/fhir"}]},
                "SESSION_STORE": f"sqlite:///{tmp_path / 's.db'}", "ARCHIVES": ()})
    assert logging.getLogger("app.access").propagate is False
