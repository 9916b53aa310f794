"""Generator feed (NEGATIVE test): state that cannot be migrated.

The program keeps a live generator object in an instance attribute of the
global ``feed`` (``feed.gen``) and pulls one item from it on every timer tick.
Run uninterrupted it works and prints 20 values; but a generator's suspended
frame cannot be captured, so any snapshot of this program must fail with an
error that names the offending path, ``globals['feed'].gen``.
It is kept out of the positive corpus on purpose.
"""


class Feed:
    def __init__(self, source):
        self.source = source
        self.gen = (x * x for x in range(10**6))   # live generator: not capturable
        self.taken = 0


feed = Feed("squares")
state = {"sum": 0}


def consume():
    value = next(feed.gen)
    feed.taken += 1
    state["sum"] += value
    print(f"t={things.now():.1f} {feed.source} #{feed.taken}: {value}")
    if feed.taken >= 20:
        things.clear_timer(timer)
        print(f"result: {feed.taken} items, sum {state['sum']}")


timer = things.set_interval(consume, 0.1)
