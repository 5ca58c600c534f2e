"""The simulated world around hubbridge: the Hub and the back offices on loopback, with the demo's credentials.

`simulator_for` builds one back office's simulator that accepts exactly the credentials the config's
instances send; `simulator_config` copies a config pointed at simulators; `SimulatorSet` runs them in
this process and `SimulatorProcess` in a child process, and both answer the same questions about what
the Hub and the back offices recorded.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hubbridge.config.loader import Config

PLUGINS = ("bartec", "revenues", "open311", "planning")

DEMO_SECRETS = {
    "HUBBRIDGE_HUB_TOKEN": "hub-demo-token",
    "HUBBRIDGE_INTAKE_SECRET": "demo-intake-secret",
    "HUBBRIDGE_API_TOKEN": "demo-api-token",
}
"""Demo-only credentials, set in the demo's own environment; production sets its own."""


def demo_secret(env_name: str) -> str:
    """The value the demo puts in `env_name`: a fixed demo credential, the same in every demo process."""
    return DEMO_SECRETS.get(env_name, f"demo-{env_name.lower()}")


def credential_names(config: Config) -> set[str]:
    """Every environment variable the config's connectors and Hub read a credential from."""
    names = {v for inst in config.connectors.values() for v in inst.credentials.values()}
    if config.hub.token_env:
        names.add(config.hub.token_env)
    return names


def demo_environment(config: Config) -> dict[str, str]:
    """The demo credential for every variable the config names, plus the Hub's, intake's and API's."""
    env = dict(DEMO_SECRETS)
    for name in credential_names(config):
        env.setdefault(name, demo_secret(name))
    return env


def load(config_dir: Path) -> Config:
    from hubbridge.config.loader import load_config
    from hubbridge.config.settings import Settings

    return load_config(config_dir, Settings(config_dir=config_dir))


def simulator_config(
    dest: Path,
    hub_url: str,
    plugin_urls: dict[str, str],
    *,
    source: Path | None = None,
    plugins: set[str] | None = None,
    instance: dict[str, Any] | None = None,
) -> Path:
    """Copy the config in `source` (default: the shipped one) into `dest`, every endpoint on the simulators.

    `plugins` keeps only those plugins' instances and routes; `instance` sets keys on every instance kept.
    """
    from ruamel.yaml import YAML

    from hubbridge.config.settings import SHIPPED_CONFIG_DIR

    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(source or SHIPPED_CONFIG_DIR).glob("*.yaml"):
        shutil.copy(f, dest / f.name)
    yaml = YAML()
    conns = yaml.load((dest / "connectors.yaml").read_text())
    conns["hub"]["endpoint"] = hub_url
    for name in list(conns["connectors"]):
        inst = conns["connectors"][name]
        if plugins is not None and inst["plugin"] not in plugins:
            del conns["connectors"][name]
            continue
        base, old = urlsplit(plugin_urls[inst["plugin"]]), urlsplit(inst["endpoint"])
        inst["endpoint"] = urlunsplit((base.scheme, base.netloc, old.path, "", ""))
        inst.update(instance or {})
    with (dest / "connectors.yaml").open("w") as fh:
        yaml.dump(conns, fh)
    if plugins is not None:
        routes = yaml.load((dest / "routes.yaml").read_text())
        routes["routes"] = [r for r in routes["routes"] if r["connector"] in conns["connectors"]]
        with (dest / "routes.yaml").open("w") as fh:
            yaml.dump(routes, fh)
    return dest


def _tenant(endpoint: str) -> str:
    return urlsplit(endpoint).path.strip("/").split("/", 1)[0]


def simulator_for(plugin: str, port: int = 0, config: Config | None = None) -> Any:
    """The simulator of one plugin, accepting exactly the demo credentials the config's instances send.

    `config` defaults to the shipped one; each simulator learns, per tenant (first path segment of an
    instance's endpoint), the values `demo_environment` puts in the variables the instance names, so a
    wrong or missing credential is refused as a real back office would.
    """
    if config is None:
        from hubbridge.config.settings import SHIPPED_CONFIG_DIR

        config = load(SHIPPED_CONFIG_DIR)
    instances = [i for i in config.connectors.values() if i.plugin == plugin]
    if plugin == "bartec":
        from hubbridge.connectors.bartec import BartecSimulator

        return BartecSimulator(port=port)  # Authenticate takes any non-empty user and password
    if plugin == "revenues":
        from hubbridge.connectors.revenues import RevenuesSimulator

        creds = {
            _tenant(i.endpoint): (demo_secret(i.credentials["username"]), demo_secret(i.credentials["password"]))
            for i in instances
            if "username" in i.credentials and "password" in i.credentials
        }
        return RevenuesSimulator(port=port, credentials=creds)
    if plugin == "open311":
        from hubbridge.connectors.open311 import Open311Simulator

        keys = {demo_secret(i.credentials["api_key"]) for i in instances if "api_key" in i.credentials}
        # one key for the County's server; with several instances any non-empty key is taken (never none)
        return Open311Simulator(port=port, api_key=keys.pop() if len(keys) == 1 else None)
    if plugin == "planning":
        from hubbridge.connectors.planning import PlanningSimulator

        tokens = {_tenant(i.endpoint): demo_secret(i.credentials["token"]) for i in instances
                  if "token" in i.credentials}
        return PlanningSimulator(port=port, tokens=tokens)
    raise ValueError(f"no simulator for plugin {plugin!r}")


