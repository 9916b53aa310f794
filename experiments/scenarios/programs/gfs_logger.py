# A logger using the global file system (things.fs): it reads its settings from a file
# preloaded into the GFS, writes one line per tick to its own log (an open handle that
# follows it from board to board) and every few ticks appends an event to a file it
# shares with the other loggers.  See experiments/scenarios/gfs_logger.toml.
import json

settings = {}
log = None
n = 0


def tick():
    global n
    log.write(f"{things.code_name} line {n} at {things.now():.2f}\n")
    log.flush()
    if n % settings["event_every"] == 0:
        things.fs.append_file("/shared/events.log", f"{things.code_name} event {n}\n")
    n += 1
    if n == settings["records"]:
        things.clear_timer(timer)
        log.close(lambda err, _: print("done", err or ""))


def configured(err, text):
    global log, timer
    if err:
        print("no settings:", err)
        return
    settings.update(json.loads(text))
    things.fs.mkdir("logs", exist_ok=True)
    log = things.fs.open("logs/app.log", "a")
    timer = things.set_interval(tick, settings["period"])


things.fs.read_file("/config/logger.json", configured)
