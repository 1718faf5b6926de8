"""Helpers for testing plugins, shipped with restorekit (as pytest ships ``pytester``).

``isolated(...)`` gives a plugin registry that holds the built-ins and exactly the plugins
you pass, never the installed entry points, so a test cannot be broken by another plugin
that happens to be installed (or by the installed copy of the plugin under test)::

    import lumen_plugin
    from restorekit import testing

    @pytest.fixture
    def registry():
        with testing.isolated(lumen=lumen_plugin) as registry:
            yield registry

Inside the ``with`` block ``restorekit.cli.main([...])`` and
``restorekit.plugins.get_registry()`` use the same isolated registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from restorekit import plugins


@contextmanager
def isolated(*modules: object, **named: object) -> Iterator[plugins.Registry]:
    """A registry of the built-ins plus ``modules`` (by ``__name__``) and ``named`` plugins.

    No entry point is loaded. The previous plugin manager (and the record of warnings
    already shown) comes back when the block ends.
    """
    saved_manager, saved_warned = plugins._manager, set(plugins._warned)
    plugins._warned.clear()
    manager = plugins.PluginManager(load_entry_points=False)
    plugins._manager = manager
    try:
        for module in modules:
            manager.register(module)
        for name, plugin in named.items():
            manager.register(plugin, name=name)
        yield manager.registry
    finally:
        plugins._manager = saved_manager
        plugins._warned.clear()
        plugins._warned.update(saved_warned)
