"""hostmesh: a per-host mesh agent (import package ``agent``)."""

__version__ = "0.1.0"

# Every socket the agent opens carries this mark so the capture rules skip it (SPEC.md).
AGENT_MARK = 0x539
# Packets steered to the agent's transparent listeners carry this mark (policy routing).
TPROXY_MARK = 0x1
