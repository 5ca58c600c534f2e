"""Property: any valid Hub case either translates or raises one MappingError naming case, mapping, field."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hubbridge.case import Attachment, Channel, HubCase, Priority
from hubbridge.connectors.base import BackOfficeUpdate
from hubbridge.errors import MappingError
from hubbridge.mappings import CompiledMapping, load_mapping
from hubbridge.mappings.cli import mapping_files, target_fields_for

from .conftest import SHIPPED

FILES = mapping_files([SHIPPED])


def _compiled(path: Path) -> CompiledMapping:
    """As a worker would run it: checked against the connector's target fields when the plugin is there."""
    alone = load_mapping(path)
    fields, _, _ = target_fields_for(alone.plugin)
    return load_mapping(path, fields) if fields is not None else alone


MAPPINGS = [_compiled(p) for p in FILES]
# cases carry the attributes and services the shipped mappings read, so their real branches run
ATTRIBUTE_KEYS = sorted({k for p in FILES for k in re.findall(r"attributes\.([A-Za-z0-9_-]+)", p.read_text())}
                        | {"container", "bin_location", "x"})
SERVICES = sorted({m.service for m in MAPPINGS} | {"refuse.bulky-waste"})

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300).filter(
    lambda s: s.strip()
)
short = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
                min_size=1, max_size=60).filter(lambda s: s.strip())
attr_value = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                       st.floats(allow_nan=False, allow_infinity=False), short,
                       st.sampled_from(["refuse", "recycling", "garden", "food", "glass", "REFUSE", ""]))
attr_key = st.sampled_from(ATTRIBUTE_KEYS)
postcode = st.builds(lambda a, d, s: f"{a}{d} {s}", st.sampled_from(["B", "WR", "DY"]),
                     st.integers(1, 99), st.sampled_from(["1AA", "9ZZ", "4QT"]))


@st.composite
def cases(draw: st.DrawFn) -> HubCase:
    customer = {"name": draw(short)}
    if draw(st.booleans()):
        customer["phone"] = draw(st.from_regex(r"\+?[0-9 ]{7,20}", fullmatch=True))
    if draw(st.booleans()):
        customer["email"] = draw(st.from_regex(r"[a-z]{1,10}@[a-z]{1,10}\.org", fullmatch=True))
    if draw(st.booleans()):
        addr = {"line1": draw(short), "town": draw(short), "postcode": draw(postcode)}
        if draw(st.booleans()):
            addr["uprn"] = str(draw(st.integers(1, 999_999_999_999)))
        customer["address"] = addr
    location: dict = {}
    if draw(st.booleans()):
        location["uprn"] = str(draw(st.integers(1, 999_999_999_999)))
    if draw(st.booleans()):
        location["lat"], location["lon"] = draw(st.floats(49, 61)), draw(st.floats(-9, 3))
    if draw(st.booleans()):
        location["description"] = draw(text)
    attachments = draw(st.lists(st.builds(
        Attachment, filename=short, content_type=st.just("image/jpeg"),
        url=st.from_regex(r"https://[a-z]{1,20}/[a-z0-9]{1,30}", fullmatch=True)), max_size=3))
    created = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=draw(st.integers(0, 10**9)))
    return HubCase(
        ref=f"WH-2026-{draw(st.integers(0, 999999)):06d}",
        authority=draw(st.sampled_from(["bromsgrove", "redditch", "worcester", "wychavon", "wyre-forest",
                                        "malvern-hills", "worcestershire"])),
        service=draw(st.sampled_from(SERVICES)),
        channel=draw(st.sampled_from(list(Channel))),
        priority=draw(st.sampled_from(list(Priority))),
        customer=customer,
        location=location,
        description=draw(text),
        attributes=draw(st.dictionaries(attr_key, attr_value, max_size=6)),
        attachments=attachments,
        created_at=created,
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_every_case_translates_or_raises_one_mapping_error(case: HubCase) -> None:
    for m in MAPPINGS:
        try:
            tr = m.outbound(case)
        except MappingError as exc:
            assert exc.ref == case.ref and exc.mapping == m.name and exc.field
            continue
        assert isinstance(tr.payload, dict) and isinstance(tr.warnings, list)


@settings(max_examples=200, deadline=None)
@given(status=st.one_of(st.none(), short, st.sampled_from(["OPEN", "COMPLETED", "closed", "1", "0", ""])),
       note=st.one_of(st.none(), text),
       hub_ref=st.one_of(st.none(), st.just("WH-2026-000001")),
       raw=st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(max_size=10))))
def test_every_update_translates_or_raises_one_mapping_error(status, note, hub_ref, raw) -> None:
    upd = BackOfficeUpdate(backoffice_ref="1", update_id="u", occurred_at=datetime.now(UTC),
                           status_code=status, note=note, raw=raw, hub_ref=hub_ref)
    for m in MAPPINGS:
        try:
            m.inbound(upd)
        except MappingError as exc:
            assert exc.mapping == m.name and exc.field and exc.ref == (hub_ref or "back-office 1")


def test_every_shipped_mapping_is_covered() -> None:
    assert FILES and len(MAPPINGS) == len(FILES)
    assert {m.path for m in MAPPINGS} == set(FILES)
