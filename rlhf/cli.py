"""The ``rlhf`` command: train, eval, model-size. User errors print one line and exit 2."""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

from rlhf import __version__
from rlhf.errors import ConfigError


_settle_when_ready = False  # set by ``entry``: the collector is off until the command's imports are done


def entry() -> None:
    """The ``rlhf`` command and ``python -m rlhf``: ``main`` as a whole process.

    Importing torch creates about 170,000 long-lived objects. Python's cyclic collector would scan them
    during the imports, at every full collection of the run, and once more at exit: about 0.8 s of a
    10 s CartPole run. So the process imports with the collector off, and ``_settle_imports`` freezes what
    exists (``gc.freeze``, CPython's recipe for this) before the long part: later collections, and the
    one at exit, look only at what the run itself creates. ``main`` called as a function changes nothing.
    """
    global _settle_when_ready
    _settle_when_ready = gc.isenabled()
    if _settle_when_ready:
        gc.disable()
    try:
        code = main()
    finally:
        if _settle_when_ready:  # the command stopped before its long part (an error, --help)
            _settle_when_ready = False
            gc.enable()
    sys.exit(code)


def _settle_imports() -> None:
    """Under ``entry``: freeze the objects the imports made and turn the collector back on. Every command
    that runs for a while (train, eval, sample, deepracer-replay) calls it before its long part; until then
    the collector stays off (model-size and errors end the process first)."""
    global _settle_when_ready
    if _settle_when_ready:
        _settle_when_ready = False
        gc.freeze()
        gc.enable()


def _default_run_dir(config_path: str) -> Path:
    """``runs/<config>-<time>``, created now so that two runs started together never share it (data-parallel:
    rank 0 creates it and every rank takes its name)."""
    from rlhf import distributed
    from rlhf.run_dir import unique_run_dir

    if distributed.world_size() == 1:
        return unique_run_dir("runs", Path(config_path).stem)
    return Path(distributed.broadcast_json(str(unique_run_dir("runs", Path(config_path).stem))
                                           if distributed.is_main() else None))


def _init_distributed(cfg) -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group; True on the rank that prints (rank 0)."""
    from rlhf import distributed

    if distributed.requested():
        distributed.refuse_unsupported(cfg)
    distributed.init(cfg.device)
    return distributed.is_main()


def _trainer(cfg):
    """The gym Trainer, or the text pipeline's when the config has a ``text`` section."""
    if cfg.text is not None:
        from rlhf.text.pipeline import TextTrainer

        return TextTrainer
    if cfg.backend == "sb3":  # Stable-Baselines3's PPO on the same config (rlhf.backends.sb3)
        from rlhf.backends.sb3 import SB3Trainer

        return SB3Trainer
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
        main = _init_distributed(cfg)
        trainer = _trainer(cfg)(cfg, run_dir, resume=True)
        if trainer.finished:  # exit 0: resuming a finished run is a no-op, so a requeued job may repeat it
            trainer.close()
            key, value = ("text.updates", cfg.text.updates) if cfg.text is not None else \
                ("total_timesteps", cfg.total_timesteps)
            if main:
                print(f"rlhf: {run_dir} already finished ({key} = {value}): nothing to train; resume with a larger "
                      f"{key}=... to train on", file=sys.stderr)
            return 0
    else:
        if not args.config:
            raise ConfigError("rlhf train needs a config file, e.g. rlhf train configs/cartpole.yaml")
        cfg = load_config(args.config, args.overrides)
        main = _init_distributed(cfg)
        run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(args.config)
        try:
            trainer = _trainer(cfg)(cfg, run_dir)
        except BaseException:
            if not args.run_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # the directory made for this run stays only if the run started
            raise
    if main:
        print(f"run directory: {run_dir}   (tensorboard --logdir {run_dir.parent})", file=sys.stderr)
    _settle_imports()
    stats = trainer.train()
    if not main:
        return 0
    if cfg.text is not None:
        state = "finished" if not trainer.stop.requested else "stopped; continue with --resume"
        print(f"{state}: stages {', '.join(cfg.text_stages)} in {run_dir}", file=sys.stderr)
        return 0
    done = trainer.global_step >= cfg.total_timesteps
    state = "finished" if done else f"finished ({trainer.stop_reason})" if getattr(trainer, "stop_reason", None) \
        else "stopped; continue with --resume"
    print(f"{state} at step {trainer.global_step}: ep_rew_mean {stats.get('rollout/ep_rew_mean', float('nan')):.2f}"
          f"  checkpoint in {run_dir / 'checkpoints'}", file=sys.stderr)
    return 0


def _deterministic(args: argparse.Namespace) -> bool:
    """Deterministic unless --stochastic; --deterministic is the default, kept as an accepted no-op."""
    if args.stochastic and args.deterministic:
        raise ConfigError("--stochastic and --deterministic contradict each other (evaluation takes the most "
                          "likely action by default; --stochastic samples)")
    return not args.stochastic


