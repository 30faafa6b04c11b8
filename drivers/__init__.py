"""Protocol drivers, one package per protocol, registered under the ``scada.drivers`` entry
points. See :mod:`scada.driver` for the contract."""
