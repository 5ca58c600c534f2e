"""The wheel a council installs carries everything the code reads at run time, not only the .py files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.timeout(300)
def test_the_wheel_holds_every_package_and_data_file(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=280)
    [wheel] = tmp_path.glob("hubbridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "hubbridge/connectors/bartec/bartec.wsdl",
        "hubbridge/workflows/console/templates/base.html",
        "hubbridge/workflows/console/static/console.css",
        "hubbridge/migrations/versions/0003_raised_and_throttle.py",
        "hubbridge/mappings/shipped/refuse/missed-collection.bartec.yaml",
        "hubbridge/mappings/schema/mapping.schema.json",
        "hubbridge/config/routes.yaml",
    }
    assert expected <= names, sorted(expected - names)
    for source in ("connectors", "mappings/shipped", "workflows/console/templates", "config"):
        shipped = [p for p in (ROOT / source).rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".html",
                                                                                         ".wsdl", ".xsd", ".json"}
                   and "tests" not in p.parts and "__pycache__" not in p.parts]
        package = {"connectors": "hubbridge/connectors", "config": "hubbridge/config"}.get(
            source.split("/")[0], f"hubbridge/{source.split('/')[0]}")
        for path in shipped:
            inside = f"{package}/{path.relative_to(ROOT / source.split('/')[0]).as_posix()}"
            assert inside in names, f"{path.relative_to(ROOT)} is not in the wheel"
