#!/usr/bin/env python3
"""Publishes temperatures the way a typical Raspberry Pi sensor script does, for the `mqtt`
source's Mosquitto test (edge/tests/mqtt_mosquitto.rs).

usage: mqtt_publish.py HOST PORT TEMPERATURE...

Each value goes out as `client.publish("devsecops/sensors/temperature", f"{temperature}")`
(QoS 0, paho's default), in order, over one connection. Needs paho-mqtt 2.x
(`pip install paho-mqtt`). Exits non-zero if the broker cannot be reached or a publish fails.
"""

import sys
import threading

import paho.mqtt.client as mqtt

TIMEOUT_S = 20


def main() -> int:
    host, port, values = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    connected = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        if not reason_code.is_failure:
            connected.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(TIMEOUT_S):
        print(f"no CONNACK from {host}:{port}", file=sys.stderr)
        return 1
    for value in values:
        temperature = float(value)
        info = client.publish("devsecops/sensors/temperature", f"{temperature}")
        info.wait_for_publish(TIMEOUT_S)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            print(f"publish of {temperature} failed: rc {info.rc}", file=sys.stderr)
            return 1
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
