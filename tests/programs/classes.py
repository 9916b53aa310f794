"""Classes: object-oriented program state across migrations.

A small smart-home model.  Exercises: a class hierarchy with super() calls
(Device -> Sensor -> TempSensor/LightSensor, Device -> Lamp), class-level
registries and counters mutated at run time, a class attribute changed and
a new class attribute and a new method added to a class at run time,
classmethod / staticmethod / property (with setter), __slots__ classes
(including a slotted subclass of a slotted class), functools.total_ordering,
bound methods stored as interval callbacks and as subscription callbacks,
bound methods and a plain function taken from a class stored in a dict,
a class defined inside a function (closing over the function's local),
and __eq__/__hash__ value objects used as dict keys and set members.
"""

import functools


class Device:
    registry = {}        # name -> device, shared by all subclasses
    created = 0
    firmware = "1.0"

    def __init__(self, name, room):
        if not Device.valid_name(name):
            raise ValueError(name)
        self.name = name
        self.room = room
        self._events = 0
        Device.created += 1
        Device.registry[name] = self
        type(self).instances = type(self).__dict__.get("instances", 0) + 1  # per class

    @classmethod
    def create(cls, name, room, **kw):
        return cls(name, room, **kw)

    @staticmethod
    def valid_name(name):
        return name.isidentifier()

    @property
    def events(self):
        return self._events

    @events.setter
    def events(self, value):
        self._events = max(0, value)

    def describe(self):
        return f"{type(self).__name__}({self.name}@{self.room}, fw {self.firmware})"


class Sensor(Device):
    unit = "?"

    def __init__(self, name, room, base):
        super().__init__(name, room)
        self.base = base
        self.last = None

    def sample(self, t):
        return self.base

    def read(self):
        value = round(self.sample(things.now()), 3)
        self.last = value
        self.events += 1
        things.publish(f"house/{self.room}/{self.kind}", {"from": self.name, "value": value,
                                                          "unit": type(self).unit})


class TempSensor(Sensor):
    unit = "C"
    kind = "temp"

    def sample(self, t):
        drift = -0.4 * t if self.room == "hall" else 0.15 * t
        return super().sample(t) + drift


class LightSensor(Sensor):
    unit = "lux"
    kind = "light"

    def sample(self, t):
        return super().sample(t) * (1.0 if int(t) % 2 == 0 else 0.25)


class Lamp(Device):
    def __init__(self, name, room):
        super().__init__(name, room)
        self.on = False
        self.switches = 0
        self.handlers = {"on": self.turn_on, "off": self.turn_off, "toggle": Lamp.toggle}
        things.subscribe(f"house/{room}/cmd", self.on_command)

    def turn_on(self):
        self.on = True

    def turn_off(self):
        self.on = False

    def toggle(self):
        self.on = not self.on

    def on_command(self, topic, payload):
        handler = self.handlers[payload["cmd"]]
        before = self.on
        if payload["cmd"] == "toggle":
            handler(self)           # plain function from the class: pass self explicitly
        else:
            handler()               # bound method
        self.switches += before != self.on
        self.events += 1


@functools.total_ordering
class Cell:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __eq__(self, other):
        return isinstance(other, Cell) and (self.x, self.y) == (other.x, other.y)

    def __lt__(self, other):
        return (self.x, self.y) < (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))

    def __repr__(self):
        return f"Cell({self.x},{self.y})"


class Cell3(Cell):
    __slots__ = ("z",)

    def __init__(self, x, y, z):
        super().__init__(x, y)
        self.z = z

    def __repr__(self):
        return f"Cell3({self.x},{self.y},{self.z})"


def make_tagged_class(site):
    prefix = site.upper()

    class Tagged(Lamp):
        def describe(self):
            return f"[{prefix}] " + super().describe()

    return Tagged


class Thermostat:
    def __init__(self, target):
        self.target = target
        self.heat_map = {}          # Cell -> count of readings below target
        self.visited = set()
        self.log = []
        things.subscribe("house/+/temp", self.on_temp)

    def on_temp(self, topic, payload):
        room = topic.split("/")[1]
        cell = ROOM_CELLS[room]
        self.visited.add(cell)
        if payload["value"] < self.target:
            self.heat_map[cell] = self.heat_map.get(cell, 0) + 1
            things.publish(f"house/{room}/cmd", {"cmd": "on"})
        else:
            things.publish(f"house/{room}/cmd", {"cmd": "off"})
        self.log.append((round(things.now(), 2), room, payload["value"]))


ROOM_CELLS = {"hall": Cell(0, 0), "office": Cell(1, 0), "attic": Cell3(1, 1, 2)}
Outdoor = make_tagged_class("garden")

sensors = [
    TempSensor.create("t_hall", "hall", base=21.0),
    TempSensor.create("t_office", "office", base=18.5),
    TempSensor.create("t_attic", "attic", base=19.8),
    LightSensor("l_office", "office", base=400.0),
]
lamps = [Lamp("lamp_hall", "hall"), Lamp("lamp_office", "office"), Lamp("lamp_attic", "attic"),
         Outdoor("lamp_garden", "garden")]
thermostat = Thermostat(target=20.0)
clock = {"ticks": 0, "timers": []}


def toggle_garden():
    things.publish("house/garden/cmd", {"cmd": "toggle"})


def status():
    clock["ticks"] += 1
    k = clock["ticks"]
    on = [lamp.name for lamp in lamps if lamp.on]
    temps = " ".join(f"{s.name}={s.last}" for s in sensors)
    print(f"t={things.now():.2f} {temps} lamps_on={on}")
    if k == 2:
        TempSensor.unit = "degC"             # class attribute changed at run time
        Device.firmware = "2.0"
        Device.reboot = lambda self: f"{self.name} rebooted"   # method added at run time
        print(f"  firmware -> {Device.firmware}, TempSensor.unit -> {TempSensor.unit}")
    if k == 4:
        print("  " + "; ".join(d.reboot() for d in lamps[:2]))
    if k == 6:
        for timer in clock["timers"]:
            things.clear_timer(timer)
        things.set_timeout(finish, 0.2)


def finish():
    for lamp in lamps:
        things.unsubscribe(f"house/{lamp.room}/cmd", lamp.on_command)
    things.unsubscribe("house/+/temp", thermostat.on_temp)
    for d in Device.registry.values():
        print(f"  {d.describe()}: {d.events} events")
    print(f"instances: Device={Device.created} TempSensor={TempSensor.instances} "
          f"LightSensor={LightSensor.instances} Lamp={Lamp.instances} "
          f"{Outdoor.__name__}={Outdoor.instances}")
    print(f"heat map: {sorted(thermostat.heat_map.items())}")
    print(f"visited: {sorted(thermostat.visited)} attic==Cell3: "
          f"{Cell3(1, 1, 9) == ROOM_CELLS['attic']} {Cell(1, 0) in thermostat.visited}")
    print(f"switches: {[(lamp.name, lamp.switches) for lamp in lamps]}")
    print(f"last readings: {thermostat.log[-3:]}")
    print(f"result: {len(thermostat.log)} thermostat readings, "
          f"{sum(lamp.switches for lamp in lamps)} lamp switches, unit {sensors[0].unit}")


# periods chosen so that no two timers are ever due at the same instant
for s, period in zip(sensors, (0.31, 0.37, 0.41, 0.43)):
    clock["timers"].append(things.set_interval(s.read, period))
clock["timers"].append(things.set_interval(toggle_garden, 0.71))
clock["timers"].append(things.set_interval(status, 0.5))
