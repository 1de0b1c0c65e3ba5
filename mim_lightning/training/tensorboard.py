"""A run's TensorBoard files, written with the ``tensorboard`` package's protobufs (no TensorFlow):
scalars with a description on every tag, the reference series (spectral baseline, chance levels),
a custom-scalars layout that draws each quantity with its references in one chart, HParams typed
as the config declares them (booleans as booleans, integers as their digits, strings as strings)
with the defining keys first, Markdown text and PNG images.

A ``Board`` is one TensorBoard run (one folder of event files); only rank zero writes
(``enabled``), and nothing is created before the first write. docs/tensorboard.md shows the charts.
"""

from __future__ import annotations

import re
import time
import typing
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata

from mim_lightning.config import Config, flatten, key_fields
from mim_lightning.training.event_file import EventFile

#: HParams columns first (after the swept keys of a sweep): what defines a run
DEFINING_KEYS = ("data.d", "data.r", "data.link", "data.alpha", "stage1.loss", "stage2.loss", "model.width",
                 "stage1.steps", "seed")

#: float32's unit roundoff: the per-sample losses stage 1 sums (in float64) are float32, so a relative
#: change of the objective below this is rounding, not signal (``stage1/loss_change`` shows it as 0)
LOSS_RESOLUTION = 2.0 ** -24

#: tag (regular expression) -> description shown under the chart (Markdown); {k} is the tag's number.
#: TensorBoard sorts tags by name and TIME SERIES groups them by the part before the first '/':
#: ``stage1`` (the learning curves) comes first, then ``stage1_reference`` (the constant reference
#: lines), ``stage2`` and ``summary`` (the final metrics, one point each).
DESCRIPTIONS = {
    r"stage1/principal_cosine_(?P<k>\d+)":
        "Cosine of principal angle {k} between the top-r right singular subspace of the first-layer weights W "
        "and the hidden subspace span U (descending in k: the last one is the smallest). 1 = that direction is "
        "recovered, chance `stage1_reference/principal_cosine_min_chance`.",
    r"stage1/principal_cosine_min":
        "The smallest principal cosine of W with span U (= `stage1/principal_cosine_<r>`): 1 when all of span U "
        "is recovered. CUSTOM SCALARS draws it with its references, the spectral baseline "
        "(`stage1_reference/principal_cosine_min_spectral`) and chance (`stage1_reference/principal_cosine_min_chance`).",
    r"stage1_reference/principal_cosine_min_spectral":
        "Reference (a constant line from step 0 to T1): the smallest principal cosine of the strongest spectral "
        "estimator on the same D1. Stage 1 is a power iteration on the same matrix: the network's smallest cosine "
        "`stage1/principal_cosine_min` approaches this line.",
    r"stage1_reference/principal_cosine_min_chance":
        "Reference (a constant line from step 0 to T1): the median smallest principal cosine of a uniformly random "
        "r-dimensional subspace of R^d (seeded simulation): what no learning scores.",
    r"stage1/subspace_mass":
        "|W U^T|_F^2 / |W|_F^2: the share of the first layer's weight inside the hidden subspace; "
        "chance (random weights) r/d, `stage1_reference/subspace_mass_chance`.",
    r"stage1_reference/subspace_mass_chance":
        "Reference (a constant line from step 0 to T1): r/d, the subspace mass of random weights.",
    r"stage1/direction_mass_(?P<k>\d+)":
        "|W v_{k}|^2 / |W|_F^2 along eigenvector {k} of M (stage-1 loss), by |eigenvalue| descending: the "
        "entries sum to `stage1/subspace_mass`. All of it in entry 1 is collapse onto the top direction; "
        "chance 1/d each (`stage1_reference/direction_mass_chance`).",
    r"stage1_reference/direction_mass_chance":
        "Reference (a constant line from step 0 to T1): 1/d, the mass of random weights along one direction.",
    r"stage1/log10_weight_norm":
        "log10 |W|_F. Stage 1 is a power iteration: from the small initialisation (model.init_scale) |W| grows "
        "geometrically while the loss barely moves.",
    r"stage1/weight_growth":
        "|W_t|_F / |W_(t-1)|_F per step (geometric mean since the previous recorded step): about stage1.lr * "
        "|lambda_1(M)| + 1 - stage1.lr * stage1.weight_decay while the weights are small (docs/theory.md).",
    r"stage1/loss":
        "The objective stage 1 descends, at the weights before that step: mean over D1 of loss(f, y) + mean(T) f, "
        "plus stage1.weight_decay / 2 |W|_F^2. While W is small the network's output is O(|W|^2) and this stays "
        "at the zero predictor's loss to ~1e-7: TensorBoard's autoscaled axis then shows rounding. Read "
        "`stage1/loss_change` instead.",
    r"stage1/loss_change":
        "(stage1/loss - its first recorded value) / |that value|: the relative change of the stage-1 objective. "
        "Changes below 2^-24 = 6e-8 (the unit roundoff of the float32 per-sample losses, summed in float64) are "
        "rounding and read 0. ~0 while the weights are small is expected: stage 1 learns directions, not the fit.",
    r"stage2/loss": "The stage-2 objective (second-layer fit on D2 with W fixed, ridge penalty included) per pass.",
    r"summary/min_principal_cosine": "Final smallest principal cosine of W with span U (one point, at step T1; an "
                                     "HParams metric).",
    r"summary/subspace_mass": "Final subspace mass of W (one point, at step T1; an HParams metric).",
    r"summary/test_rel_mse": "Test mean squared error / Var(y) on data.n_test fresh samples after stage 2; 1 = the "
                             "constant predictor (one point, at step T1; an HParams metric).",
    r"summary/spectral_min_principal_cosine": "The spectral baseline's smallest principal cosine (one point, at "
                                              "step T1; an HParams metric).",
}
_PATTERNS = [(re.compile(pattern + "$"), text) for pattern, text in DESCRIPTIONS.items()]

