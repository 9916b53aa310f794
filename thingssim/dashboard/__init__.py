"""``thingssim dashboard``: a web page to watch and steer a live fleet and to explore a
finished simulation run.

Layers, each testable without the one above it:

- :mod:`.state`: the fleet as the page sees it (engines, programs, bounded histories and
  console tails, action outcomes, scheduler events), fed by a Dispatcher's events; pure,
  no asyncio, no HTTP.
- :mod:`.results`: a results folder (``thingssim sim --out``, or an experiment's) read
  into the page's timeline, load series and latency histograms.
- :mod:`.live`: the actions (run, pause, resume, kill, migrate, spawn, applications,
  files) through the Dispatcher, SchedulerClient and GfsClient APIs, on any transport.
- :mod:`.auth`: who may look and act (loopback only, or a password; CSRF and DNS
  rebinding guards).
- :mod:`.app`: the Starlette application (JSON API, server-sent events, static files).
- :mod:`.cli`: the click command.
"""
