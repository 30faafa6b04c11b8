"""MQTT driver package (issue 4): gateways publishing JSON over MQTT, DALI-2/D4i first.

* :mod:`.mapping` - pure: profile models, topic templates, payload decoding, reject reasons;
* :mod:`.client`  - paho-mqtt on the asyncio loop (no network thread), reconnect, fallback;
* :mod:`.broker`  - the embedded amqtt broker of ``scada demo`` (refcounted, in-process);
* :mod:`.driver`  - :class:`~drivers.mqtt.driver.MqttDriver` (entry point ``scada.drivers: mqtt``).

Topic tree, payloads and quality rules: ``docs/devices/dali-mqtt.md``.
"""
