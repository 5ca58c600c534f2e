"""Sending e-mail over SMTP (stdlib `smtplib`): STARTTLS, implicit TLS or plain, credentials from the environment.

Errors come back in hubbridge's own terms: `TransientError` (worth retrying: the server is down, busy or
answered 4xx), `PermanentError` (5xx: the message itself was refused) and `ConfigError` (missing credentials,
credentials that would cross the network in clear text).
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage

import structlog

from hubbridge.errors import ConfigError, PermanentError, TransientError

log = structlog.get_logger(__name__)

SECURITIES = ("starttls", "ssl", "none")


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (where clear text never crosses a network)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SmtpServer:
    """Where mail goes and how: the credentials are environment variable names, read at send time."""

    host: str
    port: int
    sender: str
    security: str = "starttls"
    username_env: str | None = None
    password_env: str | None = None
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.security not in SECURITIES:
            raise ConfigError(f"unknown SMTP security {self.security!r}", hint="one of " + ", ".join(SECURITIES))

    @property
    def name(self) -> str:
        return f"smtp:{self.host}:{self.port}"


class MailSender:
    """Sends one message per connection: escalations are few, and a fresh connection never carries a stale state."""

    def __init__(self, server: SmtpServer, environ: Mapping[str, str] | None = None) -> None:
        self.server = server
        self.environ = os.environ if environ is None else environ

    def credentials(self) -> tuple[str, str] | None:
        srv = self.server
        if srv.username_env is None or srv.password_env is None:
            return None
        user, password = self.environ.get(srv.username_env), self.environ.get(srv.password_env)
        if not user or not password:
            raise ConfigError(f"SMTP credentials are not set: {srv.username_env} and {srv.password_env}",
                              hint="set both environment variables for the worker, or remove them from smtp:")
        if srv.security == "none" and not is_loopback(srv.host):
            raise ConfigError(f"refusing to send SMTP credentials in clear text to {srv.host}",
                              hint="use security: starttls or ssl")
        return user, password

    def send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Send `message`; returns the recipients the server refused while it took the others (none, normally)."""
        srv = self.server
        login = self.credentials()
        context = ssl.create_default_context()
        try:
            client: smtplib.SMTP
            if srv.security == "ssl":
                client = smtplib.SMTP_SSL(srv.host, srv.port, timeout=srv.timeout_seconds, context=context)
            else:
                client = smtplib.SMTP(srv.host, srv.port, timeout=srv.timeout_seconds)
            with client:
                client.ehlo()
                if srv.security == "starttls":
                    client.starttls(context=context)
                    client.ehlo()
                if login is not None:
                    client.login(*login)
                refused = client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            text = f"every recipient refused ({', '.join(str(c) for c in codes)})"
            if all(code >= 500 for code in codes):
                raise PermanentError(text, instance=srv.name, hint="check the addresses in sla.yaml") from None
            raise TransientError(text, instance=srv.name) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"the server does not offer what smtp: asks for: {exc}", instance=srv.name,
                                 hint="check smtp.security (starttls) and credentials against the server") from None
        except smtplib.SMTPResponseException as exc:
            text = f"{exc.smtp_code} {_said(exc.smtp_error)}"
            if exc.smtp_code >= 500:
                raise PermanentError(f"the server refused the message: {text}", instance=srv.name) from None
            raise TransientError(f"the server deferred the message: {text}", instance=srv.name) from None
        except (smtplib.SMTPException, OSError) as exc:  # OSError covers refused connections, timeouts and TLS
            raise TransientError(f"{type(exc).__name__}: {str(exc)[:200]}", instance=srv.name) from None
        if refused:
            log.warning("mail.recipients_refused", server=srv.name, refused=len(refused))
        return dict(refused)


def _said(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:200]
