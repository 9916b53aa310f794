"""Deterministic synthetic RIoTBench streams of any length, fitted to the shipped samples.

``generate("TAXI", n, seed)`` yields ``n`` SenML CSV lines with the dataset's real schema
(the sample's fields, units and number spelling, :func:`thingssim.riot.datasets.schema`).
Same ``seed``, same bytes, whatever ``PYTHONHASHSEED`` (with the same numpy: numpy does
not promise its ``Generator`` streams across releases); ``generate(ds, n, seed)`` is a
prefix of ``generate(ds, n + k, seed)``, since rows are drawn in fixed blocks.

How values are drawn (the fitted figures are the ``*_MODEL`` constants below; ``fit(ds)``
recomputes them from the sample, and the tests check that it gives these constants):

* Numeric fields that move together are drawn through a **Gaussian copula**: a vector of
  correlated standard normals (the correlation of the sample's normal scores, that is of
  ``Phi^-1((rank - 1/2) / n)`` with ties sharing their mean rank), each mapped through
  its field's marginal inverse CDF, then rounded to the field's grid (the step every
  sample value is a multiple of: 60 s for TAXI trip times, $0.50 for fares).  So each
  field keeps its own distribution and the pairs keep their rank correlation (TAXI fare
  vs. distance: 0.87 in normal scores).  Normal scores are scaled to unit variance, since
  ties (53% of SYS light readings are 0) shrink it and the latent must be standard.
* Marginals, per field, whichever fits (two-sample KS p-values of 5,000 draws against the
  sample are in ``tests/test_riot_data.py``): ``lognormal`` (an atom at 0 of mass ``p0``,
  then ``exp(N(mu, sigma))`` in the field's unit, maximum-likelihood figures of the
  positive values: TAXI trip distance), ``quantiles`` (the sample's quantiles at 2%
  steps, interpolated linearly: TAXI trip time, whose whole minutes a lognormal fits
  only at KS p 0.01-0.2, the fares with their $52 JFK flat rate, and the multi-city SYS
  readings, which no single family fits), or ``discrete`` (value -> probability, for
  fields with a few values: surcharge, MTA tax, tolls, the FIT label).
* TAXI: trip time, distance, fare and tolls through the copula; tip by payment type
  (cash tips are never recorded: 0; a card tip is 0 with the sample's probability,
  otherwise the fare times a ratio drawn from the sample's card-tip ratios, rounded to
  whole dollars as often as the sample's are, else to cents); ``total_amount`` is
  ``fare + surcharge + mta_tax + tip + tolls`` exactly, as in every sample line;
  taxi ids from the 9,302 ids of ``taxi-metadata-fulldataset.txt`` (so Annotate finds
  every one), hack licenses from the sample's; pickups near the sample's pickups, the
  dropoff a detour-corrected straight line of ``trip_distance`` miles away;
  ``pickup_datetime`` is the base time read as IST minus the trip time (the relation
  every sample line has: ``data/README.md``).
* SYS: each reading comes from one of the sample's 788 sensors (chosen as often as the
  sample has them) at its recorded coordinates; the copula's latent vector is
  ``beta * z_lat + w`` where ``z_lat`` is the normal score of the sensor's ``|latitude|``
  (temperature falls from Singapore to Geneva) and ``w`` mixes a per-sensor part with a
  per-reading part, in the proportion of the sample's intra-sensor correlation (its 212
  repeated readings: about 1 for all but dust, 0.91): the values are by sensor.  The
  per-sensor part drifts from block to block (``SENSOR_BLOCK_CORR``), an assumption:
  the one-minute sample shows none.
* FIT: the sample holds only 3 distinct readings (40 ms of subject8 at rest, label 0), so
  no family can be fitted: rows walk a sticky Markov chain over the 3 recorded readings
  (a posture held for a while); a channel whose 3 recorded values differ gets a smooth
  AR(1) jitter of a tenth of the smallest gap between them, rounded to the sample's
  decimals, and one with a repeated value keeps the recorded values exactly (a jitter
  would split its 2/3 step, which the KS test rightly rejects).
* Timestamps: TAXI one-minute steps with a number of lines per minute drawn from the
  sample's histogram; SYS one-second steps likewise; FIT every 20 ms (50 Hz); with
  ``rate``, line ``i`` is stamped ``start_ms + floor(i * 1000 / rate)``.

The generator runs on the experiment host (numpy), not on boards.
"""

from __future__ import annotations

import datetime as _dt
import math
from statistics import NormalDist
from typing import Any, Iterator

import numpy as np

from runtime.riot.senml import format_line, parse_line

from .datasets import dataset_name, load_metadata, sample_path, schema

__all__ = ["MODELS", "fit", "generate", "sample_rows"]

