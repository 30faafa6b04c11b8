"""``scada``: the command line of the city SCADA server (thin: parse, call, print).

Each group of commands lives in ``commands/<topic>.py`` and registers itself on the main
group through its ``register(group)`` function.
"""

from __future__ import annotations

import importlib

import click

from scada import __version__

#: Command modules, each exposing ``register(main)``.
COMMAND_MODULES = (
    "commands.core",      # run, demo, check, schema, gen-city
    "commands.sim",       # sim
    "commands.client",    # tags, watch, write, user (OPC UA client side)
    "commands.alarms",    # alarms, ack, shelve
    "commands.schedule",  # schedule preview / explain / override
    "commands.report",    # report energy / availability / interventions, history
    "commands.historian",  # historian import / export / fingerprint
    "commands.notify",    # notify list / replay (alarm notification queues, dead letters)
    "commands.gis",       # gis import (device positions from GeoJSON, CSV, shapefiles)
    "commands.wo",        # wo list / show / create / assign / transition (work orders, issue 20)
    "commands.ha",        # ha status (redundant pair: roles, lease holder, replication lag)
    "commands.open311",   # open311 add-client / list-clients / remove-client (citizen apps, issue 21)
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="scada")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Logging level.")
@click.pass_context
def main(ctx: click.Context, log_level: str) -> None:
    """Supervision server for a city's street lighting and traffic devices."""
    from scada import logs

    logs.setup(log_level)
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level


for _mod in COMMAND_MODULES:
    importlib.import_module(_mod).register(main)


if __name__ == "__main__":
    main()
