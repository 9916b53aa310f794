"""Prints 0, 1, 2, ... every 100 ms, forever (the ThingsJS Dispatcher test's program)."""

count = 0


def tick():
    global count
    print(count)
    count += 1


things.set_interval(tick, 0.1)
