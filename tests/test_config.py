"""Config loading: aliases, DeepRacer console ranges, overrides and the messages users see."""
import pytest

from rlhf.config import load_config
from rlhf.errors import ConfigError


def test_defaults_and_overrides():
    cfg = load_config(data={"env": {"id": "CartPole-v1"}}, overrides=["ppo.learning_rate=1e-3", "seed=3"])
    assert cfg.ppo.learning_rate == 1e-3 and cfg.seed == 3 and cfg.env.id == "CartPole-v1"


def test_deepracer_and_sb3_aliases():
    cfg = load_config(data={"ppo": {"num_epochs": 5, "lr": 3e-4, "beta_entropy": 0.01, "batch_size": 64,
                                    "loss_type": "mean squared error", "num_episodes_between_training": 20}})
    assert (cfg.ppo.epochs, cfg.ppo.learning_rate, cfg.ppo.entropy_coef) == (5, 3e-4, 0.01)
    assert cfg.ppo.loss_type == "mse" and cfg.ppo.episodes_between_updates == 20 and cfg.ppo.console_ranges
    sb3 = load_config(data={"ppo": {"n_epochs": 4, "gamma": 0.9, "ent_coef": 0.1, "clip_range_vf": 0.2}})
    assert (sb3.ppo.epochs, sb3.ppo.discount_factor, sb3.ppo.entropy_coef, sb3.ppo.clip_value) == (4, 0.9, 0.1, 0.2)
    assert not sb3.ppo.console_ranges
    assert load_config(data={"ppo": {"loss_type": "Huber"}}).ppo.loss_type == "huber"


