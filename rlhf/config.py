"""Typed configuration: YAML file + dotted ``key=value`` overrides -> validated ``Config``.

DeepRacer's console words (``num_epochs``, ``lr``, ``beta_entropy``, ...) and Stable-Baselines3's
(``n_epochs``, ``gamma``, ``ent_coef``, ...) are accepted as aliases of our names. A ``ppo`` section
written in console words is also held to the console's ranges, so a file that trains here would be
accepted by the DeepRacer console too.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf.errors import ConfigError
from rlhf.schedules import MAX_MAGNITUDE, parse_schedule

# Sizes that decide how much memory a run allocates up front: bounded so a typo fails here, not in malloc.
MAX_ENVS = 65_536
MAX_STEPS = 2**24  # n_steps, batch sizes, and n_steps * num_envs (the rollout's rows)
MAX_PARAMS = 2**30  # a network's weights: 4 GiB in fp32 before gradients and Adam's state; far more is killed for memory
MAX_SEED = 2**31 - 1  # numpy and gymnasium take seeds in [0, 2**32); seed + env index + update must fit


class Section(BaseModel):
    """Every config section: unknown keys, NaN/inf and absurd magnitudes in float fields are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _sane_floats(cls, value: Any) -> Any:
        if isinstance(value, float) and abs(value) > MAX_MAGNITUDE:
            raise ValueError(f"must be a finite number with magnitude at most {MAX_MAGNITUDE:g}")
        return value


