"""Interventions: work orders, procedures per alarm class, visits and dispatch (issue 20)."""
