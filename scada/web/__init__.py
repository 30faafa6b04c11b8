"""The web operator console (issue 19): a Starlette application served by uvicorn in the
server's event loop (:mod:`scada.web.service`), over the operator API.

* :mod:`.app` - the application, :class:`~scada.web.app.Ctx` handed to route modules, errors,
  body limit; route modules: :mod:`.api` (JSON, read-only), :mod:`.actions` (login, logout,
  operator actions), :mod:`.pages` (HTML), plus ``EXTRA_ROUTE_MODULES`` (the live map).
* :mod:`.security` - sessions, CSRF, login rate limits; :mod:`.hub` - live updates (SSE).
* ``static/`` and ``templates/`` - the pages' scripts, styles and HTML, shipped in the package.

See ``docs/cockpit.md``.
"""
