"""The patient's "who saw my data" in plain words: names, dates, kinds of record, purposes,
the app used, and a day's repeated housekeeping as one row."""

from __future__ import annotations

from typing import Any

from careledger.web.access_words import plain_entries, what_words

DAY = 1_796_000_000_000  # 30 Nov 2026, 00:53 UTC
STATE: dict[tuple[str, str], Any] = {
    ("identity", "member/dr-a"): {"name": "Dr Ana Silva"},
    ("identity", "org/st-mary"): {"name": "St Mary's Hospital"},
    ("identity", "member/st-mary-node"): {"name": "St Mary's node"},
    ("apps", "app/acme"): {"name": "Acme Charting", "kind": "public"},
    ("records", "record/o1"): {"type": "Observation"},
    ("records", "record/o2"): {"type": "Observation"},
    ("records", "record/c1"): {"type": "Condition"},
}


def read(namespace: str, key: str) -> Any:
    return STATE.get((namespace, key))


def entry(**kw: Any) -> dict[str, Any]:
    return {"accessor": "dr-a", "accessor_org": "st-mary", "action": "read", "purpose": "TREAT",
            "basis": {"kind": "consent", "id": "c"}, "records": ["o1"], "time": DAY,
            "height": 7, "tx": "t", **kw}  # fmt: skip


def test_names_dates_purposes_and_the_app_in_words() -> None:
    (row,) = plain_entries([entry(app="acme", records=["o1", "o2", "c1"])], read)
    (own,) = plain_entries([entry(accessor="pt-1", patient="pt-1")], read)
    assert own["who"] == "You"
    assert row["who"] == "Dr Ana Silva" and row["org_name"] == "St Mary's Hospital"
    assert row["via"] == "Acme Charting" and row["why"] == "treatment"
    assert row["when"] == "30 Nov 2026, 00:53 UTC"  # a date and a time, not a block height
    assert row["what"] == "2 test results and measurements, 1 diagnosis"
    assert row["basis_words"] == "a consent you gave"


def test_a_days_housekeeping_is_one_row_and_a_break_glass_never_merges() -> None:
    writes = [entry(accessor="st-mary-node", action="write", basis={"kind": "custodian"},
                    records=[r], time=DAY + i) for i, r in enumerate(["o1", "o2", "c1"] * 20)]  # fmt: skip
    glass = [entry(break_glass=True, purpose="ETREAT", basis={"kind": "break_glass", "id": "g"},
                   time=DAY + 100 + i) for i in range(2)]  # fmt: skip
    rows = plain_entries([*glass, *writes], read)
    assert len(rows) == 3  # two break-glass reads, one row for sixty writes
    housekeeping = rows[-1]
    assert housekeeping["accesses"] == 60 and housekeeping["who"] == "St Mary's node"
    # the same three records, written again and again: three records
    assert housekeeping["what"] == "2 test results and measurements, 1 diagnosis"
    assert rows[0]["basis_words"] == "Emergency access (break-glass)"


def test_what_words_for_unknown_kinds_and_readings() -> None:
    assert what_words(["Goal"], 2) == "1 Goal record, 2 sets of device readings"
    assert what_words([], 0) == "nothing"
