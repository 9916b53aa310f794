"""Navier-Stokes: Jos Stam's stable-fluids solver on 66x66 numpy grids.

Event-driven, numpy-vectorised port of the navier-stokes benchmark (the
Octane / ThingsJS one is based on Stam's "Real-Time Fluid Dynamics for
Games").  Six (N+2)x(N+2) float64 arrays (velocity, density and their
previous-step copies) live in a FluidField instance; every tick a swirling
force and a density source are added (position jittered by a numpy
Generator) and one solver step runs (diffuse with Jacobi iterations,
semi-Lagrangian advection, projection).  Sums, energy and the density peak
are printed with fixed precision every few steps.
Migration features: several 35 KB float64 arrays, integer index arrays,
a boolean mask array, a numpy Generator (PCG64 state), the numpy module as a
global (`import numpy as np`), array views never kept across callbacks,
set_interval with clear_timer.
"""

import numpy as np

N = 64
SIZE = N + 2
STEPS = 32
ITERATIONS = 10
DT = 0.1

rng = np.random.default_rng(2024)
II, JJ = np.meshgrid(np.arange(1, N + 1, dtype=np.float64),
                     np.arange(1, N + 1, dtype=np.float64), indexing="ij")
centre_mask = ((II - N / 2) ** 2 + (JJ - N / 2) ** 2) < (N / 10) ** 2


def set_bnd(b, x):
    x[0, 1:-1] = -x[1, 1:-1] if b == 1 else x[1, 1:-1]
    x[-1, 1:-1] = -x[-2, 1:-1] if b == 1 else x[-2, 1:-1]
    x[1:-1, 0] = -x[1:-1, 1] if b == 2 else x[1:-1, 1]
    x[1:-1, -1] = -x[1:-1, -2] if b == 2 else x[1:-1, -2]
    x[0, 0] = 0.5 * (x[1, 0] + x[0, 1])
    x[0, -1] = 0.5 * (x[1, -1] + x[0, -2])
    x[-1, 0] = 0.5 * (x[-2, 0] + x[-1, 1])
    x[-1, -1] = 0.5 * (x[-2, -1] + x[-1, -2])


def lin_solve(b, x, x0, a, c):
    inner = x0[1:-1, 1:-1]
    for _ in range(ITERATIONS):
        x[1:-1, 1:-1] = (inner + a * (x[:-2, 1:-1] + x[2:, 1:-1]
                                      + x[1:-1, :-2] + x[1:-1, 2:])) / c
        set_bnd(b, x)


def diffuse(b, x, x0, diff, dt):
    a = dt * diff * N * N
    lin_solve(b, x, x0, a, 1 + 4 * a)


def advect(b, d, d0, u, v, dt):
    dt0 = dt * N
    x = np.clip(II - dt0 * u[1:-1, 1:-1], 0.5, N + 0.5)
    y = np.clip(JJ - dt0 * v[1:-1, 1:-1], 0.5, N + 0.5)
    i0 = x.astype(np.int64)
    j0 = y.astype(np.int64)
    s1 = x - i0
    t1 = y - j0
    s0 = 1.0 - s1
    t0 = 1.0 - t1
    d[1:-1, 1:-1] = (s0 * (t0 * d0[i0, j0] + t1 * d0[i0, j0 + 1])
                     + s1 * (t0 * d0[i0 + 1, j0] + t1 * d0[i0 + 1, j0 + 1]))
    set_bnd(b, d)


def project(u, v, p, div):
    h = 1.0 / N
    div[1:-1, 1:-1] = -0.5 * h * (u[2:, 1:-1] - u[:-2, 1:-1] + v[1:-1, 2:] - v[1:-1, :-2])
    p.fill(0.0)
    set_bnd(0, div)
    set_bnd(0, p)
    lin_solve(0, p, div, 1, 4)
    u[1:-1, 1:-1] -= 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1]) / h
    v[1:-1, 1:-1] -= 0.5 * (p[1:-1, 2:] - p[1:-1, :-2]) / h
    set_bnd(1, u)
    set_bnd(2, v)


class FluidField:
    def __init__(self, visc, diff):
        self.visc = visc
        self.diff = diff
        self.u = np.zeros((SIZE, SIZE))
        self.v = np.zeros((SIZE, SIZE))
        self.u_prev = np.zeros((SIZE, SIZE))
        self.v_prev = np.zeros((SIZE, SIZE))
        self.dens = np.zeros((SIZE, SIZE))
        self.dens_prev = np.zeros((SIZE, SIZE))
        self.steps = 0

    def add_sources(self, k):
        self.u_prev.fill(0.0)
        self.v_prev.fill(0.0)
        self.dens_prev.fill(0.0)
        angle = 0.3 * k
        ci, cj = (N // 2 + rng.integers(-3, 4, size=2)).tolist()
        self.dens_prev[ci - 2:ci + 3, cj - 2:cj + 3] = 100.0
        self.u_prev[ci - 3:ci + 4, cj - 3:cj + 4] = 40.0 * np.cos(angle)
        self.v_prev[ci - 3:ci + 4, cj - 3:cj + 4] = 40.0 * np.sin(angle)
        inner = self.dens_prev[1:-1, 1:-1]
        inner[centre_mask] += 1.0

    def vel_step(self, dt):
        u, v, u0, v0 = self.u, self.v, self.u_prev, self.v_prev
        u += dt * u0
        v += dt * v0
        u0[:] = u
        v0[:] = v
        diffuse(1, u, u0, self.visc, dt)
        diffuse(2, v, v0, self.visc, dt)
        project(u, v, u0, v0)
        u0[:] = u
        v0[:] = v
        advect(1, u, u0, u0, v0, dt)
        advect(2, v, v0, u0, v0, dt)
        project(u, v, u0, v0)

    def dens_step(self, dt):
        x, x0 = self.dens, self.dens_prev
        x += dt * x0
        x0[:] = x
        diffuse(0, x, x0, self.diff, dt)
        x0[:] = x
        advect(0, x, x0, self.u, self.v, dt)

    def step(self):
        self.add_sources(self.steps)
        self.vel_step(DT)
        self.dens_step(DT)
        self.steps += 1


field = FluidField(visc=0.0001, diff=0.0002)


def tick():
    field.step()
    k = field.steps
    if k % 4 == 0 or k == 1:
        d = field.dens
        ke = 0.5 * float(np.sum(field.u ** 2 + field.v ** 2))
        peak = np.unravel_index(int(np.argmax(d)), d.shape)
        print(f"step {k:2d}: mass {float(d.sum()):.6f} kinetic {ke:.6f} "
              f"peak {float(d.max()):.6f} at {tuple(int(i) for i in peak)}")
    if k == STEPS:
        things.clear_timer(timer)
        d = field.dens
        moments = (float((d * II.mean()).sum()), float(np.abs(field.u).sum()),
                   float(np.abs(field.v).sum()))
        print(f"moments: {moments[0]:.6f} {moments[1]:.6f} {moments[2]:.6f}")
        print(f"result: {k} steps on {SIZE}x{SIZE}, mass {float(d.sum()):.6f}")


timer = things.set_interval(tick, 0.1)
