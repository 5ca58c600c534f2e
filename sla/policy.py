"""SLA policies from `config/sla.yaml`: calendars, clock rules, per-service policies and escalations.

Validated with file:line:col errors like the rest of config, then resolved per (policy, priority) into
plain `ClockSpec`s the engine uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from hubbridge.case import SERVICE_KEY_PATTERN, HubStatus, Priority
from hubbridge.config.models import AuthoritiesFile, RetryPolicy, ServicesFile
from hubbridge.config.yamlfile import YamlDoc, load_yaml
from hubbridge.errors import ConfigError, ConfigErrors
from hubbridge.sla.calendar import BusinessCalendar, parse_hours

log = structlog.get_logger(__name__)

SLA_FILE = "sla.yaml"
ELAPSED = BusinessCalendar.twenty_four_seven("24x7")
"""The calendar of elapsed-hours targets: wall-clock time whatever the policy's calendar."""
REQUIRED_CLOCKS = ("acknowledge", "resolve")
"""The customer's promise every policy times (the service area's own clocks are optional per policy)."""
CUSTOMER = "customer"
SERVICE_AREA = "service_area"
PROMISES = (CUSTOMER, SERVICE_AREA)
Promise = Literal["customer", "service_area"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,30}$")]
PolicyKey = Annotated[str, StringConstraints(pattern=SERVICE_KEY_PATTERN, max_length=80)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DateRange(Strict):
    """Closed on every day from `from` to `to`, both included."""

    from_: date = Field(alias="from")
    to: date
    reason: str | None = None

    @model_validator(mode="after")
    def _order(self) -> DateRange:
        if self.to < self.from_:
            raise ValueError("'to' is before 'from'")
        if (self.to - self.from_).days > 366:
            raise ValueError("a closure longer than a year is not a closure")
        return self

    def days(self) -> list[date]:
        return [self.from_ + timedelta(days=i) for i in range((self.to - self.from_).days + 1)]


class Closure(Strict):
    date: date
    reason: str | None = None


class CalendarSpec(Strict):
    """A named business calendar."""

    description: str | None = None
    timezone: str = "Europe/London"
    always_open: bool = Field(False, description="24/7: business time is elapsed time")
    hours: dict[Annotated[str, StringConstraints(pattern="^(mon|tue|wed|thu|fri|sat|sun)$")],
                str | list[str] | None] = Field(default_factory=dict, description="Local opening hours per weekday")
    bank_holidays: bool = Field(True, description="Closed on England & Wales bank holidays")
    closures: list[date | Closure | DateRange] = Field(default_factory=list, description="Local closure days")
    working_day_hours: Annotated[float, Field(gt=0, le=24)] | None = Field(
        None, description="Business hours in one working day; default the most common weekday's hours")
    closures_known_until: date | None = Field(
        None, description="The closure days are complete up to this date (default: 31 December of the last "
                          "closure's year); `hubbridge sla calendars check` warns 12 months before it runs out")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: dict[str, Any]) -> dict[str, Any]:
        for spans in value.values():
            for span in [spans] if isinstance(spans, str) else (spans or []):
                parse_hours(span)
        return value

    @model_validator(mode="after")
    def _some_hours(self) -> CalendarSpec:
        if not self.always_open and not any(self.hours.values()):
            raise ValueError("a calendar needs opening hours on at least one weekday, or always_open: true")
        return self

    def closures_known_through(self) -> date | None:
        """The last day whose closures this calendar is known to hold (None: no closure data at all)."""
        if self.closures_known_until is not None:
            return self.closures_known_until
        last = max((c.to if isinstance(c, DateRange) else c.date if isinstance(c, Closure) else c
                    for c in self.closures), default=None)
        # closure days are announced a year at a time (the Christmas shutdown): a year's entry covers that year
        return date(last.year, 12, 31) if last is not None else None

    def build(self, name: str) -> BusinessCalendar:
        if self.always_open:
            return BusinessCalendar(name, always_open=True, bank_holidays=False, tz=ZoneInfo(self.timezone))
        hours = {}
        for key, spans in self.hours.items():
            listed = [spans] if isinstance(spans, str) else (spans or [])
            hours[WEEKDAYS.index(key)] = sorted(parse_hours(s) for s in listed)
        closed: list[date] = []
        for c in self.closures:
            if isinstance(c, DateRange):
                closed.extend(c.days())
            elif isinstance(c, Closure):
                closed.append(c.date)
            else:
                closed.append(c)
        return BusinessCalendar(name, hours, tz=ZoneInfo(self.timezone), bank_holidays=self.bank_holidays,
                                closures=closed, working_day_hours=self.working_day_hours)


