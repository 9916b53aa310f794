"""Runs under *another* CPython (no pytest, no third-party packages): restores snapshots
made by the test's interpreter and makes snapshots for it.  Used by test_cross_version.py.

stdin: {"finish": [snapshot paths], "make": [[program path, events, out path], ...]}
stdout: {"outputs": {snapshot path: console text}, "python": "3.x.y"}
"""

import json
import platform
import sys

from runtime import ProgramHost, VirtualClock
from runtime.bus import LocalBus
from runtime.snapshot import dumps, loads


def new_host(console, source=None, doc=None):
    clock, bus = VirtualClock(), LocalBus()
    hooks = {"clock": clock, "publish": bus.publish, "console": console.append}
    host = ProgramHost.restore(doc, **hooks) if doc else ProgramHost(source, **hooks)
    return bus.attach(host), clock


def main():
    job = json.load(sys.stdin)
    outputs = {}
    for path in job["finish"]:
        console = []
        with open(path, "rb") as f:
            host, clock = new_host(console, doc=loads(f.read()))
        clock.run()
        outputs[path] = "".join(console)
    for program, events, out in job["make"]:
        with open(program) as f:
            host, clock = new_host([], source=f.read())
        host.start()
        while host.alive and host.events_run < events and clock.step():
            pass
        with open(out, "wb") as f:
            f.write(dumps(host.snapshot()))
    json.dump({"outputs": outputs, "python": platform.python_version()}, sys.stdout)


if __name__ == "__main__":
    main()
