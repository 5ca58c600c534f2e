"""Benchmark: the shipped missed-collection mapping vs a hand-written function doing the same translation.

`python -m bench.mapping [--json] [--cases N] [--rounds R]` prints both rates (cases per second, one
core) and their ratio; targets: engine >= 20,000/s and >= half the hand-written rate.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hubbridge.case import LONDON, HubCase
from hubbridge.config.yamlfile import load_yaml, plain
from hubbridge.mappings import load_mapping

SHIPPED = Path(__file__).resolve().parent.parent / "mappings" / "shipped"
MAPPING = SHIPPED / "refuse" / "missed-collection.bartec.yaml"

FORENAMES = ["Ann", "Bob", "Carys", "Dev", "Eilidh", "Farah", "Gareth", "Hui", "Imran", "Jo"]
SURNAMES = ["Smith", "Jones", "Patel", "O'Neill", "Williams", "Nowak", "Evans", "Begum", "Taylor", "Hughes"]
STREETS = ["High Street", "Church Lane", "Station Road", "Mill Close", "Worcester Road", "The Green"]
TOWNS = [("Bromsgrove", "B60"), ("Redditch", "B97"), ("Malvern", "WR14"), ("Worcester", "WR1"),
         ("Pershore", "WR10"), ("Kidderminster", "DY10")]
AUTHORITIES = ["bromsgrove", "redditch", "malvern-hills", "worcester", "wychavon", "wyre-forest"]
CONTAINERS = sorted(plain(load_yaml(SHIPPED / "lookups" / "bartec-service-types.yaml").data)["entries"])
PROBLEMS = [
    "Bin not emptied on collection day.",
    "The crew missed our street again; the bin was out by 7am at the kerb as usual.",
    "Recycling left behind, lorry drove past without stopping. Third time this month, please collect "
    "as soon as possible because it is overflowing and attracting foxes.",
]


def make_cases(n: int, seed: int = 7) -> list[HubCase]:
    """Realistic, valid Hub cases for missed collections (some without phone, e-mail, coordinates)."""
    rnd = random.Random(seed)
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    cases = []
    for i in range(n):
        town, area = rnd.choice(TOWNS)
        has_latlon = rnd.random() < 0.6
        customer: dict[str, Any] = {
            "name": f"{rnd.choice(FORENAMES)} {rnd.choice(SURNAMES)}",
            "address": {
                "line1": f"{rnd.randint(1, 200)} {rnd.choice(STREETS)}", "town": town,
                "postcode": f"{area} {rnd.randint(1, 9)}{rnd.choice('ABDEFG')}{rnd.choice('HJLNPQ')}",
                "uprn": str(rnd.randint(10_000_000, 100_099_999_999)),
            },
        }
        if rnd.random() < 0.8:
            customer["phone"] = f"01{rnd.randint(100, 999)} {rnd.randint(100000, 999999)}"
        if rnd.random() < 0.5:
            customer["email"] = f"resident{i}@example.org"
        attributes: dict[str, Any] = {"container": rnd.choice(CONTAINERS)}
        if rnd.random() < 0.5:
            attributes["bin_location"] = rnd.choice(["front of property", "side gate", "communal bin store"])
        case: dict[str, Any] = {
            "ref": f"WH-2026-{i % 1_000_000:06d}",
            "authority": rnd.choice(AUTHORITIES),
            "service": "refuse.missed-collection",
            "channel": rnd.choice(["phone", "web", "face-to-face", "chatbot", "back-office"]),
            "customer": customer,
            "description": rnd.choice(PROBLEMS),
            "attributes": attributes,
            "created_at": (start + timedelta(minutes=rnd.randint(0, 60 * 24 * 200))).isoformat(),
        }
        if has_latlon:
            case["location"] = {"lat": round(rnd.uniform(52.0, 52.45), 6), "lon": round(rnd.uniform(-2.4, -1.9), 6)}
        cases.append(HubCase.model_validate(case))
    return cases


def handwritten_translator() -> Any:
    """The same translation as the shipped mapping, written by hand in plain Python."""
    types = plain(load_yaml(SHIPPED / "lookups" / "bartec-service-types.yaml").data)["entries"]
    depots = plain(load_yaml(SHIPPED / "lookups" / "district-depots.yaml").data)["entries"]
    service_types = {k: v["missed_collection"] for k, v in types.items()}
    crews = {k: v["crew_id"] for k, v in depots.items()}

    def translate(case: HubCase) -> tuple[dict[str, Any], list[str]]:
        warnings: list[str] = []
        uprn = case.location.uprn or (case.customer.address.uprn if case.customer.address else None)
        if not uprn:
            raise ValueError("UPRN missing")
        container = case.attributes.get("container") or "refuse"
        bin_location = case.attributes.get("bin_location")
        description = " ".join(case.description.split())
        payload: dict[str, Any] = {
            "UPRN": int(uprn),
            "ServiceTypeID": int(service_types[container]),
            "DateRequested": case.created_at.astimezone(LONDON).strftime("%Y-%m-%dT%H:%M:%S"),
            "CrewID": int(crews[case.authority]),
            "CRMID": case.ref,
        }
        short = f"{bin_location or 'Bin'}: {description}"
        if len(short) > 80:
            warnings.append(f"serviceLocationDescription: truncated from {len(short)} to 80 characters")
            short = short[:80]
        payload["serviceLocationDescription"] = short
        c = case.customer
        payload["extendedData"] = {"ServiceRequest_CreateServiceRequest_CreateFields": [
            {"FieldName": "HUB_DETAILS",
             "FieldValue": f"{description} | Container: {container}"
                           f" | Bin left at: {bin_location or 'not given'} | Hub ref {case.ref}"},
            {"FieldName": "CALLBACK",
             "FieldValue": f"{c.name} {c.phone or 'no phone'}{' / ' + c.email if c.email else ''}"},
        ]}
        if case.location.lat is not None:
            payload["ServiceRequest_Location"] = {
                "Metric": {"Latitude": float(case.location.lat), "Longitude": float(case.location.lon)}
            }
        first, _, rest = c.name.strip().partition(" ")
        contact: dict[str, Any] = {"Forename": first[:50], "Surname": (rest.strip() or "-")[:50]}
        if c.email:
            contact["Email"] = c.email
        if c.phone:
            contact["Telephone"] = c.phone
        contact["ReporterType"] = "Staff" if case.channel == "back-office" else "Public"
        payload["reporterContact"] = contact
        return payload, warnings

    return translate


def _bartec_fields() -> Any:
    """The Bartec connector's target fields (they set the 80-character description limit), if installed."""
    try:
        from hubbridge.mappings.cli import connector_for

        return connector_for("bartec").target_fields()
    except Exception:  # no plugin: the mapping's own limits apply
        return None