def _check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < 2**32:
        raise ConfigError(f"--seed {seed}: allowed 0 to {2**32 - 1}")


def cmd_eval(args: argparse.Namespace) -> int:
    from rlhf.evaluate import VIDEO_FORMATS

    _check_seed(args.seed)
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes}: evaluate at least 1 episode")
    if args.prompts is not None and args.prompts < 1:
        raise ConfigError(f"--prompts {args.prompts}: evaluate at least 1 prompt")
    deterministic = _deterministic(args)
    if args.video and "=" in args.video and Path(args.video).suffix.lower() not in VIDEO_FORMATS:
        args.overrides, args.video = [*args.overrides, args.video], ""  # `--video key=value`: an override
    if _is_text_run(args.target):
        return _eval_text(args)
    if args.overoptimization:
        raise ConfigError("--overoptimization applies to text runs (configs with a text: section)")
    if args.prompts is not None:
        raise ConfigError("--prompts applies to text runs; gym runs take --episodes N")
    from rlhf.config import load_config
    from rlhf.evaluate import (check_outputs_writable, check_video_path, hide_returns, json_ready, load_policy,
                               locate, name_outputs, run_episodes, without_user_code)
    from rlhf.integrations import for_env
    from rlhf.vec_env import fill_run_dir

    video = check_video_path(args.video) if args.video else None  # before anything runs
    dropped: list[str] = []
    if args.no_user_code:
        run_dir, _ = locate(args.target)
        dropped = without_user_code(load_config(run_dir / "config.yaml", args.overrides))[1]
    cfg, policy, run_dir = load_policy(args.target, args.overrides, user_code=not args.no_user_code)
    hooks = for_env(cfg.env.id)
    merged = fill_run_dir({**cfg.env.kwargs, **cfg.env.eval_kwargs}, run_dir)
    env_kwargs, default_video = name_outputs(cfg, run_dir, merged, video=args.video == "")
    if default_video is not None:
        video = check_video_path(default_video)
    check_outputs_writable(env_kwargs)
    if hooks is not None:
        env_kwargs = hooks.before_eval(env_kwargs) or env_kwargs
    _settle_imports()
    result = run_episodes(policy, cfg, args.episodes or 10, deterministic=deterministic, seed=args.seed,
                          run_dir=run_dir, video=video, env_kwargs=env_kwargs)
    result.pop("episode_infos")
    if dropped:
        result = hide_returns(result)
    files = [video] if video else []
    if hooks is not None:
        files += hooks.after_eval(env_kwargs, run_dir)
    result = json_ready(result)
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print(_eval_line(result))
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def _eval_line(result: dict) -> str:
    """The human summary of ``rlhf eval``: return and length first, then the env's own floats."""
    def num(value, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    ret = "return n/a" if result["mean_return"] is None else \
        f"return {result['mean_return']:.2f} +- {num(result['std_return'], '.2f')}"
    extra = "".join(f", {k} {num(v, '.3g')}" for k, v in result.items()
                    if k not in ("mean_return", "std_return", "mean_length", "episodes", "returns", "lengths", "seed",
                                 "deterministic", "null_reasons") and (v is None or isinstance(v, float)))
    mode = "most likely action" if result["deterministic"] else "sampled actions"
    line = (f"{result['episodes']} episodes (seed {result['seed']}, {mode}): {ret}, "
            f"length {num(result['mean_length'], '.1f')}{extra}")
    reasons = result.get("null_reasons", {})
    if "mean_return" in reasons:
        line += f"  [return {reasons['mean_return']}]"
    return line


def _eval_text(args: argparse.Namespace) -> int:
    from rlhf.evaluate import json_ready
    from rlhf.text.evaluate import evaluate_text_run, overoptimization_report

    if args.episodes is not None:
        raise ConfigError("--episodes applies to gym runs; text runs take --prompts N")
    if args.video is not None:
        raise ConfigError("--video applies to gym runs; text runs have no frames (see rlhf sample)")
    if args.overoptimization and args.no_user_code:
        raise ConfigError("--overoptimization scores with the run's reward; it cannot run with --no-user-code")
    _settle_imports()
    result = evaluate_text_run(args.target, args.overrides, prompts=args.prompts,
                               seed=0 if args.seed is None else args.seed, user_code=not args.no_user_code)
    if args.overoptimization:
        report = overoptimization_report(args.target)
        result["overoptimized"] = report["summary"]["over_optimized"]
        print(f"wrote {Path(args.target) / 'overoptimization.png'} and .json", file=sys.stderr)
    result = json_ready(result)
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print("  ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                        if k != "null_reasons"))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from rlhf.text.evaluate import sample_texts

    if args.n < 1:
        raise ConfigError(f"-n {args.n}: ask for at least one sample")
    _check_seed(args.seed)
    if not _is_text_run(args.target):
        raise ConfigError(f"{args.target!r} is not a text run directory (rlhf sample reads runs trained from a "
                          "config with a text: section)")
    _settle_imports()
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
    if cfg.backend == "sb3":
        from rlhf.backends.sb3 import print_model_size

        return print_model_size(cfg)
    envs = make_vec_env(cfg.env, num_envs=1)
    policy = build_policy(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    envs.close()
    rows = model_size_table(policy, optimizer="adam", train_mode=cfg.precision.train)
    print(format_model_size_table(rows))
    _print_moe_size(policy, "per observation")
    return 0


def _print_moe_size(model, unit: str) -> None:
    """Total vs active parameters of a Mixture-of-Experts model, and their weight bytes per precision."""
    from rlhf.moe import active_parameters, moe_layers

    layers = moe_layers(model)
    if not layers:
        return
    total, active = active_parameters(model)
    s = layers[0].settings
    print(f"Mixture of Experts: {len(layers)} layers, top {s.top_k} of {s.experts} experts; parameters total "
          f"{total:,}, active {unit} {active:,} ({100 * active / total:.0f}%)")
    for name, nbytes in (("fp32", 4), ("bf16", 2), ("int8", 1), ("nf4", 0.5)):
        print(f"  {name:>5} weights: total {int(total * nbytes):,} bytes, active {unit} {int(active * nbytes):,} bytes"
              + ("  (plus per-block scales)" if name in ("int8", "nf4") else ""))


def _text_model_size(cfg) -> int:
    """The PPO policy's table, and what the reference costs: a frozen copy, or nothing with LoRA."""
    from rlhf.precision import format_model_size_table, model_size_table
    from rlhf.moe import MoESettings
    from rlhf.text.model import GPT, GPTConfig
    from rlhf.text.task import Task
    from rlhf.text.tokenizer import Tokenizer

    m, t = cfg.text.model, cfg.text
    gpt = GPT(GPTConfig(vocab_size=Tokenizer(Task.vocabulary).vocab_size, block_size=m.block_size,
                        n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, value_head=t.advantage == "gae",
                        moe=MoESettings(**m.moe.model_dump()) if m.moe else None))
    print(f"text policy: {gpt.num_params(non_embedding=False):,} parameters")
    _print_moe_size(gpt, "per token")
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

    _settle_imports()
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
    parser.add_argument("--version", action="version", version=f"rlhf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train from a YAML config (key=value overrides follow it)")
    train.add_argument("config", nargs="?", help="configs/X.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ppo.learning_rate=1e-3 seed=3")
    train.add_argument("--run-dir", help="where to write config, TensorBoard events and checkpoints")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run directory or checkpoint (reproducible by default)")
    ev.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT")
    ev.add_argument("overrides", nargs="*", help="dotted overrides, e.g. env.kwargs.track=oval")
    ev.add_argument("--episodes", type=int, help="gym runs: episodes to play (default 10)")
    ev.add_argument("--seed", type=int, help="fixes the episodes, or the text samples (default: the run's seed "
                                             "+ 10000 for gym runs, 0 for text runs)")
    ev.add_argument("--stochastic", action="store_true",
                    help="sample actions instead of taking the most likely one (text runs always sample)")
    ev.add_argument("--deterministic", action="store_true", help="the most likely action: the default, kept for "
                                                                 "compatibility")
    ev.add_argument("--no-user-code", action="store_true",
                    help="run no reward file of the run: report lengths (and the env's own metrics), not returns")
    ev.add_argument("--json", action="store_true", help="print one JSON object (nulls carry null_reasons)")
    ev.add_argument("--video", metavar="OUT.gif", nargs="?", const="",
                    help="record the first episode as .gif, .webp or .apng (default RUN/videos/evaluation-"
                         "<track>-<time>.gif)")
    ev.add_argument("--prompts", type=int, help="text runs: held-out prompts to sample (default text.eval_prompts)")
    ev.add_argument("--overoptimization", action="store_true",
                    help="text runs: write overoptimization.png/.json (gold and proxy vs sqrt KL)")
    ev.set_defaults(func=cmd_eval)

    sa = sub.add_parser("sample", help="print generations of a text run's policy")
    sa.add_argument("target", metavar="RUN_DIR")
    sa.add_argument("--prompt", help="a prompt in the task's words (default: held-out prompts)")
    sa.add_argument("-n", type=int, default=5, help="how many samples")
    sa.add_argument("--stage", default="ppo", help="sft or ppo (default: the last stage's policy)")
    sa.add_argument("--seed", type=int, default=0, help="fixes the samples (default 0: the same every time)")
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
        code = args.func(args)
        if "rlhf.distributed" in sys.modules:  # torchrun: all ranks leave the group together, before exit
            sys.modules["rlhf.distributed"].close(wait_for_all=True)
        return code
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
        if "rlhf.distributed" in sys.modules and sys.modules["rlhf.distributed"].peer_failed(exc):
            print("rlhf: another data-parallel rank stopped first (its message is above); this rank stopped too",
                  file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("rlhf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