#: rows are drawn in blocks of this many, so a shorter stream is a prefix of a longer one
BLOCK = 1024
#: quantile-table knots: the sample's quantiles at these probabilities (2% steps)
KNOTS = 51
#: the base timestamp of TAXI lines is IST wall-clock time (RIoTBench was built in India)
IST = _dt.timezone(_dt.timedelta(hours=5, minutes=30))
#: straight-line distance = trip distance / DETOUR (a typical Manhattan grid detour)
DETOUR = 1.3
MILES_PER_DEGREE_LAT = 69.0
#: pickups are the sample's (non-zero) pickups moved by N(0, this) degrees
PICKUP_JITTER_DEG = 0.002
#: FIT: probability of staying on the same recorded reading, AR(1) coefficient of jitter
FIT_STAY = 0.9
FIT_AR = 0.9
#: SYS: correlation of a sensor's own part from one block of readings to the next (a block
#: is about a minute at the sample's pace; readings of one sensor are identical within the
#: sample's one minute, so this drift, a 10-minute correlation time, is an assumption)
SENSOR_BLOCK_CORR = 0.9

# ----------------------------------------------------------------------------------------
# The fitted figures.  Generated by ``fit(ds)`` on the shipped samples (see its docstring)
# and pasted here rounded to 6 significant digits; ``tests/test_riot_data.py`` checks that
# fit() still gives them.
# ----------------------------------------------------------------------------------------

