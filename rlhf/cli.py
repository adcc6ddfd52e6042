"""The ``rlhf`` command: train, eval, model-size. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from rlhf.errors import ConfigError


def _default_run_dir(config_path: str) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def _trainer(cfg):
    """The gym Trainer, or the text pipeline's when the config has a ``text`` section."""
    if cfg.text is not None:
        from rlhf.text.pipeline import TextTrainer

        return TextTrainer
    from rlhf.trainer import Trainer

    return Trainer


def _is_text_run(target: str) -> bool:
    from rlhf.config import read_yaml

    path = Path(target)
    return path.is_dir() and (path / "config.yaml").is_file() and bool(read_yaml(path).get("text"))


def cmd_train(args: argparse.Namespace) -> int:
    from rlhf.config import load_config

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there (is it a run directory?)")
        if args.config and "=" not in args.config:
            raise ConfigError(f"--resume uses {run_dir / 'config.yaml'}; pass only key=value overrides, "
                              f"not {args.config!r}")
        overrides = ([args.config] if args.config else []) + args.overrides
        cfg = load_config(run_dir / "config.yaml", overrides)
        trainer = _trainer(cfg)(cfg, run_dir, resume=True)
    else:
        if not args.config:
            raise ConfigError("rlhf train needs a config file, e.g. rlhf train configs/cartpole.yaml")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config)
        trainer = _trainer(cfg)(cfg, run_dir)
    print(f"run directory: {run_dir}   (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
    stats = trainer.train()
    if cfg.text is not None:
        state = "finished" if not trainer.stop.requested else "stopped; continue with --resume"
        print(f"{state}: stages {', '.join(cfg.text_stages)} in {run_dir}", file=sys.stderr)
        return 0
    done = trainer.global_step >= cfg.total_timesteps
    state = "finished" if done else "stopped; continue with --resume"
    print(f"{state} at step {trainer.global_step}: ep_rew_mean {stats.get('rollout/ep_rew_mean', float('nan')):.2f}"
          f"  checkpoint in {run_dir / 'checkpoints'}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if _is_text_run(args.target):
        return _eval_text(args)
    if args.overoptimization:
        raise ConfigError("--overoptimization applies to text runs (configs with a text: section)")
    from rlhf.evaluate import load_policy, run_episodes

    from rlhf.integrations import for_env
    from rlhf.vec_env import fill_run_dir

    cfg, policy, run_dir = load_policy(args.target, args.overrides)
    hooks = for_env(cfg.env.id)
    env_kwargs = fill_run_dir({**cfg.env.kwargs, **cfg.env.eval_kwargs}, run_dir)
    if hooks is not None:
        hooks.before_eval(env_kwargs)
    result = run_episodes(policy, cfg, args.episodes, deterministic=args.deterministic, run_dir=run_dir,
                          video=args.video)
    result.pop("episode_infos")
    files = [Path(args.video)] if args.video else []
    if hooks is not None:
        files += hooks.after_eval(env_kwargs, run_dir)
    if args.json:
        print(json.dumps(result))
    else:
        extra = "".join(f", {k} {v:.3g}" for k, v in result.items()
                        if k not in ("mean_return", "std_return", "mean_length", "episodes", "returns")
                        and isinstance(v, float))
        print(f"{result['episodes']} episodes: return {result['mean_return']:.2f} +- {result['std_return']:.2f}, "
              f"length {result['mean_length']:.1f}{extra}")
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def _eval_text(args: argparse.Namespace) -> int:
    from rlhf.text.evaluate import evaluate_text_run, overoptimization_report

    result = evaluate_text_run(args.target, args.overrides, prompts=args.prompts)
    if args.overoptimization:
        report = overoptimization_report(args.target)
        result["overoptimized"] = report["summary"]["over_optimized"]
        print(f"wrote {Path(args.target) / 'overoptimization.png'} and .json", file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print("  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from rlhf.text.evaluate import sample_texts

    if args.n < 1:
        raise ConfigError(f"-n {args.n}: ask for at least one sample")
    rows = sample_texts(args.target, args.prompt, args.n, args.stage, args.seed)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"{row['prompt']} | {row['response']}")
    return 0


def cmd_model_size(args: argparse.Namespace) -> int:
    from rlhf.config import load_config
    from rlhf.precision import format_model_size_table, model_size_table
    from rlhf.build import build_policy
    from rlhf.vec_env import make_vec_env

    target = Path(args.target)
    cfg = load_config(target / "config.yaml" if target.is_dir() else target, args.overrides)
    if cfg.text is not None:
        return _text_model_size(cfg)
    envs = make_vec_env(cfg.env, num_envs=1)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    envs.close()
    rows = model_size_table(policy, optimizer="adam", train_mode=cfg.precision.train)
    print(format_model_size_table(rows))
    return 0


def _text_model_size(cfg) -> int:
    """The PPO policy's table, and what the reference costs: a frozen copy, or nothing with LoRA."""
    from rlhf.precision import format_model_size_table, model_size_table
    from rlhf.text.model import GPT, GPTConfig
    from rlhf.text.task import Task
    from rlhf.text.tokenizer import Tokenizer

    m, t = cfg.text.model, cfg.text
    gpt = GPT(GPTConfig(vocab_size=Tokenizer(Task.vocabulary).vocab_size, block_size=m.block_size,
                        n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, value_head=t.advantage == "gae"))
    print(f"text policy: {gpt.num_params(non_embedding=False):,} parameters")
    print(format_model_size_table(model_size_table(gpt, optimizer="adam", train_mode=cfg.precision.train)))
    if t.lora is None:
        ref = sum(p.numel() * p.element_size() for n, p in gpt.named_parameters() if not n.startswith("value_head"))
        print(f"reference policy: a frozen fp32 copy of the SFT model, {ref:,} bytes")
        return 0
    from rlhf.text.lora import apply_lora, memory_report

    apply_lora(gpt, rank=t.lora.rank, alpha=t.lora.alpha, target_modules=t.lora.target_modules,
               quantize_base=t.lora.quantize_base, trainable_extra=("value_head",) if gpt.value_head else ())
    r = memory_report(gpt)
    base = f"{t.lora.quantize_base} " if t.lora.quantize_base else "fp32 "
    print(f"LoRA rank {t.lora.rank}: {r['trainable_params']:,} trainable parameters "
          f"({100 * r['trainable_fraction']:.2f}%), frozen {base}base {r['base_bytes']:,} bytes, adapters "
          f"{r['adapter_bytes']:,} bytes, Adam state {r['optimizer_bytes']:,} bytes")
    print(f"reference policy: the same base with adapters disabled, {r['reference_copy_bytes']} extra bytes")
    return 0


def cmd_deepracer_replay(args: argparse.Namespace) -> int:
    from rlhf.integrations import deepracer

    rows = deepracer.replay(args.target, args.reward, args.track)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'episode':>8} {'steps':>6} {'logged reward':>14} {'new reward':>12}")
    for row in rows:
        print(f"{row['episode']:>8} {row['steps']:>6} {row['original_total']:>14.2f} {row['new_total']:>12.2f}")
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix, raised by envs we integrate with (e.g. a bad reward function)."""
    try:
        from rlhf.integrations import deepracer

        return deepracer.user_errors()
    except ImportError:
        return ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf", description="PPO from config files: DeepRacer-like cars, gym tasks, toy RLHF.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a YAML config (key=value overrides follow it)")
    train.add_argument("config", nargs="?", help="configs/X.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.learning_rate=1e-3 seed=3")
    train.add_argument("--run-dir", help="where to write config, TensorBoard events and checkpoints")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run directory or checkpoint")
    ev.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.kwargs.track=oval")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--deterministic", action="store_true", help="take the most likely action")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--video", metavar="OUT.gif", help="record the first evaluation episode")
    ev.add_argument("--prompts", type=int, help="text runs: held-out prompts to sample (default text.eval_prompts)")
    ev.add_argument("--overoptimization", action="store_true",
                    help="text runs: write overoptimization.png/.json (gold and proxy vs sqrt KL)")
    ev.set_defaults(func=cmd_eval)

    sa = sub.add_parser("sample", help="print generations of a text run's policy")
    sa.add_argument("target", metavar="RUN_DIR")
    sa.add_argument("--prompt", help="a prompt in the task's words (default: held-out prompts)")
    sa.add_argument("-n", type=int, default=5, help="how many samples")
    sa.add_argument("--stage", default="ppo", help="sft or ppo (default: the last stage's policy)")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--json", action="store_true", help="print a JSON list of {prompt, response}")
    sa.set_defaults(func=cmd_sample)

    ms = sub.add_parser("model-size", help="parameter count and bytes per precision")
    ms.add_argument("target", metavar="CONFIG_OR_RUN_DIR")
    ms.add_argument("overrides", nargs="*")
    ms.set_defaults(func=cmd_model_size)

    dr = sub.add_parser("deepracer", help="DeepRacer tools").add_subparsers(dest="tool", required=True)
    rp = dr.add_parser("replay", help="re-score logged simtrace steps with another reward function")
    rp.add_argument("target", metavar="RUN_DIR_OR_CSV")
    rp.add_argument("--reward", required=True, metavar="NEW.py", help="a file defining reward_function(params)")
    rp.add_argument("--track", help="track the laps were driven on (default: the run's)")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=cmd_deepracer_replay)
    return parser


def os_error_message(exc: OSError) -> str:
    """One line for a filesystem failure: what went wrong, at which path, and that nothing written is lost."""
    import errno

    path = f" {exc.filename!r}" if exc.filename is not None else ""
    kept = "files already written (config, checkpoints) are intact"
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"no space left on the device writing{path or ' the run'}: free some space and --resume; {kept}"
    if exc.errno == errno.EROFS:
        return f"cannot write{path}: the file system is read-only; choose another --run-dir"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write{path}: permission denied; choose another --run-dir"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path.strip() or 'a path'} is a file or lies under a file, where a directory is needed: " \
               "choose another --run-dir"
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long:{path}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}{':' + path if path else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also follow options: `rlhf train c.yaml --run-dir R seed=3`
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except ConfigError as exc:  # NonFiniteError too: the message names the source of the NaN/inf
        print(f"rlhf: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a run directory that is a file, a read-only or full disk: say which, no traceback
        print(f"rlhf: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("rlhf: out of memory: lower env.num_envs, ppo.n_steps or ppo.batch_size (or the model's size)",
              file=sys.stderr)
        return 2
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"rlhf: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