#: the HParams dashboard's metric columns
FINAL_METRICS = {
    "summary/min_principal_cosine": "smallest principal cosine of W with span U (1 = recovered)",
    "summary/subspace_mass": "|W U^T|_F^2 / |W|_F^2",
    "summary/test_rel_mse": "test MSE / Var(y) (1 = constant predictor)",
    "summary/spectral_min_principal_cosine": "the spectral baseline's smallest principal cosine",
}

#: CUSTOM SCALARS, in this order: category -> chart title -> tag regular expressions drawn together;
#: one chart per quantity, with its reference lines
LAYOUT = {
    "stage 1: recovery of span U": {
        "smallest principal cosine: network, spectral baseline, chance": [
            r"^stage1/principal_cosine_min$", r"^stage1_reference/principal_cosine_min_spectral$",
            r"^stage1_reference/principal_cosine_min_chance$"],
        "subspace mass: network, chance r/d": [r"^stage1/subspace_mass$", r"^stage1_reference/subspace_mass_chance$"],
        "principal cosines 1..r (descending)": [r"^stage1/principal_cosine_\d+$"],
        "mass per eigenvector of M: network, chance 1/d": [
            r"^stage1/direction_mass_\d+$", r"^stage1_reference/direction_mass_chance$"],
    },
    "stage 1: weights and objective": {
        "log10 |W|_F": [r"^stage1/log10_weight_norm$"],
        "growth of |W|_F per step": [r"^stage1/weight_growth$"],
        "relative change of the stage-1 objective (0 below 6e-8)": [r"^stage1/loss_change$"],
    },
    "stage 2 and test error": {
        "stage-2 objective": [r"^stage2/loss$"],
        "test MSE / Var(y) after stage 2 (at step T1)": [r"^summary/test_rel_mse$"],
    },
}


