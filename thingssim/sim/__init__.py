"""The simulated world: a SimPy network of virtual boards around one MQTT broker."""
