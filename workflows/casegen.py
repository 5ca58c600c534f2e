"""Realistic generated Hub cases for the demo, tests and benchmarks (deterministic for a seed)."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

# Real towns and postcode districts of each partner council; streets are common English street names.
PLACES: dict[str, tuple[str, Sequence[str]]] = {
    "bromsgrove": ("Bromsgrove", ("B60 1AA", "B60 2DP", "B61 0QJ", "B61 7HR")),
    "malvern-hills": ("Malvern", ("WR14 1LA", "WR14 2TD", "WR14 3HB", "WR13 5AX")),
    "redditch": ("Redditch", ("B97 4PU", "B97 6BG", "B98 0JE", "B98 8QD")),
    "worcester": ("Worcester", ("WR1 2EH", "WR2 6LQ", "WR3 7BS", "WR5 1HN")),
    "wychavon": ("Pershore", ("WR10 1AJ", "WR10 2BU", "WR11 4TW", "WR9 8DS")),
    "wyre-forest": ("Kidderminster", ("DY10 1BB", "DY10 3QT", "DY11 6JF", "DY13 8LE")),
    "worcestershire": ("Worcester", ("WR4 9PJ", "WR5 3HL", "WR2 5AB", "WR14 4QG")),
}
STREETS = (
    "Church Street",
    "High Street",
    "Station Road",
    "Mill Lane",
    "Victoria Road",
    "Park Avenue",
    "The Crescent",
    "Orchard Close",
    "Meadow Way",
    "Kings Road",
    "Bromsgrove Road",
    "Worcester Road",
)
FIRST = (
    "Sarah",
    "James",
    "Amelia",
    "Mohammed",
    "Olivia",
    "George",
    "Priya",
    "Thomas",
    "Emily",
    "David",
    "Zofia",
    "Harry",
    "Aisha",
    "William",
    "Grace",
    "Daniel",
)
LAST = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Patel",
    "Evans",
    "Khan",
    "Hughes",
    "Edwards",
    "Kowalski",
    "Green",
    "Hall",
    "Wood",
    "Clarke",
)
CHANNELS = ("phone", "phone", "phone", "web", "web", "face-to-face", "chatbot", "email")
DISTRICTS = ("bromsgrove", "malvern-hills", "redditch", "worcester", "wychavon", "wyre-forest")

SERVICES: dict[str, list[str]] = {
    "refuse": [
        "refuse.missed-collection",
        "refuse.missed-collection",
        "refuse.missed-collection",
        "refuse.assisted-collection",
        "refuse.bulky-waste",
        "refuse.new-container",
    ],
    "revenues": [
        "revenues.council-tax-change-of-address",
        "revenues.single-person-discount",
        "revenues.benefit-change-of-circumstances",
        "revenues.payment-arrangement",
    ],
    "highways": [
        "highways.pothole",
        "highways.pothole",
        "highways.street-light-fault",
        "highways.blocked-drain",
        "highways.dangerous-defect",
    ],
    "planning": ["planning.application-enquiry", "planning.breach-report", "planning.pre-application-advice"],
}


COUNTY = "worcestershire"
HIGHWAYS_AUTHORITIES = (COUNTY, *DISTRICTS)
"""Highways is a County service for the whole county: any of the seven councils' front offices takes them."""

# Approximate centre (lat, lon) of each council's main town, so generated locations fall in its area.
CENTRES: dict[str, tuple[float, float]] = {
    "bromsgrove": (52.335, -2.061),
    "malvern-hills": (52.112, -2.325),
    "redditch": (52.306, -1.940),
    "worcester": (52.193, -2.221),
    "wychavon": (52.110, -2.076),
    "wyre-forest": (52.388, -2.249),
    COUNTY: (52.193, -2.221),
}


def authority_for(service: str, r: random.Random) -> str:
    """A council whose front office could take a case of `service`: districts, or any of the seven for highways."""
    if service.startswith("highways."):
        return r.choice(HIGHWAYS_AUTHORITIES)
    return r.choice(DISTRICTS)


