"""Failed logins are limited per client address and per user name, so many addresses cannot guess one password."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from .test_console import PASSWORDS, app, csrf_of

__all__ = ["app"]  # the fixture, imported to be used here


def _try(app: Any, address: str, name: str, password: str) -> int:
    client = TestClient(app, follow_redirects=False, client=(address, 50000))
    form = client.get("/console/login")
    resp = client.post("/console/login", data={"name": name, "password": password, "csrf": csrf_of(form.text),
                                               "next": "/console/cases"})
    return resp.status_code


def test_wrong_passwords_from_many_addresses_lock_the_name_not_the_others(app: Any) -> None:
    # ten wrong passwords for olive, each from an address of its own: no address reaches its own limit
    assert [_try(app, f"10.0.0.{i}", "olive", "guess") for i in range(10)] == [401] * 10
    # the name is over its limit now: even the right password waits, from yet another address
    assert _try(app, "10.0.1.1", "olive", PASSWORDS["olive"]) == 429
    assert _try(app, "10.0.1.1", "OLIVE ", PASSWORDS["olive"]) == 429  # the same name, however typed
    # another user from the same addresses is not held up
    other = next(n for n in PASSWORDS if n != "olive")
    assert _try(app, "10.0.0.1", other, PASSWORDS[other]) == 303
