"""The three stages in one run directory: SFT -> reward model -> PPO, each stage's result kept.

    RUN/config.yaml            resolved config
    RUN/tokenizer.json         the word-level vocabulary the models were trained with
    RUN/sft/model.pt           stage 1: the supervised policy (also PPO's initial policy and reference)
    RUN/reward_model/model.pt  stage 2: the Bradley-Terry reward model (the proxy)
    RUN/checkpoints/step_*.pt  stage 3: resumable PPO checkpoints (step = response tokens generated)
    RUN/ppo/snapshots/         the PPO policy every ``text.snapshot_every`` updates (over-optimisation plot)
    RUN/events.out.tfevents.*  TensorBoard: sft/*, rm/*, objective/*, train/*, samples as text

``stages=[...]`` runs a subset; ``text.init_from=OTHER_RUN`` copies another run's SFT / reward-model results
(and tokenizer) in; a ``text.reward_function`` file is copied to ``RUN/user/``. ``--resume`` skips finished
stages and continues PPO from its newest checkpoint.

Under torchrun (``rlhf.distributed``) rank 0 alone writes the run directory. The SFT and reward-model stages
run identically on every rank (no speed-up; the later stages read rank 0's saved model, so every rank goes
on from the same weights); the PPO stage is data-parallel: each rank its own prompts and samples, gradients
averaged, advantage whitening, KL control and logged statistics over every rank's samples.
"""
from __future__ import annotations

import shutil
import time
import weakref
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from rlhf import distributed
from rlhf.build import build_optimizer, build_precision, ppo_settings, resolve_device
from rlhf.checkpoint import (FROZEN_ON_RESUME_TEXT, latest_checkpoint, latest_valid, load_checkpoint,
                             refuse_frozen_changes, save_checkpoint, save_file, set_aside, skipped_newer, write_config)
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError, NonFiniteError
from rlhf.finite import check_state
from rlhf.logger import Logger
from rlhf.moe import MoESettings
from rlhf.run_dir import RunDirLock
from rlhf.signals import StopFlag
from rlhf.text.model import GPT, GPTConfig
from rlhf.text.policy import TextPolicy
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer

SFT_FILE, RM_FILE, TOKENIZER_FILE = Path("sft/model.pt"), Path("reward_model/model.pt"), Path("tokenizer.json")


# ----------------------------------------------------------------------------- loading a run's models

def save_model(model: GPT, path: Path, **extra) -> None:
    check_state(model, "model parameter")  # a NaN model is never written
    save_file({"gpt_config": asdict(model.config), "model": model.state_dict(), **extra}, path)


def load_model(path: Path, **config_changes) -> tuple[GPT, dict]:
    """A GPT from ``save_model``'s file (heads and dropout may be changed); also returns the file's dict."""
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} not found: run that stage first (or point text.init_from at a run that has it)")
    state = load_checkpoint(path)
    model = GPT(GPTConfig(**{**state["gpt_config"], **config_changes}))
    model.load_state_dict(state["model"], strict=False)
    return model, state


def adopt_files(cfg: Config, run_dir: Path, copy: bool = True) -> Config:
    """Copy what this run reuses into it, so it stands alone: another run's stages (``text.init_from``) and
    the user's reward file. Returns the config pointing at the copies; ``copy=False`` (data-parallel ranks
    other than 0) checks and points without copying."""
    text = cfg.text
    if text.init_from is not None:
        src = Path(text.init_from)
        if not (src / SFT_FILE).is_file():
            raise ConfigError(f"text.init_from = {text.init_from!r}: no {SFT_FILE} there (is it a text run directory?)")
        for relative in (TOKENIZER_FILE, SFT_FILE, RM_FILE) if copy else ():
            if (src / relative).is_file() and not (run_dir / relative).is_file():
                (run_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / relative, run_dir / relative)
    if text.reward_function is not None:
        src = Path(text.reward_function)
        if not src.is_file():
            raise ConfigError(f"text.reward_function = {text.reward_function!r}: file not found")
        target = run_dir / "user" / "reward_function.py"
        if copy and src.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        text = text.model_copy(update={"reward_function": str(target)})
    return cfg.model_copy(update={"text": text})


