"""The tables of which types are held, and how each one's patient is found, are exactly what
HL7's definitions say; every R4 type is held or refused for a stated reason."""

from __future__ import annotations

import json
from importlib import resources as package_files
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from careledger.fhir.extract import (
    path_patients,
    path_reference_problem,
    patient_id,
    referenced_records,
)
from careledger.fhir.search import _definitions, parameters
from careledger.fhir.types import (
    EITHER_TYPES,
    HELD_TYPES,
    NOT_HELD,
    ORG_ONLY_TYPES,
    ORG_TYPES,
    ORG_TYPES_R10,
    PATIENT_ELEMENT,
    PATIENT_PATHS,
    RECORD_PATHS,
    RECORD_TYPES,
    patient_search,
)
from careledger.fhir.validate import SUPPORTED_TYPES


def r4_types() -> set[str]:
    """Every R4 (4.0.1) resource type: those with search parameters of their own, and those
    with none (fhirclient's R4 models name them all)."""
    import pkgutil

    import fhirclient.models as models

    with_params = {b for d in _definitions() for b in d["base"]} - {"Resource", "DomainResource"}
    modules = {m.name for m in pkgutil.iter_modules(models.__path__)}
    without = {
        "Binary", "BiologicallyDerivedProduct", "CatalogEntry", "MedicinalProductIngredient",
        "MedicinalProductManufactured", "ObservationDefinition", "OperationOutcome", "Parameters",
        "SubstanceNucleicAcid",
        "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
    }  # fmt: skip
    assert {k.lower() for k in with_params | without} <= modules
    return with_params | without


def derived() -> dict[str, str]:
    """Types whose ``patient`` search parameter is one path to one, single Reference element."""
    kinds = {b for d in _definitions() for b in d["base"]} - {"Resource", "DomainResource"}
    out = {}
    for kind in sorted(kinds - {"Consent"}):
        param = parameters(kind).get("patient")
        if param is None or "Patient" not in param.targets or len(param.paths) != 1:
            continue
        steps = param.paths[0].steps
        try:
            model = get_fhir_model_class(kind)
        except (KeyError, ValueError):
            continue
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        field = fields.get(steps[0].arg) if steps else None  # by JSON name ("for": for_fhir)
        if field is None or "List" in str(field.annotation):
            continue
        out[kind] = steps[0].arg
    return out


# Types of R4's Patient compartment whose one Reference to the patient is not their "patient"
# search parameter: AdverseEvent names it "subject" (compartment param: subject).
BY_SUBJECT = {"AdverseEvent": "subject"}
# R4's CompartmentDefinition "patient" (compartmentdefinition-patient.json), for the types held
# by a path that have no "patient" search parameter: the parameters it lists.
COMPARTMENT = {"Schedule": ("actor",), "SupplyRequest": ("subject",)}
# Paths held beyond the definitions, each for its reason: a patient who requests supplies is
# what they are about; a product collected from a donor is the donor's (R4 gives
# BiologicallyDerivedProduct no search parameter at all).
BEYOND = {"SupplyRequest": ("requester",), "BiologicallyDerivedProduct": ("collection.source",)}


def _dotted(path: Any) -> str:
    return ".".join(s.arg for s in path.steps if s.kind == "name")


def derived_paths() -> dict[str, tuple[str, ...]]:
    """Types about a patient through a list or a path: their ``patient`` parameter's paths
    (``.where(resolve() is Patient)`` dropped), or those of their compartment parameters."""
    kinds = {b for d in _definitions() for b in d["base"]} - {"Resource", "DomainResource"}
    out: dict[str, tuple[str, ...]] = {}
    for kind in sorted(kinds - {"Consent", "Patient"} - set(PATIENT_ELEMENT)):
        param = parameters(kind).get("patient")
        if param is not None and "Patient" in param.targets and param.paths:  # R4's own
            out[kind] = tuple(_dotted(p) for p in param.paths)
        elif kind in COMPARTMENT:
            codes = COMPARTMENT[kind]
            out[kind] = tuple(_dotted(p) for c in codes for p in parameters(kind)[c].paths)
    return out


def test_the_single_element_table_is_derived_from_the_definitions() -> None:
    assert dict(PATIENT_ELEMENT) == derived() | BY_SUBJECT
    assert len(RECORD_TYPES) > 70 and {"Claim", "ExplanationOfBenefit"} <= RECORD_TYPES
    assert RECORD_TYPES | ORG_TYPES | {"Consent"} == SUPPORTED_TYPES == HELD_TYPES | {"Consent"}


def test_the_path_table_is_derived_from_the_definitions() -> None:
    want = derived_paths()
    assert set(want) - set(PATIENT_PATHS) == {"AuditEvent"}  # the ledger's own audit trail
    del want["AuditEvent"]
    for kind, paths in BEYOND.items():
        want[kind] = (*want.get(kind, ()), *paths)
    assert dict(PATIENT_PATHS) == want


