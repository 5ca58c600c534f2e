"""The Hub connector against the Hub simulator over loopback: ordering, idempotency, auth and faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from hubbridge.case import CaseUpdate, Channel, Customer, HubCase, HubStatus
from hubbridge.config.models import HubEndpoint, Timeouts
from hubbridge.connectors.hub import HubConnector, HubSimulator
from hubbridge.errors import (
    BadResponseError,
    ConfigError,
    PermanentError,
    TransientError,
    UnknownOutcomeError,
)
from hubbridge.signing import sign

TOKEN = "token-for-tests"
SECRET = "signing-secret-for-tests"
REF = "WH-2026-000123"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ENV = {"HUBBRIDGE_HUB_TOKEN": TOKEN, "HUBBRIDGE_HUB_SIGNING_SECRET": SECRET}


def update(seq: int, status: HubStatus = HubStatus.IN_PROGRESS, ref: str = REF, **kw: object) -> CaseUpdate:
    return CaseUpdate(ref=ref, status=status, sequence=seq, occurred_at=T0 + timedelta(minutes=seq), **kw)


def raised_case(description: str = "Missed bin reported by phone to the depot") -> HubCase:
    return HubCase(ref="WH-2026-000000", authority="bromsgrove", service="refuse.missed-bin",
                   channel=Channel.BACK_OFFICE, customer=Customer(name="A Resident"),
                   description=description, created_at=T0)


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[HubSimulator]:
    with HubSimulator(token=TOKEN, signing_secret=SECRET) as s:
        yield s


@pytest.fixture
def sim(shared_sim: HubSimulator) -> HubSimulator:
    shared_sim.reset()
    shared_sim.faults.slow_seconds = 1.5
    return shared_sim


def endpoint(sim: HubSimulator, read: float = 5.0) -> HubEndpoint:
    return HubEndpoint(endpoint=sim.endpoint, token_env="HUBBRIDGE_HUB_TOKEN",
                       timeouts=Timeouts(connect=2.0, read=read))


@pytest.fixture
def hub(sim: HubSimulator) -> Iterator[HubConnector]:
    with HubConnector(endpoint(sim), env=ENV) as h:
        yield h


def test_reset_forgets_everything(sim: HubSimulator, hub: HubConnector) -> None:
    hub.push_update(update(2))
    hub.push_update(update(1))
    hub.create_case(raised_case(), "SR1", "refuse-bromsgrove")
    sim.reset()
    assert sim.updates_for(REF) == [] and sim.out_of_order == [] and sim.raised_cases() == []
    assert hub.create_case(raised_case(), "SR1", "refuse-bromsgrove") == sim.raised_cases()[0]["ref"]


def test_simulator_serves_the_shipped_endpoint_shape(sim: HubSimulator) -> None:
    assert sim.endpoint == f"http://127.0.0.1:{sim.port}/hub/"
    resp = requests.get(f"{sim.url}elsewhere/cases/{REF}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert resp.status_code == 404
    assert "/hub/" in resp.json()["error"]


def test_updates_pushed_in_order_are_recorded_in_order(sim: HubSimulator, hub: HubConnector) -> None:
    statuses = [HubStatus.DELIVERED, HubStatus.ACKNOWLEDGED, HubStatus.IN_PROGRESS, HubStatus.RESOLVED]
    for seq, status in enumerate(statuses, start=1):
        hub.push_update(update(seq, status, backoffice_ref="SR00001000" if seq >= 2 else None, note=f"step {seq}"))
    recorded = sim.updates_for(REF)
    assert [u["sequence"] for u in recorded] == [1, 2, 3, 4]
    assert [u["status"] for u in recorded] == [s.value for s in statuses]
    assert recorded[0]["note"] == "step 1"
    assert sim.latest(REF)["status"] == "resolved"
    assert sim.backoffice_ref(REF) == "SR00001000"
    assert sim.out_of_order == []
    view = hub.get_case(REF)
    assert view is not None
    assert view["status"] == "resolved"
    assert view["backoffice_ref"] == "SR00001000"
    assert [u["sequence"] for u in view["updates"]] == [1, 2, 3, 4]


def test_duplicate_sequence_is_success_and_recorded_once(sim: HubSimulator, hub: HubConnector) -> None:
    hub.push_update(update(1, HubStatus.DELIVERED))
    hub.push_update(update(1, HubStatus.DELIVERED))  # a redelivered task sends it again
    assert len(sim.updates_for(REF)) == 1
    assert sim.duplicates == [(REF, 1)]


def test_simulator_flags_out_of_order_updates(sim: HubSimulator, hub: HubConnector) -> None:
    hub.push_update(update(1, HubStatus.DELIVERED))
    hub.push_update(update(3, HubStatus.RESOLVED))
    hub.push_update(update(2, HubStatus.IN_PROGRESS))  # what hubbridge must never do
    assert sim.out_of_order == [{"ref": REF, "sequence": 2, "after": 3}]
    assert [u["sequence"] for u in sim.updates_for(REF)] == [1, 3, 2]
    # The Hub applies updates as they arrive, so the late one hides the resolution: why order matters.
    assert sim.latest(REF)["status"] == "in_progress"


def test_out_of_order_is_per_case(sim: HubSimulator, hub: HubConnector) -> None:
    other = "WH-2026-000124"
    hub.push_update(update(5, ref=REF))
    hub.push_update(update(1, ref=other))
    assert sim.out_of_order == []


def test_wrong_token_is_refused_permanently(sim: HubSimulator) -> None:
    bad = HubConnector(endpoint(sim), env={**ENV, "HUBBRIDGE_HUB_TOKEN": "wrong"})
    with pytest.raises(PermanentError, match=r"refused our credentials.*HTTP 401.*bearer token refused") as err:
        bad.push_update(update(1))
    bad.close()
    assert "HUBBRIDGE_HUB_TOKEN" in str(err.value)
    assert "wrong" not in str(err.value)  # never echo the token
    assert sim.updates_for(REF) == []
    assert sim.refused[-1][2] == "bearer token refused"


def test_missing_token_is_refused(sim: HubSimulator) -> None:
    no_token = HubEndpoint(endpoint=sim.endpoint, token_env=None)
    with HubConnector(no_token, env={"HUBBRIDGE_HUB_SIGNING_SECRET": SECRET}) as bad, \
            pytest.raises(PermanentError, match="missing bearer token"):
        bad.push_update(update(1))


def test_unset_token_variable_is_a_config_error(sim: HubSimulator) -> None:
    with pytest.raises(ConfigError, match="HUBBRIDGE_HUB_TOKEN is not set"):
        HubConnector(endpoint(sim), env={})


def test_empty_signing_secret_variable_is_a_config_error(sim: HubSimulator) -> None:
    with pytest.raises(ConfigError, match="HUBBRIDGE_HUB_SIGNING_SECRET is empty"):
        HubConnector(endpoint(sim), env={**ENV, "HUBBRIDGE_HUB_SIGNING_SECRET": ""})


def test_unsigned_request_is_refused(sim: HubSimulator) -> None:
    with HubConnector(endpoint(sim), env={"HUBBRIDGE_HUB_TOKEN": TOKEN}) as unsigned:
        assert not unsigned.signs
        with pytest.raises(PermanentError, match=r"HTTP 403.*missing header X-Hubbridge-Timestamp"):
            unsigned.push_update(update(1))
    assert sim.updates_for(REF) == []


def test_wrong_signing_secret_is_refused(sim: HubSimulator) -> None:
    with HubConnector(endpoint(sim), env={**ENV, "HUBBRIDGE_HUB_SIGNING_SECRET": "not-the-secret"}) as bad:
        with pytest.raises(PermanentError, match=r"HTTP 403.*bad signature"):
            bad.push_update(update(1))
        with pytest.raises(PermanentError, match="bad signature"):
            bad.create_case(raised_case(), "SR1", "refuse-bromsgrove")
    assert sim.updates_for(REF) == [] and sim.raised_cases() == []


def test_replayed_request_is_refused(sim: HubSimulator) -> None:
    # A captured, correctly signed request sent again ten minutes later.
    body = update(1).model_dump_json().encode()
    old = int(datetime.now(UTC).timestamp()) - 600
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **sign(body, SECRET, old)}
    resp = requests.post(f"{sim.endpoint}cases/{REF}/updates", data=body, headers=headers, timeout=5)
    assert resp.status_code == 403
    assert "stale" in resp.json()["error"]


def test_tampered_body_is_refused(sim: HubSimulator) -> None:
    body = update(1).model_dump_json().encode()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **sign(body, SECRET)}
    tampered = body.replace(b"in_progress", b"resolved")
    resp = requests.post(f"{sim.endpoint}cases/{REF}/updates", data=tampered, headers=headers, timeout=5)
    assert resp.status_code == 403
    assert "bad signature" in resp.json()["error"]


def test_simulator_without_secret_accepts_unsigned() -> None:
    with HubSimulator() as sim:
        hub = HubEndpoint(endpoint=sim.endpoint, token_env="HUBBRIDGE_HUB_TOKEN")
        with HubConnector(hub, env={"HUBBRIDGE_HUB_TOKEN": "hub-demo-token"}) as h:
            h.push_update(update(1))
        assert len(sim.updates_for(REF)) == 1


def test_server_error_is_transient_then_retry_succeeds(sim: HubSimulator, hub: HubConnector) -> None:
    sim.faults.next("error500")
    with pytest.raises(TransientError, match="HTTP 500") as err:
        hub.push_update(update(1))
    assert not isinstance(err.value, PermanentError)
    assert sim.updates_for(REF) == []
    hub.push_update(update(1))
    assert len(sim.updates_for(REF)) == 1


def test_rate_limit_is_transient_with_retry_after(sim: HubSimulator, hub: HubConnector) -> None:
    sim.faults.next("status429")
    with pytest.raises(TransientError, match="rate limited") as err:
        hub.push_update(update(1))
    assert err.value.retry_after == 1.0


def test_connection_reset_is_transient(sim: HubSimulator, hub: HubConnector) -> None:
    sim.faults.next("reset")
    with pytest.raises(TransientError):
        hub.push_update(update(1))
    assert sim.updates_for(REF) == []


def test_hub_down_is_transient() -> None:
    with HubSimulator(token=TOKEN) as sim:
        hub = endpoint(sim)
    with HubConnector(hub, env=ENV) as h, pytest.raises(TransientError, match="cannot connect"):
        h.push_update(update(1))


def test_timeout_after_sending_is_unknown_then_resend_is_safe(sim: HubSimulator) -> None:
    with HubConnector(endpoint(sim, read=0.5), env=ENV) as hub:
        sim.faults.next("slow")  # the Hub records the update, then answers too late
        with pytest.raises(UnknownOutcomeError):
            hub.push_update(update(1))
        hub.push_update(update(1))  # the retry gets 409: already recorded, so success
    assert len(sim.updates_for(REF)) == 1
    assert sim.duplicates == [(REF, 1)]


def test_unknown_case_is_permanent() -> None:
    with HubSimulator(token=TOKEN, signing_secret=SECRET, known_refs=[REF]) as sim, \
            HubConnector(endpoint(sim), env=ENV) as hub:
        hub.push_update(update(1))
        with pytest.raises(PermanentError, match="does not know case WH-2026-000999"):
            hub.push_update(update(1, ref="WH-2026-000999"))
        assert hub.get_case("WH-2026-000999") is None


def test_invalid_update_is_refused_with_400(sim: HubSimulator) -> None:
    body = b'{"ref": "WH-2026-000123", "status": "nonsense", "sequence": 0}'
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **sign(body, SECRET)}
    resp = requests.post(f"{sim.endpoint}cases/{REF}/updates", data=body, headers=headers, timeout=5)
    assert resp.status_code == 400
    other = update(1, ref="WH-2026-000124").model_dump_json().encode()
    headers = {"Authorization": f"Bearer {TOKEN}", **sign(other, SECRET)}
    resp = requests.post(f"{sim.endpoint}cases/{REF}/updates", data=other, headers=headers, timeout=5)
    assert resp.status_code == 400
    assert "sent to case" in resp.json()["error"]


def test_create_case_is_idempotent_on_connector_and_backoffice_ref(sim: HubSimulator, hub: HubConnector) -> None:
    first = hub.create_case(raised_case(), "SR00004242", "refuse-bromsgrove")
    again = hub.create_case(raised_case(), "SR00004242", "refuse-bromsgrove")
    assert first == again
    assert first.startswith("WH-") and first != "WH-2026-000000"
    other_instance = hub.create_case(raised_case(), "SR00004242", "refuse-malvern")
    other_job = hub.create_case(raised_case(), "SR00004243", "refuse-bromsgrove")
    assert len({first, other_instance, other_job}) == 3
    raised = sim.raised_cases()
    assert [(c["connector"], c["backoffice_ref"]) for c in raised] == [
        ("refuse-bromsgrove", "SR00004242"), ("refuse-malvern", "SR00004242"), ("refuse-bromsgrove", "SR00004243")]
    assert raised[0]["case"]["channel"] == "back-office"
    assert sim.backoffice_ref(first) == "SR00004242"
    # Updates then flow to the new Hub case like any other.
    hub.push_update(update(1, HubStatus.ACKNOWLEDGED, ref=first))
    assert sim.latest(first)["status"] == "acknowledged"
    view = hub.get_case(first)
    assert view is not None and view["raised_by"] == "refuse-bromsgrove"


def test_create_case_after_unknown_outcome_returns_the_same_ref(sim: HubSimulator) -> None:
    with HubConnector(endpoint(sim, read=0.5), env=ENV) as hub:
        sim.faults.next("slow")
        with pytest.raises(UnknownOutcomeError):
            hub.create_case(raised_case(), "SR1", "refuse-bromsgrove")
        ref = hub.create_case(raised_case(), "SR1", "refuse-bromsgrove")
    assert [c["ref"] for c in sim.raised_cases()] == [ref]


def test_create_case_garbage_answer_is_a_bad_response(sim: HubSimulator, hub: HubConnector) -> None:
    sim.faults.next("garbage")
    with pytest.raises(BadResponseError, match="expected JSON"):
        hub.create_case(raised_case(), "SR1", "refuse-bromsgrove")
    sim.faults.next("wrong_type")
    with pytest.raises(BadResponseError, match="no valid case ref"):
        hub.create_case(raised_case(), "SR1", "refuse-bromsgrove")


def test_invalid_raised_case_is_permanent(sim: HubSimulator, hub: HubConnector) -> None:
    with pytest.raises(PermanentError, match="HTTP 400"):
        hub.create_case(raised_case(), "   ", "refuse-bromsgrove")


def test_concurrent_pushes_are_all_recorded(sim: HubSimulator, hub: HubConnector) -> None:
    refs = [f"WH-2026-{n:06d}" for n in range(200, 208)]
    errors: list[BaseException] = []

    def push(ref: str) -> None:
        try:
            with HubConnector(endpoint(sim), env=ENV) as h:
                for seq in range(1, 6):
                    h.push_update(update(seq, ref=ref))
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(r,)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for ref in refs:
        assert [u["sequence"] for u in sim.updates_for(ref)] == [1, 2, 3, 4, 5]
    assert sim.out_of_order == []
