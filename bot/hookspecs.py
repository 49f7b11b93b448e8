"""The pluggy hook specifications a modelbot plugin may implement.

A family plugin is a module (or object) with ``@hookimpl``-decorated functions. Built-in
families in ``plugins/`` and third-party ones from the ``modelbot.plugins`` entry-point
group are registered the same way (see bot/plugins.py).
"""

import pluggy

PROJECT = "modelbot"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register):
    """Register family backends: call ``register(backend)`` with a bot.backend.FamilyBackend
    instance for each model family this plugin serves."""


@hookspec
def register_engines(register):
    """Register engines: call ``register(engine_type)`` with a bot.engines.EngineType for
    each kind of engine this plugin provides (a model entry's ``engine:`` names it)."""
