"""Counter: prints 0, 1, 2, ... every 100 ms and exits after 50 values.

The simplest migratable program (port of the ThingsJS "counter" example).
Migration features: one module-level int mutated through ``global``, a
set_interval timer (its id kept in a global and cleared at the end), the
injected ``things`` global, things.now() in the final line.
"""

count = 0
LIMIT = 50


def tick():
    global count
    print(count)
    count += 1
    if count >= LIMIT:
        things.clear_timer(timer)
        print(f"result: counted {count} values by t={things.now():.1f}s")


timer = things.set_interval(tick, 0.1)