# fmt: off
TAXI_MODEL: dict[str, Any] = (
    {'copula_fields': ['trip_time_in_secs', 'trip_distance', 'fare_amount', 'tolls_amount'],
     'corr': [[1.0, 0.921124, 0.851667, 0.313982], [0.921124, 1.0, 0.866579, 0.397757],
              [0.851667, 0.866579, 1.0, 0.383447], [0.313982, 0.397757, 0.383447, 1.0]],
     'marginals': {'trip_time_in_secs': {'kind': 'quantiles',
                                         'q': [0.0, 60.0, 120.0, 180.0, 180.0, 180.0, 240.0, 240.0,
                                               240.0, 300.0, 300.0, 300.0, 360.0, 360.0, 360.0,
                                               420.0, 420.0, 420.0, 420.0, 480.0, 480.0, 480.0,
                                               480.0, 540.0, 540.0, 600.0, 600.0, 600.0, 660.0,
                                               660.0, 720.0, 720.0, 780.0, 780.0, 840.0, 900.0,
                                               900.0, 960.0, 1020.0, 1020.0, 1080.0, 1140.0,
                                               1140.0, 1200.0, 1260.0, 1380.0, 1440.0, 1560.0,
                                               1680.0, 1860.0, 3060.0],
                                         'step': 60.0},
                   'trip_distance': {'kind': 'lognormal',
                                     'p0': 0.012,
                                     'mu': 1.09148,
                                     'sigma': 0.971435,
                                     'scale': 1.0,
                                     'step': 0.01},
                   'fare_amount': {'kind': 'quantiles',
                                   'q': [2.5, 4.0, 4.48, 4.5, 5.0, 5.0, 5.5, 5.5, 6.0, 6.0, 6.5,
                                         6.5, 7.0, 7.5, 7.5, 7.5, 8.0, 8.5, 8.5, 9.0, 9.0, 9.5,
                                         10.0, 10.5, 10.5, 11.0, 11.5, 12.0, 12.5, 13.5, 14.0,
                                         15.0, 15.5, 16.0, 16.5, 17.5, 18.5, 19.63, 21.0, 22.0,
                                         23.5, 24.5, 26.0, 28.0, 29.5, 32.55, 38.54, 49.53, 52.0,
                                         52.0, 165.0],
                                   'step': 0.5},
                   'tolls_amount': {'kind': 'discrete',
                                    'values': [0.0, 2.2, 4.8, 9.6, 10.25],
                                    'p': [0.922, 0.001, 0.075, 0.001, 0.001]}},
     'surcharge': {'kind': 'discrete', 'values': [0.0, 0.5], 'p': [0.05, 0.95]},
     'mta_tax': {'kind': 'discrete', 'values': [0.0, 0.5], 'p': [0.003, 0.997]},
     'p_card': 0.489,
     'card_p_no_tip': 0.0470348,
     'card_tip_ratio': {'kind': 'quantiles',
                        'q': [0.0384615, 0.0593583, 0.0738544, 0.0909091, 0.0969315, 0.105263,
                              0.114026, 0.125, 0.133333, 0.136364, 0.148148, 0.153846, 0.166667,
                              0.181818, 0.192443, 0.2, 0.2, 0.201927, 0.203022, 0.203491, 0.203774,
                              0.204, 0.204444, 0.204762, 0.205587, 0.206155, 0.207094, 0.208,
                              0.208696, 0.209524, 0.210526, 0.211307, 0.212206, 0.2125, 0.213524,
                              0.215385, 0.216667, 0.218182, 0.22, 0.222222, 0.25, 0.254841,
                              0.257248, 0.259926, 0.263326, 0.266667, 0.272727, 0.306122, 0.313826,
                              0.333333, 2.0],
                        'step': 0.0},
     'card_p_whole_dollar': 0.332618,
     'p_zero_coordinates': 0.02,
     'time': {'step_ms': 60000,
              'sizes': [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
              'p': [0.164234, 0.233577, 0.164234, 0.120438, 0.105839, 0.0729927, 0.0839416,
                    0.0218978, 0.0218978, 0.0109489],
              'start_ms': 1358101800000}}
)

SYS_MODEL: dict[str, Any] = (
    {'copula_fields': ['temperature', 'humidity', 'light', 'dust', 'airquality_raw'],
     'beta_abs_latitude': [-0.464618, -0.491601, -0.312851, 0.107946, -0.0300542],
     'resid_cov': [[0.784915, 0.0227369, -0.0142895, -0.105653, 0.187674],
                   [0.0227369, 0.759088, -0.066015, 0.107814, 0.0369532],
                   [-0.0142895, -0.066015, 0.903024, -0.0505571, 0.00468022],
                   [-0.105653, 0.107814, -0.0505571, 0.989337, -0.156903],
                   [0.187674, 0.0369532, 0.00468022, -0.156903, 1.0001]],
     'intra_sensor_corr': [0.999, 0.999, 0.999, 0.905929, 0.981837],
     'marginals': {'temperature': {'kind': 'quantiles',
                                   'q': [-8.1, -2.304, 1.792, 3.394, 4.0, 5.2, 6.0, 7.2, 8.0, 8.6,
                                         9.4, 9.9, 10.876, 11.6, 12.1, 13.1, 14.0, 16.566, 18.564,
                                         19.8, 20.7, 21.658, 22.3, 23.0, 23.6, 23.9, 24.4, 24.946,
                                         25.5, 26.4, 26.8, 27.1, 27.3, 27.6, 27.8, 27.9, 28.1,
                                         28.3, 28.5, 28.822, 29.2, 29.6, 30.2, 30.7, 31.424, 32.2,
                                         33.1, 33.8, 35.212, 36.8, 40.3],
                                   'step': 0.1},
                   'humidity': {'kind': 'quantiles',
                                'q': [12.0, 18.498, 21.276, 24.194, 27.0, 30.29, 31.888, 33.2,
                                      34.3, 35.082, 36.3, 37.278, 37.876, 39.0, 39.5, 40.24, 40.8,
                                      41.6, 42.2, 43.7, 44.6, 45.358, 46.056, 46.7, 47.3, 48.0,
                                      48.8, 49.5, 50.344, 51.3, 52.44, 53.138, 53.936, 55.1, 55.7,
                                      56.8, 57.9, 59.652, 61.4, 62.822, 64.1, 65.2, 66.316, 67.614,
                                      69.112, 70.4, 72.1, 73.106, 76.5, 81.114, 99.9],
                                'step': 0.1},
                   'light': {'kind': 'quantiles',
                             'q': [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                   0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                                   0.0, 14.0, 24.0, 40.0, 68.0, 110.0, 130.8, 154.0, 195.92, 244.6,
                                   270.0, 294.0, 374.48, 488.64, 561.6, 625.0, 704.16, 780.42,
                                   890.0, 1129.4, 1372.28, 1711.46, 2264.8, 3389.38, 9800.0],
                             'step': 1.0},
                   'dust': {'kind': 'quantiles',
                            'q': [-1.0, 24.6006, 64.9616, 92.1472, 131.052, 157.973, 197.936,
                                  229.653, 256.372, 288.561, 323.4, 356.523, 386.029, 408.246,
                                  439.5, 471.806, 490.94, 525.854, 566.626, 594.881, 626.53,
                                  653.378, 689.157, 734.689, 772.425, 798.11, 847.034, 898.283,
                                  942.48, 985.01, 1077.28, 1125.0, 1175.77, 1253.89, 1306.05,
                                  1374.74, 1429.49, 1513.63, 1593.42, 1705.88, 1785.67, 1890.72,
                                  1979.68, 2109.54, 2251.07, 2399.24, 2639.89, 3007.65, 3361.01,
                                  4099.66, 10427.9],
                            'step': 0.01},
                   'airquality_raw': {'kind': 'quantiles',
                                      'q': [4.0, 10.0, 12.0, 13.0, 14.0, 15.0, 15.0, 16.0, 16.0,
                                            17.0, 17.0, 18.0, 18.0, 19.0, 19.0, 20.0, 20.0, 21.0,
                                            21.0, 22.0, 22.0, 22.0, 23.0, 23.0, 23.0, 24.0, 24.0,
                                            24.0, 25.0, 25.0, 26.0, 26.0, 27.0, 27.0, 28.0, 29.0,
                                            29.0, 30.0, 30.0, 31.0, 32.0, 32.18, 33.0, 35.0, 37.0,
                                            39.0, 41.0, 47.0, 56.04, 92.36, 970.0],
                                      'step': 1.0}},
     'time': {'step_ms': 1000,
              'sizes': [15, 16, 17, 18, 19, 20],
              'p': [0.118644, 0.338983, 0.254237, 0.220339, 0.0508475, 0.0169492],
              'start_ms': 1422748800000}}
)

FIT_MODEL: dict[str, Any] = (
    {'channels': ['acc_chest_x', 'acc_chest_y', 'acc_chest_z', 'ecg_lead_1', 'ecg_lead_2',
                  'acc_ankle_x', 'acc_ankle_y', 'acc_ankle_z', 'gyro_ankle_x', 'gyro_ankle_y',
                  'gyro_ankle_z', 'magnetometer_ankle_x', 'magnetometer_ankle_y',
                  'magnetometer_ankle_z', 'acc_arm_x', 'acc_arm_y', 'acc_arm_z', 'gyro_arm_x',
                  'gyro_arm_y', 'gyro_arm_z', 'magnetometer_arm_x', 'magnetometer_arm_y',
                  'magnetometer_arm_z'],
     'readings': [[-9.2997, -0.671, 2.2449, 0.03349, 0.025118, -0.56999, -9.8471, -1.5397,
                   -0.14657, -0.16886, 0.76228, -0.36545, 0.37063, 0.1479, -2.1972, -9.486,
                   -0.5993, -0.69412, -0.28131, -0.42457, 0.54751, 0.89116, -1.081],
                  [-9.3296, -0.6898, 2.0748, 0.062794, 0.037677, -0.41798, -9.7781, -1.5764,
                   -0.14657, -0.16886, 0.76228, -0.54617, 0.0054617, 0.15517, -1.9841, -9.6963,
                   -0.63065, -0.6902, -0.2731, -0.44181, 0.0035208, 0.35208, -1.0865],
                  [-9.3448, -0.94215, 2.0415, 0.07954, 0.025118, -0.15363, -9.7191, -1.6125,
                   -0.16141, -0.17073, 0.77603, -0.36545, 0.37063, 0.1479, -2.1782, -9.5554,
                   -0.54027, -0.6902, -0.2731, -0.44181, 0.18122, 0.16887, -1.0811]],
     'jitter': [0.00152, 0.00188, 0.00333, 0.0016746, 0.0, 0.015201, 0.0059, 0.00361, 0.0, 0.0,
                0.0, 0.0, 0.0, 0.0, 0.0019, 0.00694, 0.003135, 0.0, 0.0, 0.0, 0.0177699, 0.018321,
                1e-05],
     'decimals': [4, 5, 4, 6, 6, 5, 4, 4, 5, 5, 5, 5, 7, 5, 4, 4, 5, 5, 5, 5, 7, 5, 4],
     'label': {'kind': 'discrete', 'values': [0.0], 'p': [1.0]},
     'subjects': ['subject8'],
     'time': {'step_ms': 20, 'start_ms': 1417890600000}}
)
# fmt: on

MODELS: dict[str, dict[str, Any]] = {  # @@MODELS@@
    "TAXI": TAXI_MODEL, "SYS": SYS_MODEL, "FIT": FIT_MODEL}

_NORMAL = NormalDist()
_phi = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)), otypes=[float])
_phi_inv = np.vectorize(_NORMAL.inv_cdf, otypes=[float])


