"""Citizen reports over Open311 GeoReport v2 (issue 21): see ``docs/open311.md``.

Pure parts (catalogue, wire format and validation, store, client keys) and the runtime service
``open311``; the HTTP routes are :mod:`scada.web.open311`."""
