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


def cmd_train(args: argparse.Namespace) -> int:
    from rlhf.config import load_config
    from rlhf.trainer import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there (is it a run directory?)")
        if args.config and "=" not in args.config:
            raise ConfigError(f"--resume uses {run_dir / 'config.yaml'}; pass only key=value overrides, "
                              f"not {args.config!r}")
        overrides = ([args.config] if args.config else []) + args.overrides
        cfg = load_config(run_dir / "config.yaml", overrides)
        trainer = Trainer(cfg, run_dir, resume=True)
    else:
        if not args.config:
            raise ConfigError("rlhf train needs a config file, e.g. rlhf train configs/cartpole.yaml")
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config)
        trainer = Trainer(cfg, run_dir)
    print(f"run directory: {run_dir}   (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
    stats = trainer.train()
    done = trainer.global_step >= cfg.total_timesteps
    state = "finished" if done else "stopped; continue with --resume"
    print(f"{state} at step {trainer.global_step}: ep_rew_mean {stats.get('rollout/ep_rew_mean', float('nan')):.2f}"
          f"  checkpoint in {run_dir / 'checkpoints'}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
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


def cmd_model_size(args: argparse.Namespace) -> int:
    from rlhf.config import load_config
    from rlhf.precision import format_model_size_table, model_size_table
    from rlhf.build import build_policy
    from rlhf.vec_env import make_vec_env

    target = Path(args.target)
    cfg = load_config(target / "config.yaml" if target.is_dir() else target, args.overrides)
    envs = make_vec_env(cfg.env, num_envs=1)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    envs.close()
    rows = model_size_table(policy, optimizer="adam", train_mode=cfg.precision.train)
    print(format_model_size_table(rows))
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
    ev.set_defaults(func=cmd_eval)

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
    except ConfigError as exc:
        print(f"rlhf: {exc}", file=sys.stderr)
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
