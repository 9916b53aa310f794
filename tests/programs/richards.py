"""Richards: Martin Richards' OS task-scheduler benchmark, run in chunks.

Port of the classic Richards benchmark (as in pyperformance / the V8 suite)
to the event-driven model: the scheduler loop is resumable and executes at
most STEPS_PER_TICK[run] task dispatches per timer callback, so the scheduler's
current task pointer, all task control blocks and the linked packet queues
live in program state between callbacks.  Two runs are performed (idle count
1000 each); each must end with qpktCount == 2322 and holdCount == 928.
Device output (the packet data written by the device tasks) is accumulated
as a string whose head and CRC32 are printed.
Migration features: a class hierarchy (TaskState -> Task -> 4 subclasses),
linked lists of Packet objects (cycles through task links), a global
singleton work area referenced from methods, a module-level list of task
records, class-level constants, zlib imported module.
"""

import zlib

I_IDLE = 1
I_WORK = 2
I_HANDLERA = 3
I_HANDLERB = 4
I_DEVA = 5
I_DEVB = 6

K_DEV = 1000
K_WORK = 1001

BUFSIZE = 4
TASKTABSIZE = 10
IDLE_COUNT = 1000
RUNS = 2
STEPS_PER_TICK = (250, 170)  # dispatches per callback, per run
EXPECTED = (2322, 928)  # (qpktCount, holdCount) for IDLE_COUNT == 1000


class Packet:
    def __init__(self, link, ident, kind):
        self.link = link
        self.ident = ident
        self.kind = kind
        self.datum = 0
        self.data = [0] * BUFSIZE

    def append_to(self, lst):
        self.link = None
        if lst is None:
            return self
        p = lst
        nxt = p.link
        while nxt is not None:
            p = nxt
            nxt = p.link
        p.link = self
        return lst


class TaskRec:
    pass


class DeviceTaskRec(TaskRec):
    def __init__(self):
        self.pending = None


class IdleTaskRec(TaskRec):
    def __init__(self, count):
        self.control = 1
        self.count = count


class HandlerTaskRec(TaskRec):
    def __init__(self):
        self.work_in = None
        self.device_in = None

    def work_in_add(self, p):
        self.work_in = p.append_to(self.work_in)
        return self.work_in

    def device_in_add(self, p):
        self.device_in = p.append_to(self.device_in)
        return self.device_in


class WorkerTaskRec(TaskRec):
    def __init__(self):
        self.destination = I_HANDLERA
        self.count = 0


class TaskState:
    def __init__(self):
        self.packet_pending = True
        self.task_waiting = False
        self.task_holding = False

    def packet_pending_state(self):
        self.packet_pending = True
        self.task_waiting = False
        self.task_holding = False
        return self

    def waiting(self):
        self.packet_pending = False
        self.task_waiting = True
        self.task_holding = False
        return self

    def running(self):
        self.packet_pending = False
        self.task_waiting = False
        self.task_holding = False
        return self

    def waiting_with_packet(self):
        self.packet_pending = True
        self.task_waiting = True
        self.task_holding = False
        return self

    def is_task_holding_or_waiting(self):
        return self.task_holding or (not self.packet_pending and self.task_waiting)

    def is_waiting_with_packet(self):
        return self.packet_pending and self.task_waiting and not self.task_holding


class TaskWorkArea:
    def __init__(self):
        self.task_tab = [None] * TASKTABSIZE
        self.task_list = None
        self.hold_count = 0
        self.qpkt_count = 0
        self.device_output = []


area = TaskWorkArea()


class Task(TaskState):
    def __init__(self, i, p, w, initial_state, r):
        self.link = area.task_list
        self.ident = i
        self.priority = p
        self.input = w
        self.packet_pending = initial_state.packet_pending
        self.task_waiting = initial_state.task_waiting
        self.task_holding = initial_state.task_holding
        self.handle = r
        area.task_list = self
        area.task_tab[i] = self

    def fn(self, pkt, r):
        raise NotImplementedError

    def add_packet(self, p, old):
        if self.input is None:
            self.input = p
            self.packet_pending = True
            if self.priority > old.priority:
                return self
        else:
            p.append_to(self.input)
        return old

    def run_task(self):
        if self.is_waiting_with_packet():
            msg = self.input
            self.input = msg.link
            if self.input is None:
                self.running()
            else:
                self.packet_pending_state()
        else:
            msg = None
        return self.fn(msg, self.handle)

    def wait_task(self):
        self.task_waiting = True
        return self

    def hold(self):
        area.hold_count += 1
        self.task_holding = True
        return self.link

    def release(self, i):
        t = self.findtcb(i)
        t.task_holding = False
        if t.priority > self.priority:
            return t
        return self

    def qpkt(self, pkt):
        t = self.findtcb(pkt.ident)
        area.qpkt_count += 1
        pkt.link = None
        pkt.ident = self.ident
        return t.add_packet(pkt, self)

    def findtcb(self, ident):
        t = area.task_tab[ident]
        if t is None:
            raise Exception(f"Bad task id {ident}")
        return t


