"""Factorial: 1500! with big Python ints, computed a few factors per callback.

Port of the ThingsJS "factorial" benchmark.  The product is advanced by
CHUNK factors per step; steps alternate between set_immediate (same tick)
and set_timeout (17 ms later; chosen so no step ever ties with a report) so that a set_interval progress reporter gets
to run in between.  Prints progress lines, then digit count, trailing zeros,
last non-zero digits and a cross-check against math.factorial.
Migration features: a big int (4000+ digits) in a global dict, an imported
module (math) in globals, set_immediate + set_timeout + set_interval mixed,
clear_timer of the reporter, ``import things`` style access.
"""

import math

import things

N = 1500
CHUNK = 20

state = {"i": 1, "acc": 1, "steps": 0}
history = []  # (step, bit_length) samples taken by the reporter


def step():
    st = state
    hi = min(st["i"] + CHUNK, N + 1)
    acc = st["acc"]
    for k in range(st["i"], hi):
        acc *= k
    st["acc"] = acc
    st["i"] = hi
    st["steps"] += 1
    if hi > N:
        things.set_immediate(finish)
    elif st["steps"] % 2:
        things.set_immediate(step)
    else:
        things.set_timeout(step, 0.017)


def report():
    st = state
    history.append((st["steps"], st["acc"].bit_length()))
    print(f"t={things.now():.2f}s progress: {st['i'] - 1}/{N} factors, "
          f"{st['acc'].bit_length()} bits")


def finish():
    things.clear_timer(reporter)
    f = state["acc"]
    s = str(f)
    stripped = s.rstrip("0")
    print(f"{N}! has {len(s)} digits")
    print(f"trailing zeros: {len(s) - len(stripped)}")
    print(f"last 12 non-zero digits: {stripped[-12:]}")
    print(f"first 12 digits: {s[:12]}")
    print(f"digit sum: {sum(map(int, s))}")
    print(f"reporter samples: {len(history)}, steps: {state['steps']}")
    ok = f == math.factorial(N)
    print(f"result: {N}! check {'ok' if ok else 'MISMATCH'}")


reporter = things.set_interval(report, 0.1)
things.set_immediate(step)
