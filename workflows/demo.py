"""`hubbridge demo`: the whole system on one machine, embedded default, with generated cases.

Starts the back-office and Hub simulators on the shipped loopback endpoints, a real Celery worker
and beat as separate processes on the embedded SQLite broker, and the intake API; posts signed
generated cases, waits for them to settle and counts what happened from the store and the Hub.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from hubbridge.config.loader import load_config
from hubbridge.config.settings import Settings
from hubbridge.store import CaseRow, DeadLetterRow, migrate, session_scope
from hubbridge.workflows.casegen import generate_cases

DEMO_SECRETS = {
    "HUBBRIDGE_HUB_TOKEN": "hub-demo-token",
    "HUBBRIDGE_INTAKE_SECRET": "demo-intake-secret",
    "HUBBRIDGE_API_TOKEN": "demo-api-token",
}
"""Demo-only credentials, set in the demo's own environment; production sets its own."""


def demo_secret(env_name: str) -> str:
    """The value the demo puts in `env_name`: a fixed demo credential, the same in every demo process."""
    return DEMO_SECRETS.get(env_name, f"demo-{env_name.lower()}")


def demo_environment(cfg_env_names: set[str]) -> dict[str, str]:
    env = dict(DEMO_SECRETS)
    for name in cfg_env_names:
        env.setdefault(name, demo_secret(name))
    return env


def _credential_names(config: Any) -> set[str]:
    names = {v for inst in config.connectors.values() for v in inst.credentials.values()}
    if config.hub.token_env:
        names.add(config.hub.token_env)
    return names


def start_simulators(config: Any, tick_seconds: float = 3.0) -> list[Any]:
    """Start one simulator per plugin on the ports the shipped config names, moving jobs along over time."""
    from urllib.parse import urlsplit

    from hubbridge.connectors.hub import HubSimulator

    sims: list[Any] = []
    hub_port = urlsplit(config.hub.endpoint).port
    hub = HubSimulator(port=hub_port, token=DEMO_SECRETS["HUBBRIDGE_HUB_TOKEN"]).start()
    sims.append(hub)
    by_port: dict[int, str] = {}
    for inst in config.connectors.values():
        by_port.setdefault(urlsplit(inst.endpoint).port or 80, inst.plugin)
    for port, plugin in sorted(by_port.items()):
        sim = simulator_for(plugin, port, config)
        sim.start()
        sim.auto_advance(tick_seconds, sim.advance)  # each back office's own lifecycle per job type
        sims.append(sim)
    return sims


def simulator_config(
    dest: Path,
    hub_url: str,
    plugin_urls: dict[str, str],
    *,
    plugins: set[str] | None = None,
    instance: dict[str, Any] | None = None,
) -> Path:
    """Copy the shipped config into `dest` with every endpoint on simulators at `plugin_urls` (any ports).

    `plugins` keeps only those plugins' instances and routes; `instance` sets keys on every instance kept.
    """
    import shutil
    from urllib.parse import urlsplit, urlunsplit

    from ruamel.yaml import YAML

    from hubbridge.config.settings import SHIPPED_CONFIG_DIR

    dest.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED_CONFIG_DIR.glob("*.yaml"):
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
    from urllib.parse import urlsplit

    return urlsplit(endpoint).path.strip("/").split("/", 1)[0]