class MailSink:
    """The council's mail relay as the demo and tests see it: an SMTP server on loopback keeping what it takes."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._controller: Any = None

    def start(self) -> MailSink:
        import socket

        from aiosmtpd.controller import Controller

        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        msg = message_from_bytes(envelope.content)
        with self._lock:
            self.messages.append({"to": list(envelope.rcpt_tos), "subject": msg.get("Subject", ""),
                                  "message_id": msg.get("Message-ID", ""), "from": envelope.mail_from})
        return "250 OK"

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


class WebhookSink:
    """Teams / Slack incoming webhooks as the demo and tests see them: an HTTP server on loopback keeping each
    JSON message posted to it, by path (one path per channel)."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server: Any = None

    def start(self) -> WebhookSink:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    message = json.loads(body)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with sink._lock:
                    sink.messages.append({"path": self.path, "body": message})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"1")  # what Slack and Teams answer

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True).start()
        return self

    def url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{channel}"

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.messages)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def webhook_variables(cfg: Path) -> list[str]:
    """The environment variables sla.yaml's webhook targets read their URLs from."""
    from ruamel.yaml import YAML

    data = YAML(typ="safe").load((cfg / "sla.yaml").read_text()) or {}
    return sorted({t["url_env"] for e in (data.get("escalations") or {}).values()
                   for t in (e.get("targets") or []) if isinstance(t, dict) and t.get("url_env")})


def use_mail_sink(cfg: Path, port: int) -> None:
    """Point the written config's SMTP relay (sla.yaml `smtp:`) at a loopback sink: plain SMTP, this machine."""
    from ruamel.yaml import YAML

    yaml = YAML()
    path = cfg / "sla.yaml"
    data = yaml.load(path.read_text())
    if data.get("smtp") is None:
        return
    data["smtp"]["host"], data["smtp"]["port"], data["smtp"]["security"] = "127.0.0.1", port, "none"
    for key in ("username_env", "password_env"):
        data["smtp"].pop(key, None)
    with path.open("w") as fh:
        yaml.dump(data, fh)


