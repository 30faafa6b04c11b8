"""Typed sections of the site file owned by the services that use them.

Each module holds one strict pydantic model; ``scada.site`` assembles them. Keeping them apart
lets the alarm engine, the schedule engine, the historian and the OPC UA server evolve their own
configuration without touching the core model.
"""
