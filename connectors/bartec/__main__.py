"""`python -m hubbridge.connectors.bartec [--port 8701]` runs the Bartec simulator."""

from hubbridge.connectors.bartec.simulator import main

main()
