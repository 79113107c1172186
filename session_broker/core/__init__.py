"""The broker core: the key schema (``keys.Keys``), the Lua transitions of sessions and jobs
(``core/lua/*.lua``, one file per transition, helpers in ``core/lua/lib``), and the loader
that builds and runs them by name (``core.scripts``)."""
