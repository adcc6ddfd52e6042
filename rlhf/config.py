"""Typed configuration: YAML file + dotted ``key=value`` overrides -> validated ``Config``.

DeepRacer's console words (``num_epochs``, ``lr``, ``beta_entropy``, ...) and Stable-Baselines3's
(``n_epochs``, ``gamma``, ``ent_coef``, ...) are accepted as aliases of our names. A ``ppo`` section
written in console words is also held to the console's ranges, so a file that trains here would be
accepted by the DeepRacer console too.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf.errors import ConfigError
from rlhf.schedules import parse_schedule


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _positive_schedule(value: Any) -> float | str:
    initial, linear = parse_schedule(value)
    if initial <= 0:
        raise ValueError(f"must be > 0 (a number or 'lin_<number>'), got {value!r}")
    return value if linear else initial  # YAML reads 1e-3 as a string: store the number


class EnvConfig(Section):
    """Which gymnasium environment, how many copies, and how they are vectorised."""

    id: str = "CartPole-v1"
    num_envs: int = Field(1, ge=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    eval_kwargs: dict[str, Any] = Field(default_factory=dict, description="merged over kwargs by `rlhf eval`")
    vectorization: Literal["auto", "sync", "async", "native"] = "auto"


# alias -> canonical name. DeepRacer console words first, then Stable-Baselines3's.
CONSOLE_ALIASES = {
    "num_epochs": "epochs",
    "lr": "learning_rate",
    "beta_entropy": "entropy_coef",
    "num_episodes_between_training": "episodes_between_updates",
}
SB3_ALIASES = {
    "n_epochs": "epochs",
    "gamma": "discount_factor",
    "ent_coef": "entropy_coef",
    "clip_range_vf": "clip_value",
}
LOSS_TYPE_WORDS = {"mean squared error": "mse", "mse": "mse", "huber": "huber"}
CONSOLE_BATCH_SIZES = (32, 64, 128, 256, 512)
# canonical key -> (low, high) of the DeepRacer console.
CONSOLE_RANGES = {
    "epochs": (3, 10),
    "learning_rate": (1e-8, 1e-3),
    "entropy_coef": (0.0, 1.0),
    "discount_factor": (0.0, 1.0),
    "episodes_between_updates": (5, 100),
}


class PPOConfig(Section):
    """PPO's knobs, named as in the DeepRacer console where it has a word for them."""

    n_steps: Optional[int] = Field(None, ge=1, description="steps per env per update (default 2048)")
    episodes_between_updates: Optional[int] = Field(None, ge=1, description="collect whole episodes instead")
    batch_size: int = Field(64, ge=2, description="minibatch size")
    epochs: int = Field(10, ge=1)
    learning_rate: float | str = 3e-4
    entropy_coef: float = Field(0.0, ge=0.0)
    discount_factor: float = Field(0.99, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    clip_range: float | str = 0.2
    loss_type: Literal["mse", "huber"] = "mse"
    huber_delta: float = Field(1.0, gt=0.0)
    clip_value: Optional[float] = Field(None, gt=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: Optional[float] = Field(0.5, gt=0.0)
    target_kl: Optional[float] = Field(None, gt=0.0)
    normalize_advantage: bool = True
    normalize_reward: bool = False
    policy_loss: Literal["clip", "kl_penalty"] = "clip"
    kl_coef: float = Field(1.0, ge=0.0, description="initial beta of the kl_penalty loss")
    kl_target: float = Field(0.01, gt=0.0, description="d_targ: beta halves below d/1.5, doubles above 1.5d")
    optimizer: Literal["auto", "adam", "flat_adam"] = Field(
        "auto", description="adam: torch Adam; flat_adam: the same Adam over one flat buffer (faster for small "
                            "nets); auto: flat_adam when the parameters share a dtype and device")
    console_ranges: bool = Field(False, description="hold values to the DeepRacer console's ranges")

    _check_schedules = field_validator("learning_rate", "clip_range")(_positive_schedule)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = _canonical(key)
            if name in out:
                raise ValueError(f"ppo.{key} sets {name!r}, which is already set")
            if key in CONSOLE_ALIASES:
                out["console_ranges"] = True
            out[name] = value
        if isinstance(out.get("loss_type"), str):
            word = out["loss_type"].strip().lower()
            out["loss_type"] = LOSS_TYPE_WORDS.get(word, out["loss_type"])
        return out

    @model_validator(mode="after")
    def _console(self) -> "PPOConfig":
        if self.n_steps is not None and self.episodes_between_updates is not None:
            raise ValueError("set either ppo.n_steps or ppo.episodes_between_updates, not both")
        if not self.console_ranges:
            return self
        if self.batch_size not in CONSOLE_BATCH_SIZES:
            raise ValueError(f"ppo.batch_size = {self.batch_size}: the DeepRacer console allows one of "
                             f"{', '.join(map(str, CONSOLE_BATCH_SIZES))}")
        for key, (low, high) in CONSOLE_RANGES.items():
            value = getattr(self, key)
            if value is None:
                continue
            number = parse_schedule(value)[0] if key == "learning_rate" else value
            if not low <= number <= high:
                raise ValueError(f"ppo.{key} = {value}: the DeepRacer console allows {low:g} to {high:g}")
        return self

    @property
    def rollout_steps(self) -> int:
        return self.n_steps if self.n_steps is not None else 2048


class PolicyConfig(Section):
    """Actor-critic network shape. Image observations get a CNN trunk automatically."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "elu", "gelu", "silu"] = "tanh"
    shared: bool = Field(False, description="one trunk for actor and critic")
    ortho_init: bool = True
    normalize_obs: bool = Field(False, description="running mean/std, saved with checkpoints")
    log_std_init: float = 0.0
    cnn_features: int = Field(512, ge=1)
    fused: Literal["auto", "on", "off"] = Field(
        "auto", description="run tanh actor/critic MLPs as one autograd node (rlhf.fused_mlp); off: layer by layer")

    @field_validator("fused", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans

    @field_validator("hidden_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError(f"every hidden size must be >= 1, got {v}")
        return v


class PrecisionConfig(Section):
    """How numbers are stored and computed: learner autocast, rollout actor copy, fake-quant training."""

    train: Literal["fp32", "bf16-mixed", "fp16-mixed"] = "fp32"
    rollout: Literal["fp32", "bf16", "int8", "int8-outlier", "nf4"] = "fp32"
    qat: Optional[Literal["int8"]] = None


class LoggingConfig(Section):
    tensorboard: bool = True
    interval: int = Field(1, ge=1, description="log every N updates")
    progress_bar: bool = True


class CheckpointConfig(Section):
    every: int = Field(50_000, ge=0, description="environment steps between checkpoints (0: only at the end)")
    keep: int = Field(3, ge=1, description="how many recent checkpoints to keep")


class TextModelConfig(Section):
    """The tiny GPT (nanoGPT-shaped) used for the policy, the reference and the reward model."""

    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(128, ge=8)
    block_size: int = Field(48, ge=8, description="longest prompt + response, in tokens")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="SFT and reward-model training only; off in RL")

    @model_validator(mode="after")
    def _heads(self) -> "TextModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"text.model.n_embd = {self.n_embd} must be a multiple of text.model.n_head = {self.n_head}")
        return self


class SFTConfig(Section):
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(2e-3, gt=0.0)
    corpus_size: int = Field(20_000, ge=16, description="demonstrations sampled from the task's grammar")


class RewardModelConfig(Section):
    """Comparisons come in groups, as in InstructGPT: ``responses_per_prompt`` SFT samples of one prompt and
    every pair among them; ``pairs``, ``val_pairs`` and ``batch_size`` count comparisons (whole groups)."""

    pairs: int = Field(56_000, ge=16, description="training comparisons, on SFT samples of train prompts")
    val_pairs: int = Field(7_000, ge=16, description="held-out comparisons (held-out prompts) for rm/accuracy")
    responses_per_prompt: int = Field(8, ge=2)
    label_noise: float = Field(0.3, gt=0.0, description="Bradley-Terry temperature of the simulated labellers")
    steps: int = Field(600, ge=0)
    batch_size: int = Field(224, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)


class LoRAConfig(Section):
    """Low-rank adapters on the policy; the reference is the same base with adapters off."""

    rank: int = Field(4, ge=1, description="4 keeps the default GPT under 5% trainable")
    alpha: float = Field(16.0, gt=0.0)
    target_modules: list[str] = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    quantize_base: Optional[Literal["int8", "nf4"]] = Field(None, description="QLoRA: freeze the base quantized")


class AdaptiveKLConfig(Section):
    """Ziegler et al. (2019): beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2) n / horizon)."""

    target: float = Field(4.0, gt=0.0, description="KL per response (summed over tokens), nats")
    horizon: int = Field(2000, ge=1, description="responses over which beta can move by ~e^0.2")


class TextConfig(Section):
    """The toy RLHF pipeline: SFT -> reward model -> PPO with a per-token KL penalty."""

    model: TextModelConfig = Field(default_factory=TextModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    reward_model: RewardModelConfig = Field(default_factory=RewardModelConfig)
    updates: int = Field(60, ge=0, description="PPO iterations (generate -> score -> update)")
    prompts_per_update: int = Field(64, ge=1)
    num_generations: int = Field(1, ge=1, description="samples per prompt (rloo/grpo need >= 2)")
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0.0)
    top_k: Optional[int] = Field(None, ge=1)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    kl_coef: float = Field(0.1, ge=0.0, description="beta of the per-token KL penalty to the SFT reference")
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: Optional[AdaptiveKLConfig] = None
    missing_eos_penalty: Optional[float] = Field(1.0, ge=0.0, description="subtracted from the score of a "
                                                 "response that never emitted EOS")
    whiten_rewards: bool = False
    reward_function: Optional[str] = Field(None, description="a .py file with reward_function(prompt, response) "
                                           "-> float; replaces the learned reward model")
    init_from: Optional[str] = Field(None, description="a run directory whose SFT / reward-model stages to reuse")
    lora: Optional[LoRAConfig] = None
    sample_every: int = Field(10, ge=1, description="log sample generations every N updates")
    snapshot_every: int = Field(10, ge=1, description="keep the policy every N updates (over-optimisation plot)")
    eval_prompts: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _groups(self) -> "TextConfig":
        if self.advantage in ("rloo", "grpo") and self.num_generations < 2:
            raise ValueError(f"text.advantage = {self.advantage!r} compares samples of the same prompt: set "
                             f"text.num_generations >= 2 (got {self.num_generations})")
        return self


STAGES = ("sft", "reward_model", "ppo")


class Config(Section):
    """A whole run: everything needed to reproduce it is in here."""

    env: EnvConfig = Field(default_factory=EnvConfig)
    ppo: PPOConfig = Field(default_factory=PPOConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    precision: PrecisionConfig = Field(default_factory=PrecisionConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    total_timesteps: int = Field(100_000, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: Optional[int] = Field(1, ge=1, description="CPU threads for torch; 1 is fastest for small nets")
    text: Optional[TextConfig] = Field(None, description="train the toy RLHF text pipeline instead of a gym env")
    stages: Optional[list[Literal["sft", "reward_model", "ppo"]]] = Field(
        None, description="text runs: which stages to run, in order (default: sft, reward_model, ppo)")

    @model_validator(mode="after")
    def _stages(self) -> "Config":
        if self.stages is not None and self.text is None:
            raise ValueError("stages applies to text runs only (add a text: section)")
        return self

    @property
    def text_stages(self) -> list[str]:
        return [s for s in STAGES if s in self.stages] if self.stages is not None else list(STAGES)


# ----------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Read a YAML file (or ``data``), apply ``key=value`` overrides, validate. Raises ConfigError."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    for item in overrides or []:
        key, value = parse_override(item)
        if key.startswith("ppo.") and isinstance(raw.get("ppo"), dict):
            _drop_synonyms(raw["ppo"], key[4:])
        set_dotted(raw, key, value)
    return validate(apply_deepracer_files(raw))


# ----------------------------------------------------------------------------- DeepRacer's own files

DEEPRACER_FILE_KEYS = ("hyperparameters", "model_metadata", "reward_function")
# hyperparameters.json keys that PPO here has no use for (exploration is the policy's own sampling).
DEEPRACER_IGNORED = ("e_greedy_value", "epsilon_steps", "exploration_type", "stack_size", "term_cond_avg_score",
                     "term_cond_max_episodes", "sac_alpha")
DEEPRACER_PPO_KEYS = ("batch_size", "beta_entropy", "discount_factor", "loss_type", "lr",
                      "num_episodes_between_training", "num_epochs")


def apply_deepracer_files(raw: dict) -> dict:
    """Fold a ``deepracer: {hyperparameters, model_metadata, reward_function}`` section into the config.

    hyperparameters.json's console words go into ``ppo`` (and so are held to the console's ranges);
    the model_metadata action space and the reward function file become env kwargs. Keys given
    explicitly in ``ppo`` or ``env.kwargs`` win over the files.
    """
    files = raw.pop("deepracer", None)
    if files is None:
        return raw
    if not isinstance(files, dict):
        raise ConfigError(f"deepracer = {files!r}: expected a mapping with keys {', '.join(DEEPRACER_FILE_KEYS)}")
    for key in files:
        if key not in DEEPRACER_FILE_KEYS:
            close = difflib.get_close_matches(key, DEEPRACER_FILE_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"deepracer.{key}: unknown key{hint} (allowed: {', '.join(DEEPRACER_FILE_KEYS)})")
    env = raw.setdefault("env", {})
    kwargs = env.setdefault("kwargs", {})
    for key in ("model_metadata", "reward_function"):
        if files.get(key) is not None:
            path = Path(files[key])
            if not path.is_file():
                raise ConfigError(f"deepracer.{key} = {str(path)!r}: file not found")
            kwargs[key] = str(path)
    if files.get("hyperparameters") is not None:
        ppo = raw.setdefault("ppo", {})
        explicit = {_canonical(k) for k in ppo}
        for key, value in _read_hyperparameters(files["hyperparameters"]).items():
            if _canonical(key) not in explicit:
                ppo[key] = value
    return raw


def _read_hyperparameters(path: str | Path) -> dict:
    import json

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"deepracer.hyperparameters = {str(path)!r}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"deepracer.hyperparameters = {str(path)!r}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"deepracer.hyperparameters = {str(path)!r}: expected a JSON object")
    out = {}
    for key, value in data.items():
        if key in DEEPRACER_PPO_KEYS:
            out[key] = value
        elif key not in DEEPRACER_IGNORED:
            allowed = ", ".join(DEEPRACER_PPO_KEYS + DEEPRACER_IGNORED)
            raise ConfigError(f"deepracer.hyperparameters: unknown key {key!r} in {str(path)!r} (allowed: {allowed})")
    return out


def _canonical(name: str) -> str:
    return CONSOLE_ALIASES.get(name) or SB3_ALIASES.get(name) or name


def _drop_synonyms(section: dict, name: str) -> None:
    """An override replaces the file's value even when one of them uses an alias (lr vs learning_rate)."""
    for key in [k for k in section if k != name and _canonical(k) == _canonical(name)]:
        del section[key]


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    """``ppo.learning_rate=1e-3`` -> ("ppo.learning_rate", 0.001); values are parsed as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key=value, e.g. ppo.learning_rate=1e-3")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}={value!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def validate(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key, the value given and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_did_you_mean(loc)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(("ppo.", "text.")) or not key:
            lines.append(msg)
        elif err["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            lines.append(f"{key} = {err.get('input')!r}: {msg[0].lower() + msg[1:]}")
    return "config error: " + "; ".join(lines)


def _did_you_mean(loc: list[str]) -> str:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return ""
        model = ann
    names = [n for n in model.model_fields if n != "console_ranges"]
    if model is PPOConfig:
        names += list(CONSOLE_ALIASES) + list(SB3_ALIASES)
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.6)
    allowed = ", ".join(sorted(n for n in model.model_fields if n != "console_ranges"))
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {allowed})"


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