def _finite_values(value: Any, where: str = "") -> Any:
    """Refuse NaN/inf anywhere inside free-form values (env kwargs): they reach the env unchecked otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where or 'value'} = {value}: must be a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite_values(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _finite_values(v, f"{where}[{i}]")
    return value


def _positive_schedule(value: Any) -> float | str:
    initial, linear = parse_schedule(value)
    if initial <= 0:
        raise ValueError(f"must be > 0 (a number or 'lin_<number>'), got {value!r}")
    return value if linear else initial  # YAML reads 1e-3 as a string: store the number


class EnvConfig(Section):
    """Which gymnasium environment, how many copies, and how they are vectorised."""

    id: str = "CartPole-v1"
    num_envs: int = Field(1, ge=1, le=MAX_ENVS)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    eval_kwargs: dict[str, Any] = Field(default_factory=dict, description="merged over kwargs by `rlhf eval`")
    vectorization: Literal["auto", "sync", "async", "native"] = "auto"

    _finite_kwargs = field_validator("kwargs", "eval_kwargs")(lambda v: _finite_values(v))


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

    n_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="steps per env per update (default 2048)")
    episodes_between_updates: Optional[int] = Field(None, ge=1, le=1_000_000,
                                                    description="collect whole episodes instead")
    batch_size: int = Field(64, ge=2, le=MAX_STEPS, description="minibatch size")
    epochs: int = Field(10, ge=1, le=10_000)
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
    skip_nonfinite_updates: bool = Field(
        False, description="skip (and count in train/skipped_updates) a minibatch whose loss or gradient is "
                           "NaN/inf instead of stopping the run; NaN/inf from the env always stops it")

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


class MoEConfig(Section):
    """Mixture-of-Experts hidden layers (rlhf.moe): E experts, each sample routed to the top k."""

    experts: int = Field(4, ge=2, le=256)
    top_k: int = Field(2, ge=1, le=256, description="experts run per sample/token")
    noisy: bool = Field(True, description="learned Gaussian noise on the router logits, in training only")
    aux_loss_coef: float = Field(0.01, ge=0.0, le=100.0, description="load-balancing loss weight")
    z_loss_coef: float = Field(0.0, ge=0.0, le=100.0, description="router z-loss weight")
    capacity_factor: Optional[float] = Field(None, gt=0.0, le=64.0,
                                             description="cap each expert at factor * N * k / E assignments")

    @model_validator(mode="after")
    def _k(self) -> "MoEConfig":
        if self.top_k > self.experts:
            raise ValueError(f"moe.top_k = {self.top_k} must not exceed moe.experts = {self.experts}")
        return self


class PolicyConfig(Section):
    """Actor-critic network shape. Image observations get a CNN trunk automatically."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["tanh", "relu", "elu", "gelu", "silu"] = "tanh"
    shared: bool = Field(False, description="one trunk for actor and critic")
    ortho_init: bool = True
    normalize_obs: bool = Field(False, description="running mean/std, saved with checkpoints")
    log_std_init: float = Field(0.0, ge=-20.0, le=5.0, description="initial log std (std e^-20 to e^5)")
    cnn_features: int = Field(512, ge=1, le=65_536)
    fused: Literal["auto", "on", "off"] = Field(
        "auto", description="run tanh actor/critic MLPs as one autograd node (rlhf.fused_mlp) and act through "
                            "the actor's numpy twin on the CPU (rlhf.numpy_actor); off: layer by layer, torch acts")
    moe: Optional[MoEConfig] = Field(None, description="make the MLP hidden layers Mixture-of-Experts layers")

    @field_validator("fused", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans

    @field_validator("hidden_sizes")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        if any(h < 1 or h > 65_536 for h in v):
            raise ValueError(f"every hidden size must be from 1 to 65536, got {v}")
        return v

    @model_validator(mode="after")
    def _size(self) -> "PolicyConfig":
        h = self.hidden_sizes
        weights = sum(a * b for a, b in zip(h, h[1:])) * (1 if self.shared else 2) * (self.moe.experts if self.moe else 1)
        if weights > MAX_PARAMS:
            raise ValueError(f"policy.hidden_sizes = {h}: {weights:.3g} weights between hidden layers alone, over the "
                             f"{MAX_PARAMS:.3g} this builds (4 GiB of fp32 weights); use smaller or fewer layers")
        return self


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


class EvalConfig(Section):
    """Evaluation during training (gym runs), as Stable-Baselines3's EvalCallback: every ``every`` steps play
    ``episodes`` episodes in a separate env, log ``eval/mean_reward`` and keep the best policy in ``best/``."""

    every: int = Field(0, ge=0, description="environment steps between evaluations (0: never)")
    episodes: int = Field(5, ge=1, description="episodes per evaluation")
    deterministic: bool = Field(True, description="take the most likely action (false: sample)")


class TextModelConfig(Section):
    """The tiny GPT (nanoGPT-shaped) used for the policy, the reference and the reward model."""

    n_layer: int = Field(4, ge=1, le=256)
    n_head: int = Field(4, ge=1, le=256)
    n_embd: int = Field(128, ge=8, le=16_384)
    block_size: int = Field(48, ge=8, le=65_536, description="longest prompt + response, in tokens")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="SFT and reward-model training only; off in RL")
    moe: Optional[MoEConfig] = Field(None, description="make each block's FFN a Mixture of FFN experts")

    @model_validator(mode="after")
    def _heads(self) -> "TextModelConfig":
        if self.n_embd % self.n_head:
            raise ValueError(f"text.model.n_embd = {self.n_embd} must be a multiple of text.model.n_head = {self.n_head}")
        weights = self.n_layer * (4 + 8 * (self.moe.experts if self.moe else 1)) * self.n_embd**2 \
            + self.block_size * self.n_embd
        if weights > MAX_PARAMS:
            raise ValueError(f"text.model: n_layer = {self.n_layer}, n_embd = {self.n_embd} make {weights:.3g} weights, "
                             f"over the {MAX_PARAMS:.3g} this builds (4 GiB of fp32 weights); use a smaller model")
        return self


class SFTConfig(Section):
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1, le=65_536)
    learning_rate: float = Field(2e-3, gt=0.0)
    corpus_size: int = Field(20_000, ge=16, le=10**8, description="demonstrations sampled from the task's grammar")


