"""The revenues & benefits connector against its SOAP simulator, over real loopback sockets."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from hubbridge.config.models import ConnectorInstance, Timeouts
from hubbridge.connectors.base import Delivery, connector_class
from hubbridge.connectors.revenues import RevenuesConnector, RevenuesSimulator
from hubbridge.connectors.revenues.connector import STATUS_CODES
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)

ENV = {"RB_USER": "hub-interface", "RB_PASS": "s3cret-pass"}


@pytest.fixture
def sim() -> Iterator[RevenuesSimulator]:
    with RevenuesSimulator() as s:
        s.faults.slow_seconds = 1.0
        yield s  # type: ignore[misc]


def make(sim: RevenuesSimulator, tenant: str = "shared-services", read: float = 5.0,
         env: dict[str, str] | None = None, **options: Any) -> RevenuesConnector:
    inst = ConnectorInstance(name=f"revenues-{tenant}", plugin="revenues", endpoint=sim.tenant_url(tenant),
                             credentials={"username": "RB_USER", "password": "RB_PASS"},
                             timeouts=Timeouts(connect=2, read=read), options=options)
    return RevenuesConnector(inst, env=env or ENV)


def delivery(i: int = 1, *, authority: str = "worcester", **changes: Any) -> Delivery:
    payload: dict[str, Any] = {
        "WorkItemType": "CTCOA",
        "CouncilTaxAccountRef": f"{10000000 + i}",
        "EffectiveDate": "2026-03-01",
        "ReceivedVia": "PHONE",
        "Customer": {"FullName": "Ann Example", "Telephone": "01905 123456", "Email": "ann@example.org"},
        "NewAddress": {"AddressLine1": "1 High Street", "Town": "Worcester", "Postcode": "WR1 2AB",
                       "UPRN": "100120000001"},
        "Notes": "Moving out on 1 March; new address below.",
    }
    payload.update(changes)
    return Delivery(hub_ref=f"WH-2026-{i:06d}", authority=authority,
                    service="revenues.council-tax-change-of-address", payload=payload)


def soap_posts(sim: RevenuesSimulator) -> int:
    return sum(1 for m, _t, _p in sim.requests if m == "POST")


# -- plugin, config and schema -------------------------------------------------------------------------
def test_registered_as_entry_point() -> None:
    assert connector_class("revenues") is RevenuesConnector


def test_missing_credentials_are_a_config_error(sim: RevenuesSimulator) -> None:
    inst = ConnectorInstance(name="rb", plugin="revenues", endpoint=sim.tenant_url("shared-services"))
    with pytest.raises(ConfigError, match="credentials"):
        RevenuesConnector(inst, env=ENV)
    unset = make(sim, env={"RB_USER": "x"})  # secrets are read on first use: validation and dry runs need none
    assert "ExternalReference" in unset.render(delivery(1))
    with pytest.raises(ConfigError, match="RB_PASS"):
        unset.find("WH-2026-000001")
    assert soap_posts(sim) == 0


def test_target_fields_come_from_the_wsdl_with_short_lengths(sim: RevenuesSimulator) -> None:
    fields = make(sim).target_fields()
    assert "ExternalReference" not in fields  # filled from the Hub reference
    assert fields["AuthorityCode"].required is False
    assert fields["WorkItemType"].required and set(fields["WorkItemType"].enum) == {"CTCOA", "CTSPD", "HBCOC", "CTARR"}
    assert fields["EffectiveDate"].type == "date" and fields["EffectiveDate"].required
    assert fields["CouncilTaxAccountRef"].max_length == 9
    assert fields["BenefitClaimRef"].max_length == 8
    assert fields["Notes"].max_length == 2000
    customer = fields["Customer"].children
    assert customer["FullName"].max_length == 60 and customer["FullName"].required
    assert customer["Email"].max_length == 100
    address = fields["NewAddress"].children
    assert address["AddressLine1"].max_length == 50
    assert address["Town"].max_length == 35
    assert address["Postcode"].max_length == 8
    assert fields["PaymentProposal"].children["Frequency"].enum == ("WEEKLY", "FORTNIGHTLY", "MONTHLY")


def test_render_is_the_soap_envelope_and_sends_nothing(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    text = conn.render(delivery(1))
    assert "CreateServiceRequest" in text and "urn:hubbridge:revenues:v1" in text
    assert "<ns0:ExternalReference>WH-2026-000001</ns0:ExternalReference>" in text
    assert "<ns0:AuthorityCode>WCC</ns0:AuthorityCode>" in text
    assert ENV["RB_PASS"] not in text and "UsernameToken" in text
    assert soap_posts(sim) == 0


def test_wsdl_is_served_for_humans(sim: RevenuesSimulator) -> None:
    resp = requests.get(sim.tenant_url("shared-services") + "?wsdl", timeout=5)
    assert resp.status_code == 200 and b"RevenuesWorkItemService" in resp.content


# -- create, find, idempotency --------------------------------------------------------------------------
def test_create_is_idempotent_by_external_reference(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    first = conn.create(delivery(1))
    assert first.backoffice_ref.startswith("RB") and first.status_code == "RECEIVED"
    again = conn.create(delivery(1))
    assert again.backoffice_ref == first.backoffice_ref
    assert sim.jobs_for("WH-2026-000001") == 1
    found = conn.find("WH-2026-000001")
    assert found is not None and found.backoffice_ref == first.backoffice_ref
    assert found.raw["AuthorityCode"] == "WCC"
    assert conn.find("WH-2026-999999") is None
    status = conn.status(first.backoffice_ref)
    assert status is not None and status.status_code == "RECEIVED"
    assert conn.status("RB9999999") is None


def test_lost_answer_is_unknown_outcome_and_the_retry_finds_the_item(sim: RevenuesSimulator) -> None:
    conn = make(sim, read=0.3)
    # the look-up before creating goes unanswered: only transient, nothing was done
    sim.faults.next("slow")
    with pytest.raises(TransientError) as lookup:
        conn.create(delivery(7))
    assert not isinstance(lookup.value, UnknownOutcomeError)
    assert sim.jobs_for("WH-2026-000007") == 0
    # the look-up passes ("pass" names no fault), the create itself goes unanswered after doing the work
    sim.faults.next(["pass", "slow"])
    with pytest.raises(UnknownOutcomeError):
        conn.create(delivery(7))
    assert sim.jobs_for("WH-2026-000007") == 1
    result = make(sim).create(delivery(7))
    assert sim.jobs_for("WH-2026-000007") == 1
    assert result.backoffice_ref == sim.store.by_hub_ref("shared-services", "WH-2026-000007")[0].ref


def test_duplicates_made_elsewhere_resolve_to_the_oldest(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    first = conn.create(delivery(3))
    # a second item with the same external reference, keyed in through another route
    sim.store.create("shared-services", "WH-2026-000003", "CTCOA", {"RaisedBy": "SYSTEM"})
    assert conn.find("WH-2026-000003").backoffice_ref == first.backoffice_ref  # type: ignore[union-attr]


# -- refusals ---------------------------------------------------------------------------------------------
def test_unknown_account_is_a_permanent_refusal(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    with pytest.raises(PermanentError) as exc:
        conn.create(delivery(4, CouncilTaxAccountRef="90000001"))
    assert "WH-2026-000004" in str(exc.value) and "90000001" in str(exc.value)
    assert sim.jobs_for("WH-2026-000004") == 0


def test_payload_checked_against_the_xsd_before_sending(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    bad = delivery(5, Customer={"FullName": "A" * 61}, Colour="blue", CouncilTaxAccountRef="12AB",
                   WorkItemType="XXXX")
    del bad.payload["EffectiveDate"]
    with pytest.raises(PermanentError) as exc:
        conn.create(bad)
    text = str(exc.value)
    assert "WH-2026-000005" in text
    assert "Customer.FullName: 61 characters, over the 60 allowed" in text
    assert "Colour: not a field" in text
    assert "EffectiveDate: required" in text
    assert "CouncilTaxAccountRef" in text and "WorkItemType" in text
    assert soap_posts(sim) == 0
    with pytest.raises(PermanentError, match="ExternalReference"):
        conn.create(delivery(5, ExternalReference="WH-2026-000099"))
    with pytest.raises(PermanentError, match=r"is not a valid date"):
        conn.create(delivery(5, EffectiveDate="first of March"))
    assert soap_posts(sim) == 0


def test_back_office_business_rules_are_permanent(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    no_address = delivery(6)
    del no_address.payload["NewAddress"]
    with pytest.raises(PermanentError, match="NewAddress"):
        conn.create(no_address)
    with pytest.raises(PermanentError, match="not billed by this system"):
        conn.create(delivery(6, authority="bromsgrove"))
    with pytest.raises(PermanentError, match="billing-authority code"):
        conn.create(delivery(6, authority="worcestershire"))
    assert sim.jobs_for("WH-2026-000006") == 0


def test_wrong_credentials_are_refused(sim: RevenuesSimulator) -> None:
    sim.credentials["shared-services"] = ("hub-interface", "another-pass")
    with pytest.raises(PermanentError, match="username or password"):
        make(sim).find("WH-2026-000001")


def test_unknown_tenant_is_permanent(sim: RevenuesSimulator) -> None:
    with pytest.raises(PermanentError, match="404"):
        make(sim, tenant="nowhere").find("WH-2026-000001")


# -- faults -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["error500", "status429", "reset"])
def test_failures_before_work_are_transient(sim: RevenuesSimulator, kind: str) -> None:
    conn = make(sim)
    sim.faults.next(kind)
    with pytest.raises(TransientError):
        conn.updates_since(None)
    assert conn.updates_since(None).updates == []


def test_soap_server_fault_is_transient_and_nothing_is_created(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    sim.faults.next("error500")
    with pytest.raises(TransientError, match="SOAP server fault"):
        conn.create(delivery(8))
    assert sim.jobs_for("WH-2026-000008") == 0


@pytest.mark.parametrize("kind", ["garbage", "truncated", "xxe", "entities", "wrong_type"])
def test_bad_and_hostile_answers_are_bad_responses(sim: RevenuesSimulator, kind: str) -> None:
    conn = make(sim)
    conn.create(delivery(9))
    sim.faults.next(kind)
    with pytest.raises(BadResponseError):
        conn.find("WH-2026-000009")
    sim.faults.next(kind)
    with pytest.raises(BadResponseError):
        conn.updates_since(None)


# -- updates ----------------------------------------------------------------------------------------------
def drain(conn: RevenuesConnector, cursor: str | None, limit: int) -> tuple[list[Any], str | None]:
    seen = []
    for _ in range(1000):
        page = conn.updates_since(cursor, limit)
        seen.extend(page.updates)
        cursor = page.cursor
        if not page.has_more:
            break
    return seen, cursor


def test_updates_are_complete_and_ordered_across_pages_sharing_a_timestamp(sim: RevenuesSimulator) -> None:
    frozen = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    sim.store.clock = lambda: frozen  # every change at the same instant
    conn = make(sim)
    for i in range(1, 6):
        conn.create(delivery(i))
    sim.advance()
    sim.advance()
    expected = sum(len(j.events) for j in sim.store.tenant_jobs("shared-services"))
    assert expected == 15
    for limit in (1, 2, 4, 7, 100):
        seen, _ = drain(conn, None, limit)
        ids = [int(u.update_id) for u in seen]
        assert ids == sorted(ids) and len(set(ids)) == expected, limit
        assert all(u.occurred_at == frozen for u in seen)


def test_updates_resume_from_a_saved_cursor_with_new_changes(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    conn.create(delivery(1))
    conn.create(delivery(2))
    seen, cursor = drain(conn, None, 2)
    assert [u.status_code for u in seen] == ["RECEIVED", "RECEIVED"]
    assert cursor is not None
    empty = conn.updates_since(cursor, 10)
    assert empty.updates == [] and empty.cursor == cursor and not empty.has_more
    sim.advance()
    later = make(sim)  # a fresh process with only the stored cursor
    more, _ = drain(later, cursor, 1)
    assert [(u.hub_ref, u.status_code) for u in more] == [("WH-2026-000001", "ALLOCATED"),
                                                          ("WH-2026-000002", "ALLOCATED")]
    assert all(u.service_code == "CTCOA" for u in more)


def test_updates_of_other_tenants_stay_apart(sim: RevenuesSimulator) -> None:
    make(sim, tenant="bromsgrove").create(delivery(11, authority="bromsgrove"))
    make(sim).create(delivery(12))
    seen, _ = drain(make(sim), None, 10)
    assert [u.hub_ref for u in seen] == ["WH-2026-000012"]
    assert make(sim).find("WH-2026-000011") is None


def test_items_raised_in_the_back_office_come_through_without_hub_ref(sim: RevenuesSimulator) -> None:
    job = sim.raise_direct("shared-services", "CTSPD", authority="WDC", council_tax_account="20000001",
                           customer_name="Bob Resident")
    seen, _ = drain(make(sim), None, 10)
    assert len(seen) == 1
    update = seen[0]
    assert update.hub_ref is None and update.backoffice_ref == job.ref and update.service_code == "CTSPD"
    assert update.status_code == "RECEIVED" and update.raw["Source"] == "OFFICER"


def test_bad_cursor_is_refused(sim: RevenuesSimulator) -> None:
    with pytest.raises(PermanentError, match="cursor"):
        make(sim).updates_since("2026-03-01T00:00:00Z")


def test_lifecycle_waits_for_evidence_only_where_needed(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    conn.create(delivery(21))
    conn.create(delivery(22, WorkItemType="HBCOC", BenefitClaimRef="654321"))
    for _ in range(8):
        sim.advance()
    seen, _ = drain(conn, None, 50)
    path = {ref: [u.status_code for u in seen if u.hub_ref == ref] for ref in ("WH-2026-000021", "WH-2026-000022")}
    assert path["WH-2026-000021"] == ["RECEIVED", "ALLOCATED", "IN_PROGRESS", "COMPLETED", "CLOSED"]
    assert path["WH-2026-000022"] == ["RECEIVED", "ALLOCATED", "IN_PROGRESS", "AWAITING_EVIDENCE", "IN_PROGRESS",
                                      "COMPLETED", "CLOSED"]
    assert {u.status_code for u in seen} <= set(STATUS_CODES)
    assert sim.advance() == 0


def test_payment_arrangement_carries_the_proposal(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    d = delivery(23, WorkItemType="CTARR", PaymentProposal={"InstalmentAmount": "45.50", "Frequency": "MONTHLY",
                                                            "FirstPaymentDate": "2026-04-01"})
    del d.payload["NewAddress"]
    assert conn.create(d).status_code == "RECEIVED"
    missing = delivery(24, WorkItemType="CTARR")
    with pytest.raises(PermanentError, match="PaymentProposal"):
        conn.create(missing)


# -- notes and withdrawal -----------------------------------------------------------------------------------
def test_notes_reach_the_work_item_and_long_ones_are_cut(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    ref = conn.create(delivery(31)).backoffice_ref
    conn.add_note(ref, "Customer called back with the new landlord's name.")
    conn.add_note(ref, "x" * 4000)
    notes = sim.notes_of("shared-services", ref)
    assert notes[0].startswith("Customer called back")
    assert len(notes[1]) == 2000 and notes[1].endswith("[cut: full text in the Hub]")
    with pytest.raises(PermanentError, match="RB9999999"):
        conn.add_note("RB9999999", "hello")


def test_withdrawal_is_repeatable_but_not_after_completion(sim: RevenuesSimulator) -> None:
    conn = make(sim)
    ref = conn.create(delivery(41)).backoffice_ref
    conn.cancel(ref, "customer is not moving after all")
    conn.cancel(ref, "customer is not moving after all")  # a retried cancel succeeds quietly
    assert conn.status(ref).status_code == "WITHDRAWN"  # type: ignore[union-attr]
    statuses = [u.status_code for u in drain(conn, None, 10)[0] if u.backoffice_ref == ref]
    assert statuses == ["RECEIVED", "WITHDRAWN"]
    done = conn.create(delivery(42)).backoffice_ref
    sim.set_status("shared-services", done, "COMPLETED")
    with pytest.raises(PermanentError, match="can no longer be withdrawn"):
        conn.cancel(done, "too late")
