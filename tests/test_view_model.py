"""The server decides, the browser shows: the study views and top-level fields of contract-10, over real HTTP.

The sandbox EHR launches the app (tests/test_demo_flow.py's setup); every field is asserted
exactly as `/api/studies` and the event stream send it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
import requests

from app.keys import generate_keys
from sandbox.data import study_uid
from sandbox.demo import Demo, serve_demo
from tests.test_demo_flow import events, studies

KEYS = generate_keys()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    tmp = tmp_path_factory.mktemp("view-model")
    with serve_demo(app_options={"APP_KEYS": KEYS, "SESSION_STORE": f"sqlite:///{tmp / 'sessions.db'}"}) as running:
        yield running


def launch(demo: Demo, patient: str, **params) -> requests.Session:
    browser = requests.Session()
    resp = browser.get(f"{demo.base_url}/sandbox/launch", params={"patient": patient, "embedded": "1", **params},
                       timeout=30)
    assert resp.status_code == 200, resp.text
    return browser


def by_uid(data: dict) -> dict[str, dict]:
    return {s["uid"]: s for s in data["studies"]}


# --- current, latest, priors -----------------------------------------------------------------------


def test_the_newest_old_study_is_latest_not_current(demo):
    data = studies(demo, launch(demo, "pat-amy"))
    newest = data["studies"][0]
    assert (newest["uid"], newest["description"]) == (study_uid("amy-osh-ct-head"), "CT HEAD WO CONTRAST")
    assert (newest["current"], newest["latest"]) == (False, True)
    assert [s["uid"] for s in data["studies"] if s["current"]] == []
    assert [s["uid"] for s in data["studies"] if s["latest"]] == [newest["uid"]]


def test_the_study_ordered_in_the_launch_encounter_is_current_and_pinned(demo):
    data = studies(demo, launch(demo, "pat-ben"))
    stat = study_uid("ben-ct-head-stat")
    view = by_uid(data)[stat]
    assert (view["current"], view["latest"], view["prior"], view["prior_rank"]) == (True, True, False, None)
    assert data["pinned"] == {"uid": stat, "priors": []}


def test_a_new_lung_mass_ct_has_the_old_chest_radiograph_as_its_ranked_prior(demo):
    data = studies(demo, launch(demo, "pat-dev"))
    ct, xr = study_uid("dev-ct-chest"), study_uid("dev-xr-chest")
    assert data["pinned"] == {"uid": ct, "priors": [xr]}
    views = by_uid(data)
    assert (views[xr]["prior"], views[xr]["prior_rank"]) == (True, 1)
    assert [uid for uid, v in views.items() if v["prior"]] == [xr]


def test_priors_are_ranked_same_modality_first_with_the_oldest_kept(demo):
    data = studies(demo, launch(demo, "pat-carla"))
    ranked = [study_uid(k) for k in ("carla-mg-2", "carla-mg-1", "carla-mr-breast", "carla-us-breast")]
    assert data["pinned"] == {"uid": study_uid("carla-mg-3"), "priors": ranked}
    assert [by_uid(data)[uid]["prior_rank"] for uid in ranked] == [1, 2, 3, 4]


def test_a_chest_abdomen_pelvis_ct_lists_all_three_regions(demo):
    view = by_uid(studies(demo, launch(demo, "pat-carla")))[study_uid("carla-ct-cap")]
    assert (view["region"], view["region_label"], view["regions"]) == (
        "chest-abdomen-pelvis", "Chest + abdomen + pelvis", ["chest", "abdomen", "pelvis"])


def test_search_text_holds_what_the_search_box_matches(demo):
    view = by_uid(studies(demo, launch(demo, "pat-dev")))[study_uid("dev-ct-chest")]
    assert view["search_text"] == view["search_text"].lower()
    for part in ("ct chest w contrast", view["accession"].lower(), "chest",
                 "new 2.1 cm spiculated left upper lobe mass"):
        assert part in view["search_text"]


# --- attention, signals, acknowledgement -------------------------------------------------------------


def test_a_communicated_critical_result_from_300_days_ago_no_longer_needs_attention(demo):
    view = by_uid(studies(demo, launch(demo, "pat-ben")))[study_uid("ben-pet-ct")]
    assert view["reports"][0]["critical"] is True
    assert view["attention"] == []
    assert view["signals"] == [{"kind": "report", "label": "Final report", "tone": "ok"}]


def test_one_signal_per_meaning_on_the_stat_study(demo):
    view = by_uid(studies(demo, launch(demo, "pat-ben")))[study_uid("ben-ct-head-stat")]
    assert view["signals"] == [{"kind": "priority", "label": "STAT", "tone": "critical"},
                               {"kind": "report", "label": "Preliminary report", "tone": "warning"}]
    assert view["attention"] == [{"code": "stat-order", "label": "STAT order", "acknowledged": None},
                                 {"code": "no-final-report", "label": "No final report", "acknowledged": None}]


def test_name_differs_shows_both_spellings(demo):
    view = by_uid(studies(demo, launch(demo, "pat-ben")))[study_uid("ben-osh-ct-chest")]
    assert {"kind": "identity", "label": "Name differs: Benjamen Okafor (archive) vs Benjamin Okafor (chart)",
            "tone": "warning"} in view["signals"]


def test_an_acknowledged_item_says_by_whom_and_when(demo):
    browser = launch(demo, "pat-ben")
    stat = study_uid("ben-ct-head-stat")
    studies(demo, browser)  # the study must have been shown in this session
    before = datetime.now(UTC).replace(microsecond=0)
    resp = browser.post(f"{demo.base_url}/api/attention/ack", json={"patient": "pat-ben", "uid": stat,
                                                                    "code": "stat-order"}, timeout=10)
    assert resp.status_code == 200, resp.text
    entry = resp.json()
    assert set(entry) == {"by", "at"} and entry["by"].startswith("Practitioner/")
    assert before <= datetime.fromisoformat(entry["at"]) <= datetime.now(UTC) + timedelta(seconds=1)
    view = by_uid(studies(demo, browser))[stat]
    assert view["attention"] == [{"code": "stat-order", "label": "STAT order", "acknowledged": entry},
                                 {"code": "no-final-report", "label": "No final report", "acknowledged": None}]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"patient": "pat-ben", "uid": "1.2.3", "code": "stat-order"}, 404, "No such study in this patient's timeline."),
    ({"patient": "pat-ben", "uid": study_uid("ben-ct-head-stat"), "code": "whatever"}, 400,
     "Unknown attention code 'whatever'; expected one of abnormal-result, critical-result, no-final-report, "
     "stat-order, urgent-order."),
    ({"patient": "pat-amy", "uid": study_uid("ben-ct-head-stat"), "code": "stat-order"}, 400,
     "This acknowledgement names another patient than the one launched; relaunch from the chart."),
    ({"patient": "pat-ben", "uid": 7}, 400, "An acknowledgement needs `patient`, `uid` and `code`."),
], ids=["unknown-study", "unknown-code", "other-patient", "missing-fields"])
def test_a_bad_acknowledgement_is_refused_with_a_clear_message(demo, body, status, message):
    browser = launch(demo, "pat-ben")
    studies(demo, browser)
    resp = browser.post(f"{demo.base_url}/api/attention/ack", json=body, timeout=10,
                        headers={"Accept": "application/json"})
    assert resp.status_code == status
    assert message in resp.text


def test_acknowledgements_belong_to_the_user_who_made_them(demo):
    first = launch(demo, "pat-elena")
    studies(demo, first)
    thyroid = study_uid("elena-us-thyroid")
    resp = first.post(f"{demo.base_url}/api/attention/ack",
                      json={"patient": "pat-elena", "uid": thyroid, "code": "urgent-order"}, timeout=10)
    assert resp.status_code == 200
    again = by_uid(studies(demo, launch(demo, "pat-elena")))[thyroid]  # the same sandbox user, a new launch
    assert again["attention"][0]["acknowledged"] == resp.json()


# --- workflow stage, default view, withheld stubs, archive words ------------------------------------


def test_a_scheduled_order_without_images_is_its_own_row(demo):
    data = studies(demo, launch(demo, "pat-amy"))
    when = datetime.combine(date.today() + timedelta(days=2), datetime.min.time()).replace(hour=14, minute=46,
                                                                                            tzinfo=UTC)
    assert data["pending_orders"] == [{
        "id": "sr-amy-mr-knee-followup", "archive": "ehr", "stage": "scheduled",
        "label": f"Scheduled: MR Knee WO contrast, {when:%b} {when.day}, Riverside Imaging Center",
        "priority": "routine", "date": when.isoformat()}]


def test_an_emergency_encounter_defaults_the_view_to_72_hours(demo):
    assert studies(demo, launch(demo, "pat-ben"))["view"] == {"default_range": "72h", "encounter_class": "EMER"}
    assert studies(demo, launch(demo, "pat-amy"))["view"] == {"default_range": None, "encounter_class": None}


def test_a_study_withheld_on_a_birth_date_conflict_leaves_a_stub_row(demo):
    data = studies(demo, launch(demo, "pat-dev"))
    assert data["withheld"] == [{
        "archive": "pacs", "reason": "birth date differs",
        "summary": f"1 study withheld: birth date differs — XR PELVIS AP, {(date.today() - timedelta(days=1100)).year}",
        "action": "Ask HIM (health information management) to reconcile the record."}]
    assert study_uid("dev-xr-pelvis") not in by_uid(data)


def test_archive_words_for_clinicians_and_detail_for_integrators(demo):
    archives = {a["id"]: a for a in studies(demo, launch(demo, "pat-carla"))["archives"]}
    outside = archives["outside"]
    assert outside["message"] == "Not searched: this archive has no record number for this patient."
    assert "urn:oid" not in outside["message"] and "urn:oid:" in outside["detail"]
    assert (outside["partial"], outside["retry"]) == (False, False)
    assert {k: archives["pacs"][k] for k in ("message", "detail", "partial", "retry")} == {
        "message": None, "detail": None, "partial": False, "retry": False}


# --- the stream sends the same decisions -------------------------------------------------------------


def test_the_stream_sends_the_pinned_study_pending_orders_and_view(demo):
    browser = launch(demo, "pat-amy")
    resp = browser.get(f"{demo.base_url}/api/studies/stream", params={"patient": "pat-amy"}, timeout=60)
    got = events(resp.text)
    whole = studies(demo, browser)
    done = next(data for name, data in got if name == "done")
    assert done["pinned"] == whole["pinned"]
    assert done["pending_orders"] == whole["pending_orders"]
    assert done["view"] == whole["view"] and done["withheld"] == whole["withheld"]
    orders = [data for name, data in got if name == "orders"]
    assert orders and orders[-1] == {"orders": whole["pending_orders"]}
    streamed: dict[str, dict] = {}
    for name, data in got:
        if name == "studies":
            streamed.update((s["uid"], s) for s in data["studies"])
    for uid, view in by_uid(whole).items():
        assert {k: streamed[uid][k] for k in ("current", "latest", "prior", "prior_rank", "regions")} == \
            {k: view[k] for k in ("current", "latest", "prior", "prior_rank", "regions")}


def test_retry_re_searches_only_that_archive_and_answers_the_others_from_the_cache(demo):
    browser = launch(demo, "pat-ben")
    studies(demo, browser)  # every archive answered once: now cached for this session
    resp = browser.get(f"{demo.base_url}/api/studies/stream", params={"patient": "pat-ben", "retry": "pacs"},
                       timeout=60)
    got = events(resp.text)
    statuses = [data for name, data in got if name == "archive"]
    assert sorted(s["id"] for s in statuses) == ["ehr", "outside", "pacs"]
    assert next(s for s in statuses if s["id"] == "pacs")["status"] == "ok"
    done = next(data for name, data in got if name == "done")
    assert done["count"] == len(studies(demo, browser)["studies"])