def simulator_for(plugin: str, port: int, config: Any | None = None) -> Any:
    """The simulator of one plugin, accepting exactly the demo credentials the config's instances send.

    `config` defaults to the shipped one; each simulator learns, per tenant (first path segment of an
    instance's endpoint), the values `demo_environment` puts in the variables the instance names, so a
    wrong or missing credential is refused as a real back office would.
    """
    if config is None:
        from hubbridge.config.loader import load_config
        from hubbridge.config.settings import SHIPPED_CONFIG_DIR, Settings

        config = load_config(SHIPPED_CONFIG_DIR, Settings(config_dir=SHIPPED_CONFIG_DIR))
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
    raise ValueError(f"no demo simulator for plugin {plugin!r}")


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "hubbridge.workflows.cli", *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run_demo(
    *, cases: int, areas: list[str], timeout: float, workers: int, data_dir: Path | None, quiet: bool, console: Console
) -> dict[str, Any]:
    data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="hubbridge-demo-"))
    data.mkdir(parents=True, exist_ok=True)
    base = Settings()
    config = load_config(base.config_dir, base)
    env = {
        **os.environ,
        **demo_environment(_credential_names(config)),
        "HUBBRIDGE_DATA_DIR": str(data),
        "HUBBRIDGE_DATABASE_URL": f"sqlite:///{data / 'hubbridge.sqlite'}",
        "HUBBRIDGE_BROKER_URL": f"embedded+sqlite:///{data / 'broker.sqlite'}",
        "HUBBRIDGE_LOG_FORMAT": "json",
        "HUBBRIDGE_SWEEP_SECONDS": "1",
        "HUBBRIDGE_RECONCILE_AFTER_SECONDS": "60",
    }
    os.environ.update({k: v for k, v in env.items() if k.startswith("HUBBRIDGE_") or k in env})
    from hubbridge.config.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    url = settings.resolved_database_url
    migrate(url)

    say = (lambda *a: None) if quiet else console.print
    say(f"[bold]hubbridge demo[/]: {cases} cases ({', '.join(areas)}), store and broker in {data}")
    sims = start_simulators(config)
    hub = sims[0]
    procs = [
        _spawn(["worker", f"--concurrency={workers}", "--loglevel=WARNING"], env, data / "worker.log"),
        _spawn(["beat", "--loglevel=WARNING"], env, data / "beat.log"),
    ]
    api_port = _free_port()
    server, thread = _serve_api(api_port)
    submitted: Counter[str] = Counter()
    started = time.monotonic()
    try:
        generated = list(generate_cases(cases, areas=areas, seed=int(time.time()) % 100000))
        from hubbridge.signing import sign

        session = requests.Session()
        with _progress(quiet, console) as progress:
            t_sub = progress.add_task("submitting", total=len(generated))
            for case in generated:
                body = json.dumps(case).encode()
                headers = {"Content-Type": "application/json", **sign(body, DEMO_SECRETS["HUBBRIDGE_INTAKE_SECRET"])}
                resp = session.post(f"http://127.0.0.1:{api_port}/cases", data=body, headers=headers, timeout=30)
                if resp.status_code == 202:
                    submitted[case["service"]] += 1
                progress.advance(t_sub)
            t_done = progress.add_task("delivered and acknowledged", total=sum(submitted.values()))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                settled = _settled(url)
                progress.update(t_done, completed=settled)
                if settled >= sum(submitted.values()):
                    break
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"a worker or beat process exited; see {data}/worker.log and beat.log")
                time.sleep(0.5)
        elapsed = time.monotonic() - started
        return _summary(url, submitted, hub, elapsed, data)
    finally:
        server.should_exit = True
        for p in procs:
            _stop(p)
        for sim in sims:
            sim.stop()
        thread.join(10)


def _progress(quiet: bool, console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )


def _settled(url: str) -> int:
    with session_scope(url) as s:
        return int(
            s.scalar(select(func.count()).select_from(CaseRow).where(CaseRow.stage.in_(("acknowledged", "dead")))) or 0
        )


def _summary(url: str, submitted: Counter[str], hub: Any, elapsed: float, data: Path) -> dict[str, Any]:
    """Totals and one row per service; `hub_has_ref` counts acknowledged cases whose reference the Hub holds."""
    counts = ("submitted", "delivered", "acknowledged", "dead_lettered", "lost", "hub_has_ref")
    by_service: dict[str, dict[str, Any]] = {}
    authorities: dict[str, set[str]] = {}
    with session_scope(url) as s:
        rows = s.execute(select(CaseRow.hub_ref, CaseRow.service, CaseRow.stage, CaseRow.authority)).all()
        dead_refs = set(s.scalars(select(DeadLetterRow.hub_ref).where(DeadLetterRow.hub_ref.is_not(None))).all())

    def row_for(service: str) -> dict[str, Any]:
        return by_service.setdefault(service, dict.fromkeys(counts, 0))

    for service, n in submitted.items():
        row_for(service)["submitted"] = n
    for ref, service, stage, authority in rows:
        row = row_for(service)
        authorities.setdefault(service, set()).add(authority)
        if stage in ("delivered", "acknowledged"):
            row["delivered"] += 1
        if stage == "acknowledged":
            row["acknowledged"] += 1
            if hub.backoffice_ref(ref):
                row["hub_has_ref"] += 1
        if stage == "dead" and ref in dead_refs:
            row["dead_lettered"] += 1
    for service, row in by_service.items():
        row["lost"] = max(0, row["submitted"] - row["delivered"] - row["dead_lettered"])
        # which councils' front offices the cases came from (highways: all seven; the rest: districts)
        row["authorities"] = sorted(authorities.get(service, ()))
    total = {k: sum(r[k] for r in by_service.values()) for k in counts}
    return {
        **total,
        "by_service": dict(sorted(by_service.items())),
        "elapsed_s": round(elapsed, 1),
        "cases_per_s": round(total["submitted"] / elapsed, 1) if elapsed else 0.0,
        "data_dir": str(data),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_api(port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    from hubbridge.workflows.api import create_app
    from hubbridge.workflows.runtime import reset_runtime

    reset_runtime()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(), host="127.0.0.1", port=port, log_config=None, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    return server, thread
