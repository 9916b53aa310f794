"""The scheduler's command topic, ``<id>/cmd``: application requests and their replies.

Every request is answered, once per request id (a QoS 1 duplicate gets the same answer
again), errors as ``{code, message}``.  A standby is silent, so clients see one answer.
Submissions are durable before anything runs; pause, resume and kill act on every
instance in one job of the queue, so they never interleave with a cycle."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Generator, Optional

from .. import protocol as p
from ..dispatcher import DispatcherError
from ..future import gather
from ..transport import Message
from .appfile import application_from_dict, application_to_dict
from .config import (
    UNPLACEABLE,
    _App,
    _why,
    instance_id,
)
from .core import SchedulerCore
from .model import (
    SchedulerError,
)
from .store import AppRow, InstanceRow

log = logging.getLogger("runtime.scheduler.service")


class Commands(SchedulerCore):
    """Handlers of ``run_application``, ``pause/resume/kill_application``, ``report``
    and ``status``."""

    # ================================================================ commands
    def _on_command(self, message: Message) -> None:
        if not self.active:
            return  # a standby is silent: the active one answers
        try:
            request = p.parse_request(message.payload)
        except p.ProtocolError as exc:
            log.warning("%s: dropped a malformed request: %s", self.id, exc.message)
            return
        rid = request.request_id
        if rid is not None and rid in self._replies:
            answer = self._replies[rid]
            if answer:  # answered: the same answer again (QoS 1 duplicate)
                self._send(request, answer)
            return
        if rid is not None:
            self._replies[rid] = {}
            while len(self._replies) > 1000:
                self._replies.pop(next(iter(self._replies)))
        handler = {"run_application": self._cmd_run, "pause_application": self._cmd_pause,
                   "resume_application": self._cmd_resume, "kill_application": self._cmd_kill,
                   "report": self._cmd_report, "status": self._cmd_status
                   }.get(request.ctrl)
        if handler is None:
            self._answer(request, error=(p.UNKNOWN_CTRL, f"unknown ctrl {request.ctrl!r}; "
                                         "known: run_application, pause_application, "
                                         "resume_application, kill_application, report, "
                                         "status"))
            return
        try:
            handler(request)
        except (SchedulerError, p.ProtocolError) as exc:
            code = exc.code if isinstance(exc, p.ProtocolError) else p.BAD_REQUEST
            self._answer(request, error=(code, getattr(exc, "message", str(exc))))
        except Exception as exc:  # noqa: BLE001 - a bug of ours: answered, not swallowed
            log.exception("%s: %s failed", self.id, request.ctrl)
            self._answer(request, error=(p.INTERNAL, f"{type(exc).__name__}: {exc}"))

    def _answer(self, request: p.Request, payload: Any = None,
                error: Optional[tuple[str, str]] = None) -> None:
        if request.request_id is None:
            return
        answer = p.error_reply(request.request_id, *error) if error else \
            p.reply(request.request_id, payload)
        self._replies[request.request_id] = answer
        self._send(request, answer)

    def _send(self, request: p.Request, answer: dict) -> None:
        if request.reply_to and not self.halted:
            self.transport.publish(request.reply_to, p.encode(answer), qos=1)

    def _app(self, kwargs: dict) -> _App:
        token = kwargs.get("token")
        if not isinstance(token, str) or not token:
            raise p.ProtocolError(p.BAD_REQUEST, "missing or malformed argument 'token'")
        a = self.apps.get(token)
        if a is None:
            raise p.ProtocolError(p.NOT_FOUND, f"no application with token {token!r}")
        return a

    def _cmd_report(self, request: p.Request) -> None:
        self._answer(request, self.state())

    def _cmd_status(self, request: p.Request) -> None:
        if request.kwargs.get("token") is not None:
            a = self._app(request.kwargs)
            self._answer(request, self.state()["apps"][a.row.token])
            return
        state = self.state()
        state["engines"] = {e.id: e.status for e in self.dispatcher.engines.values()}
        state["cycles"] = self.cycles
        self._answer(request, state)

    def _cmd_run(self, request: p.Request) -> None:
        kwargs = dict(request.kwargs)
        token = kwargs.pop("token", None)
        if token is not None:
            token = p.check_name("token", token)
            if token in self.apps:  # a resubmission: the same application's state
                a = self.apps[token]
                if a.row.status == "Pending":
                    a.reply.append(request)
                elif a.row.status == "Refused":
                    self._answer(request, error=(UNPLACEABLE, a.row.reason or "refused"))
                else:
                    self._answer(request, self._app_summary(a))
                return
        app = application_from_dict(kwargs)
        for c in app.components:  # a program that does not compile: refused up front
            try:
                compile(c.source, f"<{c.name}>", "exec")
            except SyntaxError as exc:
                raise p.ProtocolError(p.BAD_PROGRAM, f"component {c.name!r}: {exc.msg} "
                                      f"(line {exc.lineno})") from None
        token = token or self.new_id()[:8]
        row = AppRow(token, app.name, application_to_dict(app), "Pending", None,
                     self.clock.wall(), self.store.next_seq())
        a = _App(row, dataclasses.replace(app, name=token), [request])
        insts = [InstanceRow(f"{token}/{c.name}/{i}", token, instance_id(token, c.name, i),
                             c.name, i, None, 0, "new")
                 for c in app.components for i in range(c.count)]
        self.store.put_app(row, insts)  # durable before anything runs
        self.apps[token] = a
        self.rows.update((r.key, r) for r in insts)
        self._event("application", phase="submitted", token=token, name=app.name,
                    instances=len(insts))
        self.trigger("run_application")

    def _cmd_pause(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status != "Running":
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"{a.row.status}, not Running")
        self._set_status(a, "Paused")  # recoveries from now on restore it paused
        self._enqueue(self._each_instance(request, a, "pause"))

    def _cmd_resume(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status != "Paused":
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"{a.row.status}, not Paused")
        self._set_status(a, "Running")
        self._enqueue(self._each_instance(request, a, "resume"))

    def _cmd_kill(self, request: p.Request) -> None:
        a = self._app(request.kwargs)
        if a.row.status in ("Killed", "Refused"):
            raise p.ProtocolError(p.BAD_STATE, f"application {a.row.token} is "
                                  f"already {a.row.status}")
        self._set_status(a, "Killed")  # durable first: a restart kills what is left
        self._enqueue(self._each_instance(request, a, "kill"))

    def _set_status(self, a: _App, status: str, reason: Optional[str] = None) -> None:
        a.row.status, a.row.reason = status, reason
        self.store.set_app_status(a.row.token, status, reason)
        self._event("application", phase=status.lower(), token=a.row.token,
                    name=a.row.name, reason=reason)

    def _each_instance(self, request: p.Request, a: _App, what: str) -> Generator:
        """Pause, resume or kill every instance of an application (one job)."""
        rows = [r for r in self.rows.values() if r.token == a.row.token]
        futures, names = [], []
        for r in rows:
            if r.engine is None or r.status in ("ended", "new"):
                continue
            try:
                futures.append(getattr(self.dispatcher, f"{what}_code")(r.instance_id))
                names.append(r)
            except DispatcherError as exc:
                self._event("action", kind=what, instance=r.instance_id, ok=False,
                            error=str(exc))
        outcomes = yield gather(self.clock.create_future, futures)
        failed = []
        for r, (ok, value) in zip(names, outcomes):
            if ok:
                r.status = {"pause": "paused", "resume": "running", "kill": "ended"}[what]
            else:
                failed.append({"instance": r.instance_id, "error": _why(value)})
        if what == "kill":
            self.store.drop_instances(a.row.token)
            for r in rows:
                self.rows.pop(r.key, None)
        else:
            self.store.put_instances(rows)
        if what == "pause" and self.config.checkpoint_s:
            yield from self._checkpoint(rows)  # their paused state, for a recovery
        self._event("application", phase=f"{what}-done", token=a.row.token, failed=failed)
        summary = self._app_summary(a)
        summary["failed"] = failed
        if what == "kill":
            summary["app"] = a.row.name
        self._answer(request, summary)
        self._publish_state()
        if failed:
            self._timer("retry", self.config.retry_s, lambda: self.trigger("retry"))

    def _app_summary(self, a: _App) -> dict:
        return {"token": a.row.token, "name": a.row.name, "status": a.row.status,
                "reason": a.row.reason,
                "instances": {r.key: {"id": r.instance_id, "engine": r.engine,
                                      "status": r.status}
                              for r in self.rows.values() if r.token == a.row.token}}
