"""Which chat frontends are connected to their platform, for the health endpoint's /readyz.

A frontend says it is expected when it is made and reports each connect and disconnect;
the bot is ready (as far as frontends go) once every expected one is connected. Kept free
of any web or metrics library so that every frontend can report, endpoint or not.
"""

from __future__ import annotations


class Readiness:
    def __init__(self) -> None:
        self._connected: dict[str, bool] = {}  # frontend -> connected now

    def expect(self, frontend: str) -> None:
        """`frontend` will run: not ready until it reports connected."""
        self._connected.setdefault(frontend, False)

    def connected(self, frontend: str, up: bool = True) -> None:
        self._connected[frontend] = up

    def waiting_for(self) -> list[str]:
        """The expected frontends not connected now, in the order they were expected."""
        return [name for name, up in self._connected.items() if not up]
