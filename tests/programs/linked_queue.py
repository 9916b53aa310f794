"""Linked queue: deep linked structures (over a thousand levels).

A job scheduler whose pending jobs live in a hand-made singly linked list
(head and tail pointers in a Queue object) and whose history is a Lisp-style
cons list of nested tuples ``(item, rest)``.  A producer enqueues faster
than the consumer dequeues, so the queue grows to about 1500 nodes and the
history to about 1800 nested tuples before the producer stops and the
consumer drains everything.
Migration features: object chains and nested tuples far deeper than the
default recursion limit (a recursive serializer without care overflows),
a tail pointer aliasing the last node of the chain, two intervals, one
cleared by the other.
"""

PRODUCE_PER_TICK = 50
CONSUME_PER_TICK = 20
PRODUCER_TICKS = 36


class Job:
    __slots__ = ("ident", "cost", "next")

    def __init__(self, ident, cost):
        self.ident = ident
        self.cost = cost
        self.next = None


class Queue:
    def __init__(self):
        self.head = None
        self.tail = None
        self.length = 0
        self.max_length = 0

    def push(self, job):
        if self.tail is None:
            self.head = self.tail = job
        else:
            self.tail.next = job
            self.tail = job
        self.length += 1
        self.max_length = max(self.max_length, self.length)

    def pop(self):
        job = self.head
        self.head = job.next
        if self.head is None:
            self.tail = None
        job.next = None
        self.length -= 1
        return job


queue = Queue()
history = None            # cons list: (entry, rest) nested tuples, newest first
stats = {"made": 0, "done": 0, "work": 0, "producer_ticks": 0, "consumer_ticks": 0}


def cons_length(lst):
    n = 0
    while lst is not None:
        n += 1
        lst = lst[1]
    return n


def produce():
    global history
    for _ in range(PRODUCE_PER_TICK):
        k = stats["made"]
        queue.push(Job(k, (k * 7919) % 97 + 1))
        stats["made"] = k + 1
    history = (("p", stats["producer_ticks"], queue.length), history)
    stats["producer_ticks"] += 1
    if stats["producer_ticks"] == PRODUCER_TICKS:
        things.clear_timer(producer)
        print(f"t={things.now():.2f} producer stops: {stats['made']} jobs made, "
              f"queue length {queue.length}")


def consume():
    global history
    stats["consumer_ticks"] += 1
    budget = CONSUME_PER_TICK if stats["made"] < PRODUCE_PER_TICK * PRODUCER_TICKS else 150
    for _ in range(budget):
        if queue.head is None:
            break
        job = queue.pop()
        stats["done"] += 1
        stats["work"] += job.cost
        history = ((job.ident, job.cost), history)
    if stats["consumer_ticks"] % 8 == 0:
        tail = queue.tail.ident if queue.tail is not None else None
        print(f"t={things.now():.2f} consumer tick {stats['consumer_ticks']}: done "
              f"{stats['done']}, queue {queue.length} (tail {tail}), work {stats['work']}")
    if queue.head is None and stats["made"] == PRODUCE_PER_TICK * PRODUCER_TICKS:
        things.clear_timer(consumer)
        print(f"history: {cons_length(history)} entries, newest {history[0]}")
        print(f"result: {stats['done']} jobs done, max queue length {queue.max_length}, "
              f"work {stats['work']}")


producer = things.set_interval(produce, 0.1)
consumer = things.set_interval(consume, 0.13)
