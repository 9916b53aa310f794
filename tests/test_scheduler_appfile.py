"""Application files (runtime/scheduler/appfile.py) and the problem built from them."""

from __future__ import annotations

import json

import pytest

from runtime.scheduler.appfile import (
    application_from_dict,
    application_to_dict,
    load_application,
)
from runtime.scheduler.model import BoardView, Component, SchedulerError
from runtime.scheduler.problem import problem_for

ETL = '''
name = "etl"
description = "parse, filter"

[[components]]
name = "parse"
source = "parse.py"
count = 2
memory_mb = 30
cpu = 0.2
device = "beaglebone-black"
capabilities = ["camera", "gpio"]
pin = "b3"
anti_affinity = true
state_bytes = 20000

[[components]]
name = "filter"
code = """
things.subscribe("etl/parsed", lambda t, p: None)
"""
count = 3

[[flows]]
source = "parse"
target = "filter"
topic = "etl/parsed"
rate = 10
size = 300
'''


def write(tmp_path, text: str = ETL, program: str | None = "print('parse')\n"):
    if program is not None:
        (tmp_path / "parse.py").write_text(program)
    path = tmp_path / "etl.toml"
    path.write_text(text)
    return path


def test_a_toml_file_gives_every_field(tmp_path):
    app = load_application(write(tmp_path))
    assert app.name == "etl"
    parse, filt = app.components
    assert parse == Component(name="parse", source="print('parse')\n", count=2, memory_mb=30,
                              cpu=0.2, device="beaglebone-black",
                              capabilities=frozenset({"camera", "gpio"}), pin="b3",
                              anti_affinity=True, state_bytes=20000)
    assert filt.source.strip() == 'things.subscribe("etl/parsed", lambda t, p: None)'
    assert (filt.count, filt.memory_mb, filt.cpu, filt.anti_affinity) == (3, 40.0, 0.1, False)
    (flow,) = app.flows
    assert (flow.source, flow.target, flow.topic, flow.rate, flow.size) == \
        ("parse", "filter", "etl/parsed", 10.0, 300)


def test_the_json_document_round_trips(tmp_path):
    app = load_application(write(tmp_path))
    doc = json.loads(json.dumps(application_to_dict(app)))
    assert application_from_dict(doc) == app


def test_thingsjs_documents_are_accepted():
    app = application_from_dict({"name": "demo", "components": {
        "counter": {"code_name": "counter", "source": "print(1)", "count": 3,
                    "required_memory": 12},
        "idle": {"source": "pass"}}})
    assert [(c.name, c.source, c.count, c.memory_mb) for c in app.components] == \
        [("counter", "print(1)", 3, 12.0), ("idle", "pass", 1, 40.0)]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('count = 2', 'count = -1'), r"components\[0\] \('parse'\)\.count "
                                                     r"must be a whole number >= 0, got -1"),
    (lambda t: t.replace('count = 2', 'count = 1.5'), r"count must be a whole number"),
    (lambda t: t.replace('memory_mb = 30', 'memory_mb = -30'), r"memory_mb must be a number "
                                                               r">= 0, got -30"),
    (lambda t: t.replace('cpu = 0.2', 'cpu = "lots"'), r"cpu must be a number >= 0"),
    (lambda t: t.replace('cpu = 0.2', 'cpu = 0.2\ngpu = 1'),
     r"components\[0\]: unknown key\(s\) gpu; allowed: anti_affinity, capabilities"),
    (lambda t: t.replace('description', 'owner'), r"etl.toml: unknown key\(s\) owner"),
    (lambda t: t.replace('size = 300', 'size = 300\nqos = 1'), r"flows\[0\]: unknown key\(s\) "
                                                               r"qos"),
    (lambda t: t.replace('name = "filter"', 'name = "parse"'),
     r"components\[1\]\.name: duplicate component name 'parse'"),
    (lambda t: t.replace('target = "filter"', 'target = "store"'),
     r"flows\[0\]\.target: 'store' is not a component of this application \(components: "
     r"filter, parse\)"),
    (lambda t: t.replace('topic = "etl/parsed"', 'topic = "etl/+"'), r"flows\[0\]\.topic"),
    (lambda t: t.replace('name = "etl"', 'name = "a/b"'),
     r"etl.toml: name must be a non-empty name without '/'"),
    (lambda t: t.replace('name = "parse"', 'name = "p#"'), r"components\[0\]\.name must be"),
    (lambda t: t.replace('pin = "b3"', 'pin = ""'), r"\.pin must be a non-empty name"),
    (lambda t: t.replace('anti_affinity = true', 'anti_affinity = 1'),
     r"anti_affinity must be true or false"),
    (lambda t: t.replace('["camera", "gpio"]', '["camera", 3]'),
     r"capabilities must be a list of non-empty strings"),
    (lambda t: t.replace('source = "parse.py"', 'source = "missing.py"'),
     r"\('parse'\)\.source: no such file '.*missing.py'"),
    (lambda t: t.replace('source = "parse.py"', 'source = "parse.py"\ncode = "x"'),
     r"give exactly one of source \(a file\) and code"),
    (lambda t: t.replace('name = "etl"', 'name = "etl'), r"etl.toml: not valid TOML"),
    (lambda t: 'name = "etl"\n', r"components must be a non-empty list"),
])
def test_errors_name_the_file_the_field_and_what_is_allowed(tmp_path, change, message):
    path = write(tmp_path, change(ETL))
    with pytest.raises(SchedulerError, match=message) as err:
        load_application(path)
    assert str(err.value).startswith(str(path))


