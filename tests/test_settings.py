import pytest

from agent.settings import Settings, SettingsError, load_settings


def test_defaults_without_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    settings = load_settings(environ={})
    assert settings == Settings()


def test_precedence_toml_then_env_then_flags(tmp_path):
    config = tmp_path / "ttt.toml"
    config.write_text('device = "cuda"\n[vad]\nthreshold = 0.7\nmin_speech_ms = 50\n[asr]\nbeam_size = 3\n')
    settings = load_settings(
        config,
        overrides=["vad.min_speech_ms=80"],
        environ={"TTT_VAD__THRESHOLD": "0.6", "TTT_ASSETS__LLM": "/models/llm"},
    )
    assert settings.device == "cuda"
    assert settings.asr.beam_size == 3  # from the file only
    assert settings.vad.threshold == 0.6  # env beats the file
    assert settings.vad.min_speech_ms == 80  # the flag beats both
    assert settings.assets.llm == "/models/llm"


def test_config_file_from_env(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("[turn]\nmax_silence_ms = 1500\n")
    assert load_settings(environ={"TTT_CONFIG": str(config)}).turn.max_silence_ms == 1500


def test_optional_fields_accept_none():
    settings = load_settings(environ={"TTT_ASSETS__LLM": "none"})
    assert settings.assets.llm is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("vad.nope=1", "unknown setting 'vad.nope'"),
        ("nosection.x=1", "unknown settings section"),
        ("vad.threshold=high", "vad.threshold expects float"),
        ("vad=1", "is a section"),
        ("novalue", "section.field=value"),
        ("talker.precision=fp8", "talker.precision must be one of auto, fp32, bf16, int8, got 'fp8'"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(overrides=[override], environ={})


def test_bad_toml(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[vad\nthreshold = ")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config, environ={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_toml_type_mismatch(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[vad]\nmin_speech_ms = "soon"\n')
    with pytest.raises(SettingsError, match="expects int"):
        load_settings(config, environ={})


def documented_variables() -> set[str]:
    """Every TTT_* variable the README and the settings docstring name (templates like TTT_<SECTION> aside)."""
    import re
    from pathlib import Path

    import agent.settings

    root = Path(__file__).parent.parent
    text = (root / "README.md").read_text() + (agent.settings.__doc__ or "")
    return set(re.findall(r"\bTTT_[A-Z][A-Z0-9_]*[A-Z0-9]\b", text))


def test_every_documented_variable_loads(tmp_path):
    from agent.settings import ENV_ALIASES

    names = documented_variables()
    assert {"TTT_CACHE_DIR", "TTT_CODEC", "TTT_CONFIG", "TTT_VAD__THRESHOLD"} <= names
    config = tmp_path / "c.toml"
    config.write_text("")
    for name in sorted(names):
        value = str(config) if name == "TTT_CONFIG" else "0.6" if name == "TTT_VAD__THRESHOLD" else "some/dir"
        settings = load_settings(environ={name: value})  # raises SettingsError for an unknown one
        if name in ENV_ALIASES:
            section, field = ENV_ALIASES[name].split(".")
            assert getattr(getattr(settings, section), field) == value


def test_cache_dir_and_codec_variables_reach_the_assets():
    settings = load_settings(environ={"TTT_CACHE_DIR": "/tmp/ttt-cache", "TTT_CODEC": "/tmp/codec.safetensors"})
    assert settings.assets.cache_dir == "/tmp/ttt-cache"
    assert settings.assets.codec == "/tmp/codec.safetensors"
    # The long names are the same settings.
    assert load_settings(environ={"TTT_ASSETS__CODEC": "x"}).assets.codec == "x"


def test_torch_threads_are_set_once_from_the_settings():
    import torch

    from agent.settings import set_torch_threads

    before = torch.get_num_threads()
    try:
        assert set_torch_threads(load_settings(environ={"TTT_TORCH_THREADS": "1"})) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_choice_setting_takes_its_values():
    assert load_settings(overrides=["talker.precision=int8"], environ={}).talker.precision == "int8"
    assert load_settings(environ={"TTT_TALKER__PRECISION": "bf16"}).talker.precision == "bf16"
