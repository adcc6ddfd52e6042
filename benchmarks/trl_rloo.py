"""Our ``text.advantage=rloo`` against TRL's ``RLOOTrainer`` on the same model, tokenizer, prompts and reward.

    python benchmarks/trl_rloo.py [--budget 60] [--seeds 0 1] [--sft-steps 600] [--trl-position-ids]
                                  # prints the report and writes benchmarks/trl_rloo.md

One torch thread, CPU. The script trains our SFT model once (configs/text_rlhf.yaml's GPT shape), converts it
to a ``transformers`` ``GPT2LMHeadModel`` (``rlhf.text.hf``; logits checked against ours) and starts both
engines from those weights: ours through ``rlhf.text.ppo.TextPPO`` with ``text.advantage=rloo``, TRL through
``RLOOTrainer`` with our vocabulary wrapped as a ``PreTrainedTokenizerFast``. Both score completions with the
task's hidden gold preference as a plain Python function, both run ``--budget`` seconds of training per seed (each
stops at the first generation-batch boundary past the budget), and both final policies are evaluated the
same way: converted to our GPT, sampled on the held-out prompts with one seed, gold-scored, KL to the SFT
start measured. Throughput counts every completion the reward function scored during training.

``--trl-position-ids`` adds a third run: TRL with GPT-2's forward deriving position ids from the attention
mask when none are passed (what ``generate`` already does), to measure what TRL's padded-position
log-probs cost on this absolute-position model (see the notes written to the report).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlhf.text.hf import from_transformers, hf_logits, to_transformers, to_transformers_tokenizer  # noqa: E402
from rlhf.text.model import GPT, GPTConfig  # noqa: E402
from rlhf.text.task import Task, gold_score  # noqa: E402
from rlhf.text.tokenizer import Tokenizer  # noqa: E402


@dataclass
class Settings:
    """The RLOO settings both engines run with (mapped onto each one's names in ``ours`` / ``trl``)."""
    prompts_per_update: int = 16
    num_generations: int = 4
    minibatch: int = 16          # completions per optimizer step
    epochs: int = 2              # passes over each generation batch (TRL: num_iterations)
    learning_rate: float = 1e-4
    kl_coef: float = 0.1         # beta, k1 estimator summed over the completion, subtracted from the reward
    clip_range: float = 0.2
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-5
    max_new_tokens: int = 32
    temperature: float = 1.0
    seed: int = 0

    @property
    def completions_per_update(self) -> int:
        return self.prompts_per_update * self.num_generations


@dataclass
class Meter:
    """Counts what the reward function scored: completions, completion tokens (EOS included), and when."""
    start: float = 0.0
    cpu_start: float = 0.0       # time.process_time() at start: CPU seconds are less disturbed by other load
    generating: float = 0.0      # wall seconds spent sampling completions
    completions: int = 0
    tokens: int = 0
    curve: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, batch mean gold)

    def record(self, prompts: list[str], completions: list[str], lengths: list[int]) -> list[float]:
        scores = [gold_score(p, c) for p, c in zip(prompts, completions)]
        self.completions += len(scores)
        self.tokens += int(sum(lengths))
        self.curve.append((time.perf_counter() - self.start, float(np.mean(scores))))
        return scores

    def begin(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def timed(self, fn):
        """``fn`` with its wall time added to ``generating``."""
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.generating += time.perf_counter() - t0
        return wrapper

    def end(self) -> dict:
        return {"seconds": time.perf_counter() - self.start, "cpu_seconds": time.process_time() - self.cpu_start}


# ----------------------------------------------------------------------------- SFT start and evaluation

def train_start_policy(task: Task, tokenizer: Tokenizer, steps: int, seed: int) -> tuple[GPT, dict]:
    from rlhf.config import load_config
    from rlhf.text.sft import train_sft

    m = load_config(ROOT / "configs" / "text_rlhf.yaml").text.model
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=m.block_size, n_layer=m.n_layer,
                          n_head=m.n_head, n_embd=m.n_embd, dropout=0.0))
    metrics = train_sft(model, tokenizer, task, steps=steps, batch_size=32, lr=2e-3, seed=seed)
    return model.eval(), metrics