def sample_rows(dataset: str) -> list[tuple[int, dict[str, Any]]]:
    """The parsed lines of the dataset's shipped sample, in file order."""
    with open(sample_path(dataset), encoding="utf-8") as f:
        return [parse_line(line) for line in f if line.strip()]


# --- marginals --------------------------------------------------------------------------


def _grid(values: np.ndarray) -> float:
    """The coarsest step in (60, 1, 0.5, 0.1, ..., 1e-6) that 99% of ``values`` sit on."""
    for step in (60.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001, 1e-4, 1e-5, 1e-6):
        on = np.abs(values / step - np.round(values / step)) < 1e-6
        if on.mean() >= 0.99:
            return step
    return 0.0


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if 0 < step < 1 else 0


def _on_grid(x: np.ndarray, step: float) -> np.ndarray:
    if not step:
        return x
    return np.round(np.round(x / step) * step, _decimals(step))


def _fit_marginal(values: np.ndarray, kind: str) -> dict[str, Any]:
    """A marginal of ``kind`` fitted to ``values`` (see the module docstring)."""
    step = _grid(values)
    if kind == "discrete":
        vals, counts = np.unique(values, return_counts=True)
        return {"kind": kind, "values": vals.tolist(), "p": (counts / counts.sum()).tolist()}
    if kind == "lognormal":
        positive = values[values > 0]
        logs = np.log(positive / (step if step >= 60 else 1.0))
        return {
            "kind": kind,
            "p0": float(np.mean(values <= 0)),
            "mu": float(logs.mean()),
            "sigma": float(logs.std()),
            "scale": step if step >= 60 else 1.0,
            "step": step,
        }
    knots = np.quantile(values, np.linspace(0.0, 1.0, KNOTS))
    return {"kind": "quantiles", "q": knots.tolist(), "step": step}


