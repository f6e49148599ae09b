"""Every config key of the training flows, with its default and meaning, in one place.

A config file holds only what differs from these defaults (flows/configs/default.json is the
embedded default itself and says nothing else). Metaflow reads the file through `parse`, so an
unknown key or a wrong type stops `run`, `resume` and `check` before anything runs, naming the
key's path and the nearest valid name; the stored `config` artifact holds every key.

    python -m lib.config            # the table of keys, generated from this file
    python -m lib.config README.md  # the same, written into the README between its markers

Steps and lib functions read attributes of a `RunConfig`: `RunConfig.of(self.config)`.
"""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from metaflow.exception import MetaflowException
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CONFIGS = Path(__file__).resolve().parents[1] / "flows" / "configs"
DEFAULT = CONFIGS / "default.json"


class Section(BaseModel):
    """A group of keys: unknown keys and wrong types are refused, values never change."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FaintSpec(Section):
    attribute: str | None = Field(
        None,
        description="a drawn attribute painted faint on one group's faces, a known gap for "
        "the fairness slices (lib.synthetic.FAINT_ATTRIBUTES); null: none",
    )
    group: str = Field(
        "Young", description="the label-only attribute whose positive faces get the faint cue"
    )
    visibility: float = Field(
        0.3, ge=0, le=1, description="how visible the faint cue is: 0 absent, 1 as on other faces"
    )

    @model_validator(mode="after")
    def _drawable(self) -> FaintSpec:
        from lib.synthetic import make_faint  # numpy and PIL: only when a config is checked

        make_faint(self.attribute, self.group, self.visibility)
        return self


class SyntheticSpec(Section):
    n: int = Field(20_000, gt=0, description="images to generate")
    seed: int = Field(0, description="generator seed: the same seed draws the same faces")
    faint: FaintSpec = Field(default_factory=FaintSpec)


class DataConfig(Section):
    source: str = Field(
        "synthetic",
        description='"synthetic", or a CelebA-format folder, zip or gs:// prefix (--data '
        "overrides it)",
    )
    synthetic: SyntheticSpec = Field(
        default_factory=SyntheticSpec, description="what the synthetic source generates"
    )
    allow_skipped: bool = Field(
        False, description="train without missing or unreadable images instead of failing"
    )
    shard_size: int = Field(10_000, gt=0, description="images per prepare_shard task")


class ModelConfig(Section):
    pretrained: str | None = Field(
        None, description="a hub name or local folder to fine-tune; null trains from scratch"
    )
    image_size: int = Field(64, gt=0, description="input side in pixels")
    patch_size: int = Field(16, gt=0, description="ViT patch side in pixels (from scratch)")
    hidden_size: int = Field(128, gt=0, description="ViT width (from scratch)")
    num_hidden_layers: int = Field(3, gt=0, description="ViT depth (from scratch)")
    num_attention_heads: int = Field(4, gt=0, description="attention heads (from scratch)")
    intermediate_size: int = Field(256, gt=0, description="MLP width (from scratch)")
    image_mean: list[float] = Field(
        [0.5, 0.5, 0.5],
        min_length=3,
        max_length=3,
        description="per-channel (RGB) mean the inputs are normalised with",
    )
    image_std: list[float] = Field(
        [0.5, 0.5, 0.5],
        min_length=3,
        max_length=3,
        description="per-channel (RGB) std the inputs are normalised with",
    )

    def architecture(self) -> dict[str, int]:
        """The ViTConfig arguments of a model trained from scratch."""
        names = ("image_size", "patch_size", "hidden_size", "num_hidden_layers")
        names += ("num_attention_heads", "intermediate_size")
        return {name: getattr(self, name) for name in names}


class TrainConfig(Section):
    epochs: int = Field(4, gt=0, description="passes over the training split")
    batch_size: int = Field(64, gt=0, description="images per step and process")
    learning_rate: float = Field(1e-3, gt=0, description="AdamW peak learning rate")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decay (not on norms, biases)")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="share of steps warming up")
    gradient_accumulation_steps: int = Field(1, gt=0, description="batches per optimizer step")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    pos_weight_max: float = Field(
        10.0, ge=1, description="cap on a rare attribute's positive weight in the loss"
    )
    max_shift: int = Field(2, ge=0, description="random translation in pixels (augmentation)")
    flip_probability: float = Field(
        0.5, ge=0, le=1, description="chance of a horizontal flip (augmentation)"
    )
    seed: int = Field(0, description="initialisation, data order and augmentation seed")
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes")
    log_every: int = Field(10, gt=0, description="steps between logged records")
    checkpoint_every: int = Field(200, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="newest checkpoints kept")
    wandb: bool = Field(True, description="log to Weights & Biases (offline without a key)")
    compile: bool = Field(False, description="torch.compile the model")
    num_processes: int = Field(1, gt=0, description="training processes per node (torchrun)")
    num_nodes: int = Field(1, gt=0, description="nodes: above 1 needs TrainMultiNodeFlow")


class EvaluateConfig(Section):
    threshold_objective: Literal["accuracy", "f1", "balanced_accuracy"] = Field(
        "accuracy", description="what each attribute's threshold maximises on validation"
    )
    batch_size: int = Field(512, gt=0, description="images per inference batch")
    card_images: int = Field(12, ge=0, description="test images shown in the evaluate card")
    calibration: Literal["platt", "temperature", "none"] = Field(
        "platt", description="each attribute's probability map, fitted on validation"
    )
    slices: list[str] = Field(
        ["Male", "Young"], description="attributes whose groups the test metrics are compared by"
    )

    @field_validator("slices")
    @classmethod
    def _celeba_attributes(cls, slices: list[str]) -> list[str]:
        from lib.synthetic import ATTRIBUTES  # CelebA's 40, in order: numpy only when checked

        unknown = [name for name in slices if name not in ATTRIBUTES]
        if unknown:
            names = ", ".join(ATTRIBUTES)
            raise ValueError(f"{unknown} not among CelebA's 40 attributes: {names}")
        return slices


class Resources(Section):
    cpu: int = Field(2, gt=0, description="cores for train and evaluate (remote runs)")
    memory: int = Field(8000, gt=0, description="MB for train and evaluate (remote runs)")
    gpu: int = Field(0, ge=0, description="GPUs for train and evaluate (remote runs)")


class RunConfig(Section):
    project: str = Field("facet", description="W&B project name")
    notes: str = Field("", description="free text: what this config is for")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    resources: Resources = Field(default_factory=Resources)
    timeout_hours: float = Field(2, gt=0, description="train step's time limit")
    retries: int = Field(1, ge=0, description="train step's retries after a failure")
    require_beats_baseline: bool = Field(
        True, description="fail the run in end when the model loses to the majority baseline"
    )

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> RunConfig:
        """The typed config of a flow's `Config` (or any mapping of the same keys)."""
        return validate(_plain(value))

    def merged(self, overrides: Mapping[str, Any]) -> RunConfig:
        """This config with `overrides` (nested like a config file) applied, validated."""
        return validate(_merge(self.model_dump(), overrides))


