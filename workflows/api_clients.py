"""Who may use the API: the Hub clients of `api.yaml`, each with its token variable and its councils.

Without `api.yaml` clients, the one token in `HUBBRIDGE_API_TOKEN` (settings.api_token_env) is a client of
every council, as before. `api.yaml` also says whether /docs and /metrics are open to anyone.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from hubbridge.config.models import ApiClient, ApiFile
from hubbridge.config.yamlfile import load_yaml
from hubbridge.errors import ConfigError

API_FILE = "api.yaml"
LEGACY_CLIENT = "default"


def load_api_file(config_dir: Path | str) -> ApiFile:
    """Validate `api.yaml` in the config directory; no file means no listed clients and nothing open."""
    path = Path(config_dir) / API_FILE
    if not path.is_file():
        return ApiFile()
    doc = load_yaml(path)
    if doc.data is None:
        raise ConfigError("file is empty", path=str(path), line=1, col=1,
                          hint="list clients (name, token_env, authorities) or delete the file")
    return doc.validate(ApiFile)


def token_clients(conf: ApiFile, legacy_token_env: str) -> list[tuple[ApiClient, str]]:
    """Each client whose token variable is set, with its token; the legacy single token serves every council."""
    out = [(c, os.environ[c.token_env]) for c in conf.clients if os.environ.get(c.token_env)]
    legacy = os.environ.get(legacy_token_env)
    if legacy and not any(c.token_env == legacy_token_env for c in conf.clients):
        out.append((ApiClient(name=LEGACY_CLIENT, token_env=legacy_token_env, authorities=["*"]), legacy))
    return out


def client_for(authorization: str, clients: list[tuple[ApiClient, str]]) -> ApiClient | None:
    """The client whose bearer token this Authorization header carries, else None."""
    found = None
    for client, token in clients:
        # every token compared, so the time taken does not say which client came close
        if hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()) and found is None:
            found = client
    return found


def case_ref_and_authority(body: bytes) -> tuple[str | None, str | None]:
    """The Hub reference and authority a case body claims, or None where it does not say (or is not JSON)."""
    import json

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None, None  # intake validation refuses it and keeps it as a dead letter
    if not isinstance(doc, dict):
        return None, None
    ref, authority = doc.get("ref"), doc.get("authority")
    return (ref if isinstance(ref, str) else None), (authority if isinstance(authority, str) else None)