@torch.no_grad()
def evaluate(model: GPT, reference: GPT, tokenizer: Tokenizer, prompts: list[str], s: Settings, seed: int) -> dict:
    """Sampled completions on ``prompts`` (one generator seed): mean gold, its standard error, KL to ``reference``."""
    from rlhf.text.generate import generate
    from rlhf.text.policy import TextPolicy

    ids, mask = tokenizer.encode_batch(prompts)
    gen = generate(model, ids, mask, s.max_new_tokens, tokenizer.eos_id, tokenizer.pad_id, temperature=s.temperature,
                   generator=torch.Generator().manual_seed(seed))
    lengths = gen.response_mask.sum(1)
    responses = [tokenizer.decode(row[: int(n)]) for row, n in zip(gen.response.tolist(), lengths.tolist())]
    gold = np.array([gold_score(p, r) for p, r in zip(prompts, responses)])
    obs = {"input_ids": gen.sequences, "attention_mask": gen.attention_mask}
    logp = TextPolicy(model, s.temperature).logprobs(obs, gen.response)
    ref = TextPolicy(reference, s.temperature).logprobs(obs, gen.response)
    kl = ((logp - ref) * gen.response_mask).sum(1)
    return {"gold": float(gold.mean()), "gold_se": float(gold.std(ddof=1) / math.sqrt(len(gold))),
            "kl": float(kl.mean()), "eos": float((gen.response == tokenizer.eos_id).any(1).float().mean()),
            "length": float(lengths.float().mean()), "example": f"{prompts[0]} | {responses[0]}"}


@torch.no_grad()
def position_gap(hf_model, model: GPT, tokenizer: Tokenizer, prompts: list[str], s: Settings) -> dict:
    """How far a GPT2LMHeadModel forward without ``position_ids`` (as TRL's RLOO calls it) is from the
    sampling distribution on left-padded rows: mean |delta log-prob| per completion token, and the share of
    rows whose prompt is padded."""
    from rlhf.text.generate import generate, logprobs_from_logits

    ids, mask = tokenizer.encode_batch(prompts)
    gen = generate(model, ids, mask, s.max_new_tokens, tokenizer.eos_id, tokenizer.pad_id,
                   generator=torch.Generator().manual_seed(s.seed))
    T = gen.response.shape[1]
    plain = hf_model(input_ids=gen.sequences, attention_mask=gen.attention_mask).logits[:, -T - 1:-1]
    lp = logprobs_from_logits(plain, gen.response, s.temperature)
    m = gen.response_mask.bool()
    padded = (mask == 0).any(1)
    delta = (lp - gen.logprobs).abs()
    return {"mean_abs_dlogp": float(delta[m].mean()),
            "mean_abs_dlogp_padded_rows": float(delta[m & padded[:, None]].mean()),
            "padded_rows": float(padded.float().mean())}


# ----------------------------------------------------------------------------- the two engines

def run_ours(sft: GPT, tokenizer: Tokenizer, task: Task, s: Settings, budget: float) -> tuple[GPT, Meter, dict]:
    from rlhf.build import build_optimizer, build_precision, ppo_settings
    from rlhf.config import load_config
    from rlhf.text.policy import TextPolicy
    from rlhf.text.ppo import TextPPO

    cfg = load_config(ROOT / "configs" / "text_rlhf.yaml", [
        "text.advantage=rloo", f"text.num_generations={s.num_generations}",
        f"text.prompts_per_update={s.prompts_per_update}", f"text.max_new_tokens={s.max_new_tokens}",
        f"text.temperature={s.temperature}", f"text.kl_coef={s.kl_coef}", "text.kl_estimator=k1",
        "text.adaptive_kl=null", "text.missing_eos_penalty=null", f"ppo.batch_size={s.minibatch}",
        f"ppo.epochs={s.epochs}", f"ppo.learning_rate={s.learning_rate}", f"ppo.clip_range={s.clip_range}",
        f"ppo.max_grad_norm={s.max_grad_norm}", "ppo.entropy_coef=0.0", f"seed={s.seed}",
        "logging.tensorboard=false", "logging.progress_bar=false"])
    meter = Meter()

    def score(prompts, responses, gen):
        return torch.tensor(meter.record(prompts, responses, gen.response_mask.sum(1).tolist()))

    t_init = time.perf_counter()
    torch.manual_seed(s.seed)
    policy = TextPolicy(copy.deepcopy(sft).train(), s.temperature)
    reference = TextPolicy(copy.deepcopy(sft).requires_grad_(False).eval(), s.temperature)
    ppo = TextPPO(cfg, policy, tokenizer, task.prompts("train"), score, reference.logprobs, ppo_settings(cfg.ppo),
                  build_precision(cfg, policy, torch.device("cpu")), build_optimizer(cfg, policy), torch.device("cpu"))
    init_s = time.perf_counter() - t_init
    import rlhf.text.ppo as ppo_module

    real_generate = ppo_module.generate
    ppo_module.generate = meter.timed(real_generate)
    try:
        meter.begin()
        while time.perf_counter() - meter.start < budget:
            ppo.iteration()
        times = meter.end()
    finally:
        ppo_module.generate = real_generate
    return policy.model.eval(), meter, {**times, "init_s": init_s, "updates": ppo.updates,
                                        "optimizer_steps": ppo.n_updates}


