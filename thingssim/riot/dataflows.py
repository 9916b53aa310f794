"""RIoTBench's four dataflows as data: stages, the task each runs, and how they are wired.

A :class:`Dataflow` is a graph of :class:`Stage` s.  Each stage runs one task of
:mod:`runtime.riot.tasks` (built on the board by ``configure(task, properties, dataset,
read, **overrides)`` from the dataset's RIoTBench properties), reads the topics of its
input stages and publishes on its own, ``riot/<run id>/<stage>``.  A topic read by
several stages is a fan-out; a stage with several inputs is a fan-in.  The wiring follows
RIoTBench's Storm topologies (``dream-lab/riot-bench``, ``modules/storm/.../topo/apps``):

- **ETL** (``ETLTopology``): parse (split per observed field, as RIoTBench's ETL does)
  -> range filter -> Bloom filter -> interpolation -> join -> annotate -> CSV to SenML ->
  sink.  RIoTBench's MQTT publish bolt is the last stage's own publish.  FIT has no
  annotation table in RIoTBench's files, so its ETL has no annotate stage.
- **STATS** (``StatsWithVisualizationTopology``): parse -> {block window average, Kalman
  filter -> sliding linear regression, distinct approximate count, second order moment}
  -> accumulator -> plot -> sink.  The second order moment branch is not in the Storm
  topology; it is in RIoTBench's STATS task list (the paper) and in issue 11's.  The
  plot stage writes a PNG per window through the global file system (RIoTBench: an image
  per window uploaded to Azure blob storage).
- **TRAIN** (``IoTTrainTopology<DATASET>``): parse -> {multivariate linear regression
  training, decision-tree labelling (quantiles) -> decision-tree training} -> model
  store -> sink.  RIoTBench's timer spout and Azure table range query are replaced by
  the stream itself, which the trainers batch (``MODEL_UPDATE_FREQUENCY``), as ThingsJS's
  port does; the store stage writes each model to ``/riot/models/<DATASET>/<type>.json``
  in the global file system and publishes a model-updated notification (RIoTBench: blob
  upload, then MQTT publish).
- **PRED** (``IoTPredictionTopology<DATASET>``): parse -> {decision-tree classify, linear
  regression predict, block window average of the target} ; {predict, average} ->
  residual error; {classify, residual error} -> sink.  The two predictors subscribe to
  the model notifications and reload the model from the file system while they run
  (RIoTBench: MQTT subscribe spout, then blob download).  Their first models are
  trained before the run on the dataset's sample (:func:`initial_models`).

Files the properties name (schemas, annotation tables) are resolved to the copies
shipped in ``thingssim/riot/data`` (:func:`resolve_file`) and read by the programs from
the global file system (``/riot/data/<name>``), as ThingsJS's stages read theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from runtime.riot import tasks as riot_tasks
from runtime.riot.senml import parse_line

from .datasets import dataset_name, load_properties, resolve_file, sample_path

__all__ = ["FLOWS", "GRANT", "Dataflow", "Stage", "build", "initial_models", "resolve_file"]

FLOWS = ("ETL", "STATS", "TRAIN", "PRED")
#: global folder of everything the dataflows keep in the file system, and its grant:
#: every program named ``riot-*`` sees it as ``/riot``
SHARED = "/shared/riot"
GRANT = f"riot-*:{SHARED}:/riot:rw"


@dataclass(frozen=True)
class Stage:
    """One program of a dataflow.

    ``ids`` says which source ids an output derives from: ``"each"``, those of the input
    it was made from (the task carries the envelope along); ``"window"``, those of every
    input consumed since the stage's previous output.  ``role`` marks the stages that do
    I/O besides publishing: ``"store"`` (TRAIN: models to the file system),
    ``"predict"`` (PRED: reload models on notification), ``"plot"`` (STATS: PNGs).
    """

    name: str
    task: str | None
    inputs: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    ids: str = "each"
    role: str | None = None


@dataclass(frozen=True)
class Dataflow:
    """A dataflow for one dataset: its stages in topological order and its sink's inputs."""

    name: str
    dataset: str
    stages: tuple[Stage, ...]
    sink_inputs: tuple[str, ...]
    props: Mapping[str, str]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"{self.name} has no stage {name!r}; stages: "
                       f"{', '.join(s.name for s in self.stages)}")

    @property
    def names(self) -> list[str]:
        """Every program: the source, the stages, the sink."""
        return ["source", *(s.name for s in self.stages), "sink"]

    def code_name(self, name: str) -> str:
        """The program's code name (``riot-<flow>-<stage>``: the file-system grant's glob)."""
        return f"riot-{self.name.lower()}-{name.replace('_', '-')}"

    def files(self, stage: Stage) -> dict[str, bytes]:
        """The files a stage's task reads: property path -> content."""
        if stage.task is None:
            return {}
        asked: dict[str, bytes] = {}

        def read(path: str) -> bytes:
            asked[path] = resolve_file(self.dataset, path)
            return asked[path]

        riot_tasks.configure(stage.task, self.props, self.dataset, read, **stage.overrides)
        return asked

    def model_dir(self) -> str:
        """Where TRAIN stores, and PRED reads, the dataset's models (a program's view)."""
        return f"/riot/models/{self.dataset}"

    def specs(self, run: str, *, report_s: float = 1.0, plot_size: tuple[int, int] = (320, 160),
              model_topic: str | None = None) -> dict[str, dict[str, Any]]:
        """The ``SPEC`` of every stage's program (:func:`thingssim.riot.programs.task_program`).

        ``model_topic``: where TRAIN's notifications go and PRED listens (default
        ``riot/models/<DATASET>``, shared by runs, so a TRAIN run updates a PRED run).
        """
        model_topic = model_topic or f"riot/models/{self.dataset}"
        specs = {}
        for stage in self.stages:
            spec: dict[str, Any] = {
                "run": run, "flow": self.name, "stage": stage.name,
                "inputs": [topic(run, i) for i in stage.inputs],
                "output": topic(run, stage.name), "ids": stage.ids,
                "stats_topic": f"riot/{run}/stats/{stage.name}",
                "ready_topic": f"riot/{run}/ready", "report_s": report_s,
                "task": None, "files": {}}
            if stage.task is not None:
                spec["task"] = {"name": stage.task, "dataset": self.dataset,
                                "props": dict(self.props), "overrides": dict(stage.overrides)}
                spec["files"] = {path: f"/riot/data/{os.path.basename(path)}"
                                 for path in self.files(stage)}
            if stage.role == "store":
                spec.update(store_dir=self.model_dir(), notify_topic=model_topic)
            elif stage.role == "predict":
                cls = riot_tasks.TASKS[stage.task]
                spec.update(model_topic=model_topic, analytic_type=cls.analytic_type)
            elif stage.role == "plot":
                spec.update(plot_dir=f"/riot/plots/{run}", plot_size=list(plot_size))
            specs[stage.name] = spec
        return specs

    def gfs_files(self) -> dict[str, bytes]:
        """What the file system must hold before the run (global paths -> bytes): the
        files tasks read, and PRED's first models."""
        out: dict[str, bytes] = {}
        for stage in self.stages:
            for path, data in self.files(stage).items():
                out[f"{SHARED}/data/{os.path.basename(path)}"] = data
        if self.name == "PRED":
            for kind, model in initial_models(self.dataset, self.props).items():
                out[f"{SHARED}/models/{self.dataset}/{kind}.json"] = model.encode()
        return out