def load_reward(cfg: Config, run_dir: Path, tokenizer: Tokenizer, device: torch.device):
    """The PPO score function: ``text.reward_function`` (a user callable) or the run's reward model."""
    from rlhf.text.reward_model import RewardModel
    from rlhf.text.rewards import call_reward, load_reward_function

    if cfg.text.reward_function:
        fn = load_reward_function(cfg.text.reward_function)
        return lambda prompts, responses, gen: call_reward(fn, prompts, responses)
    state = load_checkpoint(run_dir / RM_FILE) if (run_dir / RM_FILE).is_file() else None
    if state is None:
        raise ConfigError(f"{str(run_dir / RM_FILE)!r} not found: run the reward_model stage, set text.init_from to "
                          "a run that has one, or score with text.reward_function")
    rm = RewardModel(GPTConfig(**state["gpt_config"]))
    rm.load_state_dict(state["model"])
    rm.to(device).eval()
    return lambda prompts, responses, gen: rm.score(gen.sequences, gen.attention_mask).float().cpu()


def build_policy(cfg: Config, run_dir: Path, device: torch.device):
    """(policy, reference log-prob function) for PPO and its evaluation, both starting from the run's SFT.

    The policy gets a zero-initialised value head for GAE (none for RLOO/GRPO). With LoRA the reference is
    the same model inside ``adapters_disabled`` (no second copy in memory); otherwise a frozen SFT copy.
    """
    t = cfg.text
    base, _ = load_model(run_dir / SFT_FILE, dropout=0.0, value_head=t.advantage == "gae")
    base = base.to(device)
    policy = TextPolicy(base, t.temperature)
    if t.lora is not None:
        from rlhf.text.lora import adapters_disabled, apply_lora

        apply_lora(base, rank=t.lora.rank, alpha=t.lora.alpha, target_modules=t.lora.target_modules,
                   dropout=t.lora.dropout, quantize_base=t.lora.quantize_base,
                   trainable_extra=("value_head",) if base.value_head is not None else ())

        def reference(obs, actions):
            with torch.no_grad(), adapters_disabled(base):
                return policy.evaluate_actions(obs, actions)[0]
        return policy, reference
    ref_model, _ = load_model(run_dir / SFT_FILE, dropout=0.0)
    ref = TextPolicy(ref_model.to(device).requires_grad_(False).eval(), t.temperature)
    return policy, ref.logprobs


def build_text_ppo(cfg: Config, run_dir: Path, tokenizer: Tokenizer, task: Task, device: torch.device):
    """The PPO stage's ``TextPPO``: policy and reference from the run's SFT, reward, optimizer, precision.

    Data-parallel: one start on every rank (rank 0's weights, LoRA adapters included), gradients averaged
    over the ranks before the clip, advantage whitening and the target-KL stop over every rank's samples."""
    from rlhf.text.ppo import TextPPO

    # the stage's own start: LoRA's initial adapters and the minibatch shuffles come from torch's global
    # generator, which nothing else seeds when the PPO stage runs alone (stages=[ppo], text.init_from)
    torch.manual_seed(cfg.seed + distributed.rank())
    policy, reference = build_policy(cfg, run_dir, device)
    score = load_reward(cfg, run_dir, tokenizer, device)
    settings = ppo_settings(cfg.ppo)
    if distributed.world_size() > 1:
        distributed.broadcast_module(policy)
        settings = replace(settings, whiten=distributed.Whiten(), mean=distributed.mean)
    optimizer = build_optimizer(cfg, policy)
    precision = build_precision(cfg, policy, device)
    if distributed.world_size() > 1:
        precision.grad_reduce = distributed.GradientMean()
    return TextPPO(cfg, policy, tokenizer, task.prompts("train"), score, reference, settings, precision, optimizer,
                   device)


# ----------------------------------------------------------------------------- the trainer