def _grid(lat: float, lon: float) -> tuple[float, float]:
    """British National Grid easting/northing near Worcester, by a local linear fit (good to ~100 m here)."""
    return round(384_700 + (lon + 2.221) * 68_400, 1), round(254_800 + (lat - 52.193) * 111_250, 1)


def _account_ref(r: random.Random) -> str:
    # Council tax account numbers are 8 digits here; the 9000000x range is the test "unknown account" block.
    return str(r.randint(10_000_000, 89_999_999))


def _attributes(service: str, r: random.Random, when: datetime, authority: str) -> tuple[dict[str, Any], str]:
    """Service-specific attributes as the Hub's forms record them, and the adviser's description."""
    container = r.choice(("general", "recycling", "garden", "food"))
    day = (when - timedelta(days=r.randint(0, 2))).date().isoformat()
    earlier = (when - timedelta(days=r.randint(3, 40))).date().isoformat()
    later = (when + timedelta(days=r.randint(7, 28))).date().isoformat()
    match service:
        case "refuse.missed-collection":
            return (
                {"container": container, "collection_date": day,
                 "bin_location": r.choice(("Kerbside", "End of drive", "Back lane"))},
                f"{container.capitalize()} bin not emptied on collection day, left at the kerb as usual.",
            )
        case "refuse.assisted-collection":
            reason = r.choice(("mobility", "disability", "age", "temporary-injury"))
            attrs: dict[str, Any] = {"container": container, "reason": reason, "household_help": False,
                                     "bin_location": r.choice(("Side gate", "Back garden", "Front porch"))}
            if reason == "temporary-injury":
                attrs["until"] = (when + timedelta(days=r.choice((42, 84)))).date().isoformat()
            return attrs, "Resident cannot move the bins to the kerb and nobody else in the household can."
        case "refuse.bulky-waste":
            items = r.choice(("sofa", "fridge freezer", "mattress", "wardrobe", "washing machine"))
            return (
                {"items": items, "item_count": r.randint(1, 4), "preferred_date": later,
                 "collection_point": r.choice(("Front garden", "Driveway", "Kerbside"))},
                f"Bulky waste collection wanted: {items}.",
            )
        case "refuse.new-container":
            reason = r.choice(("damaged", "stolen", "new-property", "additional"))
            return (
                {"container": container, "reason": reason,
                 "container_size": r.choice(("140", "180", "240")) if container != "food" else "23"},
                f"Needs a {'new' if reason in ('new-property', 'additional') else 'replacement'} {container} bin.",
            )
        case "revenues.council-tax-change-of-address":
            town, postcodes = PLACES[authority]
            return (
                {"account_ref": _account_ref(r), "move_date": day,
                 "new_address_line1": f"{r.randint(1, 180)} {r.choice(STREETS)}", "new_town": town,
                 "new_postcode": r.choice(postcodes), "new_uprn": _uprn(r)},
                "Moving house within the district; new address given on the call.",
            )
        case "revenues.single-person-discount":
            return (
                {"account_ref": _account_ref(r), "effective_date": earlier,
                 "reason": r.choice(("partner moved out", "adult child left home", "bereavement"))},
                "Now the only adult living at the property; asks for the 25% discount.",
            )
        case "revenues.benefit-change-of-circumstances":
            change = r.choice(("income", "household", "address", "capital"))
            return (
                {"claim_ref": str(r.randint(1_000_000, 9_999_999)), "account_ref": _account_ref(r),
                 "change_type": change, "effective_date": earlier,
                 "details": {"income": "New job, 20 hours a week", "household": "Adult son moved back in",
                             "address": "Moving within the district", "capital": "Savings now over 6,000"}[change]},
                f"Change of circumstances reported for housing benefit ({change}).",
            )
        case "revenues.payment-arrangement":
            arrears = round(r.uniform(80, 900), 2)
            instalments = r.choice((3, 6, 10))
            return (
                {"account_ref": _account_ref(r), "arrears": arrears, "instalments": instalments,
                 "instalment_amount": round(arrears / instalments + 0.005, 2),
                 "frequency": r.choice(("monthly", "monthly", "fortnightly", "weekly")),
                 "first_payment_date": later},
                "Asks to spread the council tax arrears over instalments.",
            )
        case "highways.pothole":
            return (
                {"depth": r.choice(("under-40mm", "40-100mm", "40-100mm", "over-100mm")),
                 "surface": r.choice(("road", "road", "pavement", "cycleway"))},
                "Pothole in the nearside lane, cars swerving round it.",
            )
        case "highways.street-light-fault":
            return (
                {"column_number": f"WL{r.randint(100, 9999)}",
                 "fault": r.choice(("out", "out", "flickering", "day-burning", "damaged"))},
                "Street light not working outside the house.",
            )
        case "highways.blocked-drain":
            return (
                {"drain_type": r.choice(("road-gully", "road-gully", "grating", "ditch")),
                 "flooding": r.random() < 0.3},
                "Road gully blocked, water pooling across the road.",
            )
        case "highways.dangerous-defect":
            return (
                {"hazard": r.choice(("exposed-cables", "collapsed-manhole-cover", "fallen-tree", "oil-spillage")),
                 "road_blocked": r.random() < 0.4},
                "Dangerous defect on the road, needs making safe now.",
            )
        case "planning.application-enquiry":
            suffix = r.choice(("FUL", "HOU", "OUT", "LBC"))
            return (
                {"application_ref": f"{when.year % 100}/{r.randint(1, 2999):05d}/{suffix}",
                 "customer_role": r.choice(("neighbour", "public"))},
                "Asks when a decision is due on the neighbour's extension application.",
            )
        case "planning.breach-report":
            return (
                {"breach_type": r.choice(("unauthorised-works", "change-of-use", "conditions-not-met",
                                          "protected-trees", "untidy-land")),
                 "started": earlier, "confidential": r.random() < 0.9},
                "Building work started next door without planning permission.",
            )
        case "planning.pre-application-advice":
            return (
                {"development_type": r.choice(("householder", "householder", "minor", "major")),
                 "proposal": r.choice(("Two-storey rear extension", "Loft conversion with dormer",
                                       "Two new dwellings in the garden", "Change of use to a cafe"))},
                "Wants pre-application advice before applying.",
            )
    return {}, "General enquiry."