class RewardModelConfig(Section):
    """Comparisons come in groups, as in InstructGPT: ``responses_per_prompt`` SFT samples of one prompt and
    every pair among them; ``pairs``, ``val_pairs`` and ``batch_size`` count comparisons (whole groups)."""

    pairs: int = Field(56_000, ge=16, le=10**8, description="training comparisons, on SFT samples of train prompts")
    val_pairs: int = Field(7_000, ge=16, le=10**8, description="held-out comparisons (held-out prompts) for rm/accuracy")
    responses_per_prompt: int = Field(8, ge=2, le=1024)
    label_noise: float = Field(0.3, gt=0.0, description="Bradley-Terry temperature of the simulated labellers")
    steps: int = Field(600, ge=0)
    batch_size: int = Field(224, ge=1, le=65_536)
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
    prompts_per_update: int = Field(64, ge=1, le=65_536)
    num_generations: int = Field(1, ge=1, le=1024, description="samples per prompt (rloo/grpo need >= 2)")
    advantage: Literal["gae", "rloo", "grpo"] = "gae"
    max_new_tokens: int = Field(32, ge=1, le=65_536)
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
    eval_prompts: int = Field(256, ge=1, le=1_000_000)

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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    total_timesteps: int = Field(100_000, ge=1, le=2**53)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="0 to 2**31 - 1")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: Optional[int] = Field(1, ge=1, le=1024,  # far more threads than that fail to start (a crash)
                                         description="CPU threads for torch; 1 is fastest for small nets")
    backend: Literal["rlhf", "sb3"] = Field(
        "rlhf", description="gym runs: train with our PPO (rlhf) or Stable-Baselines3's (sb3, rlhf.backends.sb3)")
    text: Optional[TextConfig] = Field(None, description="train the toy RLHF text pipeline instead of a gym env")
    stages: Optional[list[Literal["sft", "reward_model", "ppo"]]] = Field(
        None, min_length=1, description="text runs: which stages to run, in order (default: sft, reward_model, ppo)")

    @model_validator(mode="after")
    def _stages(self) -> "Config":
        if self.stages is not None and self.text is None:
            raise ValueError("stages applies to text runs only (add a text: section)")
        return self

    @model_validator(mode="after")
    def _rollout_size(self) -> "Config":
        rows = self.ppo.rollout_steps * self.env.num_envs
        if rows > MAX_STEPS:
            raise ValueError(f"ppo.n_steps * env.num_envs = {self.ppo.rollout_steps} * {self.env.num_envs} = {rows} "
                             f"rollout rows: at most {MAX_STEPS} fit in memory; lower either")
        return self

    @model_validator(mode="after")
    def _eval_gym_only(self) -> "Config":
        if self.eval.every and self.text is not None:
            raise ValueError(f"eval.every = {self.eval.every}: evaluation during training applies to gym runs; "
                             "text runs are evaluated with rlhf eval RUN_DIR (set eval.every=0)")
        return self

    @model_validator(mode="after")
    def _backend_gym_only(self) -> "Config":
        if self.backend == "sb3" and self.text is not None:
            raise ValueError("backend = 'sb3': Stable-Baselines3 trains gym envs; text runs use backend=rlhf")
        return self

    @property
    def text_stages(self) -> list[str]:
        return [s for s in STAGES if s in self.stages] if self.stages is not None else list(STAGES)


# ----------------------------------------------------------------------------- loading

def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Config:
    """Read a YAML file (or ``data``), apply ``key=value`` overrides, validate. Raises ConfigError."""
    raw = read_yaml(path) if path is not None else dict(data or {})
    resolve_file_paths(raw, config_folder(path))  # the file's own relative paths: from its folder
    for item in overrides or []:
        key, value = parse_override(item)
        if key.startswith("ppo.") and isinstance(raw.get("ppo"), dict):
            _drop_synonyms(raw["ppo"], key[4:])
        set_dotted(raw, key, value)
    return validate(apply_deepracer_files(raw))


