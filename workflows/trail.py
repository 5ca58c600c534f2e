"""A case's whole trail from the store: where it is, what happened, where it went."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from hubbridge.store import CaseRow, DeadLetterRow, EventRow, HubUpdateRow, LinkRow, session_scope
from hubbridge.workflows.followups import followups_of


def case_trail(url: str, ref: str) -> dict[str, Any] | None:
    """Everything known about a case, found by Hub reference or back-office reference."""
    with session_scope(url) as s:
        row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == ref))
        if row is None:
            link = s.scalar(select(LinkRow).where(LinkRow.backoffice_ref == ref))
            if link is None:
                return None
            row = s.scalar(select(CaseRow).where(CaseRow.hub_ref == link.hub_ref))
            if row is None:
                return None
        hub_ref = row.hub_ref
        links = s.scalars(select(LinkRow).where(LinkRow.hub_ref == hub_ref).order_by(LinkRow.id)).all()
        events = s.scalars(select(EventRow).where(EventRow.hub_ref == hub_ref).order_by(EventRow.id)).all()
        updates = s.scalars(
            select(HubUpdateRow).where(HubUpdateRow.hub_ref == hub_ref).order_by(HubUpdateRow.sequence)
        ).all()
        dead = s.scalars(
            select(DeadLetterRow).where(or_(DeadLetterRow.hub_ref == hub_ref)).order_by(DeadLetterRow.id)
        ).all()
        return {
            "ref": hub_ref,
            "authority": row.authority,
            "service": row.service,
            "priority": row.priority,
            "origin": row.origin,
            "status": row.status,
            "stage": row.stage,
            "connector": row.connector,
            "mapping_version": row.mapping_version,
            "attempts": row.attempts,
            "last_error": row.last_error,
            "received_at": row.received_at.isoformat(),
            "backoffice_refs": [
                {"connector": ln.connector, "ref": ln.backoffice_ref, "mapping_version": ln.mapping_version}
                for ln in links
            ],
            "events": [{"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail} for e in events],
            "hub_updates": [
                {
                    "sequence": u.sequence,
                    "status": u.status,
                    "pushed_at": u.pushed_at.isoformat() if u.pushed_at else None,
                    "last_error": u.last_error,
                }
                for u in updates
            ],
            "followups": followups_of(s, hub_ref),
            "dead_letters": [
                {
                    "id": d.id,
                    "stage": d.stage,
                    "reason": d.reason,
                    "detail": d.detail,
                    "replayed_at": d.replayed_at.isoformat() if d.replayed_at else None,
                    "discarded_at": d.discarded_at.isoformat() if d.discarded_at else None,
                }
                for d in dead
            ],
        }