def _from_uniform(m: dict[str, Any], u: np.ndarray) -> np.ndarray:
    """The marginal's inverse CDF at ``u`` in (0, 1), on its grid."""
    kind = m["kind"]
    if kind == "discrete":
        cum = np.cumsum(m["p"])
        idx = np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)
        return np.asarray(m["values"], dtype=float)[idx]
    if kind == "lognormal":
        p0 = m["p0"]
        rest = np.clip((u - p0) / (1.0 - p0), 1e-12, 1 - 1e-12)
        x = np.exp(m["mu"] + m["sigma"] * _phi_inv(rest)) * m["scale"]
        x = np.maximum(_on_grid(x, m["step"]), m["step"])
        return np.where(u < p0, 0.0, x)
    q = np.asarray(m["q"], dtype=float)
    return _on_grid(np.interp(u, np.linspace(0.0, 1.0, len(q)), q), m["step"])


# --- correlation ------------------------------------------------------------------------


def _normal_scores(x: np.ndarray) -> np.ndarray:
    """``Phi^-1((rank - 1/2) / n)``, ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    mean_rank = (sums / counts)[inverse]
    return _phi_inv((mean_rank - 0.5) / len(x))


def _unit_scores(x: np.ndarray) -> np.ndarray:
    """Normal scores scaled to unit variance (ties, as the 53% of SYS light readings at 0,
    shrink it): the latent must be standard normal for its uniforms to be uniform."""
    z = _normal_scores(x)
    return z / z.std()


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    """Clip negative eigenvalues so the matrix has a Cholesky factor; unit diagonal."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    c = (v * np.maximum(w, 1e-6)) @ v.T
    d = np.sqrt(np.diag(c))
    return c / np.outer(d, d)


def _cholesky(corr: list[list[float]]) -> np.ndarray:
    return np.linalg.cholesky(_nearest_correlation(np.asarray(corr, dtype=float)))


# --- fitting ----------------------------------------------------------------------------