# ----------------------------------------------------------------------------- DeepRacer's own files

DEEPRACER_FILE_KEYS = ("hyperparameters", "model_metadata", "reward_function")
DEEPRACER_KEYS = DEEPRACER_FILE_KEYS + ("reward_timeout_s",)
DEEPRACER_PPO_KEYS = ("batch_size", "beta_entropy", "discount_factor", "loss_type", "lr",
                      "num_episodes_between_training", "num_epochs")
# hyperparameters.json stop conditions: checked and kept with the run (rlhf.integrations.deepracer.stop_reason
# evaluates them); the trainer does not stop on them, which a warning says by name
DEEPRACER_STOP_KEYS = ("term_cond_max_episodes", "term_cond_avg_score")
# hyperparameters.json keys accepted when they mean what PPO here does anyway, else refused or warned about
DEEPRACER_CHECKED = {"stack_size": (1,), "exploration_type": ("categorical", "additive_noise")}
# hyperparameters.json keys of other algorithms: read, warned about by name, not used
DEEPRACER_UNUSED = {"e_greedy_value": "epsilon-greedy exploration", "epsilon_steps": "epsilon-greedy exploration",
                    "sac_alpha": "SAC's entropy temperature"}
DEEPRACER_DEFAULT_KWARGS = {"simtrace_path": "{run_dir}/simtrace/training-simtrace.csv"}
DEEPRACER_DEFAULT_EVAL_KWARGS = {"training": False, "simtrace_path": "{run_dir}/simtrace/evaluation-simtrace.csv"}
# config keys (dotted) and env kwargs that name input files: relative paths resolve against the config's folder
FILE_PATH_KEYS = {"deepracer": ("hyperparameters", "model_metadata", "reward_function"), "text": ("reward_function",)}
ENV_FILE_KWARGS = ("reward_function", "model_metadata", "hyperparameters", "track")


def _names_file(key: str, value: Any) -> bool:
    """A string that names a file (not a built-in reward or track, not a run-relative ``{run_dir}`` path)."""
    if not isinstance(value, str) or not value.strip() or "{run_dir}" in value:
        return False
    if key == "reward_function":
        return value.strip().endswith(".py")
    if key == "track":
        return value.strip().endswith(".npy")
    return True


def resolve_file_paths(raw: dict, base: Path) -> dict:
    """Make relative input-file paths in ``raw`` absolute against ``base`` (the YAML file's folder, or the
    current directory for command-line overrides), so a config runs the same from any directory."""
    def fix(section: Any, keys: tuple[str, ...]) -> None:
        if not isinstance(section, dict):
            return
        for key in keys:
            value = section.get(key)
            if _names_file(key, value):
                path = Path(value.strip()).expanduser()
                section[key] = str(path if path.is_absolute() else (base / path).resolve())

    for section, keys in FILE_PATH_KEYS.items():
        fix(raw.get(section), keys)
    env = raw.get("env")
    if isinstance(env, dict):
        fix(env.get("kwargs"), ENV_FILE_KWARGS)
        fix(env.get("eval_kwargs"), ENV_FILE_KWARGS)
    return raw


def config_folder(path: str | Path | None) -> Path:
    """The folder relative paths in a config file are read from (the current directory without a file)."""
    if path is None:
        return Path.cwd()
    path = Path(path)
    return path if path.is_dir() else path.parent


def _warn(message: str) -> None:
    import sys

    print(f"rlhf: warning: {message}", file=sys.stderr)


