"""`python -m hubbridge.workflows.console hash-password`: make a password hash for console.yaml or its variable."""

from __future__ import annotations

import getpass
import sys

from hubbridge.workflows.console.passwords import hash_password


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] != ["hash-password"]:
        sys.stderr.write("usage: python -m hubbridge.workflows.console hash-password [--stdin]\n")
        return 2
    if "--stdin" in args:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New console password: ")
        if getpass.getpass("Same again: ") != password:
            sys.stderr.write("error: the two passwords differ\n")
            return 1
    if len(password) < 12:
        sys.stderr.write("error: use at least 12 characters\n")
        return 1
    sys.stdout.write(hash_password(password) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