class DeviceTask(Task):
    def fn(self, pkt, r):
        if pkt is None:
            pkt = r.pending
            if pkt is None:
                return self.wait_task()
            r.pending = None
            return self.qpkt(pkt)
        r.pending = pkt
        area.device_output.append(chr(pkt.datum))
        return self.hold()


class HandlerTask(Task):
    def fn(self, pkt, r):
        if pkt is not None:
            if pkt.kind == K_WORK:
                r.work_in_add(pkt)
            else:
                r.device_in_add(pkt)
        work = r.work_in
        if work is None:
            return self.wait_task()
        count = work.datum
        if count >= BUFSIZE:
            r.work_in = work.link
            return self.qpkt(work)
        dev = r.device_in
        if dev is None:
            return self.wait_task()
        r.device_in = dev.link
        dev.datum = work.data[count]
        work.datum = count + 1
        return self.qpkt(dev)


class IdleTask(Task):
    def fn(self, pkt, r):
        r.count -= 1
        if r.count == 0:
            return self.hold()
        if r.control & 1 == 0:
            r.control //= 2
            return self.release(I_DEVA)
        r.control = r.control // 2 ^ 0xD008
        return self.release(I_DEVB)


class WorkTask(Task):
    A = ord("A")

    def fn(self, pkt, r):
        if pkt is None:
            return self.wait_task()
        dest = I_HANDLERB if r.destination == I_HANDLERA else I_HANDLERA
        r.destination = dest
        pkt.ident = dest
        pkt.datum = 0
        for i in range(BUFSIZE):
            r.count += 1
            if r.count > 26:
                r.count = 1
            pkt.data[i] = WorkTask.A + r.count - 1
        return self.qpkt(pkt)


def setup_run():
    area.hold_count = 0
    area.qpkt_count = 0
    area.task_tab = [None] * TASKTABSIZE
    area.task_list = None
    area.device_output = []
    IdleTask(I_IDLE, 0, None, TaskState().running(), IdleTaskRec(IDLE_COUNT))
    wkq = Packet(None, 0, K_WORK)
    wkq = Packet(wkq, 0, K_WORK)
    WorkTask(I_WORK, 1000, wkq, TaskState().waiting_with_packet(), WorkerTaskRec())
    wkq = Packet(None, I_DEVA, K_DEV)
    wkq = Packet(wkq, I_DEVA, K_DEV)
    wkq = Packet(wkq, I_DEVA, K_DEV)
    HandlerTask(I_HANDLERA, 2000, wkq, TaskState().waiting_with_packet(), HandlerTaskRec())
    wkq = Packet(None, I_DEVB, K_DEV)
    wkq = Packet(wkq, I_DEVB, K_DEV)
    wkq = Packet(wkq, I_DEVB, K_DEV)
    HandlerTask(I_HANDLERB, 3000, wkq, TaskState().waiting_with_packet(), HandlerTaskRec())
    DeviceTask(I_DEVA, 4000, None, TaskState().waiting(), DeviceTaskRec())
    DeviceTask(I_DEVB, 5000, None, TaskState().waiting(), DeviceTaskRec())
    sched["current"] = area.task_list
    sched["dispatches"] = 0
    sched["ticks"] = 0


sched = {"current": None, "dispatches": 0, "ticks": 0, "run": 0, "ok": 0}


def tick():
    t = sched["current"]
    steps = 0
    limit = STEPS_PER_TICK[sched["run"]]
    while t is not None and steps < limit:
        if t.is_task_holding_or_waiting():
            t = t.link
        else:
            t = t.run_task()
            steps += 1
    sched["current"] = t
    sched["dispatches"] += steps
    sched["ticks"] += 1
    if sched["ticks"] % 6 == 0:
        print(f"  run {sched['run']} tick {sched['ticks']}: {sched['dispatches']} dispatches, "
              f"qpkt={area.qpkt_count} hold={area.hold_count}")
    if t is None:
        end_run()
    else:
        things.set_timeout(tick, 0.01)


def end_run():
    out = "".join(area.device_output)
    ok = (area.qpkt_count, area.hold_count) == EXPECTED
    sched["ok"] += ok
    print(f"run {sched['run']} done at t={things.now():.2f}s: qpkt={area.qpkt_count} "
          f"hold={area.hold_count} dispatches={sched['dispatches']} ticks={sched['ticks']} "
          f"{'ok' if ok else 'WRONG'}")
    print(f"device output: {len(out)} chars, head {out[:26]!r}, crc32 {zlib.crc32(out.encode()):08x}")
    sched["run"] += 1
    if sched["run"] < RUNS:
        setup_run()
        things.set_timeout(tick, 0.05)
    else:
        print(f"result: {sched['ok']}/{RUNS} richards runs correct")


setup_run()
things.set_timeout(tick, 0.01)