def test_the_record_paths_are_reference_parameters_or_elements_of_r4() -> None:
    """Each path through which a type finds its patient's records is one of its R4 reference
    search parameters (to any type, or to the type of record it names), or an element of it
    R4 gives no parameter (Binary.securityContext, PaymentReconciliation.detail)."""
    unsearched = {("Binary", "securityContext"), ("PaymentReconciliation", "detail.request"),
                  ("PaymentReconciliation", "detail.response")}  # fmt: skip
    for kind, paths in RECORD_PATHS.items():
        searched = {_dotted(p) for prm in parameters(kind).values() if prm.type == "reference"
                    for p in prm.paths}  # fmt: skip
        for path in paths:
            assert path in searched or (kind, path) in unsearched, (kind, path)
            model: Any = get_fhir_model_class(kind)
            for step in path.split("."):  # the element exists in the model validation uses
                fields = {(i.alias or n): i for n, i in model.model_fields.items()}
                assert step in fields, (kind, path)
                model = _model_of(fields[step].annotation)


def _model_of(annotation: Any) -> Any:
    import typing

    from fhir_core.types import FhirBase

    stack = [annotation]
    while stack:
        tp = stack.pop()
        if isinstance(tp, type) and issubclass(tp, FhirBase):
            return tp.get_model_klass()
        stack.extend(typing.get_args(tp))
    return None


def test_every_r4_type_is_held_or_refused_for_a_reason() -> None:
    every = r4_types()
    assert len(every) == 146
    held_or_not = HELD_TYPES | {"Consent"} | set(NOT_HELD)
    assert held_or_not == every
    assert not HELD_TYPES & set(NOT_HELD)
    assert ORG_TYPES_R10 < ORG_TYPES and EITHER_TYPES == ORG_TYPES - ORG_ONLY_TYPES
    assert set(PATIENT_PATHS) | set(RECORD_PATHS) >= EITHER_TYPES
    assert not EITHER_TYPES & ORG_TYPES_R10  # r10's types were never a patient's
    for code, why in NOT_HELD.values():
        assert code and len(why) > 30


def test_every_organisation_type_is_r4_and_searchable() -> None:
    r4_only = json.loads(
        package_files.files("careledger.fhir").joinpath("data/r4-models.json").read_text()
    )["resources"]
    for kind in ORG_TYPES:
        assert kind in r4_only or get_fhir_model_class(kind) is not None, kind
        have = parameters(kind)
        assert {"_id", "_lastUpdated"} <= set(have), kind
        assert "patient" not in have or kind == "Group" or kind in EITHER_TYPES, kind


def test_every_record_type_can_be_searched_by_id_and_its_patient_where_it_has_one() -> None:
    for kind in RECORD_TYPES - {"Patient"}:
        have = parameters(kind)
        assert {"_id", "_lastUpdated"} <= set(have), kind
        named = patient_search(kind)
        assert named in have, kind  # R4's, or this server's (the ledger's patient of it)
    assert patient_search("Schedule") == "actor" and patient_search("Observation") == "patient"


def test_the_patient_of_each_type_is_found_in_its_own_element() -> None:
    for kind, element in PATIENT_ELEMENT.items():
        resource = {"resourceType": kind, element: {"reference": "Patient/p-1"}}
        assert patient_id(resource) == "p-1", kind
        other = {"resourceType": kind, element: {"reference": "Group/g-1"}}
        assert patient_id(other) is None, kind