class ConfigError(MetaflowException):
    """A config with unknown keys or wrong values: the message names each key's path.
    Metaflow prints it as a plain error, without a traceback."""

    headline = "Invalid config"


def validate(value: Mapping[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(value)
    except ValidationError as error:
        problems = "\n".join(f"  {_describe(e)}" for e in error.errors())
        raise ConfigError(f"config has {error.error_count()} problem(s):\n{problems}") from None


def load(path: str | Path = DEFAULT) -> RunConfig:
    """A config file as the flows read it: its keys over the defaults, validated."""
    return RunConfig.of(parse(Path(path).read_text()))


def parse(text: str) -> dict[str, Any]:
    """Metaflow's Config parser: a JSON document of overrides -> every key, validated."""
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"config is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise ConfigError(f"config must be a JSON object, got {type(overrides).__name__}")
    return validate(overrides).model_dump(mode="json")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, Mapping) and isinstance(base.get(key), dict)
        merged[key] = _merge(base[key], value) if nested else value
    return merged


def _describe(error: Mapping[str, Any]) -> str:
    path = ".".join(map(str, error["loc"]))
    if error["type"] != "extra_forbidden":
        return f"{path}: {error['msg']} (got {error['input']!r})"
    *parent, key = error["loc"]
    known = list(_section_at(parent).model_fields)
    nearest = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean '{nearest[0]}'?" if nearest else f"known keys: {', '.join(known)}"
    return f"{path}: unknown key; {hint}"


def _section_at(path: list[Any]) -> type[Section]:
    section: type[Section] = RunConfig
    for name in path:
        section = section.model_fields[name].annotation
    return section


def _plain(value: Any) -> Any:
    """Metaflow's ConfigValue (a read-only mapping) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def keys(section: type[Section] = RunConfig, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, meaning) of every leaf key, in definition order."""
    for name, field in section.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            yield from keys(kind, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.get_default(call_default_factory=True), field.description


def markdown_table() -> str:
    """The README's table of config keys."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in keys():
        rows.append(f"| `{key}` | `{json.dumps(default)}` | {meaning} |")
    return "\n".join(rows)


def write_table(readme: Path, name: str, table: str) -> None:
    """Replace what stands between `<!-- name:begin -->` and `<!-- name:end -->`."""
    text = readme.read_text()
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    start, stop = text.index(begin) + len(begin), text.index(end)
    readme.write_text(f"{text[:start]}{table}\n{text[stop:]}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        write_table(Path(sys.argv[1]), "config-table", markdown_table())
    else:
        sys.stdout.write(markdown_table() + "\n")
