"""Regulator: PID temperature control of three rooms over pub/sub.

Port of the ThingsJS "regulator" demo.  Each room has a simulated thermal
model (advanced every 200 ms), a Sensor that publishes a noisy reading on
``home/<room>/temp`` every 800 ms (noise from its own random.Random(seed)),
a Controller that subscribes to ``home/+/temp`` and runs one PID instance per
room, publishing a power command on ``home/<room>/heater``, and Heater
objects that subscribe to their own command topic.  The setpoint of one room
changes at t=8 s; a trace line is printed every second and a summary at the end.
Migration features: class instances with float state, dicts of instances,
bound methods as subscription and interval callbacks, random.Random state,
a `+` wildcard subscription, messages published from inside callbacks,
things.exit(0) at the end.
"""

import random

ROOMS = ("kitchen", "living", "bedroom")
OUTSIDE = 8.0
DT = 0.2


class Room:
    def __init__(self, name, temp, loss, capacity):
        self.name = name
        self.temp = temp
        self.loss = loss          # W per degree to the outside
        self.capacity = capacity  # J per degree
        self.heater = None

    def advance(self, dt):
        watts = self.heater.watts() if self.heater else 0.0
        flow = watts - self.loss * (self.temp - OUTSIDE)
        self.temp += flow * dt / self.capacity


class Heater:
    def __init__(self, room, max_watts):
        self.room = room
        self.max_watts = max_watts
        self.power = 0.0
        self.commands = 0
        room.heater = self
        things.subscribe(f"home/{room.name}/heater", self.on_command)

    def on_command(self, topic, payload):
        self.power = min(1.0, max(0.0, float(payload["power"])))
        self.commands += 1

    def watts(self):
        return self.power * self.max_watts


class Sensor:
    def __init__(self, room, seed, noise):
        self.room = room
        self.rng = random.Random(seed)
        self.noise = noise
        self.sent = 0

    def read(self):
        value = self.room.temp + self.rng.gauss(0.0, self.noise)
        self.sent += 1
        things.publish(f"home/{self.room.name}/temp",
                       {"room": self.room.name, "value": value, "n": self.sent})


class PID:
    def __init__(self, kp, ki, kd, setpoint):
        self.kp, self.ki, self.kd = kp, ki, kd
        self.setpoint = setpoint
        self.integral = 0.0
        self.prev_error = None
        self.prev_t = None
        self.abs_error_sum = 0.0
        self.samples = 0

    def update(self, measured, t):
        error = self.setpoint - measured
        dt = 0.8 if self.prev_t is None else t - self.prev_t
        deriv = 0.0 if self.prev_error is None else (error - self.prev_error) / dt
        candidate = self.integral + error * dt
        out = self.kp * error + self.ki * candidate + self.kd * deriv
        if 0.0 < out < 1.0:          # anti-windup: integrate only when not saturated
            self.integral = candidate
        self.prev_error, self.prev_t = error, t
        self.abs_error_sum += abs(error)
        self.samples += 1
        return min(1.0, max(0.0, out))


class Controller:
    def __init__(self, setpoints):
        self.pids = {name: PID(0.35, 0.06, 0.05, sp) for name, sp in setpoints.items()}
        self.last = {}
        things.subscribe("home/+/temp", self.on_temp)

    def on_temp(self, topic, payload):
        room = topic.split("/")[1]
        power = self.pids[room].update(payload["value"], things.now())
        self.last[room] = (payload["value"], power)
        things.publish(f"home/{room}/heater", {"power": power})


rooms = {
    "kitchen": Room("kitchen", 15.0, 40.0, 900.0),
    "living": Room("living", 12.0, 55.0, 1500.0),
    "bedroom": Room("bedroom", 10.0, 30.0, 700.0),
}
heaters = [Heater(rooms["kitchen"], 1500.0), Heater(rooms["living"], 2000.0),
           Heater(rooms["bedroom"], 1000.0)]
sensors = [Sensor(rooms[name], seed=100 + i, noise=0.05) for i, name in enumerate(ROOMS)]
controller = Controller({"kitchen": 21.0, "living": 20.0, "bedroom": 18.0})


def physics():
    for name in ROOMS:
        rooms[name].advance(DT)


def trace():
    parts = []
    for name in ROOMS:
        temp, power = controller.last.get(name, (rooms[name].temp, 0.0))
        parts.append(f"{name}={temp:6.2f}C/{power:4.2f}")
    print(f"t={things.now():5.2f} " + " ".join(parts))


def change_setpoint():
    controller.pids["bedroom"].setpoint = 20.0
    print(f"t={things.now():5.2f} bedroom setpoint -> 20.0")


def finish():
    for name in ROOMS:
        pid = controller.pids[name]
        print(f"{name}: final {rooms[name].temp:.3f}C setpoint {pid.setpoint:.1f} "
              f"mean|err| {pid.abs_error_sum / pid.samples:.3f} over {pid.samples} samples")
    total = sum(h.commands for h in heaters)
    print(f"result: {total} heater commands, {sum(s.sent for s in sensors)} readings")
    things.exit(0)


def start_periodic(callback, period):
    things.set_interval(callback, period)


things.set_interval(physics, DT)
# phase offsets (0.05/0.15/0.25 s) so that no two timers are ever due at the same time
for i, sensor in enumerate(sensors):
    things.set_timeout(start_periodic, 0.05 + 0.1 * i, sensor.read, 0.8)
things.set_timeout(start_periodic, 0.01, trace, 1.0)
things.set_timeout(change_setpoint, 8.03)
things.set_timeout(finish, 20.02)