class SimulatorSet:
    """The Hub and one simulator per plugin, serving in this process, moving jobs along every `tick_seconds`."""

    def __init__(
        self,
        plugins: Sequence[str] = PLUGINS,
        *,
        tick_seconds: float | None = None,
        make: Callable[[str], Any] = simulator_for,
    ) -> None:
        from hubbridge.connectors.hub import HubSimulator

        self.hub = HubSimulator(token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
        self.backoffices: dict[str, Any] = {}
        try:
            for plugin in plugins:
                sim = make(plugin).start()
                if tick_seconds:
                    sim.auto_advance(tick_seconds, sim.advance)  # each back office's own lifecycle per job type
                self.backoffices[plugin] = sim
        except BaseException:
            self.stop()
            raise

    def __getitem__(self, name: str) -> Any:
        """`"hub"`: the Hub simulator; a plugin's name: that back office's simulator."""
        return self.hub if name == "hub" else self.backoffices[name]

    @property
    def hub_endpoint(self) -> str:
        return str(self.hub.endpoint)

    @property
    def plugin_urls(self) -> dict[str, str]:
        return {p: str(s.url) for p, s in self.backoffices.items()}

    def acks(self, refs: Iterable[str]) -> dict[str, str | None]:
        """When the Hub first heard each case's back-office reference (ISO time, None if it never did)."""
        out: dict[str, str | None] = {}
        for ref in refs:
            first = next((u for u in self.hub.updates_for(ref) if u.get("backoffice_ref")), None)
            out[ref] = first["received_at"] if first else None
        return out

    def backoffice_refs(self, refs: Iterable[str]) -> dict[str, str | None]:
        """The back-office reference the Hub holds for each case, if any."""
        return {ref: self.hub.backoffice_ref(ref) for ref in refs}

    def hub_anomalies(self) -> dict[str, int]:
        """Updates the Hub received out of order or twice."""
        return {"out_of_order": len(self.hub.out_of_order), "duplicates": len(self.hub.duplicates)}

    def sync_lags(self, refs: Iterable[str]) -> list[float]:
        """Seconds from each back-office change to the Hub's receipt of it (every update after `delivered`)."""
        return sync_lags(self.hub, refs)

    def job_counts(self) -> dict[str, int]:
        """How many back-office jobs carry each Hub reference, across every simulator."""
        counts: dict[str, int] = {}
        for sim in self.backoffices.values():
            for ref, n in sim.store.count_by_hub_ref().items():
                counts[ref] = counts.get(ref, 0) + n
        return counts

    def followup_records(self) -> list[dict[str, Any]]:
        """Every follow-up operation the back offices carried out, from their own records: each
        {plugin, backoffice_ref, hub_ref, kind, text, documents}."""
        found: list[dict[str, Any]] = []
        for plugin, sim in self.backoffices.items():
            with sim.store._lock:
                jobs = list(sim.store.jobs.values())
            for job in jobs:
                for record in job.data.get("followups", ()):
                    found.append({"plugin": plugin, "backoffice_ref": job.ref, "hub_ref": job.hub_ref,
                                  "kind": record["kind"], "text": record["text"],
                                  "documents": list(record.get("documents", ()))})
        return found

    def stop(self) -> None:
        for sim in (self.hub, *self.backoffices.values()):
            with contextlib.suppress(Exception):
                sim.stop()


def sync_lags(hub: Any, refs: Iterable[str]) -> list[float]:
    """Seconds from each back-office change to the Hub's receipt of it (every update after `delivered`), sorted."""
    lags = [
        (datetime.fromisoformat(u["received_at"]) - datetime.fromisoformat(u["occurred_at"])).total_seconds()
        for ref in refs for u in hub.updates_for(ref) if u["status"] != "delivered"
    ]
    return sorted(lags)


QUESTIONS = ("acks", "backoffice_refs", "hub_anomalies", "sync_lags", "job_counts", "followup_records")
"""What a `SimulatorProcess` may be asked: the `SimulatorSet` methods of that name."""


def _serve_in_child(conn: Any, plugins: Sequence[str], tick_seconds: float | None) -> None:
    import logging

    logging.disable(logging.INFO)
    sims = SimulatorSet(plugins, tick_seconds=tick_seconds)
    conn.send({"hub": sims.hub_endpoint, "plugins": sims.plugin_urls})
    while True:
        try:
            question, args = conn.recv()
        except EOFError:
            break
        if question == "stop":
            break
        if question in QUESTIONS:
            conn.send(getattr(sims, question)(*args))
        else:
            conn.send({"error": f"unknown question {question!r}"})
    sims.stop()


class SimulatorProcess:
    """A `SimulatorSet` in a child process, so its HTTP handling does not share the caller's GIL."""

    def __init__(self, plugins: Sequence[str] = PLUGINS, *, tick_seconds: float | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self.proc = ctx.Process(target=_serve_in_child, args=(child, tuple(plugins), tick_seconds), daemon=True)
        self.proc.start()
        if not self._conn.poll(60):
            raise RuntimeError("the simulator process did not start within 60 s")
        ready = self._conn.recv()
        self.hub_endpoint: str = ready["hub"]
        self.plugin_urls: dict[str, str] = ready["plugins"]

    def _ask(self, question: str, *args: Any) -> Any:
        with self._lock:
            self._conn.send((question, args))
            return self._conn.recv()

    def acks(self, refs: Iterable[str]) -> dict[str, str | None]:
        return dict(self._ask("acks", list(refs)))

    def backoffice_refs(self, refs: Iterable[str]) -> dict[str, str | None]:
        return dict(self._ask("backoffice_refs", list(refs)))

    def hub_anomalies(self) -> dict[str, int]:
        return dict(self._ask("hub_anomalies"))

    def sync_lags(self, refs: Iterable[str]) -> list[float]:
        return list(self._ask("sync_lags", list(refs)))

    def job_counts(self) -> dict[str, int]:
        return dict(self._ask("job_counts"))

    def followup_records(self) -> list[dict[str, Any]]:
        return list(self._ask("followup_records"))

    def stop(self) -> None:
        with contextlib.suppress(Exception), self._lock:
            self._conn.send(("stop", ()))
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
