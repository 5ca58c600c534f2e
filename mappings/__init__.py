"""The YAML mapping engine: Hub case -> back-office request, back-office update -> Hub update."""

from hubbridge.mappings.compile import (
    CompiledMapping,
    InboundTranslation,
    Translation,
    content_version,
    load_mapping,
)
from hubbridge.mappings.registry import MappingCache

__all__ = [
    "CompiledMapping",
    "InboundTranslation",
    "MappingCache",
    "Translation",
    "content_version",
    "load_mapping",
]
