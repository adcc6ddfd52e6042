"""``rlhf eval`` / ``rlhf sample`` for text runs: the gold judge's verdict on the trained policy.

Responses are sampled (temperature as trained, a fixed seed: the same command prints the same numbers) for
the task's held-out prompts, from the PPO policy and from the SFT policy it started from. The hidden gold
preference scores both; the learned reward model (the proxy) scores them too; KL to the reference is the
mean over responses of sum_t log pi(y_t) - log ref(y_t) (a Monte-Carlo estimate of the sequence KL under
policy samples).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rlhf.build import resolve_device
from rlhf.checkpoint import latest_checkpoint, latest_valid, load_checkpoint
from rlhf.config import Config, load_config
from rlhf.errors import ConfigError
from rlhf.text.generate import generate
from rlhf.text.pipeline import RM_FILE, SFT_FILE, TOKENIZER_FILE, build_policy, load_model, load_reward
from rlhf.text.policy import TextPolicy
from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer


class TextRun:
    """A text run directory opened for evaluation: config, tokenizer, task, models on demand."""

    def __init__(self, run_dir: str | Path, overrides: list[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "config.yaml").is_file():
            raise ConfigError(f"{str(self.run_dir)!r} is not a run directory (no config.yaml)")
        self.cfg: Config = load_config(self.run_dir / "config.yaml", overrides)
        if self.cfg.text is None:
            raise ConfigError(f"{str(self.run_dir)!r} is not a text run")
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        self.device = resolve_device(self.cfg.device)
        self.task = Task(seed=self.cfg.seed)
        self.tokenizer = Tokenizer.load(self.run_dir / TOKENIZER_FILE)

    def sft_policy(self) -> TextPolicy:
        model, _ = load_model(self.run_dir / SFT_FILE, dropout=0.0)
        return TextPolicy(model.to(self.device).eval(), self.cfg.text.temperature)

    def ppo_policy(self, weights: dict | None = None) -> tuple[TextPolicy, object]:
        """(policy, reference log-prob fn) with the newest PPO checkpoint's weights (or ``weights``)."""
        policy, reference = build_policy(self.cfg, self.run_dir, self.device)
        if weights is None:
            found = latest_valid(self.run_dir, ("policy",), load=True)  # past unreadable newer ones, with a warning
            if found is None:
                raise ConfigError(f"{str(self.run_dir)!r} has no PPO checkpoint yet (run the ppo stage)")
            weights = found[1]["policy"]
        policy.model.load_state_dict(weights)
        policy.eval()
        return policy, reference

    def prompts(self, n: int) -> list[str]:
        held = self.task.prompts("heldout")
        return [held[i % len(held)] for i in range(n)]

    def score_fn(self):
        return load_reward(self.cfg, self.run_dir, self.tokenizer, self.device)


@torch.no_grad()
def sample(run: TextRun, policy: TextPolicy, prompts: list[str], seed: int, reference=None) -> dict:
    """Generate for ``prompts``; returns texts, the generation, gold scores and (with ``reference``) KL."""
    tok, t = run.tokenizer, run.cfg.text
    ids, mask = tok.encode_batch(prompts)
    gen = generate(policy.model, ids.to(run.device), mask.to(run.device), t.max_new_tokens, tok.eos_id, tok.pad_id,
                   temperature=t.temperature, top_k=t.top_k, top_p=t.top_p,
                   generator=torch.Generator(device=run.device).manual_seed(seed))
    lengths = gen.response_mask.sum(1)
    responses = [tok.decode(row[: int(n)]) for row, n in zip(gen.response.tolist(), lengths.tolist())]
    out = {"prompts": prompts, "responses": responses, "generation": gen,
           "gold": np.array([run.task.gold_score(p, r) for p, r in zip(prompts, responses)]),
           "ended": (gen.response == tok.eos_id).any(1).cpu().numpy()}
    if reference is not None:
        obs = {"input_ids": gen.sequences, "attention_mask": gen.attention_mask}
        logp = policy.evaluate_actions(obs, gen.response)[0]
        ref = reference(obs, gen.response)
        out["kl"] = ((logp - ref) * gen.response_mask).sum(1).cpu().numpy()
    return out