class Target(Strict):
    """How long a clock may run: exactly one of working hours, working days or elapsed hours."""

    working_hours: Annotated[float, Field(gt=0, le=100000)] | None = None
    working_days: Annotated[float, Field(gt=0, le=5000)] | None = None
    elapsed_hours: Annotated[float, Field(gt=0, le=100000)] | None = None

    @model_validator(mode="after")
    def _one(self) -> Target:
        given = [k for k in ("working_hours", "working_days", "elapsed_hours") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of working_hours, working_days, elapsed_hours")
        return self

    @property
    def elapsed(self) -> bool:
        return self.elapsed_hours is not None

    def duration(self, calendar: BusinessCalendar) -> timedelta:
        """The target as business time in `calendar` (elapsed hours are always wall-clock time)."""
        if self.working_hours is not None:
            return timedelta(hours=self.working_hours)
        if self.working_days is not None:
            return calendar.working_day * self.working_days
        return timedelta(hours=self.elapsed_hours or 0)

    def describe(self) -> str:
        if self.working_hours is not None:
            return f"{self.working_hours:g} working hours"
        if self.working_days is not None:
            return f"{self.working_days:g} working days"
        return f"{self.elapsed_hours:g} elapsed hours"


class ClockRules(Strict):
    """Which Hub statuses start, pause, stop and (after a stop) restart a clock."""

    start_on: list[HubStatus] | None = None
    pause_on: list[HubStatus] | None = None
    stop_on: list[HubStatus] | None = None
    restart_on: list[HubStatus] | None = Field(None, description="Statuses that reopen a stopped clock")
    on_restart: str | None = Field(None, pattern="^(reset|resume)$",
                                   description="reset: a fresh target from the reopen; resume: keep time spent")


class ClockRule(ClockRules):
    """A clock's rules in `clock_rules`, and which promise it times: a clock name means one promise everywhere."""

    promise: Promise = Field(CUSTOMER, description="customer: the Hub's SLA to the customer, from routing; "
                             "service_area: the service area's own operational level, from delivery")


class ClockConfig(ClockRules):
    """One clock of a policy; rules left out come from `clock_rules`."""

    target: Target | None = None
    calendar: Name | None = None
    warn_fraction: Fraction | None = None
    escalation: Name | None = None


class PriorityOverride(Strict):
    """What changes for one priority: the calendar, escalation, and any clock's target or rules."""

    calendar: Name | None = None
    warn_fraction: Fraction | None = None
    escalation: Name | None = None
    clocks: dict[Name, ClockConfig] = Field(default_factory=dict)


FiredKind = Literal["warning", "breach"]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,100}$")]
EmailAddress = Annotated[str, StringConstraints(pattern=r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$", max_length=254)]
AuthorityKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]


class Chase(Strict):
    """A breach on a case its back office holds sends the back office a note through the follow-ups path."""

    enabled: bool = True
    clocks: list[Name] | None = Field(None, description="Only these clocks' breaches chase (default: every clock)")
    promises: list[Promise] | None = Field(
        None, description="Only breaches of these promises' clocks chase (default: every promise)")
    raise_priority: Literal["high", "emergency"] | None = Field(
        None, description="Also ask the back office to raise the job to this priority (where its system has one)")

    def covers(self, clock: str, promise: str) -> bool:
        """Whether a breach of `clock` (timing `promise`) chases the back office."""
        return ((self.clocks is None or clock in self.clocks)
                and (self.promises is None or promise in self.promises))


class TargetBase(Strict):
    name: Name = Field(description="Names the target in the store: each escalation reaches each target once")
    on: list[FiredKind] = Field(default_factory=lambda: ["warning", "breach"], min_length=1)
    authorities: list[AuthorityKey] | None = Field(
        None, description="Only cases of these councils (default: every council the escalation covers)")


class EmailTarget(TargetBase):
    """E-mail to named inboxes, through the SMTP server in `smtp:`."""

    type: Literal["email"]
    to: list[EmailAddress] = Field(min_length=1, max_length=50)


class WebhookTarget(TargetBase):
    """A chat message to an incoming webhook; its URL (a secret) is read from the named environment variable."""

    type: Literal["webhook"]
    url_env: EnvName
    format: Literal["slack", "teams"] = Field(
        description="slack: {'text': ...}; teams: a Teams Workflows message carrying an Adaptive Card")


EscalationTarget = Annotated[EmailTarget | WebhookTarget, Field(discriminator="type")]


class SmtpConfig(Strict):
    """The SMTP server escalation e-mail goes through; credentials only by environment variable name."""

    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    from_: EmailAddress = Field(alias="from")
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls", description="none is refused with credentials, except to a server on this machine")
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 10.0

    @model_validator(mode="after")
    def _both(self) -> SmtpConfig:
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("give both username_env and password_env, or neither")
        return self


class PolicyConfig(Strict):
    description: str | None = None
    calendar: Name
    warn_fraction: Fraction | None = None
    escalation: Name | None = None
    chase: Chase | None = Field(None, description="Overrides the escalation's chase for this policy")
    clocks: dict[Name, ClockConfig]
    priorities: dict[Priority, PriorityOverride] = Field(default_factory=dict)


class Escalation(Strict):
    """Where breached work goes: a named team, the queue its work is routed to, and who is told."""

    description: str
    queue: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9._-]{0,80}$")]
    hub_team: str | None = Field(None, description="The Hub team told about the breach")
    targets: list[EscalationTarget] = Field(default_factory=list, description="E-mail and webhook recipients")
    chase: Chase | None = Field(None, description="Chase the back office on a breach of a delivered case")

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[EmailTarget | WebhookTarget]) -> list[EmailTarget | WebhookTarget]:
        names = [t.name for t in value]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"target names must differ within an escalation: {', '.join(doubled)}")
        return value

    def target(self, name: str) -> EmailTarget | WebhookTarget | None:
        return next((t for t in self.targets if t.name == name), None)


ESCALATION_RETRY = RetryPolicy(max_attempts=10, base_seconds=30.0, max_seconds=1800.0)
"""Retries for an hour or two (full-jitter backoff up to 30 min apart), then a dead letter."""


class SlaFile(Strict):
    schema_: str | None = Field(None, alias="$schema")
    warn_fraction: Fraction = 0.75
    clock_rules: dict[Name, ClockRule]
    calendars: dict[Name, CalendarSpec]
    smtp: SmtpConfig | None = None
    escalation_retry: RetryPolicy = ESCALATION_RETRY
    escalations: dict[Name, Escalation] = Field(default_factory=dict)
    policies: dict[PolicyKey, PolicyConfig]


@dataclass(frozen=True)
class Rules:
    start_on: frozenset[HubStatus]
    pause_on: frozenset[HubStatus]
    stop_on: frozenset[HubStatus]
    restart_on: frozenset[HubStatus]
    on_restart: str


@dataclass(frozen=True)
class ClockSpec:
    """One clock of a policy at one priority, fully resolved."""

    name: str
    target: timedelta
    target_text: str
    calendar: BusinessCalendar
    warn_fraction: float
    escalation: str | None
    rules: Rules
    promise: str = CUSTOMER

    @property
    def warn_after(self) -> timedelta:
        return timedelta(seconds=round(self.target.total_seconds() * self.warn_fraction))


@dataclass
class SlaConfig:
    """The validated SLA config with calendars built."""

    path: Path
    file: SlaFile
    calendars: dict[str, BusinessCalendar]

    @property
    def escalations(self) -> dict[str, Escalation]:
        return self.file.escalations

    def calendar(self, name: str) -> BusinessCalendar:
        """A calendar by name; `24x7` is always there for elapsed-hours targets."""
        if name == ELAPSED.name:
            return ELAPSED
        try:
            return self.calendars[name]
        except KeyError:
            raise ConfigError(f"no calendar {name!r}", path=str(self.path),
                              hint="a clock in the store names a calendar the config no longer has") from None

    def promise_of(self, clock: str) -> str:
        """The promise a clock times (a clock without a `clock_rules` entry times the customer's)."""
        rule = self.file.clock_rules.get(clock)
        return rule.promise if rule is not None else CUSTOMER

    @property
    def promises(self) -> dict[str, str]:
        """Clock name -> the promise it times, for every clock of `clock_rules`."""
        return {name: rule.promise for name, rule in self.file.clock_rules.items()}

    def clocks_of_promise(self, promise: str) -> list[str]:
        """The clock names of `clock_rules` that time `promise`."""
        return sorted(name for name, rule in self.file.clock_rules.items() if rule.promise == promise)

    def chase(self, policy: str, escalation: str | None) -> Chase | None:
        """The chase of a policy's breaches: the policy's own, else its escalation's (None: no chase)."""
        pol = self.file.policies.get(policy)
        esc = self.file.escalations.get(escalation) if escalation else None
        chosen = (pol.chase if pol is not None else None) or (esc.chase if esc is not None else None)
        return chosen if chosen is not None and chosen.enabled else None

    def policy(self, key: str) -> PolicyConfig:
        try:
            return self.file.policies[key]
        except KeyError:
            raise ConfigError(f"no SLA policy {key!r}", path=str(self.path),
                              hint="known policies: " + ", ".join(sorted(self.file.policies))) from None

    def clocks(self, key: str, priority: Priority | str) -> dict[str, ClockSpec]:
        """Every clock of policy `key` at `priority`, overrides applied."""
        pol = self.policy(key)
        prio = Priority(priority)
        over = pol.priorities.get(prio) or PriorityOverride()
        out = {}
        for name, base in pol.clocks.items():
            spec = over.clocks.get(name) or ClockConfig()
            rules_base = self.file.clock_rules.get(name) or ClockRule()

            def pick(field: str, spec: ClockConfig = spec, base: ClockConfig = base,
                     rules_base: ClockRule = rules_base) -> Any:
                for src in (spec, base, rules_base):
                    value = getattr(src, field)
                    if value is not None:
                        return value
                return None

            cal_name = spec.calendar or over.calendar or base.calendar or pol.calendar
            target = spec.target or base.target
            assert target is not None  # checked at load
            calendar = ELAPSED if target.elapsed else self.calendars[cal_name]
            rules = Rules(
                start_on=frozenset(pick("start_on") or [HubStatus.ROUTED]),
                pause_on=frozenset(pick("pause_on") or []),
                stop_on=frozenset(pick("stop_on") or []),
                restart_on=frozenset(pick("restart_on") or []),
                on_restart=pick("on_restart") or "reset",
            )
            out[name] = ClockSpec(
                name=name,
                target=target.duration(self.calendars[cal_name]),
                target_text=target.describe(),
                calendar=calendar,
                warn_fraction=(spec.warn_fraction or over.warn_fraction or base.warn_fraction
                               or pol.warn_fraction or self.file.warn_fraction),
                escalation=spec.escalation or over.escalation or base.escalation or pol.escalation,
                rules=rules,
                promise=rules_base.promise,
            )
        return out


@dataclass(frozen=True)
class ClosureCoverage:
    """How far one calendar's closure days are known, against how far ahead they are needed."""

    calendar: str
    known_until: date | None  # None: the calendar lists no closure days and says none are known
    needed_until: date
    always_open: bool

    @property
    def short(self) -> bool:
        return not self.always_open and (self.known_until is None or self.known_until < self.needed_until)

    def problem(self) -> str | None:
        if not self.short:
            return None
        if self.known_until is None:
            return (f"calendar {self.calendar!r} has no closure data: add its closure days, or say "
                    f"closures_known_until: {self.needed_until} if it has none up to then")
        return (f"calendar {self.calendar!r} knows its closure days only until {self.known_until}; due times up to "
                f"{self.needed_until} would ignore closures: add the next year's closures and closures_known_until")


def closure_coverage(sla: SlaConfig, today: date, months: int = 12) -> list[ClosureCoverage]:
    """Each calendar's closure data against `months` ahead of `today` (bank holidays come from `holidays`)."""
    needed = months_after(today, months)
    return [ClosureCoverage(name, spec.closures_known_through(), needed, spec.always_open)
            for name, spec in sorted(sla.file.calendars.items())]


def months_after(day: date, months: int) -> date:
    """The same day `months` later (or that month's last day when it is shorter)."""
    year, month = divmod(day.month - 1 + months, 12)
    target_year, target_month = day.year + year, month + 1
    for d in (day.day, 30, 29, 28):  # 31 January + 1 month is the end of February
        try:
            return date(target_year, target_month, d)
        except ValueError:
            continue
    raise AssertionError("unreachable: every month has 28 days")


def load_sla_config(config_dir: Path | str) -> SlaConfig:
    """Load and cross-check `sla.yaml` in `config_dir`; every problem is reported with file:line:col."""
    cdir = Path(config_dir)
    path = cdir / SLA_FILE
    if not path.is_file():
        raise ConfigError("file is missing", path=str(path), hint="the SLA policies live in sla.yaml")
    doc = load_yaml(path)
    sla = doc.validate(SlaFile)
    errors = _cross_check(doc, sla, cdir)
    calendars: dict[str, BusinessCalendar] = {}
    for name, spec in sla.calendars.items():
        calendars[name] = spec.build(name)
    if errors:
        raise ConfigErrors(errors)
    config = SlaConfig(path=path, file=sla, calendars=calendars)
    for gap in closure_coverage(config, date.today()):
        if gap.short:
            log.warning("sla.calendar_closures_run_out", calendar=gap.calendar, path=str(path),
                        known_until=str(gap.known_until) if gap.known_until else None,
                        needed_until=str(gap.needed_until), problem=gap.problem())
    return config


