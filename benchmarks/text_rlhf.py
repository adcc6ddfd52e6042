"""Text RLHF throughput on this machine: generation with and without the KV cache, PPO samples/s, and
where an iteration's time goes (generate / score / update).

    python benchmarks/text_rlhf.py [--run RUN_DIR] [--updates 10]

Without ``--run`` it trains nothing: a fresh GPT of the configs/text_rlhf.yaml shape stands in for the
SFT model (throughput does not depend on what the weights know) and a length-based callable for the
reward model. One torch thread, as the CLI's default.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generation_rate(model, tokenizer, prompts, max_new_tokens: int, use_cache: bool, repeats: int = 3) -> float:
    from rlhf.text.generate import generate

    ids, mask = tokenizer.encode_batch(prompts)
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = generate(model, ids, mask, max_new_tokens, tokenizer.eos_id, tokenizer.pad_id, use_cache=use_cache,
                       generator=torch.Generator().manual_seed(r))
        best = max(best, float(out.response_mask.sum()) / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a text run directory (its SFT model and reward model)")
    parser.add_argument("--updates", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from rlhf.config import load_config
    from rlhf.text.model import GPT, GPTConfig
    from rlhf.text.task import Task
    from rlhf.text.tokenizer import Tokenizer

    cfg = load_config(ROOT / "configs" / "text_rlhf.yaml", ["logging.tensorboard=false", "logging.progress_bar=false"])
    task, tokenizer = Task(0), Tokenizer(Task.vocabulary)
    m = cfg.text.model
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head,
                          n_embd=m.n_embd)).eval()
    prompts = [task.prompts("train")[i % len(task.prompts("train"))] for i in range(cfg.text.prompts_per_update)]
    # a fresh model rarely emits EOS: every row runs the full max_new_tokens, the worst case for both paths
    cached = generation_rate(model, tokenizer, prompts, cfg.text.max_new_tokens, True)
    uncached = generation_rate(model, tokenizer, prompts, cfg.text.max_new_tokens, False)
    print(f"text RLHF, torch {torch.__version__}, 1 thread, GPT {model.num_params() / 1e6:.2f}M params, "
          f"batch {len(prompts)} prompts, {cfg.text.max_new_tokens} new tokens")
    print("| generation | tokens/s |\n|---|---|")
    print(f"| KV cache | {cached:,.0f} |\n| no cache (full forward per token) | {uncached:,.0f} |")
    print(f"KV cache speed-up: {cached / uncached:.2f}x")

    import tempfile

    from rlhf.text import pipeline
    from rlhf.text.ppo import TextPPO

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else Path(tmp)
        if not args.run:
            pipeline.save_model(model, run / pipeline.SFT_FILE)
            reward = run / "reward.py"
            reward.write_text("def reward_function(prompt, response):\n    return -abs(len(response.split()) - 8.0)\n")
            cfg = load_config(ROOT / "configs" / "text_rlhf.yaml", [f"text.reward_function={reward}",
                                                                     "logging.tensorboard=false"])
        ppo: TextPPO = pipeline.build_text_ppo(cfg, run, tokenizer, task, torch.device("cpu"))
        timer = {"generate": 0.0, "score": 0.0}
        import rlhf.text.ppo as ppo_module

        def timed(name, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    timer[name] += time.perf_counter() - t0
            return wrapper

        real_generate = ppo_module.generate
        ppo_module.generate, ppo.score = timed("generate", real_generate), timed("score", ppo.score)
        ppo.iteration()  # warm-up
        timer.update(generate=0.0, score=0.0)
        t0 = time.perf_counter()
        for _ in range(args.updates):
            ppo.iteration()
        total = time.perf_counter() - t0
        ppo_module.generate = real_generate
    samples = args.updates * cfg.text.prompts_per_update * cfg.text.num_generations
    rest = total - timer["generate"] - timer["score"]
    print(f"\nPPO ({args.updates} iterations of {cfg.text.prompts_per_update * cfg.text.num_generations} responses, "
          f"{cfg.ppo.epochs} epochs, minibatch {cfg.ppo.batch_size}): {samples / total:.1f} samples/s")
    print("| phase | share of iteration time |\n|---|---|")
    print(f"| generate (KV cache) | {100 * timer['generate'] / total:.0f}% |")
    print(f"| score (reward) | {100 * timer['score'] / total:.0f}% |")
    print(f"| log-probs, values, reference, GAE and the PPO update | {100 * rest / total:.0f}% |")


if __name__ == "__main__":
    main()
