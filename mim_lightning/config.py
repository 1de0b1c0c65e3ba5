"""One typed config tree: YAML file + ``--set key=value`` overrides, validated by pydantic.

Every knob of the algorithm (docs/theory.md#algorithm) is a key with a default; unknown keys are errors that suggest
the closest valid key; errors are one line naming the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from mim_lightning.core.limits import MAX_R
from mim_lightning.config_yaml import cut, parse_override, read_yaml, set_dotted, short
from mim_lightning.errors import MimError
from mim_lightning.plugins.registry import closest

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
GPU_PRECISIONS = ("bf16-mixed", "16-mixed")
PRECISION_ALIASES = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}
FLAGS = {"trainer.accelerator": "--accelerator", "trainer.devices": "--devices", "trainer.strategy": "--strategy",
         "trainer.num_nodes": "--num-nodes"}


def _not_bool(value: Any) -> Any:
    """Booleans are not numbers here (pydantic would take true and false as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not the boolean {str(value).lower()}")
    return value


def _only_bool(value: Any) -> Any:
    """Only true and false are booleans (pydantic would also take 1, 0, 'yes', 'on', 'off', ...)."""
    if not isinstance(value, bool):
        raise ValueError("must be a boolean: write true or false")
    return value


def _auto_or_bool(value: Any) -> Any:
    """'auto', true or false, nothing that pydantic would read as one of them (1, 0, 'yes')."""
    if not isinstance(value, bool) and value != "auto":
        raise ValueError("must be auto or a boolean: write auto, true or false")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]  # ints are accepted; inf and nan are not (allow_inf_nan)
Bool = Annotated[bool, BeforeValidator(_only_bool)]

BIG = 2**24  # sizes (d, width, sample counts) are at most 16,777,216
STEPS = 10**7  # step counts are at most 10,000,000
LARGE = 1e9  # scales, rates and penalties are at most 1e9


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(Section):
    d: Int = Field(128, gt=0, le=BIG, description="input dimension")
    r: Int = Field(2, gt=0, le=MAX_R, description="dimension of the hidden subspace U (r <= d; r <= 32, the assumption checks' limit)")
    link: str = Field("sum_he2", description="link g (a registered link name)")
    noise: Float = Field(0.0, ge=0, le=LARGE, description="std of Gaussian label noise added to g(Ux)")
    alpha: Float = Field(32.0, gt=0, le=BIG, description="stage-1 samples n1 = alpha * d")
    alpha2: Float = Field(32.0, gt=0, le=BIG, description="stage-2 samples n2 = alpha2 * d")
    n_test: Int = Field(4096, ge=2, le=BIG, description="test samples")
    split_samples: Bool = Field(True, description="fresh samples for stage 2; false reuses D1 as D2 (ablation: no sample splitting)")
    chunk_size: Int = Field(0, ge=0, le=2**31, description="samples per chunk of a full-batch pass (0: all at once when stored; when streamed, whole blocks of 1024 samples keeping a chunk's x near 32 MiB on the CPU and 1/32 of a GPU's memory (256 MiB to 8 GiB) on a GPU); results do not depend on it")
    stream: Annotated[Literal["auto", True, False], BeforeValidator(_auto_or_bool)] = Field("auto", description="regenerate the data from its seeds in every pass instead of storing it: true, false, or auto (stream when the stored data would take more than half of the free memory)")


class ModelConfig(Section):
    width: Int = Field(256, gt=0, le=BIG, description="hidden width m (even: neurons come in symmetric pairs; at least 2 r)")
    activation: str = Field("logcosh", description="activation sigma (a registered activation name)")
    init_scale: Float = Field(1e-6, gt=0, le=LARGE, description="norm of each first-layer row at initialisation (eps0)")
    signs: Literal["pairs", "positive", "negative"] = Field("pairs", description="second layer at initialisation: symmetric pairs (a = +-1, f = 0; stage 1 ranks directions by |eigenvalue|) or every a_j = +1 / -1 (one sign of the spectrum)")


class Stage1Config(Section):
    loss: str = Field("huber", description="loss whose preprocessing T(y) = -loss'(0, y) stage 1 uses")
    steps: Int = Field(10, gt=0, le=STEPS, description="T1, full-batch gradient steps on the first layer")
    lr: Float = Field(1.0, gt=0, le=LARGE, description="eta1, the step size")
    weight_decay: Float = Field(1.0, ge=0, le=LARGE, description="beta1; eta1 * beta1 = 1 ranks directions by |eigenvalue|")
    center: Bool = Field(True, description="centre T(y) on D1 (adds mean(T) * t to the loss) to remove the isotropic part")
    joint: Bool = Field(False, description="ablation: train both layers (W, a, b) jointly by plain GD here and skip stage 2")