def test_a_missing_file_and_a_file_source_without_a_folder():
    with pytest.raises(SchedulerError, match=r"nowhere.toml: cannot read the application"):
        load_application("/nowhere.toml")
    with pytest.raises(SchedulerError, match=r"no folder to find it in: give the program "
                                             r"inline as code"):
        application_from_dict({"name": "a", "components": [{"name": "c", "source": "c.py"}]})
    with pytest.raises(SchedulerError, match=r"^application: an application must be a"):
        application_from_dict(["not", "a", "table"])


def test_the_problem_has_one_demand_per_instance_and_split_traffic(tmp_path):
    app = load_application(write(tmp_path))
    boards = [BoardView("b3", memory_mb=400, device="beaglebone-black",
                        capabilities=frozenset({"camera", "gpio"}))]
    problem = problem_for([app], boards, current={"etl/filter/0": "b3"})
    keys = [d.key for d in problem.demands]
    assert keys == ["etl/parse/0", "etl/parse/1", "etl/filter/0", "etl/filter/1",
                    "etl/filter/2"]
    parse0 = problem.demands[0]
    assert (parse0.memory_mb, parse0.cpu, parse0.device, parse0.pin, parse0.state_bytes,
            parse0.anti_affinity_group) == (30, 0.2, "beaglebone-black", "b3", 20000,
                                            "etl/parse")
    assert problem.demands[2].anti_affinity_group is None
    # each parse instance sends 10 * 300 B/s, shared by the 3 filter instances
    assert {(t.a, t.b): t.bytes_per_s for t in problem.traffic} == {
        (f"etl/filter/{j}", f"etl/parse/{i}"): 1000.0 for i in range(2) for j in range(3)}
    assert problem.current == {"etl/filter/0": "b3"}


def test_a_component_talking_to_itself_shares_among_the_others_and_names_are_unique():
    app = application_from_dict({"name": "g", "components": [
        {"name": "peer", "code": "", "count": 3}],
        "flows": [{"source": "peer", "target": "peer", "topic": "g/gossip", "rate": 2,
                   "size": 100}]})
    problem = problem_for([app], [])
    # each of 3 peers sends 200 B/s split over the 2 others: 100 each way, 200 per pair
    assert {(t.a, t.b): t.bytes_per_s for t in problem.traffic} == {
        ("g/peer/0", "g/peer/1"): 200.0, ("g/peer/0", "g/peer/2"): 200.0,
        ("g/peer/1", "g/peer/2"): 200.0}
    with pytest.raises(SchedulerError, match="two applications are called 'g'"):
        problem_for([app, app], [])
