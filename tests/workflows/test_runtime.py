"""The per-process Runtime: a warm start loads every route, a broken mapping is left to its cases."""
from __future__ import annotations

from hubbridge.workflows.runtime import Runtime

from .conftest import Rig


def test_warm_loads_every_route_and_leaves_a_broken_mapping_to_its_cases(rig: Rig) -> None:
    import shutil

    config = rig.rt.config
    assert rig.rt.warm() == len(config.routes)
    # a config directory with its own mappings/ uses those: copy the shipped ones and break one copy
    shutil.copytree(config.mappings_dir, config.config_dir / "mappings")
    first = next(iter(config.routes.values())).mapping_path
    (config.config_dir / "mappings" / first.relative_to(config.mappings_dir)).write_text("outbound: [not, a\n")
    sharing = sum(1 for r in config.routes.values() if r.mapping_path == first)
    fresh = Runtime()
    try:
        assert fresh.config.mappings_dir == config.config_dir / "mappings"
        assert fresh.warm() == len(config.routes) - sharing  # the worker still starts
    finally:
        fresh.close()