def relative_change(value: float, first: float) -> float:
    """(value - first) / |first| (value - first when first is 0), as ``stage1/loss_change`` shows it:
    0 where its size is below ``LOSS_RESOLUTION`` (float rounding, not a change); NaN stays NaN."""
    change = (value - first) / (abs(first) or 1.0)
    return 0.0 if abs(change) < LOSS_RESOLUTION else change


def describe(tag: str) -> str:
    """A tag's description ('' for tags this module does not know)."""
    for pattern, text in _PATTERNS:
        match = pattern.match(tag)
        if match:
            return text.format(**match.groupdict())
    return ""


def _tensor(dtype, values=(), shape=()) -> tensor_pb2.TensorProto:
    dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=dims))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(values)
    return proto


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


class Board:
    """One TensorBoard run: the event files in ``path``, written by rank zero only (``enabled``)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.writer: EventFile | None = None
        self.described: set[str] = set()

    def write(self, summary: summary_pb2.Summary, step: int = 0) -> None:
        if not self.enabled:
            return
        if self.writer is None:
            self.writer = EventFile(self.path)
        self.writer.write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars as TensorBoard's simple values; each tag's first value carries its description."""
        if not self.enabled or not values:
            return
        summary = summary_pb2.Summary()
        for tag, value in values.items():
            entry = summary.value.add(tag=tag, simple_value=float(value))
            if tag not in self.described:
                self.described.add(tag)
                entry.metadata.CopyFrom(scalar_metadata.create_summary_metadata(tag, describe(tag)))
                entry.metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
        self.write(summary, step)

    def constant(self, values: dict[str, float], steps) -> None:
        """Constant series: each value at each of ``steps`` (a horizontal line: the reference levels)."""
        for step in steps:
            self.scalars(values, step)

    def text(self, name: str, markdown: str, description: str = "", step: int = 0) -> None:
        """Markdown in the TEXT tab (tag ``name/text_summary``)."""
        metadata = text_metadata.create_summary_metadata(name, description)
        metadata.data_class = summary_pb2.DATA_CLASS_TENSOR
        summary = summary_pb2.Summary()
        summary.value.add(tag=f"{name}/text_summary", metadata=metadata,
                          tensor=_tensor(types_pb2.DT_STRING, [markdown.encode()]))
        self.write(summary, step)

    def image(self, tag: str, png: bytes, description: str = "", step: int = 0) -> None:
        """A PNG file's bytes in the IMAGES tab."""
        width, height = png_size(png)
        metadata = image_metadata.create_summary_metadata(tag, description, converted_to_tensor=True)
        metadata.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=metadata, tensor=_tensor(
            types_pb2.DT_STRING, [str(width).encode(), str(height).encode(), png], shape=(3,)))
        self.write(summary, step)

    def layout(self, layout: dict | None = None) -> None:
        """The CUSTOM SCALARS layout (``LAYOUT``); runs of one logdir that write the same one share it."""
        proto = layout_pb2.Layout(category=[
            layout_pb2.Category(title=title, chart=[
                layout_pb2.Chart(title=chart, multiline=layout_pb2.MultilineChartContent(tag=tags))
                for chart, tags in charts.items()])
            for title, charts in (LAYOUT if layout is None else layout).items()])
        metadata = layout_metadata.create_summary_metadata()
        metadata.data_class = summary_pb2.DATA_CLASS_TENSOR
        summary = summary_pb2.Summary()
        summary.value.add(tag=layout_metadata.CONFIG_SUMMARY_TAG, metadata=metadata,
                          tensor=_tensor(types_pb2.DT_STRING, [proto.SerializeToString()]))
        self.write(summary)

    def _hparams(self, tag: str, data: plugin_data_pb2.HParamsPluginData) -> None:
        summary = summary_pb2.Summary()
        summary.value.add(tag=tag, metadata=hparams_metadata.create_summary_metadata(data),
                          tensor=hparams_metadata.NULL_TENSOR)
        self.write(summary)

    def experiment(self, infos: list[api_pb2.HParamInfo], metrics: dict[str, str] | None = None) -> None:
        """The HParams experiment: its columns (hparams in this order, then the metrics)."""
        metrics = FINAL_METRICS if metrics is None else metrics
        experiment = api_pb2.Experiment(hparam_infos=infos, time_created_secs=time.time(), metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=tag, description=text)
            for tag, text in metrics.items()])
        self._hparams(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))

    def session_start(self, values: dict, trial_id: str) -> None:
        """This run's HParams session: its hparam values (bool, number or string) and trial id (the
        HParams table's first column; it sorts the rows by it)."""
        info = plugin_data_pb2.SessionStartInfo(group_name=trial_id, start_time_secs=time.time())
        for name, value in values.items():
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = value
            else:
                info.hparams[name].string_value = str(value)
        self._hparams(hparams_metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=info))

    def session_end(self, status: int = api_pb2.STATUS_SUCCESS) -> None:
        info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self._hparams(hparams_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))

    def flush(self) -> None:
        """Everything written so far onto the disk (``EventFile.flush`` with fsync)."""
        if self.writer is not None:
            self.writer.flush(sync=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- HParams of a config ---------------------------------------------------------------------------

def _kind(annotation) -> str:
    """'bool', 'integer', 'number' or 'string': how TensorBoard shows a config field of this
    annotation (a union, e.g. trainer.devices: int | str, is a string)."""
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if typing.get_origin(annotation) is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    return "string"


def config_fields() -> dict[str, tuple[str, str]]:
    """{dotted key: (kind, description)} of every config key, in the config's order."""
    return {key: (_kind(info.annotation), info.description or "") for key, info in key_fields().items()}


def hparam_order(first=()) -> list[str]:
    """Every config key: ``first`` (a sweep's swept keys), then ``DEFINING_KEYS``, then the rest."""
    keys = list(config_fields())
    head = [k for k in (*first, *DEFINING_KEYS) if k in keys]
    head = list(dict.fromkeys(head))
    return head + [k for k in keys if k not in head]


def hparam_value(kind: str, value) -> bool | float | str:
    """One config value as TensorBoard shows it: a bool, a float, or text. Integers are text (their
    digits): the HParams table prints every number with 5 significant digits (128 as 128.00)."""
    if kind == "bool":
        return bool(value)
    if kind == "number" and isinstance(value, (int, float)):
        return float(value)
    return str(value)


def hparam_values(cfg: Config) -> dict[str, bool | float | str]:
    """A config's values as typed HParams (``hparam_value``), in ``hparam_order``; None values are
    left out."""
    flat, fields = flatten(cfg.model_dump()), config_fields()
    values = {}
    for key in hparam_order():
        value, kind = flat[key], fields[key][0]
        if value is not None:
            values[key] = hparam_value(kind, value)
    return values


def hparam_infos(first=(), domains: dict[str, list] | None = None) -> list[api_pb2.HParamInfo]:
    """The HParams columns: every config key in ``hparam_order(first)``, typed (integers as text,
    ``hparam_value``), with its description from the config and, where given, its discrete domain (a
    sweep's values; integers in numeric order). ``first`` and the defining keys are marked as
    differing, which TensorBoard lists first."""
    types = {"bool": api_pb2.DATA_TYPE_BOOL, "number": api_pb2.DATA_TYPE_FLOAT64, "integer": api_pb2.DATA_TYPE_STRING,
             "string": api_pb2.DATA_TYPE_STRING}
    fields, infos = config_fields(), []
    leading = set(first) | set(DEFINING_KEYS)
    for key in hparam_order(first):
        kind, description = fields[key]
        # TensorBoard (2.21) lists hparams marked ``differs`` first, each group by name
        info = api_pb2.HParamInfo(name=key, display_name=key, description=description, type=types[kind],
                                  differs=key in leading)
        values = [v for v in (domains or {}).get(key) or () if v is not None]
        if kind == "integer" and all(isinstance(v, int) for v in values):
            values = sorted(values)
        if values:
            info.domain_discrete.extend([hparam_value(kind, v) for v in values])
        infos.append(info)
    return infos
