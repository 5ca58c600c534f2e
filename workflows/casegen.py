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


def _attributes(service: str, r: random.Random, when: datetime) -> tuple[dict[str, Any], str]:
    container = r.choice(("general", "recycling", "garden", "food"))
    day = (when - timedelta(days=r.randint(0, 2))).date().isoformat()
    match service:
        case "refuse.missed-collection":
            return (
                {"container": container, "collection_date": day},
                f"{container.capitalize()} bin not emptied on collection day, left at the kerb as usual.",
            )
        case "refuse.assisted-collection":
            return (
                {"container": container, "reason": "mobility"},
                "Resident cannot move the bin to the kerb after surgery; asks for an assisted collection.",
            )
        case "refuse.bulky-waste":
            items = r.choice(("sofa", "fridge freezer", "mattress", "wardrobe"))
            return ({"items": items, "item_count": r.randint(1, 4)}, f"Bulky waste collection wanted: {items}.")
        case "refuse.new-container":
            return (
                {"container": container, "reason": r.choice(("damaged", "stolen", "new-property"))},
                f"Needs a replacement {container} bin.",
            )
        case "revenues.council-tax-change-of-address":
            return (
                {"account_ref": f"CT{r.randint(10_000_000, 99_999_999)}", "move_date": day},
                "Moving house within the district; new address given on the call.",
            )
        case "revenues.single-person-discount":
            return (
                {"account_ref": f"CT{r.randint(10_000_000, 99_999_999)}", "effective_date": day},
                "Now the only adult living at the property; asks for the 25% discount.",
            )
        case "revenues.benefit-change-of-circumstances":
            return (
                {
                    "claim_ref": f"HB{r.randint(1_000_000, 9_999_999)}",
                    "change_type": r.choice(("income", "household", "address")),
                    "effective_date": day,
                },
                "Change of circumstances reported for housing benefit.",
            )
        case "revenues.payment-arrangement":
            return (
                {
                    "account_ref": f"CT{r.randint(10_000_000, 99_999_999)}",
                    "instalments": r.choice((3, 6, 10)),
                    "amount": round(r.uniform(80, 900), 2),
                },
                "Asks to spread the council tax arrears over instalments.",
            )
        case "highways.pothole":
            return (
                {"depth_mm": r.choice((40, 50, 60, 80, 120)), "road_type": r.choice(("carriageway", "footway"))},
                "Pothole in the nearside lane, cars swerving round it.",
            )
        case "highways.street-light-fault":
            return (
                {"column_number": f"WL{r.randint(100, 9999)}", "fault": r.choice(("out", "flickering", "day-burning"))},
                "Street light not working outside the house.",
            )
        case "highways.blocked-drain":
            return ({"flooding": r.random() < 0.3}, "Road gully blocked, water pooling across the road.")
        case "highways.dangerous-defect":
            return (
                {
                    "hazard": r.choice(("exposed cables", "collapsed manhole cover", "fallen tree")),
                    "traffic_affected": True,
                },
                "Dangerous defect on the road, needs making safe now.",
            )
        case "planning.application-enquiry":
            return (
                {"application_ref": f"{when.year % 100}/{r.randint(0, 2999):05d}/FUL"},
                "Asks when a decision is due on the neighbour's extension application.",
            )
        case "planning.breach-report":
            return (
                {
                    "breach_type": r.choice(("unauthorised-works", "change-of-use", "conditions-not-met")),
                    "started": day,
                },
                "Building work started next door without planning permission.",
            )
        case "planning.pre-application-advice":
            return (
                {"development_type": r.choice(("householder", "minor")), "proposal": "Two-storey rear extension"},
                "Wants pre-application advice on an extension.",
            )
    return {}, "General enquiry."


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
        area = service.split(".", 1)[0]
        authority = "worcestershire" if area == "highways" and r.random() < 0.5 else r.choice(DISTRICTS)
        town, postcodes = PLACES[authority]
        postcode = r.choice(postcodes)
        uprn = str(r.randint(100_000_000, 100_099_999_999))
        created = now - timedelta(minutes=r.randint(0, 60))
        attrs, description = _attributes(service, r, created)
        first, last = r.choice(FIRST), r.choice(LAST)
        house = r.randint(1, 180)
        street = r.choice(STREETS)
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
            "location": {
                "uprn": uprn,
                "easting": round(r.uniform(380000, 400000), 1),
                "northing": round(r.uniform(240000, 280000), 1),
                "description": f"Outside {house} {street}, {town}",
            },
            "description": description,
            "attributes": attrs,
            "created_at": created.isoformat(),
        }