def evaluate_text_run(run_dir: str | Path, overrides: list[str] | None = None, prompts: int | None = None,
                      seed: int = 0, user_code: bool = True) -> dict:
    """The numbers ``rlhf eval RUN --json`` prints for a text run; ``seed`` fixes the samples.

    ``user_code=False`` leaves a ``text.reward_function`` file unimported: its scores are null, with the
    reason under ``null_reasons`` (the gold judge and a learned reward model are not user code)."""
    run = TextRun(run_dir, overrides)
    policy, reference = run.ppo_policy()
    texts = run.prompts(prompts or run.cfg.text.eval_prompts)
    ppo = sample(run, policy, texts, seed, reference)
    sft = sample(run, run.sft_policy(), texts, seed)
    user_file = bool(run.cfg.text.reward_function)
    proxy_keys = ("reward_function_score", "sft_reward_function_score") if user_file else ("rm_score", "sft_rm_score")
    reasons: dict[str, str] = {}
    if user_file and not user_code:
        proxy_ppo = proxy_sft = None
        reasons = {key: "not available with --no-user-code (text.reward_function was not run)" for key in proxy_keys}
    else:
        score = run.score_fn()
        proxy_ppo = float(score(texts, ppo["responses"], ppo["generation"]).numpy().mean())
        proxy_sft = float(score(texts, sft["responses"], sft["generation"]).numpy().mean())
    wins = np.where(ppo["gold"] > sft["gold"], 1.0, np.where(ppo["gold"] == sft["gold"], 0.5, 0.0))
    result = {
        "gold_score": float(ppo["gold"].mean()),
        "sft_gold_score": float(sft["gold"].mean()),
        proxy_keys[0]: proxy_ppo,
        proxy_keys[1]: proxy_sft,
        "kl_to_ref": float(ppo["kl"].mean()),
        "win_rate_vs_sft": float(wins.mean()),
        "eos_rate": float(ppo["ended"].mean()),
        "mean_response_length": float(np.mean([len(r.split()) for r in ppo["responses"]])),
        "prompts": len(texts),
        "seed": seed,
    }
    rm_file = run.run_dir / RM_FILE
    if rm_file.is_file():
        metrics = load_checkpoint(rm_file).get("metrics", {})
        result["rm_pairwise_accuracy"] = metrics.get("rm/accuracy")
        result["gold_label_accuracy"] = metrics.get("rm/gold_label_accuracy")
    if run.cfg.text.adaptive_kl is not None:
        result["kl_target"] = run.cfg.text.adaptive_kl.target
    if reasons:
        result["null_reasons"] = reasons
    return result


def sample_texts(run_dir: str | Path, prompt: str | None, n: int, stage: str, seed: int = 0) -> list[dict]:
    """``rlhf sample``: n responses to ``prompt`` (or to n held-out prompts) from the SFT or PPO policy."""
    run = TextRun(run_dir)
    if stage not in ("sft", "ppo"):
        raise ConfigError(f"--stage {stage!r}: allowed values are sft, ppo")
    if stage == "ppo" and latest_checkpoint(run.run_dir) is None:
        stage = "sft"  # a run without a PPO stage samples its last stage
    policy = run.sft_policy() if stage == "sft" else run.ppo_policy()[0]
    prompts = [prompt] * n if prompt is not None else run.prompts(n)
    unknown = [w for w in (prompt or "").split() if w not in run.tokenizer.stoi]
    if unknown:
        raise ConfigError(f"--prompt {prompt!r}: unknown words {unknown} (the task's vocabulary has "
                          f"{run.tokenizer.vocab_size} words; e.g. {run.task.prompts('heldout')[0]!r})")
    if prompt is not None:
        words, room = len(prompt.split()), run.cfg.text.model.block_size - run.cfg.text.max_new_tokens
        if not 1 <= words <= room:
            raise ConfigError(f"--prompt {prompt!r}: {words} words; this model takes 1 to {room} (block_size "
                              f"{run.cfg.text.model.block_size} minus max_new_tokens {run.cfg.text.max_new_tokens})")
    out = sample(run, policy, prompts, seed)
    return [{"prompt": p, "response": r} for p, r in zip(out["prompts"], out["responses"])]


def overoptimization_report(run_dir: str | Path, prompts: int = 128, bon_prompts: int = 64, bon_n: int = 64,
                            seed: int = 0) -> dict:
    """Gold and proxy against sqrt(KL) for the PPO snapshots and for best-of-n from SFT; writes
    ``RUN/overoptimization.png`` and ``.json`` (see ``rlhf.text.overoptimization``)."""
    from rlhf.text.overoptimization import best_of_n_scores, report

    run = TextRun(run_dir)
    score = run.score_fn()
    texts = run.prompts(prompts)
    snapshots = sorted((run.run_dir / "ppo" / "snapshots").glob("update_*.pt"))
    if not snapshots:
        raise ConfigError(f"{str(run.run_dir)!r} has no PPO snapshots (run the ppo stage first)")
    rl_points = []
    for path in snapshots:
        state = load_checkpoint(path)
        policy, reference = run.ppo_policy(state["policy"])
        out = sample(run, policy, texts, seed, reference)
        proxy = score(texts, out["responses"], out["generation"]).numpy()
        rl_points.append({"step": state["updates"], "kl": float(out["kl"].mean()), "gold": float(out["gold"].mean()),
                          "proxy": float(proxy.mean())})
    bon_texts = [p for p in run.prompts(bon_prompts) for _ in range(bon_n)]
    sft = sample(run, run.sft_policy(), bon_texts, seed + 1)
    proxy = score(bon_texts, sft["responses"], sft["generation"]).numpy().reshape(bon_prompts, bon_n)
    gold = sft["gold"].reshape(bon_prompts, bon_n)
    ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n <= bon_n]
    return report(rl_points, best_of_n_scores(proxy, gold, ns), run.run_dir / "overoptimization")