def patch_gpt2_positions() -> None:
    """GPT2Model.forward without position_ids computes them from the attention mask, as ``generate`` does.

    Patched on the trunk, not the LM head: TRL's fused log-prob head calls the trunk directly."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    from rlhf.text.model import position_ids_from_mask

    original = GPT2Model.forward

    def forward(self, *args, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        if position_ids is None and attention_mask is not None and past_key_values is None:
            position_ids = position_ids_from_mask(attention_mask)
        return original(self, *args, attention_mask=attention_mask, position_ids=position_ids,
                        past_key_values=past_key_values, **kwargs)

    forward.original = original
    GPT2Model.forward = forward


def unpatch_gpt2_positions() -> None:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    GPT2Model.forward = getattr(GPT2Model.forward, "original", GPT2Model.forward)


def run_trl(model_dir: Path, tokenizer: Tokenizer, task: Task, s: Settings, budget: float,
            out_dir: Path) -> tuple[GPT, Meter, dict]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    meter = Meter()

    def gold_reward(prompts, completions, completion_ids, **kwargs):
        return meter.record(prompts, completions, [len(c) for c in completion_ids])

    steps_per_generation = s.completions_per_update // s.minibatch
    cycle = steps_per_generation * s.epochs  # optimizer steps per generation batch

    class Budget(TrainerCallback):
        """Stop at the first generation-batch boundary past the budget (every scored completion trained on)."""

        def on_train_begin(self, args, state, control, **kwargs):
            meter.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % cycle == 0 and time.perf_counter() - meter.start >= budget:
                control.should_training_stop = True

    args = RLOOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=s.seed,
        per_device_train_batch_size=s.minibatch, gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation, num_generations=s.num_generations, num_iterations=s.epochs,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_k=0, top_p=1.0,
        learning_rate=s.learning_rate, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_epsilon=s.adam_eps, max_grad_norm=s.max_grad_norm, beta=s.kl_coef, epsilon=s.clip_range,
        normalize_advantages=False, max_steps=10**6, dataloader_num_workers=0)
    t_init = time.perf_counter()
    trainer = RLOOTrainer(model=str(model_dir), reward_funcs=gold_reward, args=args,
                          train_dataset=Dataset.from_dict({"prompt": task.prompts("train")}),
                          processing_class=to_transformers_tokenizer(tokenizer), callbacks=[Budget()])
    init_s = time.perf_counter() - t_init
    trainer._generate_single_turn = meter.timed(trainer._generate_single_turn)  # tokenized prompts -> completion ids
    trainer.train()
    times = meter.end()
    final = trainer.model.eval()
    ours = from_transformers(final)
    # the conversion back is checked on held-out prompts, like the forward one
    ids, mask = tokenizer.encode_batch(task.prompts("heldout"))
    with torch.no_grad():
        gap = float((ours(ids, attention_mask=mask).logits - hf_logits(final, ids, mask))[mask.bool()].abs().max())
    return ours, meter, {**times, "init_s": init_s, "updates": trainer.state.global_step // cycle,
                         "optimizer_steps": trainer.state.global_step, "back_conversion_max_abs": gap}


# ----------------------------------------------------------------------------- report

@torch.no_grad()
def generation_rates(sft: GPT, hf_sft, tokenizer: Tokenizer, prompts: list[str], s: Settings,
                     repeats: int = 3) -> dict[str, tuple[float, float]]:
    """Sampling alone, one generation batch from the SFT start: (completions/s, tokens/s), best of ``repeats``."""
    from rlhf.text.generate import generate

    ids, mask = tokenizer.encode_batch(prompts)
    best = {"rlhf generate": (0.0, 0.0), "transformers generate": (0.0, 0.0)}
    for r in range(repeats):
        t0 = time.perf_counter()
        out = generate(sft, ids, mask, s.max_new_tokens, tokenizer.eos_id, tokenizer.pad_id,
                       temperature=s.temperature, generator=torch.Generator().manual_seed(r))
        dt = time.perf_counter() - t0
        best["rlhf generate"] = max(best["rlhf generate"], (len(prompts) / dt, float(out.response_mask.sum()) / dt))
        torch.manual_seed(r)
        t0 = time.perf_counter()
        seq = hf_sft.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, top_k=0, top_p=1.0, eos_token_id=tokenizer.eos_id,
                              pad_token_id=tokenizer.pad_id)
        dt = time.perf_counter() - t0
        completion = seq[:, ids.shape[1]:]
        ended = (completion == tokenizer.eos_id).int()
        # tokens up to and including the first EOS (all of them when none)
        length = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], completion.shape[1]))
        best["transformers generate"] = max(best["transformers generate"],
                                            (len(prompts) / dt, float(length.sum()) / dt))
    return best


def source_state() -> str:
    """The commit the run used, and whether rlhf/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rlhf"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes under rlhf/" if dirty else "")


