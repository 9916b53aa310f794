"""Closures: functions as state (cells, defaults, partials, attributes).

Exercises the capture of function objects and everything hanging off them:
closure factories (counters), several closures sharing one cell via
``nonlocal``, closures nested three deep that rebind an outer cell, a cell
that is still empty at start and filled later, lambdas (and lambdas with
default arguments bound in a loop) as timer callbacks, a mutable default
argument that accumulates across calls, keyword-only defaults (and
``__kwdefaults__`` changed at run time), functools.partial objects stored in
state and used as callbacks, function attributes (``fn.calls``), a
decorator made with functools.wraps (``__wrapped__``), and a recursive
memoising closure (a cell that contains the function itself).
"""

import functools


def make_counter(start=0, step=1):
    count = start

    def incr():
        nonlocal count
        count += step
        return count

    def get():
        return count

    def reset(value=start):
        nonlocal count
        count = value

    return incr, get, reset


def outer(prefix):
    def middle(base):
        def inner(suffix):
            nonlocal base
            base += 1
            return f"{prefix}/{base}/{suffix}"
        return inner
    return middle


def make_late():
    value = None
    del value  # leaves the shared cell empty until set_() runs

    def get():
        try:
            return value
        except NameError:
            return "<empty cell>"

    def set_(v):
        nonlocal value
        value = v

    return get, set_


def make_fib():
    memo = {}

    def fib(n):
        if n < 2:
            return n
        if n not in memo:
            memo[n] = fib(n - 1) + fib(n - 2)
        return memo[n]

    fib.memo = memo
    return fib


def log_event(name, history=[]):   # noqa: B006 - the accumulating default is the point
    history.append(name)
    return len(history)


def scaled(x, *, factor=2, offset=0):
    return x * factor + offset


def traced(label):
    def decorator(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            wrapper.calls += 1
            result = fn(*args, **kwargs)
            print(f"  [{label}] {fn.__name__}{args} -> {result} (call #{wrapper.calls})")
            return result
        wrapper.calls = 0
        return wrapper
    return decorator


@traced("sq")
def square(x):
    return x * x


def report(kind, value, *, tag="-"):
    print(f"t={things.now():.2f} report {kind}: {value} tag={tag}")
    log_event(f"report:{kind}")


incr, get, reset = make_counter(10, 5)
ticks_counter = make_counter()
deep = outer("node")(100)
late_get, late_set = make_late()
fib = make_fib()
partials = [functools.partial(report, "partial", tag=f"p{i}") for i in range(3)]
results = []
results_by_tick = {}


def make_countdown(name, n, period):
    def step():
        nonlocal n
        n -= 1
        if n % 4 == 0:
            print(f"t={things.now():.3f} countdown {name}: {n} left")
        if n > 0:
            things.set_timeout(step, period)   # the closure reschedules itself via its cell
    return step


def tick():
    tick.calls += 1
    n = tick.calls
    ticks_counter[0]()
    value = incr()
    line = f"t={things.now():.2f} tick {n}: counter={value} get={get()} deep={deep(n)}"
    if n == 4:
        reset()
        line += f" reset->{get()}"
    if n == 12:
        reset(1000)
        line += f" reset(1000)->{get()}"
    print(line)
    if n % 3 == 0:
        print(f"  late={late_get()} fib({5 * n})={fib(5 * n)} memo={len(fib.memo)}")
    if n == 4:
        late_set(f"filled at tick {n}")
    # a fresh lambda closing over this call's local `n`, run on the next loop turn
    things.set_immediate(lambda: results_by_tick.__setitem__(n, get() % 7))
    if n == 10:
        scaled.__kwdefaults__["factor"] = 10
    results.append(scaled(n) + scaled(n, offset=1))
    if n >= 20:
        things.clear_timer(tick.timer)
        things.set_timeout(finish, 0.5)


tick.calls = 0


def finish():
    total = log_event("finish")
    print(f"scaled results: {results}")
    print(f"square calls: {square.calls}, wrapped name: {square.__wrapped__.__name__}")
    print(f"history default: {log_event.__defaults__[0]}")
    print(f"per-tick lambdas: {sorted(results_by_tick.items())}")
    print(f"ticks via shared counter: {ticks_counter[1]()}, fib memo size {len(fib.memo)}")
    print(f"result: {tick.calls} ticks, {total} logged events, counter {get()}")


tick.timer = things.set_interval(tick, 0.1)
for i in range(3):
    things.set_timeout(lambda i=i: square(i + 7), 0.27 + 0.2 * i)   # default binds the loop value
things.set_timeout(lambda: report("lambda", get()), 0.33)
for i, p in enumerate(partials):
    things.set_timeout(p, 0.15 + 0.3 * i, 100 + i)
things.set_timeout(make_countdown("A", 12, 0.13), 0.015)
things.set_immediate(functools.partial(print, "immediate partial:", "start", sep=" "))