class Stage2Config(Section):
    loss: str = Field("squared", description="loss of the convex second-layer fit")
    solver: Literal["auto", "ridge", "lbfgs", "gd"] = Field("auto", description="ridge (exact, squared loss only), lbfgs or gd; auto picks ridge for squared loss, else lbfgs")
    ridge: Float = Field(1e-3, ge=0, le=LARGE, description="beta2, the penalty beta2 * |a|^2")
    steps: Int = Field(100, gt=0, le=STEPS, description="iterations of lbfgs or gd")
    lr: Float = Field(1.0, gt=0, le=LARGE, description="step size of gd and lbfgs")
    bias_init: Literal["normal", "uniform", "zero"] = Field("normal", description="re-initialisation of the biases b: N(0, s^2), U[-s, s] or 0")
    bias_scale: Float = Field(1.0, ge=0, le=LARGE, description="s, the scale of the bias re-initialisation")
    rescale: Bool = Field(True, description="rescale each first-layer row w_j to unit norm before the fit")


class MetricsConfig(Section):
    every_n_steps: Int = Field(1, gt=0, le=STEPS, description="compute stage-1 metrics (top-r singular subspace of W) every k steps; the last step always")
    subspace: Literal["tracked", "exact"] = Field("tracked", description="W's top-r singular subspace at recorded steps: exact (eigensolver) or tracked (a block of r + 16 directions carried by power iteration from one flush interval to the next, Rayleigh-Ritz at the flush; steps 0 and T1 are always exact, and every step when min(m, d) <= 32)")
    tracking_iters: Int = Field(6, gt=0, le=10_000, description="block power iterations for each recorded step when subspace = tracked, from the block of the last step before its flush interval (the same number on every device; more follow the fast-moving first steps more closely)")
    flush_every_n_steps: Int = Field(10, gt=0, le=STEPS, description="write buffered stage-1 metrics to TensorBoard every k steps (one host sync)")


class ChecksConfig(Section):
    strict: Bool = Field(False, description="refuse to train when a component violates one of the paper's assumptions (otherwise: warn)")


class CheckpointConfig(Section):
    every_n_steps: Int = Field(50, gt=0, le=STEPS, description="refresh OUT/checkpoints/last.ckpt at least every k steps of either stage (and at each stage's end)")


class TrainerConfig(Section):
    accelerator: str = Field("cpu", description="Lightning accelerator: cpu, gpu, auto, ...")
    devices: int | str = Field(1, description="Lightning devices: a positive count, -1 for all, or 'auto'")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ...")
    num_nodes: Int = Field(1, gt=0, le=100_000, description="number of nodes")
    precision: str = Field("32-true", description="32-true, or on a GPU bf16-mixed or 16-mixed (stage 1 is fp32 math by default)")
    matmul_precision: Literal["highest", "high", "medium"] = Field("highest", description="torch.set_float32_matmul_precision: 'high' allows TF32 matmuls on NVIDIA GPUs (about 3 decimal digits), 'medium' bf16")

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value):
        allowed = "must be a positive integer, -1 (all devices) or 'auto'"
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, str) and value.strip() == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or 1 <= value <= 100_000):
            raise ValueError(allowed)
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            value = PRECISION_ALIASES.get(value.strip(), value.strip())
            if value in PRECISIONS:
                return value
        why = " (stage 1 runs in float32)" if str(value).startswith("64") else ""
        raise ValueError(f"not supported{why}; allowed: 32-true, and on a GPU bf16-mixed or 16-mixed")

    def resolves_to_cpu(self) -> bool:
        """Whether the accelerator is the CPU: 'cpu', or 'auto' on a machine without CUDA."""
        accelerator = self.accelerator.strip().lower()
        if accelerator == "auto":
            import torch  # only here: the config module stays light to import

            return not torch.cuda.is_available()
        return accelerator == "cpu"


class BaselineConfig(Section):
    spectral: Literal["auto", "dense", "matrix_free", "off"] = Field("auto", description="spectral baseline: dense (form Sigmahat, d x d, and diagonalise it), matrix_free (block Krylov with thick restarts on v -> Sigmahat v in streaming passes, memory O(d r): at most 17 blocks of d x 32 per replica), off, or auto (dense up to d = 4096)")

    uncentred: Bool = Field(True, description="with stage1.center, also compute the baseline without centring (T(y) instead of T(y) - mean T; results.json spectral_estimators.uncentred): a second eigendecomposition when dense; matrix-free, solved together with the centred one from the same passes over the data")