def _uprn(r: random.Random) -> str:
    # Worcestershire UPRNs are 12 digits starting 10012 (the districts' address gazetteers)
    return str(r.randint(100_120_000_000, 100_129_999_999))


def generate_cases(
    n: int,
    *,
    areas: Sequence[str] = ("refuse",),
    seed: int = 2026,
    year: int = 2026,
    start_serial: int = 1,
    now: datetime | None = None,
    services: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield `n` Hub case dicts (JSON-ready), spread over the areas (or just `services`) and their authorities."""
    r = random.Random(seed)
    now = now or datetime.now(UTC)
    for i in range(n):
        area = areas[i % len(areas)]
        service = r.choice(services) if services else r.choice(SERVICES[area])
        authority = authority_for(service, r)
        # the resident lives in a district; a County case comes from somewhere in the county
        home = authority if authority != COUNTY else r.choice(DISTRICTS)
        town, postcodes = PLACES[home]
        postcode = r.choice(postcodes)
        uprn = _uprn(r)
        created = now - timedelta(minutes=r.randint(0, 60))
        attrs, description = _attributes(service, r, created, home)
        first, last = r.choice(FIRST), r.choice(LAST)
        house = r.randint(1, 180)
        street = r.choice(STREETS)
        clat, clon = CENTRES[home]
        lat, lon = round(clat + r.uniform(-0.03, 0.03), 6), round(clon + r.uniform(-0.04, 0.04), 6)
        easting, northing = _grid(lat, lon)
        if service.startswith("highways."):
            # a defect is on a street (USRN), not at a property; the adviser says where in words
            location: dict[str, Any] = {
                "usrn": str(r.randint(38_000_000, 38_099_999)),
                "lat": lat, "lon": lon, "easting": easting, "northing": northing,
                "description": f"{r.choice(('Outside', 'Opposite', 'Near'))} {house} {street}, {town}",
            }
        else:
            location = {
                "uprn": uprn, "lat": lat, "lon": lon, "easting": easting, "northing": northing,
                "description": f"{house} {street}, {town}",
            }
        yield {
            "ref": f"WH-{year}-{start_serial + i:06d}",
            "authority": authority,
            "service": service,
            "channel": r.choice(CHANNELS),
            "priority": "emergency"
            if service == "highways.dangerous-defect"
            else r.choice(("normal",) * 8 + ("high",)),
            "customer": {
                "name": f"{first} {last}",
                "phone": f"07{r.randint(700, 999)} {r.randint(100000, 999999)}",
                "email": f"{first.lower()}.{last.lower()}{r.randint(1, 99)}@example.org",
                "address": {"line1": f"{house} {street}", "town": town, "postcode": postcode, "uprn": uprn},
            },
            "location": location,
            "description": description,
            "attributes": attrs,
            "created_at": created.isoformat(),
        }


FOLLOWUP_MIX = (("note", 30), ("evidence", 20), ("amendment", 15), ("priority", 10), ("cancel", 10),
                ("repost", 10), ("reopen", 5))
"""The kinds of follow-up the demo sends and their weights; `repost` is the case sent again with a change."""

_NOTES = ("Customer rang back to add detail", "Customer asked when this will be done",
          "Customer says a neighbour has the same problem", "Customer will be out on Tuesday")


def generate_followups(cases: Sequence[dict[str, Any]], *, share: float = 0.2, seed: int = 2026,
                       ) -> list[tuple[str, dict[str, Any]]]:
    """Follow-ups for about `share` of `cases`, as (kind, body): a follow-up body for `POST /cases/{ref}/events`,
    or for kind `repost` the whole case again with a changed description."""
    import base64

    from hubbridge.connectors.simulator import SAMPLE_JPEG

    r = random.Random(seed)
    kinds, weights = zip(*FOLLOWUP_MIX, strict=True)
    out: list[tuple[str, dict[str, Any]]] = []
    for n, case in enumerate(cases):
        if r.random() >= share:
            continue
        kind = r.choices(kinds, weights)[0]
        at = datetime.now(UTC).isoformat()
        body: dict[str, Any] = {"id": f"demo-{case['ref']}-{n}", "ref": case["ref"], "kind": kind, "occurred_at": at}
        if kind == "repost":
            out.append((kind, {**case, "description": case["description"] + " (the customer called again: "
                               "it is still there)", "updated_at": at}))
            continue
        if kind == "note":
            body["note"] = r.choice(_NOTES)
        elif kind == "evidence":
            body["note"] = "Photo taken by the customer"
            body["attachments"] = [{
                "filename": "photo.jpg", "content_type": "image/jpeg",
                "content": base64.b64encode(SAMPLE_JPEG).decode(),
                "url": f"https://hub.worcestershire.example/evidence/{case['ref']}/photo.jpg"}]
        elif kind == "amendment":
            body["changes"] = {"description": case["description"] + " (corrected by the contact centre)"}
        elif kind == "priority":
            body["priority"] = "high" if case.get("priority", "normal") != "high" else "emergency"
            body["note"] = "Vulnerable resident"
        elif kind == "cancel":
            body["note"] = "Sorted out by the customer"
        else:  # a reopening follows a withdrawal: the customer changed their mind
            out.append(("cancel", {**body, "id": f"{body['id']}-c", "kind": "cancel", "note": "Withdrawn by phone"}))
            body["note"] = "The customer says the problem is back after all"
        out.append((kind, body))
    return out
