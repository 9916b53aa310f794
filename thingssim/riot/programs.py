"""The source of every RIoTBench program: one per task, plus the source and the sink.

Each program is a short, fixed body after one line of configuration, ``SPEC =
json.loads('...')`` (a JSON literal the runner fills in), so what a board runs is
readable, needs only the runtime (``runtime.riot``), and migrates like any program.

**Wire format.**  Every message on a dataflow topic (``riot/<run>/<stage>``) is one tuple:
a flat JSON object of RIoTBench fields plus the *envelope*, the fields whose name starts
with ``_`` (``runtime.riot.tasks`` copies the envelope of the item it is handling into
what it emits):

- ``_id``: the source message id (the line's index in the input) of the message the
  tuple comes from; for a window, of the message that closed it;
- ``_ids``: every source message id the tuple derives from (a window stage's output:
  the ids of all the inputs it consumed since its previous output);
- ``_ts``: the source's ``things.time()`` when it sent message ``_id`` (end-to-end
  latency = the sink's ``things.time()`` minus ``_ts``);
- ``_seq``: the tuple's number in its stream (0, 1, 2... per producing stage), so a sink
  can tell lost, doubled and reordered messages apart;
- ``_sent``: the producer's ``things.time()`` when it published the tuple (a consumer's
  input delay = its ``things.time()`` at the start of handling minus ``_sent``).

The end of a stream is ``{"_eos": true, "_seq": <tuples sent>}``: a task forwards it when
every one of its inputs has ended (windows still open are not flushed, as in RIoTBench),
and repeats it at every report, since programs publish with QoS 0 and a lossy link
(the Pi Zero's Wi-Fi) may lose any one copy; receivers take the first.

**Readiness.**  A program subscribes only once its task is built (its files read from
the global file system), then says so on ``riot/<run>/ready``; the runner starts the
source after every program is ready, so no tuple is published to a topic nobody listens
to yet (QoS 0 would drop it).

**Reports.**  Every ``report_s`` seconds of program time and at the end of its stream,
each task publishes cumulative counters on ``riot/<run>/stats/<stage>``: tuples in and
out, the CPU its callbacks have cost so far (``things.cpu_time()``: measured on a board,
the cost model's charge in a simulation, so simulated reports, and the snapshots of a
migrated stage, are the same bytes on every run), and the sum and maximum of input
delays.  The sink sends its
per-tuple rows (stream, sequence number, ids, stamp, arrival) on ``riot/<run>/report``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["TASK_BODY", "SINK_BODY", "SOURCE_BODY", "program", "sink_program",
           "source_program", "task_program"]


def program(spec: dict[str, Any], body: str, title: str) -> str:
    """A program's source: a comment naming it, its ``SPEC`` JSON literal, then ``body``."""
    literal = json.dumps(spec, separators=(",", ":"), sort_keys=True)
    return f"# {title}\nimport json\n\nSPEC = json.loads({literal!r})\n{body}"


def task_program(spec: dict[str, Any]) -> str:
    """The program of one stage (see :func:`thingssim.riot.dataflows.Dataflow.specs`)."""
    kind = spec["task"]["name"] if spec.get("task") else spec.get("kind", "store")
    return program(spec, TASK_BODY, f"RIoTBench {spec['flow']} stage {spec['stage']} "
                   f"({kind}), run {spec['run']}")


def source_program(spec: dict[str, Any]) -> str:
    """The source: replays ``(due, line)`` pairs, stamping each message."""
    return program(spec, SOURCE_BODY, f"RIoTBench {spec['flow']} source, run {spec['run']}")


def sink_program(spec: dict[str, Any]) -> str:
    """The sink: latency, sequence checks and per-tuple rows for the runner."""
    return program(spec, SINK_BODY, f"RIoTBench {spec['flow']} sink, run {spec['run']}")