class Config(Section):
    seed: Int = Field(0, ge=0, le=2**32 - 1, description="seed of U, the data and the initialisation")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    metrics: MetricsConfig = MetricsConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    trainer: TrainerConfig = TrainerConfig()
    checks: ChecksConfig = ChecksConfig()
    baseline: BaselineConfig = BaselineConfig()

    @model_validator(mode="after")
    def _consistent(self):
        if self.data.r > self.data.d:
            raise ValueError(f"data.r = {self.data.r} must be <= data.d = {self.data.d}")
        for key, n in (("data.alpha", self.n1), ("data.alpha2", self.n2)):
            if n < 2:
                raise ValueError(f"{key} * data.d gives {n} samples; at least 2 are needed")
        if self.model.width % 2 and self.model.signs == "pairs":
            raise ValueError(f"model.width = {self.model.width} must be even when model.signs = pairs")
        need = 2 * self.data.r if self.model.signs == "pairs" else self.data.r
        if self.model.width < need:
            per = "2 * data.r (each symmetric pair spans one direction)" if self.model.signs == "pairs" else "data.r"
            raise ValueError(f"model.width = {self.model.width} is too small for data.r = {self.data.r}:"
                             f" it must be at least {per} = {need}")
        if self.trainer.precision in GPU_PRECISIONS and self.trainer.resolves_to_cpu():
            why = " (no CUDA GPU here)" if self.trainer.accelerator.strip().lower() == "auto" else ""
            raise ValueError(f"trainer.precision = {self.trainer.precision} needs a GPU, but trainer.accelerator ="
                             f" {self.trainer.accelerator} resolves to the CPU{why}; use trainer.precision=32-true"
                             " or --accelerator gpu")
        return self

    @property
    def n1(self) -> int:
        """Stage-1 samples, round(alpha * d)."""
        return round(self.data.alpha * self.data.d)

    @property
    def n2(self) -> int:
        """Stage-2 samples, round(alpha2 * d)."""
        return round(self.data.alpha2 * self.data.d)


def key_fields(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, FieldInfo]:
    """{dotted key: its pydantic field} for every leaf of the config tree, in the config's order
    (the one walk of the tree: keys, HParams and the reference pages start from it)."""
    fields = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.update(key_fields(annotation, f"{prefix}{name}."))
        else:
            fields[prefix + name] = info
    return fields


def all_keys() -> list[str]:
    """Every valid dotted key of the config tree."""
    return list(key_fields())


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(p) for p in error["loc"]]
    key = ".".join(loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        dotted = next((part for part in loc if "." in part), None)
        if dotted is not None:
            nested = ": {".join(dotted.split(".")) + ": ..." + "}" * dotted.count(".")
            return (f"unknown config key {short(dotted)}: YAML nests keys, write '{cut(nested)}'"
                    f" (dotted keys are for --set {cut(dotted)}=...)")
        if key == "sweep":
            return ("'sweep' (a grid of runs) belongs to a sweep file: run it with 'mim sweep FILE', or remove "
                    "the sweep: mapping (or pick one point with --set) to train a single run with 'mim train'")
        return f"unknown config key {short(key)}{closest(key, all_keys())}"
    if not key:
        return f"invalid config: {message}"
    flag = f" ({FLAGS[key]})" if key in FLAGS else ""
    return f"config key {short(key)}{flag}: {message} (got {short(error.get('input'))})"


def build_config(tree: dict) -> Config:
    """Validate a nested mapping into a Config, with a one-line MimError on failure."""
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise MimError(_one_line(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The resolved config: the YAML file (default: none, i.e. the quickstart defaults) with --set
    overrides applied in order (see ``apply_overrides``). The defaults are the quickstart
    experiment (configs/quickstart.yaml)."""
    tree = read_yaml(path) if path is not None else {}
    apply_overrides(tree, overrides)
    return build_config(tree)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'data': {'d': 1}} -> {'data.d': 1}. A key written both flat and nested (``data.d: 1`` and
    ``data: {d: 2}``) is a MimError, not one value silently dropped."""
    flat = {}
    for key, value in tree.items():
        items = flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        for dotted, one in items.items():
            if dotted in flat:
                raise MimError(f"key {short(dotted)} is given twice, flat and nested; give each key once")
            flat[dotted] = one
    return flat


def apply_overrides(tree: dict, overrides) -> dict:
    """Apply ``--set KEY=VALUE`` overrides to ``tree`` in place and return what they set as
    {dotted key: value}. Unlike a key given twice in a file (refused), a key given twice on the
    command line is not an error: overrides apply left to right, the later value wins in any
    spelling (``data.d=1`` then ``data={d: 2}`` gives 2), so a command can extend another."""
    given = {}
    for text in overrides:
        key, value = parse_override(text)
        given.update(flatten({key: value}))
        set_dotted(tree, key, value)
    return given
