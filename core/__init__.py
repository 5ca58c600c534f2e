"""hubbridge: integration middleware between a council's Hub and its service areas' back offices."""

__version__ = "0.1.0"