def topic(run: str, stage: str) -> str:
    """The topic a stage (or ``source``) publishes its tuples on."""
    return f"riot/{run}/{stage}"


# ---------------------------------------------------------------------------- building
def build(flow: str, dataset: str = "TAXI", props: Mapping[str, str] | None = None) -> Dataflow:
    """The dataflow ``flow`` (ETL, STATS, TRAIN, PRED) for ``dataset``, configured by
    RIoTBench's properties for it (or ``props``)."""
    name = flow.upper()
    if name not in FLOWS:
        raise ValueError(f"unknown dataflow {flow!r}; known: {', '.join(FLOWS)}")
    ds = dataset_name(dataset)
    props = dict(load_properties(ds) if props is None else props)
    stages = _BUILDERS[name](ds)
    sinks = _SINKS[name](ds)
    return Dataflow(name, ds, tuple(stages), tuple(sinks), props)


def _etl(ds: str) -> list[Stage]:
    stages = [
        Stage("parse", "SenMLParse", ("source",), {"split": True}),
        Stage("range_filter", "RangeFilter", ("parse",)),
        Stage("bloom_filter", "BloomFilterCheck", ("range_filter",)),
        Stage("interpolation", "Interpolation", ("bloom_filter",)),
        Stage("join", "Join", ("interpolation",)),
    ]
    last = "join"
    if ds != "FIT":  # RIoTBench ships no annotation table for FIT
        stages.append(Stage("annotate", "Annotate", ("join",)))
        last = "annotate"
    stages.append(Stage("csv_to_senml", "CsvToSenML", (last,)))
    return stages


