"""Body regions, relevant priors, the current study and "needs attention" (app/priors.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from app import priors
from app.models import LaunchContext, Order, Report, Study

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def study(uid: str = "1.2.3", *, days_ago: float | None = 10, modalities=("CT",), description=None,
          body_sites=(), procedure_codes=(), reports=(), orders=()) -> Study:
    return Study(uid=uid, started=NOW - timedelta(days=days_ago) if days_ago is not None else None,
                 modalities=tuple(modalities), description=description, body_sites=tuple(body_sites),
                 procedure_codes=tuple(procedure_codes), reports=list(reports), orders=list(orders))


def ctx(*refs: str) -> LaunchContext:
    return LaunchContext(iss="https://ehr.example/fhir", patient_id="p1", granted_scopes=frozenset(),
                         fhir_context=refs)


# --- body region ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("body_sites", "expected"), [
    (["51185008"], "chest"),
    (["http://snomed.info/sct|72696002"], "lower-limb"),  # knee
    (["12738006"], "head"),  # brain
    (["69748006"], "neck"),  # thyroid
    (["80891009"], "chest"),  # heart
    (["64033007"], "abdomen"),  # kidney
    (["818982008"], "abdomen-pelvis"),
    (["38266002"], "whole-body"),
    (["KNEE"], "lower-limb"),
    (["LSPINE"], "spine"),
    (["BREAST"], "breast"),
    (["ABDOMENPELVIS"], "abdomen-pelvis"),
    (["WHOLEBODY", "WHOLEBODY"], "whole-body"),
    (["SHOULDER"], "upper-limb"),
    (["HIP"], "pelvis"),
    (["CHEST", "ABDOMEN", "PELVIS"], "chest-abdomen-pelvis"),
    (["ABDOMEN", "PELVIS"], "abdomen-pelvis"),
    (["Knee region structure"], "lower-limb"),  # display text only
    (["999999999"], None),
])
def test_body_region_from_body_sites(body_sites, expected):
    assert priors.body_region(study(body_sites=body_sites)) == expected


@pytest.mark.parametrize(("codes", "expected"), [
    (["http://loinc.org|24590-2"], "head"),  # MR Brain
    (["36643-5"], "chest"),  # XR Chest 2 views
    (["42274-1"], "chest-abdomen-pelvis"),
    (["24606-6"], "breast"),
    (["71046"], "chest"),  # CPT chest radiograph
    (["73721"], "lower-limb"),  # CPT MR knee
    (["00000-0"], None),
])
def test_body_region_from_procedure_codes(codes, expected):
    assert priors.body_region(study(procedure_codes=codes)) == expected


@pytest.mark.parametrize(("description", "expected"), [
    ("XR CHEST 2 VIEWS", "chest"),
    ("MRI BRAIN WO CONTRAST", "head"),
    ("CT HEAD WO CONTRAST", "head"),
    ("US ABDOMEN COMPLETE", "abdomen"),
    ("CT ABD/PELVIS W CONTRAST", "abdomen-pelvis"),
    ("CT CHEST/ABD/PELVIS W CONTRAST", "chest-abdomen-pelvis"),
    ("MRI KNEE LEFT WO CONTRAST", "lower-limb"),
    ("XR LUMBAR SPINE 2-3 VIEWS", "spine"),
    ("MR THORACIC SPINE", "spine"),
    ("PET/CT SKULL BASE TO MID THIGH", "whole-body"),
    ("NM BONE SCAN WHOLE BODY", "whole-body"),
    ("NM MYOCARDIAL PERFUSION SPECT", "chest"),
    ("MAMMO SCREENING BILATERAL", "breast"),
    ("US BREAST LEFT LIMITED", "breast"),
    ("US THYROID", "neck"),
    ("US RENAL COMPLETE", "abdomen"),
    ("XR PELVIS AP", "pelvis"),
    ("xr wrist right", "upper-limb"),
    ("CT for headache", None),  # "HEADACHE" is not the word HEAD
    ("Outside study", None),
])
def test_body_region_from_description(description, expected):
    assert priors.body_region(study(description=description)) == expected


def test_body_sites_outrank_procedure_codes_and_description():
    s = study(body_sites=["KNEE"], procedure_codes=["36643-5"], description="XR CHEST")
    assert priors.body_region(s) == "lower-limb"


def test_a_procedure_naming_more_anatomy_than_its_series_counts_whole():
    s = study(body_sites=["ABDOMEN"], description="CT CHEST/ABDOMEN/PELVIS W CONTRAST")
    assert priors.body_region(s) == "chest-abdomen-pelvis"
    assert priors.regions(s) == ["chest", "abdomen", "pelvis"]


def test_a_multi_region_study_is_a_prior_for_each_region():
    cap = study("1.1", days_ago=300, modalities=["CT"], description="CT CHEST ABDOMEN PELVIS W CONTRAST")
    chest_ct = study("1.2", days_ago=1, modalities=["CT"], description="CT CHEST WO CONTRAST")
    pelvis_mr = study("1.3", days_ago=1, modalities=["MR"], description="MR PELVIS")
    assert priors.relevant_priors(chest_ct, [cap]) == {"1.1"}
    assert priors.relevant_priors(pelvis_mr, [cap]) == {"1.1"}


def test_a_new_lung_mass_on_ct_finds_the_old_chest_radiograph_and_ct():
    current = study("1.1", days_ago=0, modalities=["CT"], description="CT CHEST W CONTRAST")
    radiograph = study("1.2", days_ago=400, modalities=["CR"], description="XR CHEST 2 VIEWS")
    old_ct = study("1.3", days_ago=900, modalities=["CT"], description="CT CHEST/ABD/PELVIS")
    assert priors.relevant_priors(current, [radiograph, old_ct]) == {"1.2", "1.3"}


def test_ranked_priors_put_the_most_recent_first_and_keep_the_oldest():
    current = study("c", days_ago=0, modalities=["CT"], description="CT CHEST")
    found = [study(f"p{n}", days_ago=100 * n, modalities=["CT"], description="CT CHEST") for n in range(1, 7)]
    ranked = [s.uid for s in priors.ranked_priors(current, found)]
    assert ranked == ["p1", "p2", "p3", "p6", "p4", "p5"]


def test_ranked_priors_prefer_the_same_modality_among_the_recent():
    current = study("c", days_ago=0, modalities=["CT"], description="CT CHEST")
    xr = study("xr", days_ago=10, modalities=["CR"], description="XR CHEST")
    ct = study("ct", days_ago=20, modalities=["CT"], description="CT CHEST")
    assert [s.uid for s in priors.ranked_priors(current, [xr, ct])] == ["ct", "xr"]


def test_every_mapped_region_has_a_label():
    targets = {*priors.SNOMED_REGIONS.values(), *priors.DICOM_REGIONS.values(),
               *priors.PROCEDURE_REGIONS.values(), *priors.KEYWORDS}
    assert targets <= set(priors.REGIONS)
    assert priors.region_label("lower-limb") == "Lower limb"
    assert priors.region_label(None) is None


# --- comparability and relevant priors -----------------------------------------------------------

@pytest.mark.parametrize(("a", "region_a", "b", "region_b", "expected"), [
    (["CT"], "chest", ["CT"], "chest", True),
    (["CT"], "chest", ["MR"], "chest", True),
    (["CT", "PT"], "whole-body", ["CT"], "chest", True),  # PET/CT staging vs a chest CT
    (["PT"], "whole-body", ["NM"], "whole-body", True),
    (["CR"], "chest", ["DX"], "chest", True),
    (["CR"], "chest", ["CT"], "chest", True),  # a new nodule on CT is checked against old radiographs
    (["DX"], "chest", ["CT"], "chest-abdomen-pelvis", True),
    (["CR"], "head", ["CT"], "head", False),  # skull radiographs are not read against a head CT
    (["DX"], "lower-limb", ["MR"], "lower-limb", True),  # a knee MR is read with its radiographs
    (["US"], "chest", ["CT"], "chest", False),
    (["MG"], "breast", ["MG"], "breast", True),
    (["MG"], "breast", ["US"], "breast", True),  # breast work-up
    (["MR"], "breast", ["MG"], "breast", True),
    (["MG"], "breast", ["CT"], "breast", False),
    (["US"], "abdomen", ["CT"], "abdomen-pelvis", True),
    (["US"], "neck", ["CT"], "neck", True),
    (["US"], "lower-limb", ["MR"], "lower-limb", False),  # ultrasound group is neck/abdomen/pelvis only
    (["CT"], "head", ["CT"], "chest", False),  # different anatomy
    (["XA"], "chest", ["CT"], "chest", False),
    (["XA"], "chest", ["XA"], "chest", True),
    (["CT"], None, ["CT"], "chest", False),  # unknown region: never a relevant prior
    (["SR"], "chest", ["SR"], "chest", False),  # not images
    (["CT", "SR"], "chest", ["SR", "CT"], "chest", True),
])
def test_comparable(a, region_a, b, region_b, expected):
    assert priors.comparable(a, b, region_a, region_b) is expected
    assert priors.comparable(b, a, region_b, region_a) is expected


def test_relevant_priors_are_earlier_same_region_comparable():
    current = study("1.1", days_ago=1, modalities=["CT"], description="CT HEAD WO CONTRAST")
    others = [
        study("1.2", days_ago=300, modalities=["MR"], description="MRI BRAIN"),  # prior
        study("1.3", days_ago=900, modalities=["CT"], description="CT HEAD"),  # prior
        study("1.4", days_ago=200, modalities=["CT"], description="CT CHEST"),  # other region
        study("1.5", days_ago=0, modalities=["CT"], description="CT HEAD"),  # later than current
        study("1.6", days_ago=None, modalities=["CT"], description="CT HEAD"),  # undated
        study("1.7", days_ago=100, modalities=["CR"], description="XR SKULL"),  # not comparable
    ]
    assert priors.relevant_priors(current, [current, *others]) == {"1.2", "1.3"}


def test_an_undated_current_study_has_no_priors():
    current = study("1.1", days_ago=None, description="CT HEAD")
    assert priors.relevant_priors(current, [study("1.2", days_ago=10, description="CT HEAD")]) == set()


# --- the current study ----------------------------------------------------------------------------

def test_current_study_from_imaging_study_context_by_uid():
    a, b = study("1.1", days_ago=1), study("1.2", days_ago=100)
    assert priors.current_study([a, b], ctx("ImagingStudy/1.2")) is b


def test_current_study_from_imaging_study_context_by_fhir_id():
    class StudyWithIds(Study):  # the FHIR ImagingStudy ids, once the lead adds `ids` to Study
        pass

    a = study("1.1", days_ago=1)
    b = StudyWithIds(uid="1.2", started=NOW - timedelta(days=100))
    b.ids = ["img-42"]  # type: ignore[attr-defined]
    assert priors.current_study([a, b], ctx("ImagingStudy/img-42")) is b


def test_current_study_from_service_request_context():
    a = study("1.1", days_ago=1)
    b = study("1.2", days_ago=100, orders=[Order(id="sr-7", priority="routine")])
    assert priors.current_study([a, b], ctx("Encounter/e1", "ServiceRequest/sr-7")) is b


@pytest.mark.parametrize("refs", [(), ("ImagingStudy/9.9.9",), ("ServiceRequest/unknown",)])
def test_the_newest_old_study_is_latest_not_current(refs):
    a, b, c = study("1.1", days_ago=50), study("1.2", days_ago=2), study("1.3", days_ago=None)
    assert priors.current_study([a, c, b], ctx(*refs), today=NOW.date()) is None
    assert priors.latest_study([a, c, b]) is b


def test_a_study_of_today_is_current():
    old, today = study("1.1", days_ago=200), study("1.2", days_ago=0.1)
    assert priors.current_study([old, today], ctx(), today=NOW.date()) is today


def test_a_study_whose_order_is_in_progress_is_current():
    old = study("1.1", days_ago=300)
    running = study("1.2", days_ago=3, orders=[Order(id="sr-1", status="in-progress")])
    assert priors.current_study([old, running], ctx(), today=NOW.date()) is running


def test_the_context_study_wins_over_a_study_of_today():
    named, today = study("1.1", days_ago=400), study("1.2", days_ago=0)
    assert priors.current_study([today, named], ctx("ImagingStudy/1.1"), today=NOW.date()) is named


def test_current_study_of_nothing_is_none():
    assert priors.current_study([], None) is None


# --- needs attention ------------------------------------------------------------------------------

FINAL = Report(id="r", status="final")


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"orders": [Order("o", priority="stat", status="active")], "reports": [FINAL]}, ["stat order"]),
    ({"orders": [Order("o", priority="urgent", status="active")], "reports": [FINAL]}, ["urgent order"]),
    ({"orders": [Order("o", priority="asap", status="active")], "reports": [FINAL]}, ["urgent order"]),
    ({"days_ago": 900, "orders": [Order("o", priority="urgent", status="completed")], "reports": [FINAL]}, []),
    ({"days_ago": 3, "orders": [Order("o", priority="stat", status="completed")], "reports": [FINAL]},
     ["stat order"]),
    ({"days_ago": 900, "reports": [Report("r", "final", critical=True, abnormal=True)]}, []),  # communicated
    ({"days_ago": 270, "reports": [Report("r", "final", critical=True, issued=NOW - timedelta(days=270))]}, []),
    ({"days_ago": 3, "reports": [Report("r", "final", critical=True, issued=NOW - timedelta(days=2))]},
     ["critical result"]),
    ({"days_ago": 900, "reports": [Report("r", "preliminary", critical=True)]},
     ["critical result", "no final report"]),
    ({"days_ago": 5, "reports": [Report("r", "final", abnormal=True)]}, ["abnormal result"]),
    ({"days_ago": 500, "reports": [Report("r", "final", abnormal=True)]}, []),
    ({"days_ago": 500, "reports": [Report("r", "preliminary")]}, ["no final report"]),
    ({"days_ago": 5, "reports": []}, ["no final report"]),
    ({"days_ago": 500, "reports": []}, []),  # an archive-only study from long ago
    ({"days_ago": 5, "reports": [Report("p", "preliminary"), Report("f", "amended")]}, []),
    ({"days_ago": 1, "orders": [Order("o", priority="stat", status="active")],
      "reports": [Report("r", "preliminary", critical=True)]}, ["stat order", "critical result", "no final report"]),
    ({"days_ago": 1, "orders": [Order("o", priority="routine", status="active")], "reports": [FINAL]}, []),
])
def test_attention(kwargs, expected):
    assert priors.attention(study(**kwargs), now=NOW) == expected


# --- the browser's copy ---------------------------------------------------------------------------

def test_rules_json_is_plain_json_with_every_region_and_group():
    rules = json.loads(json.dumps(priors.rules_json()))
    assert set(rules["regions"]) == set(priors.REGIONS)
    assert rules["regions"]["whole-body"] == {"label": "Whole body",
                                              "parts": ["abdomen", "chest", "neck", "pelvis"]}
    assert {"id": "breast", "modalities": ["MG", "US", "MR"], "parts": ["breast"]} in rules["comparable"]
    assert "SR" in rules["nonImage"]


def test_a_study_ordered_in_the_launch_encounter_is_current():
    old = study("1.1", days_ago=300)
    ed = study("1.2", days_ago=1, orders=[Order(id="sr-9", status="active", encounter="enc-1")])
    launch = LaunchContext(iss="https://ehr.example/fhir", patient_id="p1", granted_scopes=frozenset(),
                           encounter_id="enc-1")
    assert priors.current_study([old, ed], launch, today=NOW.date()) is ed
    assert priors.current_study([old, ed], ctx(), today=NOW.date()) is None
