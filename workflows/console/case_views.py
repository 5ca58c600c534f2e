"""The console's record of who viewed which case: one row per case shown to a console user."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from hubbridge.store import CaseViewRow


def record_case_view(session: Session, user: str, hub_ref: str, role: str, page: str = "case") -> None:
    """Note that console `user` was shown case `hub_ref` on `page` (committed with the page's session)."""
    session.add(CaseViewRow(user=user, role=role, hub_ref=hub_ref, page=page))


def views_of(session: Session, hub_ref: str) -> list[CaseViewRow]:
    """Every console view of one case, oldest first."""
    return list(session.scalars(select(CaseViewRow).where(CaseViewRow.hub_ref == hub_ref).order_by(CaseViewRow.id)))
