"""A temperature sensor: publishes a noisy reading on home/<room>/temp every 0.5 s.

The room name is the program's code name (e.g. "kitchen"); noise comes from a seeded
generator kept in the program's state, so it migrates with it.
"""

import random

room = things.code_name
rng = random.Random(room)
temperature = 20.0


def read():
    global temperature
    temperature += rng.uniform(-0.3, 0.3)
    things.publish(f"home/{room}/temp", {"room": room, "t": round(temperature, 3),
                                         "at": things.now()})


things.set_interval(read, 0.5)