def at_path(kind: str, path: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
    """A resource of ``kind`` with ``refs`` at the dotted ``path``, lists where R4B has them."""
    resource: dict[str, Any] = {"resourceType": kind}
    model: Any = get_fhir_model_class(kind)
    node = resource
    steps = path.split(".")
    for index, step in enumerate(steps):
        fields = {(i.alias or n): i for n, i in model.model_fields.items()}
        listed = "List" in str(fields[step].annotation)
        last = index == len(steps) - 1
        if last:
            node[step] = refs if listed else refs[0]
            if not listed and len(refs) > 1:  # one element: the others in sibling branches
                raise ValueError("single")
        else:
            child: dict[str, Any] = {}
            node[step] = [child] if listed else child
            node, model = child, _model_of(fields[step].annotation)
    return resource


def spread(kind: str, path: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
    """``refs`` at ``path``: in one list where the last step is one, else one branch each."""
    try:
        return at_path(kind, path, refs)
    except ValueError:
        head, _, last = path.rpartition(".")
        if not head:  # a single element at the top: it can hold one reference only
            return at_path(kind, path, refs[:1])
        made = at_path(kind, path, refs[:1])
        branch = made[head.split(".")[0]]
        template = json.dumps(branch[0] if isinstance(branch, list) else branch)
        if isinstance(branch, list):
            for ref in refs[1:]:
                copy = json.loads(template)
                _set_last(copy, [*head.split(".")[1:], last], ref)
                branch.append(copy)
        return made


def _set_last(node: dict[str, Any], steps: list[str], ref: dict[str, Any]) -> None:
    for step in steps[:-1]:
        node = node[step][0] if isinstance(node[step], list) else node[step]
    node[steps[-1]] = ref


@pytest.mark.parametrize("kind", sorted(set(PATIENT_PATHS) | set(RECORD_PATHS)))
def test_the_patient_of_each_path_type_is_the_one_its_paths_name(kind: str) -> None:
    paths = (*PATIENT_PATHS.get(kind, ()), *RECORD_PATHS.get(kind, ()))
    for path in paths:
        one = spread(kind, path, [{"reference": "Patient/p-1"}, {"reference": "Practitioner/d"}])
        assert patient_id(one) == "p-1" and path_patients(one) == {"p-1"}, (kind, path)
        assert path_reference_problem(one) is None, (kind, path)
        # a Patient reference counts whatever its type says, and the contradiction is refused
        typed = at_path(kind, path, [{"reference": "Patient/p-1", "type": "Group"}])
        assert path_patients(typed) == {"p-1"}, (kind, path)
        assert path_reference_problem(typed) is not None, (kind, path)
        # absolute (this server's base URL, however spelt): it names the patient all the same
        far = at_path(kind, path, [{"reference": "https://node.example/fhir/Patient/p-1"}])
        assert path_patients(far) == {"p-1"}, (kind, path)
        # a Patient by identifier cannot be checked: refused
        mrn = {"system": "http://hospital.example/mrn", "value": "MRN-3"}
        logical = at_path(kind, path, [{"type": "Patient", "identifier": mrn}])
        assert path_reference_problem(logical) is not None, (kind, path)
        untyped = at_path(kind, path, [{"identifier": mrn, "display": "S. McLaughlin"}])
        assert path_reference_problem(untyped) is not None, (kind, path)
        two = spread(kind, path, [{"reference": "Patient/p-1"}, {"reference": "Patient/p-2"}])
        if path_patients(two) == {"p-1", "p-2"}:  # the path holds several references
            assert patient_id(two) is None, (kind, path)  # refused by the service
        record = at_path(kind, path, [{"reference": "Observation/o-1/_history/2"}])
        expected = {("Observation", "o-1")} if path in RECORD_PATHS.get(kind, ()) else set()
        assert referenced_records(record) == expected, (kind, path)
        assert patient_id(record) is None


def test_a_second_patient_hidden_by_type_url_or_identifier_is_seen_or_refused() -> None:
    """Review r11 F3: an Appointment of P1 whose other participant is P3 typed as a
    Practitioner, by an absolute URL, or by identifier, is not filed as P1's alone."""
    def appointment(hidden: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Appointment", "participant": [
            {"actor": {"reference": "Patient/p1"}}, {"actor": hidden}]}  # fmt: skip

    typed = appointment({"reference": "Patient/p3", "type": "Practitioner"})
    assert path_patients(typed) == {"p1", "p3"} and patient_id(typed) is None
    assert path_reference_problem(typed) is not None
    absolute = appointment({"reference": "http://127.0.0.1:18911/fhir/Patient/p3"})
    assert path_patients(absolute) == {"p1", "p3"} and patient_id(absolute) is None
    logical = appointment({"type": "Patient", "identifier": {"value": "MRN-3"}})
    assert path_reference_problem(logical) is not None
    lying = appointment({"reference": "Practitioner/d", "type": "Patient"})
    assert path_reference_problem(lying) is not None
    # a practitioner by identifier, typed so, on a type that is always a patient's: allowed
    npi = appointment({"type": "Practitioner", "identifier": {"value": "NPI-1"}})
    assert path_reference_problem(npi) is None and patient_id(npi) == "p1"
    # on a type that may be the organisation's own, no reference by identifier is checked
    for kind, path in (("Schedule", "actor"), ("Account", "subject")):
        doc = {"resourceType": kind, path: [{"type": "Practitioner", "identifier": {"value": "1"}}]}
        assert path_reference_problem(doc) is not None, kind
    slot = {"resourceType": "Slot", "schedule": {"type": "Schedule", "identifier": {"value": "1"}}}
    assert path_reference_problem(slot) is not None
    assert referenced_records({"resourceType": "Provenance", "target": [
        {"reference": "http://node.example/fhir/Observation/o-1"}]}) == {("Observation", "o-1")}


def test_multiple_patients_are_seen_on_a_list() -> None:
    appointment = {"resourceType": "Appointment", "participant": [
        {"actor": {"reference": "Patient/a"}}, {"actor": {"reference": "Patient/b"}},
        {"actor": {"reference": "Practitioner/c"}}]}  # fmt: skip
    assert path_patients(appointment) == {"a", "b"} and patient_id(appointment) is None
    same = {"resourceType": "Account", "subject": [{"reference": "Patient/a"},
                                                   {"reference": "Patient/a/_history/3"}]}
    assert patient_id(same) == "a"
