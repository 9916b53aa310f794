"""N-body: Jovian planets simulation, one batch of steps per tick.

Port of the classic n-body benchmark (Computer Language Benchmarks Game /
pyperformance) to the event-driven model: Sun, Jupiter, Saturn, Uranus and
Neptune as [position, velocity, mass] lists kept in a dict keyed by name,
a precomputed list of body pairs that shares the very same inner lists with
the dict (shared references), symplectic Euler integration with dt = 0.01,
STEPS_PER_TICK steps per timer callback.  Prints the energy with fixed
precision every few ticks and the final positions.
Migration features: nested lists of floats, the same list objects reachable
from two containers (bodies dict and pairs list; identity must survive a
snapshot or momentum would be lost), tuples, a dict of per-tick statistics,
set_interval + clear_timer, float formatting.
"""

PI = 3.14159265358979323
SOLAR_MASS = 4 * PI * PI
DAYS_PER_YEAR = 365.24
DT = 0.01
TICKS = 40
STEPS_PER_TICK = 60

bodies = {
    "sun": ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], SOLAR_MASS),
    "jupiter": ([4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01],
                [1.66007664274403694e-03 * DAYS_PER_YEAR, 7.69901118419740425e-03 * DAYS_PER_YEAR,
                 -6.90460016972063023e-05 * DAYS_PER_YEAR],
                9.54791938424326609e-04 * SOLAR_MASS),
    "saturn": ([8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01],
               [-2.76742510726862411e-03 * DAYS_PER_YEAR, 4.99852801234917238e-03 * DAYS_PER_YEAR,
                2.30417297573763929e-05 * DAYS_PER_YEAR],
               2.85885980666130812e-04 * SOLAR_MASS),
    "uranus": ([1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01],
               [2.96460137564761618e-03 * DAYS_PER_YEAR, 2.37847173959480950e-03 * DAYS_PER_YEAR,
                -2.96589568540237556e-05 * DAYS_PER_YEAR],
               4.36624404335156298e-05 * SOLAR_MASS),
    "neptune": ([1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01],
                [2.68067772490389322e-03 * DAYS_PER_YEAR, 1.62824170038242295e-03 * DAYS_PER_YEAR,
                 -9.51592254519715870e-05 * DAYS_PER_YEAR],
                5.15138902046611451e-05 * SOLAR_MASS),
}
names = list(bodies)
pairs = [(bodies[a], bodies[b]) for i, a in enumerate(names) for b in names[i + 1:]]
stats = {"ticks": 0, "steps": 0, "energies": []}


def offset_momentum(ref_name):
    px = py = pz = 0.0
    for _pos, v, m in bodies.values():
        px -= v[0] * m
        py -= v[1] * m
        pz -= v[2] * m
    _pos, v, m = bodies[ref_name]
    v[0] = px / m
    v[1] = py / m
    v[2] = pz / m


def energy():
    e = 0.0
    for ((x1, y1, z1), _v1, m1), ((x2, y2, z2), _v2, m2) in pairs:
        dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
        e -= (m1 * m2) / ((dx * dx + dy * dy + dz * dz) ** 0.5)
    for _pos, (vx, vy, vz), m in bodies.values():
        e += m * (vx * vx + vy * vy + vz * vz) / 2.0
    return e


def advance(dt, n):
    for _ in range(n):
        for ([x1, y1, z1], v1, m1), ([x2, y2, z2], v2, m2) in pairs:
            dx, dy, dz = x1 - x2, y1 - y2, z1 - z2
            mag = dt * ((dx * dx + dy * dy + dz * dz) ** (-1.5))
            b1m = m1 * mag
            b2m = m2 * mag
            v1[0] -= dx * b2m
            v1[1] -= dy * b2m
            v1[2] -= dz * b2m
            v2[0] += dx * b1m
            v2[1] += dy * b1m
            v2[2] += dz * b1m
        for r, (vx, vy, vz), _m in bodies.values():
            r[0] += dt * vx
            r[1] += dt * vy
            r[2] += dt * vz


def tick():
    advance(DT, STEPS_PER_TICK)
    stats["ticks"] += 1
    stats["steps"] += STEPS_PER_TICK
    if stats["ticks"] % 4 == 0:
        e = energy()
        stats["energies"].append(e)
        print(f"tick {stats['ticks']:3d} step {stats['steps']:5d}: energy {e:.9f}")
    if stats["ticks"] == TICKS:
        things.clear_timer(timer)
        for name in names:
            (x, y, z), _, _ = bodies[name]
            print(f"{name:8s} at ({x:+.6f}, {y:+.6f}, {z:+.6f})")
        drift = stats["energies"][-1] - initial
        print(f"result: {stats['steps']} steps, energy {stats['energies'][-1]:.9f}, "
              f"drift {drift:+.3e}")


offset_momentum("sun")
initial = energy()
print(f"initial energy {initial:.9f}")
timer = things.set_interval(tick, 0.05)