@pytest.mark.parametrize("overrides, words", [
    (["ppo.discount_factor=1.5"], ["ppo.discount_factor", "1.5", "less than or equal to 1"]),
    (["ppo.loss_type=l1"], ["ppo.loss_type", "'l1'", "'mse' or 'huber'"]),
    (["ppo.batch_size=0"], ["ppo.batch_size", "0", "greater than or equal to 2"]),
    (["ppo.lerning_rate=0.1"], ["ppo.lerning_rate", "unknown key", "did you mean 'learning_rate'"]),
    (["ppo.num_epochs=5", "ppo.batch_size=48"], ["ppo.batch_size = 48", "32, 64, 128, 256, 512"]),
    (["ppo.lr=0.01"], ["ppo.learning_rate = 0.01", "1e-08 to 0.001"]),
    (["ppo.learning_rate=fast"], ["ppo.learning_rate", "'fast'", "lin_<number>"]),
])
def test_errors_name_key_value_and_allowed(overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(data={}, overrides=overrides)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_alias_and_name_together():
    with pytest.raises(ConfigError, match="sets 'epochs', which is already set"):
        load_config(data={"ppo": {"n_epochs": 2, "epochs": 3}})
    # an override replaces the file's value whichever name either uses
    assert load_config(data={"ppo": {"epochs": 3}}, overrides=["ppo.num_epochs=5"]).ppo.epochs == 5


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML.*line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(data={}, overrides=["seed"])


def test_schedules():
    from rlhf.schedules import schedule_value

    assert schedule_value("lin_0.001", 0.5) == pytest.approx(0.0005)
    assert schedule_value(0.2, 0.1) == 0.2


def test_deepracer_hyperparameters_file(tmp_path):
    from cli_helpers import ROOT

    hp = ROOT / "tests" / "data" / "hyperparameters.json"
    cfg = load_config(data={"deepracer": {"hyperparameters": str(hp)}})
    p = cfg.ppo
    assert (p.batch_size, p.entropy_coef, p.discount_factor, p.loss_type) == (64, 0.01, 0.999, "huber")
    assert (p.learning_rate, p.episodes_between_updates, p.epochs, p.console_ranges) == (3e-4, 20, 10, True)
    bad = tmp_path / "hp.json"
    bad.write_text('{"batch_size": 48, "lr": 0.0003}')
    with pytest.raises(ConfigError, match="batch_size = 48"):
        load_config(data={"deepracer": {"hyperparameters": str(bad)}})
    bad.write_text('{"batch_sise": 64}')
    with pytest.raises(ConfigError, match="unknown key 'batch_sise'"):
        load_config(data={"deepracer": {"hyperparameters": str(bad)}})
    with pytest.raises(ConfigError, match="deepracer.reward_function .* not found"):
        load_config(data={"deepracer": {"reward_function": str(tmp_path / "nope.py")}})
    reward = tmp_path / "reward.py"
    reward.write_text("def reward_function(params):\n    return 1.0\n")
    cfg = load_config(data={"deepracer": {"reward_function": str(reward)}})
    assert cfg.env.kwargs["reward_function"] == str(reward)


@pytest.mark.parametrize("override, words", [
    ("ppo.learning_rate=inf", ["ppo.learning_rate = 'inf'", "finite number"]),
    ("ppo.learning_rate=nan", ["ppo.learning_rate = 'nan'", "finite number"]),
    ("ppo.learning_rate=lin_nan", ["ppo.learning_rate = 'lin_nan'", "finite number"]),
    ("ppo.clip_range=nan", ["ppo.clip_range = 'nan'", "finite number"]),
    ("ppo.clip_range=lin_1e300", ["ppo.clip_range", "magnitude at most 1e+12"]),
    ("ppo.vf_coef=inf", ["ppo.vf_coef = 'inf'", "finite number"]),
    ("ppo.entropy_coef=.inf", ["ppo.entropy_coef = inf", "finite number"]),
    ("ppo.huber_delta=1e300", ["ppo.huber_delta = '1e300'", "magnitude at most 1e+12"]),
    ("policy.log_std_init=nan", ["policy.log_std_init = 'nan'", "finite number"]),
    ("policy.log_std_init=1e308", ["policy.log_std_init = '1e308'", "less than or equal to 5"]),
    ("text.temperature=nan", ["text.temperature = 'nan'", "finite number"]),
    ("text.sft.learning_rate=-.inf", ["text.sft.learning_rate = -inf", "finite number"]),
    ("text.adaptive_kl.target=inf", ["text.adaptive_kl.target = 'inf'", "finite number"]),
    ("env.kwargs.track_width=.nan", ["env.kwargs", "track_width = nan", "finite number"]),
    ("seed=-1", ["seed = -1", "greater than or equal to 0"]),
    ("seed=18446744073709551616", ["seed = 18446744073709551616", "less than or equal to 2147483647"]),
    ("env.num_envs=1000000", ["env.num_envs = 1000000", "less than or equal to 65536"]),
    ("ppo.batch_size=100000000", ["ppo.batch_size = 100000000", "less than or equal to 16777216"]),
    ("ppo.n_steps=100000000", ["ppo.n_steps = 100000000", "less than or equal to 16777216"]),
])
def test_nonfinite_absurd_and_out_of_range_values_are_refused(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(data={}, overrides=[override])
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_rollout_rows_are_bounded_across_keys():
    with pytest.raises(ConfigError, match=r"ppo.n_steps \* env.num_envs = 65536 \* 512 = 33554432 rollout rows: at "
                                          r"most 16777216"):
        load_config(data={}, overrides=["ppo.n_steps=65536", "env.num_envs=512"])
    assert load_config(data={}, overrides=["ppo.n_steps=32768", "env.num_envs=512"]).env.num_envs == 512


def test_yaml_duplicate_keys_alias_bombs_and_encoding_are_refused(tmp_path):
    cases = {
        "dup.yaml": (b"ppo:\n  epochs: 3\n  epochs: 4\n", r"line 3, column 3\): duplicate key 'epochs'"),
        "bomb.yaml": (b'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
                      + b"".join(f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n".encode()
                                 for p, n in zip("abcdefgh", "bcdefghi")),
                      "aliases expand to more than 100000 nodes"),
        "loop.yaml": (b"env:\n  kwargs: &k {x: *k}\n", "an alias refers to a node that contains it"),
        "latin1.yaml": ("seed: 3  # d\u00e9j\u00e0 vu\n".encode("latin-1"), r"not UTF-8 text \(byte 0xe9 at offset 12\)"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=match):
            load_config(tmp_path / name)
    # anchors and merge keys that stay small are fine, and a merged key may be overridden
    (tmp_path / "merge.yaml").write_text("base: &base {epochs: 3, batch_size: 32}\nppo:\n  <<: *base\n  epochs: 5\n")
    from rlhf.config import read_yaml

    assert read_yaml(tmp_path / "merge.yaml")["ppo"] == {"epochs": 5, "batch_size": 32}


def test_config_that_is_not_a_regular_file_or_nests_too_deeply(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '/dev/zero' is not a regular file"):
        load_config("/dev/zero")  # would never finish reading
    deep = tmp_path / "deep.yaml"
    deep.write_text("env:\n  kwargs:\n    x: " + "[" * 600 + "]" * 600 + "\n")
    with pytest.raises(ConfigError, match="nests too deeply to be a config"):
        load_config(deep)


def test_torch_threads_is_bounded():
    # a hundred million threads made libgomp fail to start them and the process crash
    with pytest.raises(ConfigError, match="torch_threads = 100000000: input should be less than or equal to 1024"):
        load_config(overrides=["torch_threads=100000000"])
    assert load_config(overrides=["torch_threads=4"]).torch_threads == 4


def test_hyperparameters_file_nonfinite_refused_and_overridden_keys_warned(tmp_path, capsys):
    hp = tmp_path / "hyperparameters.json"
    for text, words in (('{"lr": NaN}', "lr = nan: must be a finite number"),
                        ('{"beta_entropy": Infinity}', "beta_entropy = inf: must be a finite number"),
                        ('{"lr": 1e400}', "lr = inf: must be a finite number")):
        hp.write_text(text)
        for data in ({"deepracer": {"hyperparameters": str(hp)}},  # the file's value is used ...
                     {"deepracer": {"hyperparameters": str(hp)}, "ppo": {"lr": 3e-4, "beta_entropy": 0.01}}):  # ... or not
            with pytest.raises(ConfigError, match=f"hyperparameters.json'.*{words}"):
                load_config(data=data)
    hp.write_text('{"batch_size": 64, "lr": 0.0003}')
    cfg = load_config(data={"deepracer": {"hyperparameters": str(hp)}, "ppo": {"batch_size": 128, "lr": 0.0003}})
    assert cfg.ppo.batch_size == 128
    err = capsys.readouterr().err
    assert "deepracer.hyperparameters batch_size = 64 is not used: the config sets ppo.batch_size = 128" in err
    assert "lr" not in err  # the same value in both: nothing to say


def test_union_typed_keys_are_reported_once():
    # learning_rate is a number or 'lin_<number>': a YAML .inf is one problem, not one per accepted type
    with pytest.raises(ConfigError) as err:
        load_config(data={"ppo": {"learning_rate": float("inf")}})
    assert str(err.value) == "config error: ppo.learning_rate = inf: input should be a finite number"


@pytest.mark.parametrize("overrides, words", [
    (["policy.hidden_sizes=[65536,65536,65536]"], "policy.hidden_sizes = [65536, 65536, 65536]: 1.72e+10 weights"),
    (["policy.hidden_sizes=[8192,8192]", "policy.moe.experts=32"], "policy.hidden_sizes = [8192, 8192]: 4.29e+09"),
    (["text.model.n_layer=256", "text.model.n_embd=16384"], "text.model: n_layer = 256, n_embd = 16384 make 8.25e+11"),
])
def test_networks_too_large_to_build_are_refused_before_memory_runs_out(overrides, words):
    # [65536] * 3 was killed by the kernel for memory after a minute, without a word
    with pytest.raises(ConfigError) as err:
        load_config(overrides=(["text.updates=1"] if "text" in overrides[0] else []) + overrides)
    assert words in str(err.value) and "over the 1.07e+09 this builds" in str(err.value)
    load_config(overrides=["policy.hidden_sizes=[4096,4096,4096]"])  # 6.7e7 weights: fine


def test_an_empty_stage_list_is_refused():
    # stages=[] used to "finish" a text run that trained nothing, with exit status 0
    with pytest.raises(ConfigError, match=r"stages = \[\]: list should have at least 1 item"):
        load_config(overrides=["text.updates=1", "stages=[]"])
