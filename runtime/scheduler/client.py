"""``SchedulerClient``: the scheduler's commands for scripts, tests and the CLI.

Like :class:`~runtime.gfs.remote.GfsClient`, it runs on any transport and clock: each
method returns the clock's native future (``await`` it in real time, ``yield`` it in a
SimPy process), completed with the reply's payload, a :class:`~runtime.rpc.RemoteError`
(``code`` is ``unplaceable``, ``not_found``, ``bad_state``, ``bad_request``...) or a
:class:`~runtime.rpc.RequestTimeout`.

``submit`` picks the application's token itself and sends it along, so a submission
resent after a lost reply (or to a standby that just took over) is the same
application, never a second copy.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .. import protocol as p
from ..clock import Clock
from ..rpc import Requester
from ..transport import Transport
from .appfile import application_to_dict, load_application
from .model import Application
from .service import DEFAULT_ID


class SchedulerClient:
    def __init__(self, transport: Transport, clock: Clock, scheduler_id: str = DEFAULT_ID,
                 timeout: float = 30.0, client_id: Optional[str] = None,
                 new_id: Optional[Callable[[], str]] = None) -> None:
        #: makes application tokens (a simulation passes its world's seeded ids, so the
        #: same seed gives the same tokens, instance ids and CSVs)
        self.new_id = new_id or (lambda: uuid.uuid4().hex)
        self.transport = transport
        self.clock = clock
        self.scheduler_id = p.check_name("scheduler id", scheduler_id)
        self.client_id = p.check_name("client id", client_id or
                                      f"sched-client-{uuid.uuid4().hex[:12]}")
        self._requester = Requester(transport, clock, f"{self.client_id}/reply",
                                    timeout=timeout)

    def request(self, ctrl: str, kwargs: Optional[dict] = None,
                timeout: Optional[float] = None) -> Any:
        return self._requester.request(f"{self.scheduler_id}/cmd", ctrl, kwargs or {},
                                       timeout)

    def submit(self, app: Union[Application, dict, str, Path],
               token: Optional[str] = None, timeout: Optional[float] = None) -> Any:
        """Run an application (an :class:`Application`, its document, or a TOML/JSON
        file); the reply has its ``token``."""
        if isinstance(app, (str, Path)):
            app = load_application(app)
        doc = application_to_dict(app) if isinstance(app, Application) else dict(app)
        doc["token"] = token or self.new_id()[:8]
        return self.request("run_application", doc, timeout)

    def pause(self, token: str) -> Any:
        return self.request("pause_application", {"token": token})

    def resume(self, token: str) -> Any:
        return self.request("resume_application", {"token": token})

    def kill(self, token: str) -> Any:
        return self.request("kill_application", {"token": token})

    def status(self, token: Optional[str] = None) -> Any:
        return self.request("status", {"token": token} if token else {})

    def report(self) -> Any:
        return self.request("report")

    def close(self, reason: str = "scheduler client closed") -> None:
        self._requester.close(reason)