def _cross_check(doc: YamlDoc, sla: SlaFile, cdir: Path) -> list[ConfigError]:
    import difflib

    def near(word: str, choices: Any) -> str | None:
        close = difflib.get_close_matches(word, list(choices), n=1)
        return f"did you mean {close[0]!r}?" if close else None

    errs: list[ConfigError] = []

    def check_ref(kind: str, value: str | None, known: dict[str, Any], loc: list[Any]) -> None:
        if value is not None and value not in known:
            errs.append(doc.error(f"unknown {kind} {value!r}", loc, near(value, known)))

    if sla.smtp is None:
        for name, esc in sla.escalations.items():
            for i, target in enumerate(esc.targets):
                if target.type == "email":
                    errs.append(doc.error("an e-mail target needs the smtp: section", ["escalations", name,
                                          "targets", i], "add smtp: {host, port, from, security}"))
    for key, pol in sla.policies.items():
        base = ["policies", key]
        check_ref("calendar", pol.calendar, sla.calendars, [*base, "calendar"])
        check_ref("escalation", pol.escalation, sla.escalations, [*base, "escalation"])
        for clock in REQUIRED_CLOCKS:
            if clock not in pol.clocks:
                errs.append(doc.error(f"policy has no {clock!r} clock", [*base, "clocks"],
                                      "every policy times at least acknowledge and resolve"))
        for name, clock in pol.clocks.items():
            loc = [*base, "clocks", name]
            if clock.target is None:
                errs.append(doc.error("required key is missing", [*loc, "target"]))
            check_ref("calendar", clock.calendar, sla.calendars, [*loc, "calendar"])
            check_ref("escalation", clock.escalation, sla.escalations, [*loc, "escalation"])
            if name not in sla.clock_rules and clock.stop_on is None:
                errs.append(doc.error(f"clock {name!r} has no stop_on and no clock_rules entry", loc))
            rule = sla.clock_rules.get(name)
            if rule is not None and rule.promise == SERVICE_AREA and HubStatus.ROUTED in (
                    clock.start_on or rule.start_on or []):
                # the Hub holds a routed case until it is delivered: that time is not the service area's
                errs.append(doc.error(f"service-area clock {name!r} starts on routed", [*loc, "start_on"],
                                      "start it on delivered, when the back office has the case"))
        for prio, over in pol.priorities.items():
            loc = [*base, "priorities", prio.value]
            check_ref("calendar", over.calendar, sla.calendars, [*loc, "calendar"])
            check_ref("escalation", over.escalation, sla.escalations, [*loc, "escalation"])
            for name, clock in over.clocks.items():
                if name not in pol.clocks:
                    errs.append(doc.error(f"clock {name!r} is not one of this policy's clocks",
                                          [*loc, "clocks", name], near(name, pol.clocks)))
                check_ref("calendar", clock.calendar, sla.calendars, [*loc, "clocks", name, "calendar"])
                check_ref("escalation", clock.escalation, sla.escalations, [*loc, "clocks", name, "escalation"])
    authorities_path = cdir / "authorities.yaml"
    if authorities_path.is_file():
        try:
            councils = load_yaml(authorities_path).validate(AuthoritiesFile).authorities
        except (ConfigError, ConfigErrors):
            councils = None  # reported by the main config loader
        for name, esc in sla.escalations.items() if councils is not None else ():
            for i, target in enumerate(esc.targets):
                for j, council in enumerate(target.authorities or []):
                    # a misspelt council would silently get no escalations
                    check_ref("authority", council, councils, ["escalations", name, "targets", i, "authorities", j])
    services_path = cdir / "services.yaml"
    if services_path.is_file():
        try:
            services = load_yaml(services_path).validate(ServicesFile).services
        except (ConfigError, ConfigErrors):
            services = None  # reported by the main config loader
        if services is not None:
            for key in sla.policies:
                if key not in services:
                    errs.append(doc.error(f"no service {key!r} in services.yaml", ["policies", key],
                                          near(key, services)))
            for key in services:
                if key not in sla.policies:
                    errs.append(doc.error(f"service {key!r} has no SLA policy", ["policies"],
                                          "every case's SLA is timed: add a policy for it"))
    return errs
