"""The element tables of the R4 types that the R4B models no longer have (fhir/data/r4-models.json)
are what SMART's R4 (4.0.1) models, fhirclient's, say: derived again here, so they cannot drift."""

from __future__ import annotations

import json
from importlib import resources as package_files
from typing import Any

from careledger.fhir.types import HELD_TYPES

R4_ONLY = [
    "EffectEvidenceSynthesis",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
]


def generate() -> dict[str, Any]:
    """{"resources": [...], "classes": {class: [[json name, type, list, choice, required]]}}:
    type is string, boolean, integer, decimal, resource, an R4B datatype (``dt:Quantity``) or
    another class of the table (a backbone element, or a datatype R4B dropped)."""
    import importlib

    from fhir.resources.R4B import get_fhir_model_class
    from fhirclient.models.fhirabstractresource import FHIRAbstractResource
    from fhirclient.models.fhirdate import FHIRDate

    from careledger.fhir.validate import _is_datatype

    classes: dict[str, list[list[Any]]] = {}

    def kind_of(cls: type) -> str:
        if cls is str or (isinstance(cls, type) and issubclass(cls, FHIRDate)):
            return "string"
        if cls is bool:
            return "boolean"
        if cls is int:
            return "integer"
        if cls is float:
            return "decimal"
        if issubclass(cls, FHIRAbstractResource):
            return "resource"
        name = "Reference" if cls.__name__ == "FHIRReference" else cls.__name__
        try:
            r4b = get_fhir_model_class(name)
        except (KeyError, ValueError):
            r4b = None
        if r4b is not None and _is_datatype(r4b):
            return f"dt:{name}"
        walk(cls)
        return cls.__name__

    def walk(cls: type) -> None:
        if cls.__name__ in classes:
            return
        classes[cls.__name__] = []  # before the elements: recursive structures end here
        rows = []
        for _, jsname, tp, is_list, of_many, required in cls().elementProperties():
            rows.append([jsname, kind_of(tp), bool(is_list), of_many, bool(required)])
        classes[cls.__name__] = rows

    for kind in R4_ONLY:
        module = importlib.import_module(f"fhirclient.models.{kind.lower()}")
        walk(getattr(module, kind))
    return {"resources": R4_ONLY, "classes": classes}


def shipped() -> dict[str, Any]:
    text = (
        package_files.files("careledger.fhir")
        .joinpath("data/r4-models.json")
        .read_text(encoding="utf-8")
    )
    data: dict[str, Any] = json.loads(text)
    return data


def test_the_shipped_tables_are_fhirclients_r4_models() -> None:
    assert shipped() == generate()


def test_they_are_the_held_types_r4b_has_no_model_of() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    missing = []
    for kind in sorted(HELD_TYPES):
        try:
            get_fhir_model_class(kind)
        except (KeyError, ValueError):
            missing.append(kind)
    assert missing == sorted(R4_ONLY)