class TextTrainer:
    """Runs ``cfg.text_stages`` into ``run_dir``; the same CLI verbs as the gym trainer.

    Holds the run directory's lock until ``train()`` returns or ``close()``. A resume refuses the keys its
    models depend on (``FROZEN_ON_RESUME_TEXT``), reads the newest usable PPO checkpoint up front, and
    writes nothing (files adopted, ``config.yaml``) until ``train()`` starts. Data-parallel, rank 0 alone holds
    the lock and writes; the other ranks wait at a barrier for its files.
    """

    PPO_REQUIRED = ("policy", "optimizer", "precision", "counters", "rng")

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False) -> None:
        if cfg.precision.qat:
            raise ConfigError("precision.qat applies to gym policies only; text runs quantize through "
                              "precision.rollout or text.lora.quantize_base")
        self.cfg, self.text, self.run_dir, self.resume = cfg, cfg.text, Path(run_dir), resume
        self.world, self.main = distributed.world_size(), distributed.is_main()
        self.lock = RunDirLock(self.run_dir)
        if self.main:
            self.lock.acquire()
        weakref.finalize(self, self.lock.release)
        try:
            self._build(cfg, resume)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, cfg: Config, resume: bool) -> None:
        if not resume and (latest_checkpoint(self.run_dir) or (self.run_dir / SFT_FILE).exists()):
            raise ConfigError(f"run directory {str(self.run_dir)!r} already holds a run: continue it with "
                              f"--resume {self.run_dir}, or choose another --run-dir")
        if not resume:
            distributed.barrier()  # every rank checked before rank 0 copies text.init_from's models in
        self._resume_from: tuple[Path, dict] | None = None
        self._pending_resume: list[Path] | None = None  # unusable checkpoints to set aside when training starts
        if resume:
            saved = self.run_dir / "config.yaml"
            if saved.is_file():
                refuse_frozen_changes(load_config(saved).model_dump(mode="json"), cfg.model_dump(mode="json"),
                                      FROZEN_ON_RESUME_TEXT, self.run_dir)
            self._resume_from = latest_valid(self.run_dir, self.PPO_REQUIRED, load=True)
            self._pending_resume = skipped_newer(self.run_dir, self._resume_from[0]) if self._resume_from else []
        else:
            self.cfg = cfg = adopt_files(cfg, self.run_dir, copy=self.main)
            self.text = cfg.text
        if cfg.torch_threads and self.world == 1:  # ranks run one thread each (rlhf.distributed.init)
            torch.set_num_threads(cfg.torch_threads)
        self.device = distributed.local_device(resolve_device(cfg.device))
        self.task = Task(seed=cfg.seed)
        if self.main:
            self.tokenizer = self._tokenizer()
            if not resume:
                write_config(cfg, self.run_dir)
        distributed.barrier()  # rank 0's adopted files, tokenizer and config are in place
        if not self.main:
            self.tokenizer = self._tokenizer()
        self.global_step = 0
        self.last_stats: dict[str, float] = {}

    @property
    def finished(self) -> bool:
        """A resumed run whose every stage is done (PPO at ``text.updates``): nothing to train."""
        if not self.resume:
            return False
        done = {"sft": (self.run_dir / SFT_FILE).is_file(), "reward_model": (self.run_dir / RM_FILE).is_file(),
                "ppo": self._resume_from is not None and
                self._resume_from[1]["counters"]["updates"] >= self.text.updates}
        return all(done[stage] for stage in self.cfg.text_stages)

    def close(self) -> None:
        self.lock.release()

    def _start_resumed(self) -> None:
        """The resumed run starts: adopt its files, commit its config, set unusable checkpoints aside."""
        self.cfg = adopt_files(self.cfg, self.run_dir, copy=self.main)
        self.text = self.cfg.text
        if self.main:
            write_config(self.cfg, self.run_dir)
            set_aside(self._pending_resume)
        self._pending_resume = None
        distributed.barrier()

    def _tokenizer(self) -> Tokenizer:
        path = self.run_dir / TOKENIZER_FILE
        if path.is_file():
            return Tokenizer.load(path)
        tokenizer = Tokenizer(self.task.vocabulary)
        tokenizer.save(path)
        return tokenizer

    def train(self) -> dict[str, float]:
        if self.finished:  # nothing to train: no empty event file
            self.stop = StopFlag()
            self.close()
            return self.last_stats
        try:
            if self._pending_resume is not None:
                self._start_resumed()
            t = self.text
            total = t.updates * t.prompts_per_update * t.num_generations * t.max_new_tokens * self.world
            logging = self.cfg.logging if self.main else \
                self.cfg.logging.model_copy(update={"tensorboard": False, "progress_bar": False})
            self.logger = Logger(self.run_dir, logging, total, headline=("objective/scores", "score"))
            self.logger.console.quiet = not self.main  # rank 0 alone writes TensorBoard and the console
            try:
                with StopFlag() as self.stop:
                    for stage in self.cfg.text_stages:
                        if self._stop_requested():
                            break
                        self._run_stage(stage)
            finally:
                self.logger.close()
        finally:
            self.close()
        return self.last_stats

    def _stop_requested(self) -> bool:
        """A signal asked to stop; data-parallel ranks agree (any rank's signal stops all, at the same point)."""
        if self.world > 1 and distributed.any_rank(self.stop.requested):
            self.stop.requested = True
        return self.stop.requested

    def _save_model(self, model: torch.nn.Module, path: Path, **extra) -> None:
        """A stage's result, written by rank 0; every rank then reads that one file (the barrier)."""
        if self.main:
            save_model(model, path, **extra)
        distributed.barrier()

    def _run_stage(self, stage: str) -> None:
        """One stage; a NaN/inf stops the run naming the stage and what was kept (nothing bad is saved)."""
        try:
            getattr(self, f"stage_{stage}")()
        except NonFiniteError as exc:
            newest = latest_checkpoint(self.run_dir) if stage == "ppo" else None
            kept = f"newest checkpoint kept: {newest}" if newest else f"nothing saved for the {stage} stage"
            raise NonFiniteError(f"text {stage} stage stopped: {exc}; {kept}") from None

    # ------------------------------------------------------------------ stage 1
    def stage_sft(self) -> None:
        from rlhf.text.sft import train_sft

        if self.resume and (self.run_dir / SFT_FILE).is_file():
            return
        torch.manual_seed(self.cfg.seed)
        m, s = self.text.model, self.text.sft
        model = GPT(GPTConfig(vocab_size=self.tokenizer.vocab_size, block_size=m.block_size, n_layer=m.n_layer,
                              n_head=m.n_head, n_embd=m.n_embd, dropout=m.dropout,
                              moe=MoESettings(**m.moe.model_dump()) if m.moe else None)).to(self.device)
        self.logger.console.print(f"stage 1/3 sft: {model.num_params() / 1e6:.2f}M parameters, {s.steps} steps")
        metrics = train_sft(model, self.tokenizer, self.task, steps=s.steps, batch_size=s.batch_size,
                            lr=s.learning_rate, corpus_size=s.corpus_size, seed=self.cfg.seed,
                            log=self.logger.scalars)
        self._save_model(model, self.run_dir / SFT_FILE, metrics=metrics)
        self.last_stats = metrics
        self.logger.console.print(f"sft: val perplexity {metrics['sft/val_perplexity']:.2f} "
                                  f"({metrics['sft/seconds']:.0f} s)")

    # ------------------------------------------------------------------ stage 2
    def stage_reward_model(self) -> None:
        from rlhf.text.reward_model import RewardModel, train_reward_model

        if self.resume and (self.run_dir / RM_FILE).is_file():
            return
        sft = load_model(self.run_dir / SFT_FILE, dropout=0.0)[0].to(self.device)
        r = self.text.reward_model
        self.logger.console.print(f"stage 2/3 reward model: {r.pairs} preference pairs, label noise {r.label_noise}")
        rm = RewardModel.from_sft(load_model(self.run_dir / SFT_FILE)[0].to(self.device))
        metrics = train_reward_model(
            rm, sft, self.tokenizer, self.task, n_train_pairs=r.pairs, n_val_pairs=r.val_pairs,
            responses_per_prompt=r.responses_per_prompt, steps=r.steps, batch_size=r.batch_size, lr=r.learning_rate,
            label_noise=r.label_noise, max_new_tokens=self.text.max_new_tokens, temperature=self.text.temperature,
            seed=self.cfg.seed, log=self.logger.scalars)
        check_state(rm, "reward model parameter")
        if self.main:
            save_file({"gpt_config": asdict(rm.gpt.config), "model": rm.state_dict(), "metrics": metrics},
                      self.run_dir / RM_FILE)
        distributed.barrier()
        self.last_stats = metrics
        self.logger.console.print(f"reward model: held-out accuracy {metrics['rm/accuracy']:.3f} "
                                  f"(gold labels {metrics['rm/gold_label_accuracy']:.3f}, {metrics['rm/seconds']:.0f} s)")

    # ------------------------------------------------------------------ stage 3
    def stage_ppo(self) -> None:
        t = self.text
        ppo = build_text_ppo(self.cfg, self.run_dir, self.tokenizer, self.task, self.device)
        if self._resume_from is not None:
            ppo.load_state_dict(self._resume_from[1])
            self._resume_from = None  # read once; frees the state dict
        elif ppo.updates == 0:
            self.snapshot(ppo)
        self.logger.step0 = ppo.global_step
        ranks = f" x {self.world} ranks" if self.world > 1 else ""
        self.logger.console.print(f"stage 3/3 ppo: {t.updates} updates x {t.prompts_per_update * t.num_generations} "
                                  f"responses{ranks}, advantage {t.advantage}, kl_coef {ppo.kl_coef:g}")
        while ppo.updates < t.updates and not self._stop_requested():
            t0 = time.perf_counter()
            try:
                stats, ro = ppo.iteration()
            except KeyboardInterrupt:
                if not self.stop.requested and self.world == 1:
                    raise
                self.stop.requested = True  # data-parallel: a signal on some rank cut its reward call short
                break  # SIGINT/SIGTERM interrupted a reward call, before this iteration's update: saved below
            stats["objective/gold_score"] = float(np.mean([self.task.gold_score(p, r)
                                                           for p, r in zip(ro.prompts, ro.responses)]))
            stats["time/iteration_seconds"] = time.perf_counter() - t0
            stats["time/fps"] = self.logger.fps(ppo.global_step)
            if self.world > 1:
                stats = distributed.reduce_stats(stats)
            self.logger.log(stats, ppo.global_step)
            if ppo.updates % t.sample_every == 0 or ppo.updates == 1:
                self.logger.text("samples", sample_table(ro.prompts[:8], ro.responses[:8], ro.scores[:8].tolist()),
                                 ppo.global_step)
            if ppo.updates % t.snapshot_every == 0 or ppo.updates == t.updates:
                self.snapshot(ppo)
                self._checkpoint(ppo)
            self.last_stats = stats
        if self._stop_requested():  # data-parallel: every rank takes part (the checkpoint gathers their streams)
            self._checkpoint(ppo)
        self.global_step = ppo.global_step

    def _checkpoint(self, ppo) -> None:
        state = ppo.state_dict()  # every rank: it checks the weights and gathers each rank's random streams
        if self.main:
            save_checkpoint(state, self.run_dir, ppo.global_step, self.cfg.checkpoint.keep)
            self.logger.flush()

    def snapshot(self, ppo) -> None:
        """The policy weights at this update, for the over-optimisation curve (update 0 = SFT); rank 0 writes."""
        check_state(ppo.policy.model, "policy parameter")
        if self.main:
            save_file({"updates": ppo.updates, "global_step": ppo.global_step,
                       "policy": ppo.policy.model.state_dict()},
                      self.run_dir / "ppo" / "snapshots" / f"update_{ppo.updates:05d}.pt")


def sample_table(prompts: list[str], responses: list[str], scores: list[float]) -> str:
    """Markdown for TensorBoard's TEXT tab."""
    rows = [f"| {p} | {r} | {s:.2f} |" for p, r, s in zip(prompts, responses, scores)]
    return "| prompt | response | score |\n|---|---|---|\n" + "\n".join(rows)