def apply_deepracer_files(raw: dict) -> dict:
    """Fold a ``deepracer: {hyperparameters, model_metadata, reward_function, reward_timeout_s}`` section into
    the config (relative paths still left, from command-line overrides, are read from the current directory).

    hyperparameters.json's console words go into ``ppo`` (and so are held to the console's ranges; keys
    given explicitly in ``ppo`` win); the file is kept as ``env.kwargs.hyperparameters`` (copied into the
    run); its stop conditions (``term_cond_*``) and settings of other algorithms are warned about by name,
    settings that cannot be honoured are refused. The model_metadata
    file (action space, sensor) and the reward function file become env kwargs, over those in ``env.kwargs``.
    A run made from this section alone gets what configs/deepracer.yaml has: env ``DeepRacer-v0``, training
    and evaluation simtraces, and evaluation laps from the start line.
    """
    resolve_file_paths(raw, Path.cwd())
    files = raw.pop("deepracer", None)
    if files is None:
        return raw
    if not isinstance(files, dict):
        raise ConfigError(f"deepracer = {files!r}: expected a mapping with keys {', '.join(DEEPRACER_KEYS)}")
    for key in files:
        if key not in DEEPRACER_KEYS:
            close = difflib.get_close_matches(key, DEEPRACER_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"deepracer.{key}: unknown key{hint} (allowed: {', '.join(DEEPRACER_KEYS)})")
    env = raw.setdefault("env", {})
    if not isinstance(env, dict):
        raise ConfigError(f"env = {env!r}: expected a mapping")
    env_id = env.setdefault("id", "DeepRacer-v0")
    if not str(env_id).split(":")[-1].startswith("DeepRacer"):
        raise ConfigError(f"deepracer: DeepRacer's files apply to DeepRacer-v0, but env.id = {env_id!r}")
    kwargs = env.setdefault("kwargs", {})
    eval_kwargs = env.setdefault("eval_kwargs", {})
    for section, defaults in ((kwargs, DEEPRACER_DEFAULT_KWARGS), (eval_kwargs, DEEPRACER_DEFAULT_EVAL_KWARGS)):
        for key, value in defaults.items():
            section.setdefault(key, value)
    for key in ("model_metadata", "reward_function"):
        if files.get(key) is not None:
            path = Path(files[key])
            if not path.is_file():
                raise ConfigError(f"deepracer.{key} = {str(path)!r}: file not found")
            kwargs[key] = str(path)
    if files.get("reward_timeout_s") is not None:
        kwargs["reward_timeout_s"] = files["reward_timeout_s"]
    if files.get("hyperparameters") is not None:
        ppo = raw.setdefault("ppo", {})
        explicit = {_canonical(k) for k in ppo}
        for key, value in _read_hyperparameters(files["hyperparameters"]).items():
            if _canonical(key) not in explicit:
                ppo[key] = value
                continue
            given = next(v for k, v in ppo.items() if _canonical(k) == _canonical(key))
            if given != value:
                _warn(f"deepracer.hyperparameters {key} = {value!r} is not used: the config sets "
                      f"ppo.{_canonical(key)} = {given!r}, which wins")
        kwargs["hyperparameters"] = str(files["hyperparameters"])
    return raw


