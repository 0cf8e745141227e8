"""The part of FHIRPath that R4's search parameter definitions use, over resources as JSON. Pure.

Every R4 SearchParameter ``expression`` is a union (``|``) of paths such as
``Observation.effective``, ``(RiskAssessment.occurrence as dateTime)``,
``Observation.value.as(Quantity)``, ``Condition.subject.where(resolve() is Patient)`` or
``Patient.telecom.where(system='email')``. A general FHIRPath engine evaluates those two orders
of magnitude slower than walking the JSON, and search runs them over every candidate record, so
this module compiles each path once into steps and walks the JSON:

* a name step follows an element, and a choice element (``effective``) follows whichever
  ``effective[Type]`` key the resource has, remembering the type for ``as``/``ofType``;
* ``as(T)`` / ``as T`` / ``ofType(T)`` keep values of that type;
* ``where(resolve() is T)`` keeps references to a ``T``; ``where(name='value')`` keeps elements
  whose ``name`` is ``value``.

Anything else raises :class:`Unsupported` when the path is compiled, so a search parameter this
module cannot evaluate is never offered (and never silently ignored).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_AS_SUFFIX = re.compile(r"^\((.+) as ([A-Za-z]+)\)((?:\.[A-Za-z][A-Za-z0-9_]*)*)$")
_RESOLVE_IS = re.compile(r"^resolve\(\) is ([A-Za-z]+)$")
_FIELD_IS = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*=\s*'([^']*)'$")


class Unsupported(ValueError):
    """An expression outside the subset this module evaluates."""


@dataclass(frozen=True)
class Typed:
    """A value found by a path, with its FHIR type when the path told it (choice elements)."""

    value: Any
    type: str | None = None


@dataclass(frozen=True)
class Step:
    kind: str  # "name", "as", "resolve_is", "field_is"
    arg: str
    value: str = ""


@dataclass(frozen=True)
class Path:
    """One compiled path: the resource type it starts from and its steps."""

    base: str
    steps: tuple[Step, ...]
    text: str

    def evaluate(self, resource: Mapping[str, Any]) -> list[Typed]:
        if self.base not in ("Resource", "DomainResource") and (
            resource.get("resourceType") != self.base
        ):
            return []
        return self.evaluate_from(resource, self.base)

    def evaluate_from(self, element: Any, kind: str | None = None) -> list[Typed]:
        """The path's steps from ``element`` (a composite's component, relative to its part)."""
        found: list[Typed] = [Typed(element, kind)]
        for step in self.steps:
            found = list(_apply(step, found))
            if not found:
                break
        return found


def compile_union(expression: str, base: str) -> list[Path]:
    """The paths of ``expression`` that start at ``base`` (or at Resource/DomainResource)."""
    out = []
    for part in _split_union(expression):
        head = part.strip().lstrip("(").split(".", 1)[0].split(" ", 1)[0]
        if head in (base, "Resource", "DomainResource"):
            out.append(compile_path(part.strip()))
        elif head[:1].islower():  # a path written relative to its only base ("name | alias")
            out.append(compile_path(f"{base}.{part.strip()}"))
    return out


def compile_relative(expression: str, base: str) -> Path:
    """A path relative to an element (a composite parameter's component)."""
    return compile_path(f"{base}.{expression}" if expression != base else base)


def compile_path(text: str) -> Path:
    typed = _AS_SUFFIX.match(text)
    if typed is not None:
        inner = compile_path(typed.group(1))
        rest = tuple(Step("name", n) for n in typed.group(3).split(".") if n)
        return Path(inner.base, (*inner.steps, Step("as", typed.group(2)), *rest), text)
    if " and " in text or " or " in text or "!=" in text:
        raise Unsupported(f"boolean expressions are not evaluated: {text}")
    parts = _split_dots(text)
    base = parts[0]
    if not _NAME.fullmatch(base):
        raise Unsupported(f"a path starts with a type: {text}")
    steps: list[Step] = []
    for part in parts[1:]:
        if _NAME.fullmatch(part):
            steps.append(Step("name", part))
        elif part.startswith(("as(", "ofType(")) and part.endswith(")"):
            steps.append(Step("as", part[part.index("(") + 1 : -1]))
        elif part.startswith("where(") and part.endswith(")"):
            condition = part[len("where(") : -1].strip()
            resolved = _RESOLVE_IS.match(condition)
            field = _FIELD_IS.match(condition)
            if resolved is not None:
                steps.append(Step("resolve_is", resolved.group(1)))
            elif field is not None:
                steps.append(Step("field_is", field.group(1), field.group(2)))
            else:
                raise Unsupported(f"where({condition}) is not evaluated")
        else:
            raise Unsupported(f"{part!r} in {text} is not evaluated")
    return Path(base, tuple(steps), text)


def _split_union(expression: str) -> list[str]:
    return _split_top(expression, "|")


def _split_dots(text: str) -> list[str]:
    return _split_top(text, ".")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        elif not quoted and depth == 0 and ch == sep:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _apply(step: Step, found: list[Typed]) -> Iterator[Typed]:
    if step.kind == "name":
        for item in found:
            yield from _child(item.value, step.arg)
    elif step.kind == "as":
        wanted = step.arg.lower()
        for item in found:
            if item.type is not None and item.type.lower() == wanted:
                yield item
    elif step.kind == "resolve_is":
        for item in found:
            if _refers_to(item.value, step.arg):
                yield item
    else:  # field_is
        for item in found:
            if isinstance(item.value, dict) and item.value.get(step.arg) == step.value:
                yield item


def _child(value: Any, name: str) -> Iterator[Typed]:
    if not isinstance(value, dict):
        return
    if name in value:
        yield from _flatten(value[name], None)
        return
    for key, child in value.items():  # a choice element: name[Type]
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            yield from _flatten(child, key[len(name) :])


def _flatten(value: Any, kind: str | None) -> Iterator[Typed]:
    if isinstance(value, list):
        for item in value:
            if item is not None:
                yield Typed(item, kind)
    elif value is not None:
        yield Typed(value, kind)


def _refers_to(value: Any, resource_type: str) -> bool:
    if not isinstance(value, dict):
        return False
    declared = value.get("type")
    if isinstance(declared, str):
        return declared == resource_type
    ref = value.get("reference")
    if not isinstance(ref, str):
        return False
    ref = ref.split("/_history/", 1)[0]
    segments = ref.split("/")
    return len(segments) >= 2 and segments[-2] == resource_type
