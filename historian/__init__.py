"""Historian: recorder, storage backends (``scada.historians`` entry points), energy KPI, reports."""