def _read_hyperparameters(path: str | Path) -> dict:
    """The PPO settings of a hyperparameters.json; its other keys are checked (see the constants above)."""
    import json

    path = Path(path)
    where = f"deepracer.hyperparameters = {str(path)!r}"
    if not path.is_file():
        raise ConfigError(f"{where}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = f" (line {exc.lineno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{where}: not valid JSON{line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    out, unused = {}, []
    for key, value in data.items():
        if key in DEEPRACER_PPO_KEYS:
            if isinstance(value, float) and not math.isfinite(value):  # JSON's NaN, Infinity, 1e400
                raise ConfigError(f"{where}: {key} = {value}: must be a finite number")
            out[key] = value
        elif key in DEEPRACER_STOP_KEYS:
            _check_stop_condition(key, value, where)  # applied by the trainer (rlhf.integrations.deepracer)
        elif key in DEEPRACER_CHECKED:
            allowed = DEEPRACER_CHECKED[key]
            if value not in allowed:
                raise ConfigError(f"{where}: {key} = {value!r} is not implemented here (allowed: "
                                  f"{', '.join(map(repr, allowed))})")
        elif key in DEEPRACER_UNUSED:
            unused.append(f"{key} = {value!r} ({DEEPRACER_UNUSED[key]})")
        else:
            allowed = ", ".join((*DEEPRACER_PPO_KEYS, *DEEPRACER_STOP_KEYS, *DEEPRACER_CHECKED, *DEEPRACER_UNUSED))
            raise ConfigError(f"deepracer.hyperparameters: unknown key {key!r} in {str(path)!r} (allowed: {allowed})")
    if unused:
        _warn(f"{where}: not used by PPO here, which explores by sampling its policy: {'; '.join(unused)}")
    return out


def _check_stop_condition(key: str, value: Any, where: str) -> None:
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if key == "term_cond_max_episodes":
        ok = ok and value >= 1 and float(value).is_integer()
    if not ok:
        wanted = "a whole number >= 1" if key == "term_cond_max_episodes" else "a finite number"
        raise ConfigError(f"{where}: {key} = {value!r}: must be {wanted}")


def _canonical(name: str) -> str:
    return CONSOLE_ALIASES.get(name) or SB3_ALIASES.get(name) or name


def _drop_synonyms(section: dict, name: str) -> None:
    """An override replaces the file's value even when one of them uses an alias (lr vs learning_rate)."""
    for key in [k for k in section if k != name and _canonical(k) == _canonical(name)]:
        del section[key]


MAX_YAML_NODES = 100_000  # after expanding aliases: a config is a few hundred; "billion laughs" is 10**9
MAX_CONFIG_BYTES = 10**7


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the later one would silently win) and alias expansions
    beyond ``MAX_YAML_NODES`` nodes (a few lines of anchors can otherwise expand to gigabytes)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (each key may appear once in a mapping)",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            problem = _alias_problem(node)
            if problem:
                raise yaml.composer.ComposerError(None, None, problem, None)
        return node


class _Cycle(Exception):
    pass


def _alias_problem(root) -> str | None:
    """Why the document's aliases are refused (None if they are fine): a node that contains itself, or more
    than ``MAX_YAML_NODES`` nodes once every alias is expanded. Memoised per node: linear in the file."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if sizes.get(id(node)) == -1:
            raise _Cycle
        if id(node) not in sizes:
            sizes[id(node)] = -1  # being expanded
            children = ([c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode)
                        else node.value if isinstance(node, yaml.SequenceNode) else [])
            sizes[id(node)] = min(1 + sum(size(c) for c in children), MAX_YAML_NODES + 1)
        return sizes[id(node)]

    try:
        total = size(root)
    except _Cycle:
        return "an alias refers to a node that contains it (refused: it would never end)"
    if total > MAX_YAML_NODES:
        return f"aliases expand to more than {MAX_YAML_NODES} nodes (refused: an alias bomb?)"
    return None


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` without duplicate keys or alias bombs (see ``_StrictLoader``)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found")
    if not path.is_file():  # a FIFO or a device such as /dev/zero would never finish reading
        raise ConfigError(f"config file {str(path)!r} is not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is {path.stat().st_size} bytes: a config is at most "
                          f"{MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                          f"offset {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    try:
        raw = yaml_load(text) or {}
    except RecursionError:
        raise ConfigError(f"config file {str(path)!r} nests too deeply to be a config") from None
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
        value = yaml_load(text) if text.strip() else None
    except (yaml.YAMLError, RecursionError):
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


_UNION_TAGS = ("float", "str", "int", "bool", "none")


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the key, the value given and what is allowed."""
    lines, seen = [], set()
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if len(loc) > 1 and (loc[-1] in _UNION_TAGS or loc[-1].startswith(("function-", "list[", "dict["))):
            loc = loc[:-1]  # one member of a union (e.g. learning_rate: float | str): report the key once
        key = ".".join(loc)
        if key and key in seen:
            continue
        seen.add(key)
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{_did_you_mean(loc)}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith(("ppo.", "text.", "policy.")) or not key:
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
