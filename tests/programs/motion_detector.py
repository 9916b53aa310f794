"""Motion detector: camera -> detector -> alarm logger over pub/sub, numpy frames.

Port of the ThingsJS video-surveillance demo.  A simulated camera (a
set_interval at 10 fps) renders 48x64 grey frames: a fixed textured
background, per-frame sensor noise from a numpy Generator stored in a global,
moving objects in some frame ranges and a global lighting change.  Frames are
published on ``cam/<name>/frame``, mostly as raw bytes (a 0xFF marker byte,
so the payload can never be valid UTF-8 JSON, then a 2-byte frame number and
the pixels) and every third frame as a JSON dict of nested lists.  The
detector subscribes to ``cam/+/frame``, keeps the previous frame and a
running-average background model as numpy arrays, and publishes alarms
(JSON dicts) on ``alarm/motion/<name>``; a logger subscribed to ``alarm/#``
prints them.  At the end the camera publishes ``cam/<name>/eof``, everyone
unsubscribes and the program ends by running out of events.
Migration features: numpy uint8/float64/bool arrays in instance state,
numpy.random.Generator in a global, bytes and dict payloads, `+` and `#`
wildcards, bound-method subscriptions, unsubscribe, natural termination.
"""

import numpy as np

H, W = 48, 64
FRAMES = 60
CAMERA = "cam1"
rng = np.random.default_rng(7)
texture = rng.integers(40, 90, size=(H, W)).astype(np.int16)


class Camera:
    def __init__(self, name):
        self.name = name
        self.frame_no = 0
        self.light = 0
        self.timer = None

    def render(self, k):
        img = texture + self.light + np.rint(rng.normal(0.0, 3.0, size=(H, W))).astype(np.int16)
        if rng.random() < 0.3:                # a 3x3 glint: too small to raise an alarm
            gy, gx = rng.integers(0, [H - 3, W - 3]).tolist()
            img[gy:gy + 3, gx:gx + 3] = 250
        if 10 <= k < 30:                      # a bright 8x8 object crossing left to right
            x = 4 + (k - 10) * 2
            y = 20 + int(rng.integers(-2, 3))  # with some vertical jitter
            img[y:y + 8, x:x + 8] = 220
        if 40 <= k < 52:                      # a dark 6x10 object moving down
            y = 2 + (k - 40) * 3
            img[y:y + 6, 40:50] = 10
        return np.clip(img, 0, 255).astype(np.uint8)

    def shoot(self):
        k = self.frame_no
        if k == 35:
            self.light = 40                   # lights switched on
        frame = self.render(k)
        topic = f"cam/{self.name}/frame"
        if k % 3 == 0:
            things.publish(topic, {"n": k, "pixels": frame.tolist()})
        else:
            things.publish(topic, b"\xff" + k.to_bytes(2, "big") + frame.tobytes())
        self.frame_no += 1
        if self.frame_no == FRAMES:
            things.clear_timer(self.timer)
            things.publish(f"cam/{self.name}/eof", {"frames": FRAMES})


class Detector:
    THRESHOLD = 30
    MIN_PIXELS = 12

    def __init__(self):
        self.prev = None
        self.background = None
        self.frames = 0
        self.alarms = 0
        self.formats = {"bytes": 0, "json": 0}
        things.subscribe("cam/+/frame", self.on_frame)
        things.subscribe("cam/+/eof", self.on_eof)

    @staticmethod
    def decode(payload):
        if isinstance(payload, bytes):
            assert payload[0] == 0xFF
            n = int.from_bytes(payload[1:3], "big")
            return n, np.frombuffer(payload[3:], dtype=np.uint8).reshape(H, W), "bytes"
        return payload["n"], np.array(payload["pixels"], dtype=np.uint8), "json"

    def on_frame(self, topic, payload):
        n, frame, fmt = self.decode(payload)
        self.formats[fmt] += 1
        self.frames += 1
        cam = topic.split("/")[1]
        f = frame.astype(np.float64)
        if self.background is None:
            self.background = f.copy()
            self.prev = frame.copy()
            return
        mask = np.abs(f - self.background) > self.THRESHOLD
        moving = np.abs(frame.astype(np.int16) - self.prev.astype(np.int16)) > self.THRESHOLD
        count = int(mask.sum())
        if count > mask.size // 2:
            self.background = f.copy()        # global change: re-learn the background
            self.alarms += 1
            things.publish(f"alarm/motion/{cam}", {"frame": n, "kind": "lighting",
                                                    "pixels": count})
        elif count >= self.MIN_PIXELS:
            ys, xs = np.nonzero(mask)
            self.alarms += 1
            things.publish(f"alarm/motion/{cam}", {
                "frame": n, "kind": "object", "pixels": count,
                "moving": int((mask & moving).sum()),
                "bbox": [int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())],
                "centroid": [round(float(ys.mean()), 2), round(float(xs.mean()), 2)],
            })
        # update the background only where nothing is happening
        still = ~mask
        self.background[still] = 0.9 * self.background[still] + 0.1 * f[still]
        self.prev = frame.copy()

    def on_eof(self, topic, payload):
        things.unsubscribe("cam/+/frame", self.on_frame)
        things.unsubscribe("cam/+/eof", self.on_eof)
        bg = self.background
        things.publish("alarm/summary", {
            "frames": self.frames, "alarms": self.alarms, "formats": self.formats,
            "background_mean": round(float(bg.mean()), 4),
        })


class Logger:
    def __init__(self):
        self.kinds = {}
        things.subscribe("alarm/#", self.on_alarm)

    def on_alarm(self, topic, msg):
        if topic == "alarm/summary":
            things.unsubscribe("alarm/#", self.on_alarm)
            print(f"summary: {msg['frames']} frames ({msg['formats']['bytes']} bytes, "
                  f"{msg['formats']['json']} json), background mean {msg['background_mean']}")
            print(f"result: {msg['alarms']} alarms, by kind {sorted(self.kinds.items())}")
            return
        self.kinds[msg["kind"]] = self.kinds.get(msg["kind"], 0) + 1
        t = things.now()
        if msg["kind"] == "lighting":
            print(f"t={t:.1f} {topic} frame {msg['frame']}: LIGHTING change, {msg['pixels']} px")
        else:
            print(f"t={t:.1f} {topic} frame {msg['frame']}: {msg['pixels']} px "
                  f"(moving {msg['moving']}) bbox {msg['bbox']} centroid {msg['centroid']}")


camera = Camera(CAMERA)
detector = Detector()
logger = Logger()
camera.timer = things.set_interval(camera.shoot, 0.1)
