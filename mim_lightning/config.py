"""One typed config tree: YAML file + ``--set key=value`` overrides, validated by pydantic.

Every knob of SCIENCE.md section 3 is a key with a default; unknown keys are errors that suggest
the closest valid key; errors are one line naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mim_lightning.errors import MimError
from mim_lightning.plugins.registry import closest


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    d: int = Field(128, gt=0, description="input dimension")
    r: int = Field(2, gt=0, description="dimension of the hidden subspace U (r <= d)")
    link: str = Field("sum_he2", description="link g (a registered link name)")
    noise: float = Field(0.0, ge=0, description="std of Gaussian label noise added to g(Ux)")
    alpha: float = Field(32.0, gt=0, description="stage-1 samples n1 = alpha * d")
    alpha2: float = Field(32.0, gt=0, description="stage-2 samples n2 = alpha2 * d")
    n_test: int = Field(4096, ge=2, description="test samples")
    split_samples: bool = Field(True, description="fresh samples for stage 2; false reuses D1 as D2 (ablation: no sample splitting)")
    chunk_size: int = Field(0, ge=0, description="samples per chunk of a full-batch pass (0: all at once); results do not depend on it")


class ModelConfig(Section):
    width: int = Field(256, gt=0, description="hidden width m (even: neurons come in symmetric pairs)")
    activation: str = Field("logcosh", description="activation sigma (a registered activation name)")
    init_scale: float = Field(1e-6, gt=0, description="norm of each first-layer row at initialisation (eps0)")
    signs: Literal["pairs", "positive", "negative"] = Field("pairs", description="second layer at initialisation: symmetric pairs (a = +-1, f = 0; stage 1 ranks directions by |eigenvalue|) or every a_j = +1 / -1 (one sign of the spectrum)")


class Stage1Config(Section):
    loss: str = Field("squared", description="loss whose preprocessing T(y) = -loss'(0, y) stage 1 uses")
    steps: int = Field(10, gt=0, description="T1, full-batch gradient steps on the first layer")
    lr: float = Field(1.0, gt=0, description="eta1, the step size")
    weight_decay: float = Field(1.0, ge=0, description="beta1; eta1 * beta1 = 1 ranks directions by |eigenvalue|")
    center: bool = Field(True, description="centre T(y) on D1 (adds mean(T) * t to the loss) to remove the isotropic part")
    joint: bool = Field(False, description="ablation: train both layers (W, a, b) jointly by plain GD here and skip stage 2")


class Stage2Config(Section):
    loss: str = Field("squared", description="loss of the convex second-layer fit")
    solver: Literal["auto", "ridge", "lbfgs", "gd"] = Field("auto", description="ridge (exact, squared loss only), lbfgs or gd; auto picks ridge for squared loss, else lbfgs")
    ridge: float = Field(1e-3, ge=0, description="beta2, the penalty beta2 * |a|^2")
    steps: int = Field(100, gt=0, description="iterations of lbfgs or gd")
    lr: float = Field(1.0, gt=0, description="step size of gd and lbfgs")
    bias_init: Literal["normal", "uniform", "zero"] = Field("normal", description="re-initialisation of the biases b: N(0, s^2), U[-s, s] or 0")
    bias_scale: float = Field(1.0, ge=0, description="s, the scale of the bias re-initialisation")
    rescale: bool = Field(True, description="rescale each first-layer row w_j to unit norm before the fit")


class MetricsConfig(Section):
    every_n_steps: int = Field(1, gt=0, description="compute stage-1 metrics (top-r singular subspace of W) every k steps; the last step always")
    subspace: Literal["tracked", "exact"] = Field("tracked", description="W's top-r singular subspace at recorded steps: exact (eigensolver) or tracked (block power iteration from the previous recorded step; steps 0 and T1 are always exact)")
    tracking_iters: int = Field(30, gt=0, description="at most this many block power iterations per recorded step when subspace = tracked (on the CPU it stops once the subspace moves < 1e-8 in squared sines)")
    flush_every_n_steps: int = Field(10, gt=0, description="write buffered stage-1 metrics to TensorBoard every k steps (one host sync)")


class ChecksConfig(Section):
    strict: bool = Field(False, description="refuse to train when a component violates one of the paper's assumptions (otherwise: warn)")


class CheckpointConfig(Section):
    every_n_steps: int = Field(50, gt=0, description="refresh OUT/checkpoints/last.ckpt at least every k steps of either stage (and at each stage's end)")


class TrainerConfig(Section):
    accelerator: str = Field("cpu", description="Lightning accelerator: cpu, gpu, auto, ...")
    devices: int | str = Field(1, description="Lightning devices: a count, -1 for all, or 'auto'")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    num_nodes: int = Field(1, gt=0, description="number of nodes")
    precision: str = Field("32-true", description="Lightning precision (stage 1 is fp32 math by default)")
    matmul_precision: Literal["highest", "high", "medium"] = Field("highest", description="torch.set_float32_matmul_precision: 'high' allows TF32 matmuls on NVIDIA GPUs (about 3 decimal digits), 'medium' bf16")


class Config(Section):
    seed: int = Field(0, ge=0, description="seed of U, the data and the initialisation")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    metrics: MetricsConfig = MetricsConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    trainer: TrainerConfig = TrainerConfig()
    checks: ChecksConfig = ChecksConfig()

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.r > self.data.d:
            raise ValueError(f"data.r = {self.data.r} must be <= data.d = {self.data.d}")
        for key, n in (("data.alpha", self.n1), ("data.alpha2", self.n2)):
            if n < 2:
                raise ValueError(f"{key} * data.d gives {n} samples; at least 2 are needed")
        if self.model.width % 2 and self.model.signs == "pairs":
            raise ValueError(f"model.width = {self.model.width} must be even when model.signs = pairs")
        return self

    @property
    def n1(self) -> int:
        """Stage-1 samples, round(alpha * d)."""
        return round(self.data.alpha * self.data.d)

    @property
    def n2(self) -> int:
        """Stage-2 samples, round(alpha2 * d)."""
        return round(self.data.alpha2 * self.data.d)


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key of the config tree."""
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += all_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def parse_override(text: str) -> tuple[str, Any]:
    """'data.d=256' -> ('data.d', 256); the value is parsed as YAML."""
    if "=" not in text:
        raise MimError(f"--set {text!r}: expected KEY=VALUE, e.g. --set data.d=256")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """Set tree[a][b][c] = value for key 'a.b.c', creating mappings on the way."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise MimError(f"config key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file ({} for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise MimError(f"config file {str(path)!r} does not exist")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MimError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if tree is None:
        raise MimError(f"config file {str(path)!r} is empty; give at least one key, e.g. 'data: {{d: 128}}'")
    if not isinstance(tree, dict):
        raise MimError(f"config file {str(path)!r} must hold a mapping of keys, got a {type(tree).__name__}")
    return tree


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown config key {key!r}{closest(key, all_keys())}"
    if not key:
        return f"invalid config: {error['msg'].removeprefix('Value error, ')}"
    return f"config key {key!r}: {error['msg']} (got {error.get('input')!r})"


def build_config(tree: dict) -> Config:
    """Validate a nested mapping into a Config, with a one-line MimError on failure."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise MimError(_one_line(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: the YAML file (default: none, i.e. the quickstart defaults) with --set
    overrides applied. The defaults are the quickstart experiment (configs/quickstart.yaml)."""
    tree = read_yaml(path) if path is not None else {}
    for text in overrides:
        set_dotted(tree, *parse_override(text))
    return build_config(tree)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'data': {'d': 1}} -> {'data.d': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat
