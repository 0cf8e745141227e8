"""Recruitment over HTTP: patients made through FHIR, feasibility questions asked and awaited."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.nodes import wait_for

ICD10 = "http://hl7.org/fhir/sid/icd-10"
DIABETES = {"conditions": [{"system": ICD10, "code": "E11"}]}
SITES = ["st-mary", "northside-clinic"]


def fhir_post(http: httpx.Client, resource: dict[str, Any]) -> str:
    made = http.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={"content-type": "application/fhir+json"},
    )
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def new_patient(clinician: httpx.Client, *, born: str, diabetic: bool) -> str:
    pid = fhir_post(clinician, {"resourceType": "Patient", "birthDate": born, "gender": "female"})
    if diabetic:
        condition = {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {"coding": [{"system": ICD10, "code": "E11.9"}]},
        }
        fhir_post(clinician, condition)
    return pid


def answered(sponsor: httpx.Client, query: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = sponsor.get(f"/v1/recruitment/queries/{query}").json()
        return body if "st-mary" in body["answers"] else None

    return dict(wait_for(check, "st-mary's answer"))


def ask(sponsor: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    made = sponsor.post("/v1/recruitment/queries", json=body)
    assert made.status_code == 202, made.text
    return answered(sponsor, made.json()["query"])