# ------------------------------------------------------------------------------ tasks
TASK_BODY = r'''
import runtime.riot.tasks  # noqa: F401  (registers every task class)
from runtime.riot import tasks as riot

task = None          # built once the files it needs are read
files = {}           # property path -> bytes, from the global file system
to_read = sorted(SPEC["files"].items())
to_make = [d for d in (SPEC.get("store_dir"), SPEC.get("plot_dir")) if d]
seq = 0              # tuples published on our stream
pending = []         # source ids consumed since the last output (window stages)
ended = []           # inputs whose end of stream came
n_in = 0
n_out = 0
delay_sum = 0.0      # sum of (start of handling - upstream publish time)
delay_max = 0.0
models = 0           # model updates applied (PRED)
stored = 0           # models stored (TRAIN's store stage)
plots = 0            # PNGs written (STATS' plot stage)
plot_window = None
storing = 0          # models being written (the end of stream waits for them)
ending = False
done = False


def build():
    global task
    if SPEC.get("task"):
        t = SPEC["task"]
        task = riot.configure(t["name"], t["props"], t["dataset"],
                              lambda path: files[path], **t["overrides"])
        if "__model__" in files:  # PRED: the model stored before the run
            task.update_model(files["__model__"])
    files.clear()  # the task keeps what it needs: no second copy in every snapshot
    for topic in SPEC["inputs"]:
        things.subscribe(topic, on_tuple)
    if SPEC.get("model_topic"):
        things.subscribe(SPEC["model_topic"], on_model)
    things.set_interval(report, SPEC["report_s"])
    things.publish(SPEC["ready_topic"], {"stage": SPEC["stage"]})


def read_next(err=None, data=None):
    if err is not None:
        raise err
    if data is not None:
        files[to_read.pop(0)[0]] = data
    if to_read:
        things.fs.read_file(to_read[0][1], read_next, binary=True)
    else:
        make_dirs()


def make_dirs(err=None, _=None):
    """The folders the stage writes into (TRAIN's models, STATS' plots)."""
    if err is not None:
        raise err
    if to_make:
        things.fs.mkdir(to_make.pop(0), make_dirs, parents=True, exist_ok=True)
    else:
        build()


def emit(out):
    global seq, n_out
    out["_seq"] = seq
    out["_sent"] = things.time()
    things.publish(SPEC["output"], out)
    seq += 1
    n_out += 1


def on_tuple(topic, item):
    global n_in, delay_sum, delay_max, pending
    if item.get("_eos"):
        if topic not in ended:
            ended.append(topic)
        if len(ended) == len(SPEC["inputs"]):
            finish()
        return
    start = things.time()
    delay = start - item.get("_sent", start)
    delay_sum += delay
    delay_max = max(delay_max, delay)
    n_in += 1
    if SPEC["ids"] == "window":
        pending.extend(item.get("_ids", ()))
    outs = task(item) if task is not None else [dict(item)]
    if not outs:
        return
    if SPEC["ids"] == "window":
        ids = sorted(set(pending))
        pending = []
        for out in outs:
            out["_ids"] = ids
    if SPEC.get("store_dir"):
        for out in outs:
            store(out)
        return
    if SPEC.get("plot_dir"):
        plot(outs)
    for out in outs:
        emit(out)


def store(out):
    """TRAIN: the model into the file system, then the model-updated notification."""
    global storing
    path = SPEC["store_dir"] + "/" + out["analytic_type"] + ".json"
    model = out.pop("model")
    out["path"] = path
    out["bytes"] = float(len(model))
    storing += 1

    def stored_it(err, _):
        global stored, storing
        storing -= 1
        if ending and not storing:
            things.set_immediate(finish)  # after this model's notification
        if err is not None:
            print("could not store", path, ":", err)
            return
        stored += 1
        note = {"analytic_type": out["analytic_type"], "path": path,
                "model_version": out.get("model_version"), "_ts": out.get("_ts")}
        things.publish(SPEC["notify_topic"], note)
        emit(out)

    things.fs.write_file(path, model, stored_it)


def on_model(topic, note):
    """PRED: a model-updated notification; the model is read from the file system."""
    if note.get("analytic_type") != SPEC["analytic_type"]:
        return

    def loaded(err, text):
        global models
        if err is not None:
            print("could not load", note.get("path"), ":", err)
            return
        task.update_model(text)
        models += 1

    things.fs.read_file(note["path"], loaded)


def plot(outs):
    """STATS: one PNG per accumulator window, drawn once the next window starts."""
    global plot_window
    window = outs[0].get("window")
    if plot_window is not None and window != plot_window:
        draw(plot_window, last_points)
    plot_window = window
    remember(task.points())


last_points = []


def remember(points):
    global last_points
    last_points = points


def draw(window, points):
    from runtime.riot import png

    data = png.line_chart([p["y"] for p in points], SPEC.get("plot_size", [320, 160]))
    path = SPEC["plot_dir"] + "/window-%06d.png" % int(window or 0)

    def written(err, _):
        global plots
        if err is None:
            plots += 1
        else:
            print("could not write", path, ":", err)
        if done:  # the last window's PNG: counted in a last report
            report()

    things.fs.write_file(path, data, written)


def finish():
    global done, ending
    if done:
        return
    if storing:  # models still being written: the end of stream follows them
        ending = True
        return
    done = True
    if SPEC.get("plot_dir") and plot_window is not None:
        draw(plot_window, last_points)
    report()


def report():
    if done:  # the end of stream again at every report: QoS 0 may lose any one copy
        things.publish(SPEC["output"], {"_eos": True, "_seq": seq, "_sent": things.time()})
    stats = {"stage": SPEC["stage"], "t": things.time(), "in": n_in, "out": n_out,
             "cpu": things.cpu_time(), "delay_sum": delay_sum, "delay_max": delay_max, "eos": done,
             "models": models, "stored": stored, "plots": plots}
    if task is not None:
        for name in ("errors", "skipped", "misses", "rejected", "filled"):
            value = getattr(task, name, None)
            if isinstance(value, (int, float)):
                stats[name] = value
    things.publish(SPEC["stats_topic"], stats)


read_next()
'''


