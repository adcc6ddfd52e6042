import pytest
import torch

from rlhf.text.task import Task
from rlhf.text.tokenizer import Tokenizer, left_pad

TOKENIZER = Tokenizer(Task.vocabulary)


def test_special_ids_pad_is_zero_and_differs_from_eos():
    assert TOKENIZER.pad_id == 0
    assert TOKENIZER.eos_id != TOKENIZER.pad_id
    assert TOKENIZER.unk_id not in (TOKENIZER.pad_id, TOKENIZER.eos_id)
    assert TOKENIZER.vocab_size == len(Task.vocabulary) + 3


def test_round_trip_and_unknown_words():
    text = "restaurant review : the pasta was really tasty but the waiter was rude ."
    ids = TOKENIZER.encode(text)
    assert len(ids) == len(text.split())
    assert TOKENIZER.decode(ids) == text
    assert TOKENIZER.encode("the zebra")[1] == TOKENIZER.unk_id
    assert TOKENIZER.encode("the", add_eos=True)[-1] == TOKENIZER.eos_id


def test_decode_stops_at_eos_and_skips_pad():
    the, pasta = TOKENIZER.encode("the pasta")
    ids = [TOKENIZER.pad_id, the, TOKENIZER.pad_id, pasta, TOKENIZER.eos_id, the, TOKENIZER.pad_id]
    assert TOKENIZER.decode(ids) == "the pasta"
    assert TOKENIZER.decode(torch.tensor(ids)) == "the pasta"


def test_save_load(tmp_path):
    TOKENIZER.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.itos == TOKENIZER.itos
    assert (loaded.pad_id, loaded.eos_id, loaded.unk_id) == (TOKENIZER.pad_id, TOKENIZER.eos_id, TOKENIZER.unk_id)
    (tmp_path / "bad.json").write_text('{"itos": ["a", "b", "c"]}')
    with pytest.raises(ValueError, match="not a tokenizer"):
        Tokenizer.load(tmp_path / "bad.json")


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = TOKENIZER.encode_batch(["the pasta", "i loved the pasta"])
    assert mask.sum(1).tolist() == [2, 4]
    assert TOKENIZER.decode(ids[0]) == "the pasta"


def test_a_damaged_tokenizer_file_is_one_config_error(tmp_path):
    from rlhf.errors import ConfigError

    path = tmp_path / "tokenizer.json"
    for text in ("{", '{"itos": 3}', "[]", '{"vocab": []}'):
        path.write_text(text)
        with pytest.raises(ConfigError, match="tokenizer.json: not a tokenizer file"):
            Tokenizer.load(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not a tokenizer file"):
        Tokenizer.load(path)


def test_a_sequence_longer_than_block_size_names_the_key():
    import torch

    from rlhf.errors import ConfigError
    from rlhf.text.model import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ConfigError, match="text.model.block_size = 8: a sequence of 9 real tokens is longer"):
        gpt(torch.zeros(1, 9, dtype=torch.long))