def _r6(x: Any) -> Any:
    """Round every float in a nested structure to 6 significant digits (for the constants)."""
    if isinstance(x, float):
        return float(f"{x:.6g}")
    if isinstance(x, dict):
        return {k: _r6(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_r6(v) for v in x]
    return x


def _step_counts(timestamps: list[int]) -> dict[str, Any]:
    """Lines per distinct timestamp (the last, possibly cut short, left out)."""
    values, counts = np.unique(np.asarray(timestamps), return_counts=True)
    per_step = counts[:-1] if len(counts) > 1 else counts
    sizes, freq = np.unique(per_step, return_counts=True)
    step = int(np.min(np.diff(values))) if len(values) > 1 else 1000
    return {
        "step_ms": step,
        "sizes": sizes.tolist(),
        "p": (freq / freq.sum()).tolist(),
        "start_ms": int(values[0]),
    }


def fit(dataset: str) -> dict[str, Any]:
    """Recompute the dataset's model from its shipped sample (what ``MODELS`` holds).

    Deterministic (no random draws), numpy only; rounded to 6 significant digits.
    """
    name = dataset_name(dataset)
    rows = sample_rows(name)
    cols = {k: np.array([r[1][k] for r in rows]) for k in rows[0][1]}
    timestamps = [r[0] for r in rows]
    if name == "TAXI":
        model = _fit_taxi(cols, timestamps)
    elif name == "SYS":
        model = _fit_sys(cols, timestamps)
    else:
        model = _fit_fit(cols, timestamps)
    return _r6(model)


_TAXI_COPULA = {
    "trip_time_in_secs": "quantiles",
    "trip_distance": "lognormal",
    "fare_amount": "quantiles",
    "tolls_amount": "discrete",
}


def _fit_taxi(cols: dict[str, np.ndarray], timestamps: list[int]) -> dict[str, Any]:
    fields = list(_TAXI_COPULA)
    scores = np.array([_normal_scores(cols[f].astype(float)) for f in fields])
    card = cols["payment_type"] == "CRD"
    tips = cols["tip_amount"][card].astype(float)
    fares = cols["fare_amount"][card].astype(float)
    tipped = tips > 0
    ratios = tips[tipped] / fares[tipped]
    pickups = np.array(
        [cols["pickup_longitude"].astype(float), cols["pickup_latitude"].astype(float)]
    )
    return {
        "copula_fields": fields,
        "corr": np.corrcoef(scores).tolist(),
        "marginals": {f: _fit_marginal(cols[f].astype(float), k) for f, k in _TAXI_COPULA.items()},
        "surcharge": _fit_marginal(cols["surcharge"].astype(float), "discrete"),
        "mta_tax": _fit_marginal(cols["mta_tax"].astype(float), "discrete"),
        "p_card": float(card.mean()),
        "card_p_no_tip": float(1 - tipped.mean()),
        "card_tip_ratio": _fit_marginal(ratios, "quantiles"),
        "card_p_whole_dollar": float(np.mean(tips[tipped] % 1 == 0)),
        "p_zero_coordinates": float(np.mean((pickups == 0).any(axis=0))),
        "time": _step_counts(timestamps),
    }


_SYS_FIELDS = {
    "temperature": "quantiles",
    "humidity": "quantiles",
    "light": "quantiles",
    "dust": "quantiles",
    "airquality_raw": "quantiles",
}


def _fit_sys(cols: dict[str, np.ndarray], timestamps: list[int]) -> dict[str, Any]:
    fields = list(_SYS_FIELDS)
    z_lat = _unit_scores(np.abs(cols["latitude"].astype(float)))
    scores = np.array([_unit_scores(cols[f].astype(float)) for f in fields])
    beta = scores @ z_lat / (z_lat @ z_lat)
    resid = scores - np.outer(beta, z_lat)
    # intra-sensor correlation of the residuals: pairs of readings of one sensor
    source = cols["source"]
    first: dict[str, int] = {}
    pairs = []
    for i, s in enumerate(source):
        if s in first:
            pairs.append((first[s], i))
        else:
            first[s] = i
    a, b = np.array(pairs).T
    icc = [float(np.clip(np.corrcoef(resid[k, a], resid[k, b])[0, 1], 0, 0.999))
           for k in range(len(fields))]
    return {
        "copula_fields": fields,
        "beta_abs_latitude": beta.tolist(),
        "resid_cov": np.cov(resid).tolist(),
        "intra_sensor_corr": icc,
        "marginals": {f: _fit_marginal(cols[f].astype(float), k) for f, k in _SYS_FIELDS.items()},
        "time": _step_counts(timestamps),
    }


def _fit_fit(cols: dict[str, np.ndarray], timestamps: list[int]) -> dict[str, Any]:
    channels = [k for k in cols if k not in ("subjectId", "label")]
    table = np.array([cols[c].astype(float) for c in channels]).T
    readings, first = np.unique(table, axis=0, return_index=True)
    readings = table[np.sort(first)]  # in file order
    jitter = []
    for j in range(len(channels)):
        gaps = np.diff(np.unique(readings[:, j]))
        distinct = len(gaps) == len(readings) - 1
        jitter.append(float(gaps.min() / 10) if distinct and len(gaps) else 0.0)
    return {
        "channels": channels,
        "readings": readings.tolist(),
        "jitter": jitter,
        "decimals": [_max_decimals(cols[c]) for c in channels],
        "label": _fit_marginal(cols["label"].astype(float), "discrete"),
        "subjects": sorted(set(cols["subjectId"].tolist())),
        "time": {"step_ms": int(np.min(np.diff(np.unique(timestamps)))),
                 "start_ms": int(min(timestamps))},
    }


def _max_decimals(values: np.ndarray) -> int:
    """The most fraction digits any value has in its shortest spelling."""
    most = 0
    for v in values.astype(float):
        text = repr(float(v))
        if "e" not in text and "." in text:
            most = max(most, len(text.split(".")[1].rstrip("0")))
    return most


# --- generation -------------------------------------------------------------------------


def generate(
    dataset: str,
    n: int,
    seed: int,
    start_ms: int | None = None,
    rate: float | None = None,
) -> Iterator[str]:
    """``n`` SenML CSV lines of ``dataset`` (TAXI, SYS, FIT), deterministic for ``seed``.

    ``start_ms``: the first base timestamp (default: the sample's first).  ``rate``: lines
    per second of recorded time (default: the sample's own pacing, see the module doc).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    name = dataset_name(dataset)
    model = MODELS[name]
    sch = schema(name)
    rng = np.random.default_rng(seed)
    draw = {"TAXI": _TaxiDraw, "SYS": _SysDraw, "FIT": _FitDraw}[name](model, rng)
    clock = _Clock(model["time"], rng, start_ms, rate)
    emitted = 0
    while emitted < n:
        block = draw.block(BLOCK)
        stamps = clock.block(BLOCK)
        for ts, fields in zip(stamps, block):
            if emitted >= n:
                return
            draw.finish(fields, ts)
            yield format_line(ts, fields, sch)
            emitted += 1


class _Clock:
    """Base timestamps: the sample's step with its lines-per-step histogram, or a rate."""

    def __init__(self, time: dict[str, Any], rng: np.random.Generator,
                 start_ms: int | None, rate: float | None) -> None:
        self.rng = rng
        self.step = int(time["step_ms"])
        self.sizes = np.asarray(time.get("sizes", [1]), dtype=int)
        self.p = np.asarray(time.get("p", [1.0]), dtype=float)
        self.start = int(time["start_ms"] if start_ms is None else start_ms)
        self.rate = rate
        self.index = 0  # lines stamped so far
        self.current = self.start
        self.left = 0  # lines still due at ``current``

    def block(self, size: int) -> list[int]:
        if self.rate is not None:
            first = self.index
            self.index += size
            return [self.start + math.floor(i * 1000 / self.rate) for i in range(first, self.index)]
        counts = self.sizes[np.searchsorted(np.cumsum(self.p), self.rng.random(size),
                                            side="right").clip(0, len(self.p) - 1)]
        out: list[int] = []
        k = 0
        while len(out) < size:
            if self.left == 0:
                if self.index:
                    self.current += self.step
                self.left = int(counts[k % size])
                k += 1
            take = min(self.left, size - len(out))
            out.extend([self.current] * take)
            self.left -= take
            self.index += take
        return out


def _copula_uniforms(rng: np.random.Generator, chol: np.ndarray, size: int) -> np.ndarray:
    return _phi(chol @ rng.standard_normal((chol.shape[0], size)))


class _TaxiDraw:
    def __init__(self, model: dict[str, Any], rng: np.random.Generator) -> None:
        self.m = model
        self.rng = rng
        self.chol = _cholesky(model["corr"])
        self.taxis = sorted(load_metadata("TAXI"))
        rows = sample_rows("TAXI")
        self.licenses = sorted({f["hack_license"] for _, f in rows})
        pick = [(float(f["pickup_longitude"]), float(f["pickup_latitude"])) for _, f in rows]
        self.pickups = np.array(sorted(p for p in pick if p[0] and p[1]))

    def block(self, size: int) -> list[dict[str, Any]]:
        m, rng = self.m, self.rng
        u = _copula_uniforms(rng, self.chol, size)
        cols = {f: _from_uniform(m["marginals"][f], u[i])
                for i, f in enumerate(m["copula_fields"])}
        surcharge = _from_uniform(m["surcharge"], rng.random(size))
        mta = _from_uniform(m["mta_tax"], rng.random(size))
        card = rng.random(size) < m["p_card"]
        tipped = card & (rng.random(size) >= m["card_p_no_tip"])
        raw_tip = cols["fare_amount"] * _from_uniform(m["card_tip_ratio"], rng.random(size))
        whole = rng.random(size) < m["card_p_whole_dollar"]
        tip = np.where(whole, np.maximum(np.round(raw_tip), 1.0), np.round(raw_tip, 2))
        tip = np.where(tipped, tip, 0.0)
        total = np.round(cols["fare_amount"] + surcharge + mta + tip + cols["tolls_amount"], 2)
        taxi = rng.integers(0, len(self.taxis), size)
        license_ = rng.integers(0, len(self.licenses), size)
        origin = self.pickups[rng.integers(0, len(self.pickups), size)]
        origin = origin + rng.normal(0.0, PICKUP_JITTER_DEG, (size, 2))
        heading = rng.uniform(0.0, 2 * math.pi, size)
        zero = rng.random(size) < m["p_zero_coordinates"]
        straight = cols["trip_distance"] / DETOUR / MILES_PER_DEGREE_LAT
        dlat = straight * np.sin(heading)
        dlon = straight * np.cos(heading) / np.cos(np.radians(origin[:, 1]))
        out = []
        for i in range(size):
            if zero[i]:
                coords = ["0.000000"] * 4
            else:
                lon, lat = origin[i]
                to_lon, to_lat = lon + dlon[i], lat + dlat[i]
                coords = [f"{lon:.6f}", f"{lat:.6f}", f"{to_lon:.6f}", f"{to_lat:.6f}"]
            out.append({
                "taxi_identifier": self.taxis[taxi[i]],
                "hack_license": self.licenses[license_[i]],
                "pickup_datetime": "",
                "trip_time_in_secs": float(cols["trip_time_in_secs"][i]),
                "trip_distance": float(cols["trip_distance"][i]),
                "pickup_longitude": coords[0],
                "pickup_latitude": coords[1],
                "dropoff_longitude": coords[2],
                "dropoff_latitude": coords[3],
                "payment_type": "CRD" if card[i] else "CSH",
                "fare_amount": float(cols["fare_amount"][i]),
                "surcharge": float(surcharge[i]),
                "mta_tax": float(mta[i]),
                "tip_amount": float(tip[i]),
                "tolls_amount": float(cols["tolls_amount"][i]),
                "total_amount": float(total[i]),
            })
        return out

    @staticmethod
    def finish(fields: dict[str, Any], ts: int) -> None:
        """The pickup time: the base time (the dropoff, as IST) minus the trip time."""
        dropoff = _dt.datetime.fromtimestamp(ts / 1000, IST).replace(tzinfo=None)
        pickup = dropoff - _dt.timedelta(seconds=fields["trip_time_in_secs"])
        fields["pickup_datetime"] = pickup.strftime("%Y-%m-%d %H:%M:%S")


class _SysDraw:
    def __init__(self, model: dict[str, Any], rng: np.random.Generator) -> None:
        self.m = model
        self.rng = rng
        rows = sample_rows("SYS")
        self.row_source = [f["source"] for _, f in rows]  # sensors as often as the sample
        where: dict[str, tuple[float, float]] = {}
        for _, f in rows:
            where.setdefault(f["source"], (f["longitude"], f["latitude"]))
        self.sources = sorted(where)
        index = {s: i for i, s in enumerate(self.sources)}
        self.row_index = np.array([index[s] for s in self.row_source])
        self.location = np.array([where[s] for s in self.sources])
        # normal score of |latitude| over the sample's rows, per sensor
        z_rows = _unit_scores(np.abs(np.array([f["latitude"] for _, f in rows])))
        self.z_lat = np.zeros(len(self.sources))
        self.z_lat[self.row_index] = z_rows
        self.beta = np.asarray(model["beta_abs_latitude"])
        self.chol = np.linalg.cholesky(np.asarray(model["resid_cov"]))
        icc = np.asarray(model["intra_sensor_corr"])
        self.w_sensor, self.w_reading = np.sqrt(icc), np.sqrt(1 - icc)
        # the per-sensor part, drawn once for every sensor
        self.sensor_part = self.chol @ rng.standard_normal((len(self.beta), len(self.sources)))
        self.blocks = 0

    def block(self, size: int) -> list[dict[str, Any]]:
        m, rng = self.m, self.rng
        if self.blocks:
            fresh = self.chol @ rng.standard_normal(self.sensor_part.shape)
            rho = SENSOR_BLOCK_CORR
            self.sensor_part = rho * self.sensor_part + math.sqrt(1 - rho**2) * fresh
        self.blocks += 1
        s = self.row_index[rng.integers(0, len(self.row_index), size)]
        reading = self.chol @ rng.standard_normal((len(self.beta), size))
        w = self.w_sensor[:, None] * self.sensor_part[:, s] + self.w_reading[:, None] * reading
        u = _phi(np.outer(self.beta, self.z_lat[s]) + w)
        cols = {f: _from_uniform(m["marginals"][f], u[i])
                for i, f in enumerate(m["copula_fields"])}
        out = []
        for i in range(size):
            lon, lat = self.location[s[i]]
            row = {"source": self.sources[s[i]], "longitude": float(lon), "latitude": float(lat)}
            row.update({f: float(cols[f][i]) for f in m["copula_fields"]})
            out.append(row)
        return out

    @staticmethod
    def finish(fields: dict[str, Any], ts: int) -> None:
        pass


class _FitDraw:
    def __init__(self, model: dict[str, Any], rng: np.random.Generator) -> None:
        self.m = model
        self.rng = rng
        self.readings = np.asarray(model["readings"])
        self.jitter = np.asarray(model["jitter"])
        self.state = int(rng.integers(0, len(self.readings)))
        self.noise = rng.standard_normal(len(self.jitter))

    def block(self, size: int) -> list[dict[str, Any]]:
        m, rng = self.m, self.rng
        moves = rng.random(size) >= FIT_STAY
        targets = rng.integers(0, len(self.readings), size)
        shocks = rng.standard_normal((size, len(self.jitter)))
        labels = _from_uniform(m["label"], rng.random(size))
        subjects = rng.integers(0, len(m["subjects"]), size)
        out = []
        for i in range(size):
            if moves[i]:
                self.state = int(targets[i])
            self.noise = FIT_AR * self.noise + math.sqrt(1 - FIT_AR**2) * shocks[i]
            values = self.readings[self.state] + self.jitter * self.noise
            row: dict[str, Any] = {"subjectId": m["subjects"][subjects[i]]}
            for name, value, places in zip(m["channels"], values, m["decimals"]):
                row[name] = round(float(value), places)
            row["label"] = float(labels[i])
            out.append(row)
        return out

    @staticmethod
    def finish(fields: dict[str, Any], ts: int) -> None:
        pass