def _stats(ds: str) -> list[Stage]:
    return [
        Stage("parse", "SenMLParse", ("source",)),
        Stage("block_window_average", "BlockWindowAverage", ("parse",), ids="window"),
        Stage("kalman_filter", "KalmanFilter", ("parse",)),
        Stage("sliding_linear_regression", "SimpleLinearRegression", ("kalman_filter",),
              ids="window"),
        Stage("distinct_approx_count", "DistinctApproxCount", ("parse",)),
        Stage("second_order_moment", "SecondOrderMoment", ("parse",)),
        Stage("accumulator", "Accumulator",
              ("block_window_average", "sliding_linear_regression", "distinct_approx_count",
               "second_order_moment"), ids="window"),
        Stage("plot", "Plot", ("accumulator",), role="plot"),
    ]


def _train(ds: str) -> list[Stage]:
    return [
        Stage("parse", "SenMLParse", ("source",)),
        Stage("mlr_train", "MultiLinearRegressionTrain", ("parse",), ids="window"),
        Stage("annotate_dtclass", "AnnotateDTClass", ("parse",)),
        Stage("dt_train", "DecisionTreeTrain", ("annotate_dtclass",), ids="window"),
        Stage("model_store", None, ("mlr_train", "dt_train"), role="store"),
    ]


def _pred(ds: str) -> list[Stage]:
    target = riot_tasks.TRAIN_COLUMNS[ds][-1]
    return [
        Stage("parse", "SenMLParse", ("source",)),
        Stage("dt_classify", "DecisionTreeClassify", ("parse",), role="predict"),
        Stage("mlr_predict", "MultiLinearRegressionPredict", ("parse",), role="predict"),
        # one running average of the target, not one per sensor: the error needs one
        Stage("average", "BlockWindowAverage", ("parse",), {"fields": [target],
                                                             "key_field": None},
              ids="window"),
        Stage("residual_error", "ResidualError", ("mlr_predict", "average")),
    ]


_BUILDERS: dict[str, Callable[[str], list[Stage]]] = {
    "ETL": _etl, "STATS": _stats, "TRAIN": _train, "PRED": _pred}
_SINKS: dict[str, Callable[[str], list[str]]] = {
    "ETL": lambda ds: ["csv_to_senml"], "STATS": lambda ds: ["plot"],
    "TRAIN": lambda ds: ["model_store"], "PRED": lambda ds: ["dt_classify", "residual_error"]}


def initial_models(dataset: str, props: Mapping[str, str] | None = None,
                   lines: list[str] | None = None) -> dict[str, str]:
    """PRED's first models (``{"MLR": json, "DTC": json}``), trained before a run by
    TRAIN's own tasks on ``lines`` (default: the dataset's sample) in one batch each."""
    ds = dataset_name(dataset)
    props = dict(load_properties(ds) if props is None else props)
    if lines is None:
        with open(sample_path(ds), encoding="utf-8") as f:
            lines = [line for line in f if line.strip()]
    rows = []
    for line in lines:
        timestamp, fields = parse_line(line)
        rows.append({"timestamp": float(timestamp), **fields})
    n = len(rows)
    mlr = riot_tasks.configure("MultiLinearRegressionTrain", props, ds, batch_size=n)
    label = riot_tasks.configure("AnnotateDTClass", props, ds, batch_size=n)
    tree = riot_tasks.configure("DecisionTreeTrain", props, ds, batch_size=n)
    models: dict[str, str] = {}
    for row in rows:
        for out in mlr(row):
            models["MLR"] = out["model"]
        for labelled in label(row):
            for out in tree(labelled):
                models["DTC"] = out["model"]
    missing = {"MLR", "DTC"} - set(models)
    if missing:
        raise ValueError(f"{ds}: could not train {', '.join(sorted(missing))} on {n} lines")
    return models