def _pass(fn: Any, cases: list[HubCase]) -> float:
    # CPU time of this process, not wall time: on a shared machine the rate stays "per core"
    t0 = time.process_time()
    for case in cases:
        fn(case)
    return time.process_time() - t0


def run(n: int = 20_000, rounds: int = 7) -> dict[str, float]:
    """Time both translators over the same cases; rounds alternate so a busy machine slows both alike."""
    cases = make_cases(n)
    mapping = load_mapping(MAPPING, _bartec_fields())
    hand = handwritten_translator()
    # the two must agree before their speed means anything
    for case in cases[:500]:
        assert mapping.outbound(case).payload == hand(case)[0], case.ref
    engine_best = hand_best = float("inf")
    for _ in range(rounds):
        engine_best = min(engine_best, _pass(mapping.outbound, cases))
        hand_best = min(hand_best, _pass(hand, cases))
    engine, handwritten = n / engine_best, n / hand_best
    return {
        "engine_per_s": round(engine, 1),
        "handwritten_per_s": round(handwritten, 1),
        "ratio": round(engine / handwritten, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    result = run(args.cases, args.rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"mapping engine : {result['engine_per_s']:>12,.0f} cases/s")
    print(f"hand-written   : {result['handwritten_per_s']:>12,.0f} cases/s")
    print(f"ratio          : {result['ratio']:.2f} (target >= 0.5; engine target >= 20,000/s)")


if __name__ == "__main__":
    main()