def reward_at(meter: Meter, seconds: float, window: int = 5) -> float:
    """Mean training-batch gold over the last ``window`` batches scored by ``seconds``."""
    seen = [g for t, g in meter.curve if t <= seconds]
    return float(np.mean(seen[-window:])) if seen else float("nan")


@dataclass
class Run:
    engine: str
    seed: int
    meter: Meter
    info: dict
    evaluation: dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per engine and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="RL seeds (the SFT start is seed 0)")
    parser.add_argument("--sft-steps", type=int, default=600)
    parser.add_argument("--eval-samples", type=int, default=8, help="samples per held-out prompt")
    parser.add_argument("--trl-position-ids", action="store_true",
                        help="also run TRL with position ids derived from the attention mask")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/trl_rloo.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers
    import trl

    load_start = os.getloadavg()[0]
    base = Settings()
    task, tokenizer = Task(seed=0), Tokenizer(Task.vocabulary)
    t0 = time.perf_counter()
    sft, sft_metrics = train_start_policy(task, tokenizer, args.sft_steps, seed=0)
    print(f"SFT: {args.sft_steps} steps, val perplexity {sft_metrics['sft/val_perplexity']:.2f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    held = task.prompts("heldout")
    eval_prompts = [p for p in held for _ in range(args.eval_samples)]
    hf_sft = to_transformers(sft, tokenizer.eos_id, tokenizer.pad_id)
    ids, mask = tokenizer.encode_batch(held)
    with torch.no_grad():
        conversion_gap = float((sft(ids, attention_mask=mask).logits - hf_logits(hf_sft, ids, mask))[mask.bool()]
                               .abs().max())
    batch = [p for p in task.prompts("train")[:base.prompts_per_update] for _ in range(base.num_generations)]
    pos = position_gap(hf_sft, sft, tokenizer, batch, base)
    gen_rates = generation_rates(sft, hf_sft, tokenizer, batch, base)
    if args.trl_position_ids:  # the patch must make the plain forward compute the sampling log-probs
        patch_gpt2_positions()
        pos["patched_mean_abs_dlogp"] = position_gap(hf_sft, sft, tokenizer, batch, base)["mean_abs_dlogp"]
        unpatch_gpt2_positions()
    print(f"conversion: max |logit difference| {conversion_gap:.2e}; TRL-style forward without position ids: "
          f"mean |dlogp| {pos['mean_abs_dlogp']:.3f}/token; generation {gen_rates}", flush=True)

    trl_name, pos_name = f"TRL {trl.__version__} RLOOTrainer", "TRL, position ids from the mask"
    engines = ["rlhf (ours)", trl_name] + ([pos_name] if args.trl_position_ids else [])
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "sft_gpt2"
        hf_sft.save_pretrained(model_dir)  # RLOOTrainer reloads its reference from model.config._name_or_path
        for seed in args.seeds:  # engines interleaved per seed, so a change in machine load hits both
            s = Settings(seed=seed)
            for engine in engines:
                if engine == "rlhf (ours)":
                    model, meter, info = run_ours(sft, tokenizer, task, s, args.budget)
                else:
                    if engine == pos_name:
                        patch_gpt2_positions()
                    model, meter, info = run_trl(model_dir, tokenizer, task, s, args.budget, Path(tmp) / "trl")
                    if engine == pos_name:
                        unpatch_gpt2_positions()
                runs.append(Run(engine, seed, meter, info, evaluate(model, sft, tokenizer, eval_prompts, s, 1234)))
                print(f"{engine} seed {seed}: {info}, held-out gold {runs[-1].evaluation['gold']:.3f}", flush=True)
    start_eval = evaluate(sft, sft, tokenizer, eval_prompts, base, 1234)

    load_end = os.getloadavg()[0]
    cmd = " ".join(["python benchmarks/trl_rloo.py", f"--budget {args.budget:g}",
                    "--seeds " + " ".join(map(str, args.seeds)), f"--sft-steps {args.sft_steps}"]
                   + (["--trl-position-ids"] if args.trl_position_ids else []))
    s = base
    lines = [
        "# Text RLOO: rlhf against TRL's RLOOTrainer", "",
        f"`{cmd}` ({(time.perf_counter() - t0) / 60:.1f} minutes in all). {platform.machine()} CPU, "
        f"{torch.get_num_threads()} torch thread, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trl {trl.__version__}, datasets {__import__('datasets').__version__}, Python {platform.python_version()}; "
        f"rlhf at {source_state()}. {os.cpu_count()} cores shared with other work: 1-minute load average "
        f"{load_start:.1f} at the start, {load_end:.1f} at the end.",
        "", "## Setup (the same for both)", "",
        f"- **Start policy**: our GPT of configs/text_rlhf.yaml's shape ({sft.num_params() / 1e6:.2f}M parameters, "
        f"4 layers, 4 heads, width 128, block 48), SFT for {args.sft_steps} steps (held-out perplexity "
        f"{sft_metrics['sft/val_perplexity']:.2f}), converted with `rlhf.text.hf.to_transformers` to a "
        "`GPT2LMHeadModel` built from a `GPT2Config` (no download). Largest |logit difference| on the held-out "
        f"prompts: {conversion_gap:.1e}. TRL loads it from a local `save_pretrained` folder.",
        "- **Tokenizer**: our word-level vocabulary; for TRL `rlhf.text.hf.to_transformers_tokenizer` (a "
        "`PreTrainedTokenizerFast` over a `tokenizers` WordLevel model, same ids, left padding).",
        f"- **Prompts**: the task's {len(task.prompts('train'))} training prompts (TRL: a `datasets.Dataset` "
        "with a `prompt` column).",
        "- **Reward**: the task's hidden gold preference `rlhf.text.task.gold_score(prompt, completion)` as a "
        "plain Python function (TRL: a `reward_funcs` callable; ours: the `score` callable of `TextPPO`). It "
        "also counts the completions and tokens each engine scored.",
        f"- **RLOO**: {s.prompts_per_update} prompts x {s.num_generations} samples = {s.completions_per_update} "
        f"completions per generation batch, minibatch {s.minibatch}, {s.epochs} passes per batch (TRL "
        f"`num_iterations`), Adam lr {s.learning_rate:g} constant (eps {s.adam_eps:g}, no weight decay), clip "
        f"{s.clip_range}, grad-norm clip {s.max_grad_norm}, KL beta {s.kl_coef} (k1, summed over the completion, "
        f"subtracted from the reward), no advantage normalisation, no missing-EOS penalty, max {s.max_new_tokens} "
        f"new tokens, temperature {s.temperature}, no top-k/top-p, fp32 (TRL: `bf16=False`, "
        "`gradient_checkpointing=False`, `use_cpu=True`).",
        f"- **Budget**: {args.budget:g} s of training per engine and seed (the training loop only; construction "
        "is listed apart); each engine stops at the first generation-batch boundary past the budget. Seeds "
        f"{', '.join(map(str, args.seeds))} (sampling, prompt order; the SFT start is the same); engines run in "
        "turn within each seed on a machine shared with other work.",
        f"- **Evaluation** (identical for every row): each final policy converted to our GPT (TRL's with "
        "`from_transformers`), completions sampled for the "
        f"{len(held)} held-out prompts x {args.eval_samples} with one fixed seed, mean gold score (± standard error "
        "over those samples), mean sequence KL to the SFT start (sum over tokens of log pi - log ref on those "
        "samples).", "", "## Results", "",
        "| engine | seed | trained s (CPU s) | completions/s | completions per CPU s | completion tokens/s | "
        "share sampling | generation batches (optimizer steps) | held-out gold | KL to start | mean length |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| SFT start | - | - | - | - | - | - | - | {start_eval['gold']:.3f} ± {start_eval['gold_se']:.3f} | 0 | "
        f"{start_eval['length']:.1f} |"]
    for r in runs:
        e, i = r.evaluation, r.info
        lines.append(f"| {r.engine} | {r.seed} | {i['seconds']:.1f} ({i['cpu_seconds']:.1f}) | "
                     f"{r.meter.completions / i['seconds']:.1f} | {r.meter.completions / i['cpu_seconds']:.1f} | "
                     f"{r.meter.tokens / i['seconds']:,.0f} | {r.meter.generating / i['seconds']:.0%} | "
                     f"{i['updates']} ({i['optimizer_steps']}) | "
                     f"{e['gold']:.3f} ± {e['gold_se']:.3f} | {e['kl']:.2f} | {e['length']:.1f} |")
    lines += ["", f"Means over seeds {', '.join(map(str, args.seeds))}:", "",
              "| engine | completions/s | completions per CPU s | completion tokens/s | held-out gold | KL to start |",
              "|---|---|---|---|---|---|"]
    for engine in engines:
        mine = [r for r in runs if r.engine == engine]
        lines.append(f"| {engine} | {np.mean([r.meter.completions / r.info['seconds'] for r in mine]):.1f} | "
                     f"{np.mean([r.meter.completions / r.info['cpu_seconds'] for r in mine]):.1f} | "
                     f"{np.mean([r.meter.tokens / r.info['seconds'] for r in mine]):,.0f} | "
                     f"{np.mean([r.evaluation['gold'] for r in mine]):.3f} | "
                     f"{np.mean([r.evaluation['kl'] for r in mine]):.2f} |")
    marks = [args.budget * f for f in (0.1, 0.25, 0.5, 1.0)]
    lines += ["", "Training-batch gold against wall time (mean of the last 5 batches scored by then, averaged over "
              "seeds):", "", "| engine | " + " | ".join(f"{m:.0f} s" for m in marks) + " |",
              "|---|" + "---|" * len(marks)]
    for engine in engines:
        mine = [r for r in runs if r.engine == engine]
        lines.append(f"| {engine} | " + " | ".join(f"{np.mean([reward_at(r.meter, m) for r in mine]):.3f}"
                                                    for m in marks) + " |")
    fewest = min(len(r.meter.curve) for r in runs)
    counts = [n for n in (10, 25, 50, 100, 200) if n <= fewest]
    if counts:
        lines += ["", "The same against generation batches (sample efficiency, whatever the speed; mean of batches "
                  "n-4..n, averaged over seeds):", "", "| engine | " + " | ".join(f"batch {n}" for n in counts) + " |",
                  "|---|" + "---|" * len(counts)]
    for engine in engines if counts else []:
        mine = [r for r in runs if r.engine == engine]
        lines.append(f"| {engine} | " + " | ".join(
            f"{np.mean([np.mean([g for _, g in r.meter.curve[n - 5:n]]) for r in mine]):.3f}" for n in counts) + " |")
    lines += ["", f"Sampling alone (one batch of {len(batch)} completions from the SFT start, max "
              f"{s.max_new_tokens} new tokens, best of 3): " + "; ".join(
                  f"{name} {c:.0f} completions/s, {t:,.0f} tokens/s" for name, (c, t) in gen_rates.items()) + ".",
              "Construction time (not in the budget), mean: " + ", ".join(
                  f"{engine} {np.mean([r.info['init_s'] for r in runs if r.engine == engine]):.2f} s"
                  for engine in engines) + ".",
              "TRL's policies converted back to our GPT: largest |logit difference| "
              f"{max(r.info.get('back_conversion_max_abs', 0.0) for r in runs):.1e}.", "",
              "## What differs, measured or by construction", "",
              "- **TRL does not take a model built in memory from a config.** `RLOOTrainer(model=GPT2LMHeadModel("
              "config), ...)` raises `OSError: Repo id must use alphanumeric chars ... : ''` from "
              "trl/trainer/rloo_trainer.py line 689, `self.ref_model = create_model_from_path(get_config_model_id("
              "self.model.config), **model_init_kwargs)`: the reference model is always re-loaded from "
              "`model.config._name_or_path`, which is empty for such a model. Saving it with `save_pretrained` and "
              "passing the folder (what this script does) runs on CPU.",
              "- **Position ids on left-padded prompts.** TRL computes the old, new and reference log-probs with "
              "`model(input_ids=..., attention_mask=...)` and no `position_ids`; GPT-2's learned absolute positions "
              "then count the left padding, while `generate` (which sampled the completions) counts real tokens "
              f"only. On one generation batch from the SFT start ({pos['padded_rows']:.0%} of rows have a padded "
              f"prompt) the log-probs TRL trains on differ from the sampling ones by {pos['mean_abs_dlogp']:.3f} "
              f"nats per completion token on average ({pos['mean_abs_dlogp_padded_rows']:.3f} on padded rows). Ours "
              "evaluates the policy with the position ids it sampled with (first ratio exactly 1). Models with "
              "relative positions (RoPE) do not see a uniform shift. `--trl-position-ids` runs TRL once more with "
              "GPT-2's trunk deriving position ids from the attention mask, that one thing changed"
              + (f" (with it the same measurement gives {pos['patched_mean_abs_dlogp']:.1e})."
                 if "patched_mean_abs_dlogp" in pos else "."),
              "- **Ratio and loss reduction.** TRL's RLOO clips a sequence-level ratio (exp of the summed log-prob "
              "change) and averages the loss over completions; ours clips per-token ratios and averages over "
              "completion tokens (the shared `rlhf.ppo` clipped surrogate with a token mask). Both use one "
              "leave-one-out advantage per completion; the gradients differ by how completions of different "
              "lengths are weighted, and in overall scale, which Adam mostly normalises away.",
              "- **Minibatch order.** TRL shuffles a generation batch once and replays the same minibatches in "
              "each `num_iterations` pass; ours reshuffles every epoch.",
              "- **Generation.** TRL samples with `transformers` `generate` (KV cache, logits processors, stopping "
              "criteria); ours with `rlhf.text.generate` (KV cache, a plain loop). Both sample from softmax(logits "
              "/ temperature) with no filtering. \"share sampling\" is the wall time inside the sampling call: ours "
              "`rlhf.text.generate.generate`, TRL's `_generate_single_turn` (left-padding the prompt ids, `generate`, "
              "cutting at EOS).",
              "- **Timing.** Completions/s divide by wall time; completions per CPU s by the process's CPU time, "
              "which moves less when other work shares the machine (CPU s well below trained s means other "
              "processes had the core). Each engine gets the same wall-clock budget, so under load it also trains "
              "on fewer batches; the table against generation batches does not depend on speed.", ""]
    report = "\n".join(lines)
    print(report)
    if not args.no_write:
        (ROOT / "benchmarks" / "trl_rloo.md").write_text(report)


if __name__ == "__main__":
    main()
