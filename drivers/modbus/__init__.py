"""Modbus TCP driver: pure codec and read planner, a small MBAP client, the polling driver.

See docs/devices/modbus-profile.md for the profile format and drivers/modbus/driver.py for the
failure handling.
"""
