"""The native batched env: make_vec, autoreset, info, state round trip, user rewards, simtrace/replay."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers DeepRacer-v0)
from envs.deepracer import (DeepRacerEnv, DeepRacerVectorEnv, read_simtrace, replay, trajectories)
from envs.deepracer.simtrace import COLUMNS


def make(n=4, **kw):
    return gym.make_vec("DeepRacer-v0", num_envs=n, vectorization_mode="vector_entry_point", **kw)


def test_make_vec_gives_native_vector_env():
    env = make(3, observation="lidar", lidar_rays=5)
    assert isinstance(env, DeepRacerVectorEnv)
    assert env.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 7) and env.single_observation_space.shape == (7,)
    assert env.action_space.shape == (3,)
    obs, rew, term, trunc, info = env.step(env.action_space.sample())
    assert rew.dtype == np.float64 and term.dtype == bool and trunc.dtype == bool
    for key in ("progress", "episode_status", "lap_time"):
        assert info[key].shape == (3,) and info[f"_{key}"].dtype == bool
    assert info["episode_status"].dtype.kind == "U"


def test_next_step_autoreset_semantics():
    env = make(2, max_episode_steps=3, track="oval")
    obs0, _ = env.reset(seed=0)
    for _ in range(2):
        _, _, term, trunc, info = env.step(np.array([5, 5]))
        assert not (term.any() or trunc.any())
    _, rew, term, trunc, info = env.step(np.array([5, 5]))
    assert trunc.all() and not term.any() and (info["episode_status"] == "time_up").all()
    # the next step ignores the actions and returns the first observation of a new episode
    obs, rew, term, trunc, info = env.step(np.array([0, 9]))
    assert (rew == 0).all() and not term.any() and not trunc.any()
    assert (env.unwrapped.sim.steps == 0).all() and (info["progress"] == 0).all()
    assert (info["episode_status"] == "in_progress").all()
    fresh = make(2, max_episode_steps=3, track="oval", training=False)
    ref, _ = fresh.reset(seed=0)
    np.testing.assert_allclose(obs[:, 0], 0.0)  # speed 0 again
    np.testing.assert_allclose(obs[:, 2:4], ref[:, 2:4], atol=1e-6)  # aligned with the track again


def test_lap_time_info_and_mask():
    from deepracer_helpers import nearest_discrete, pursuit_action

    env = make(2, track="oval", training=False)
    env.reset(seed=0)
    table = env.unwrapped.core.actions.table
    for _ in range(2000):
        a = np.array([nearest_discrete(*pursuit_action(env.sim, i), table) for i in range(2)])
        _, _, term, trunc, info = env.step(a)
        if term.any():
            break
    assert term.all() and info["_lap_time"].all() and (info["episode_status"] == "lap_complete").all()
    assert (info["lap_time"] > 10).all() and (info["progress"] == 100).all()


def test_single_and_vector_env_share_simulation():
    single = DeepRacerEnv(track="circuit")
    vec = make(1, track="circuit")
    o1, _ = single.reset(seed=5)
    o2, _ = vec.reset(seed=5)
    rng = np.random.default_rng(0)
    for _ in range(100):
        a = int(rng.integers(10))
        o1, r1, t1, tr1, i1 = single.step(a)
        o2, r2, t2, tr2, i2 = vec.step(np.array([a]))
        np.testing.assert_array_equal(o1, o2[0])
        assert r1 == r2[0] and t1 == t2[0] and i1["episode_status"] == i2["episode_status"][0]
        if t1 or tr1:
            break


@pytest.mark.parametrize("kwargs", [dict(), dict(track="random", observation="lidar"),
                                    dict(action_space_type="continuous", max_episode_steps=40)])
def test_get_state_set_state_round_trip(kwargs):
    env = make(4, **kwargs)
    env.reset(seed=1)
    rng = np.random.default_rng(0)
    warm = [env.action_space.sample() for _ in range(30)]
    for a in warm:
        env.step(a)
    state = env.get_state()
    actions = [env.action_space.sample() for _ in range(120)]

    def rollout(e):
        out = []
        for a in actions:
            o, r, te, tr, info = e.step(a)
            out.append((o.copy(), r.copy(), te.copy(), tr.copy(), info["episode_status"].copy()))
        return out

    first = rollout(env)
    other = make(4, **kwargs)
    other.reset(seed=999)
    other.set_state(state)
    second = rollout(other)
    for a, b in zip(first, second):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert rng is not None


def test_user_reward_called_per_car_with_params():
    seen = []

    def reward_function(params):
        seen.append(params["steps"])
        return params["speed"]

    env = make(3, reward_function=reward_function)
    env.reset(seed=0)
    _, rew, *_ = env.step(np.array([1, 3, 4]))
    np.testing.assert_allclose(rew, [1.0, 1.0, 0.5])
    assert seen == [1, 1, 1]


def test_simtrace_and_replay(tmp_path):
    path = tmp_path / "trace.csv"
    env = make(3, track="oval", simtrace_path=path, max_episode_steps=40, reward_function="follow_center_line")
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    totals: dict = {}
    for _ in range(100):
        env.step(rng.integers(0, 10, size=3))
    env.close()
    rows = read_simtrace(path)
    assert list(rows[0]) == list(COLUMNS)
    assert len(rows) == 3 * 100 - sum(1 for r in rows if r["done"])  # one ignored step after each end
    for r in rows:
        totals[r["episode"]] = totals.get(r["episode"], 0.0) + r["reward"]
    same = replay(path, "follow_center_line", "oval")
    assert {e["episode"] for e in same} == set(totals)
    for e in same:
        assert e["new_total"] == pytest.approx(e["original_total"], rel=1e-4, abs=1e-5)
        assert e["original_total"] == pytest.approx(totals[e["episode"]])
    other = replay(path, lambda p: 2.0, "oval")
    assert all(e["new_total"] == 2.0 * e["steps"] for e in other)
    assert len(trajectories(rows)) == len(totals)


def test_partial_reset_with_reset_mask():
    env = make(3, track="oval")
    env.reset(seed=0)
    for _ in range(5):
        env.step(np.array([5, 5, 5]))
    env.reset(options={"reset_mask": np.array([False, True, False])})
    assert list(env.unwrapped.sim.steps) == [5, 0, 5]


def test_random_track_changes_every_episode():
    env = make(2, track="random", max_episode_steps=2)
    env.reset(seed=0)
    before = env.unwrapped.sim.track_of(0).waypoints_array.copy()
    for _ in range(3):
        env.step(np.array([5, 5]))
    after = env.unwrapped.sim.track_of(0).waypoints_array
    assert not np.array_equal(before, after)
    again = make(2, track="random")
    again.reset(seed=0)
    np.testing.assert_array_equal(again.unwrapped.sim.track_of(0).waypoints_array, before)


def test_envs_package_never_imports_rlhf():
    import re
    from pathlib import Path

    root = Path(envs.__file__).parent
    for path in root.rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+rlhf\b", path.read_text(), re.M), path