# ----------------------------------------------------------------------------- source
SOURCE_BODY = r'''
from collections import deque

# (due seconds, line) pairs: embedded, or read part by part from the file system
queue = deque(SPEC["lines"] or ())
parts = list(SPEC["parts"])
reading = False
n = 0                # messages sent = the next message id
t0 = None
timer = None
done = False


def fill():
    """Keep the next part of the input on hand (parts are 'due<TAB>line' lines)."""
    global reading
    if reading or not parts or len(queue) > SPEC["low_water"]:
        return
    reading = True
    things.fs.read_file(parts.pop(0), got_part)


def got_part(err, text):
    global reading
    reading = False
    if err is not None:
        raise err
    for row in text.splitlines():
        if row:
            due, _, line = row.partition("\t")
            queue.append((float(due), line))
    if timer is None and not done and t0 is not None:
        schedule()


def start(topic=None, msg=None):
    global t0
    if t0 is not None:
        return
    t0 = things.now()
    schedule()


def schedule():
    global timer, done
    fill()
    if not queue:
        timer = None
        if not parts and not reading:
            done = True
            report()
        return
    delay = queue[0][0] - (things.now() - t0)
    timer = things.set_timeout(send, delay if delay > 0 else 0)


def send():
    global n
    _, line = queue.popleft()
    now = things.time()
    things.publish(SPEC["output"], {"payload": line, "_id": n, "_ids": [n], "_ts": now,
                                    "_seq": n, "_sent": now})
    n += 1
    schedule()


def report():
    if done:  # the end of stream, again at every report (QoS 0 may lose a copy)
        things.publish(SPEC["output"], {"_eos": True, "_seq": n, "_sent": things.time()})
    things.publish(SPEC["stats_topic"], {"stage": "source", "t": things.time(), "in": 0,
                                         "out": n, "cpu": things.cpu_time(), "delay_sum": 0.0,
                                         "delay_max": 0.0, "eos": done})


things.set_interval(report, SPEC["report_s"])
fill()
things.subscribe(SPEC["start_topic"], start)
things.publish(SPEC["ready_topic"], {"stage": "source"})
'''


# ------------------------------------------------------------------------------- sink
SINK_BODY = r'''
streams = {topic: i for i, topic in enumerate(SPEC["inputs"])}
expected = [0] * len(streams)     # next sequence number per stream
missing = [set() for _ in streams]
lost_at_end = [0] * len(streams)
duplicates = [0] * len(streams)
reordered = [0] * len(streams)
received = [0] * len(streams)
ended = [None] * len(streams)     # tuples the producer says it sent
rows = []                         # [stream, seq, id, n_ids, ts, arrival]
done = False


def on_tuple(topic, item):
    global done
    s = streams[topic]
    seq = item.get("_seq")
    if item.get("_eos"):
        if ended[s] is not None:
            return  # a repeat
        ended[s] = seq
        if seq > expected[s]:  # the last ones never came
            lost_at_end[s] = seq - expected[s]
        if all(e is not None for e in ended):
            done = True
            report()
        return
    now = things.time()
    received[s] += 1
    if seq == expected[s]:
        expected[s] += 1
    elif seq > expected[s]:
        missing[s].update(range(expected[s], seq))
        expected[s] = seq + 1
    elif seq in missing[s]:
        missing[s].discard(seq)
        reordered[s] += 1
    else:
        duplicates[s] += 1
    ids = item.get("_ids") or [item.get("_id")]
    rows.append([s, seq, item.get("_id"), len(ids), item.get("_ts"), now])


def report():
    global rows
    out = {"t": things.time(), "rows": rows, "done": done, "streams": [
        {"topic": topic, "received": received[s], "expected": expected[s],
         "missing": len(missing[s]) + lost_at_end[s], "duplicates": duplicates[s],
         "reordered": reordered[s], "ended": ended[s]}
        for topic, s in streams.items()]}
    rows = []
    things.publish(SPEC["report_topic"], out)


for topic in SPEC["inputs"]:
    things.subscribe(topic, on_tuple)
things.set_interval(report, SPEC["report_s"])
things.publish(SPEC["ready_topic"], {"stage": "sink"})
'''
