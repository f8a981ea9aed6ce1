"""Settings come from the environment, once, and every one is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from seggpt_backend.settings import Settings, SettingsError

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_documented_in_the_readme() -> None:
    text = README.read_text()
    missing = [name for name in Settings.env_names() if f"`{name}`" not in text]
    assert not missing, f"document these settings in README.md: {missing}"


def test_from_env_parses_types_and_ignores_empty_values() -> None:
    env = {
        "SEGGPT_NUM_EXAMPLES": "8",
        "SEGGPT_PREDICT_BUDGET_S": "12.5",
        "SEGGPT_SPLIT_COMPONENTS": "true",
        "SEGGPT_ALLOWED_HOSTS": "cdn.example.com, s3.example.com",
        "REDIS_URL": "",
        "PORT": "9191",
    }
    s = Settings.from_env(env)
    assert (s.num_examples, s.predict_budget_s, s.split_components, s.port) == (8, 12.5, True, 9191)
    assert s.allowed_hosts == ("cdn.example.com", "s3.example.com")
    assert s.embedded and s.seggpt_weights == "demo"
    assert Settings.from_env(env, port=1).port == 1


def test_secrets_stay_out_of_repr() -> None:
    s = Settings.from_env(
        {
            "LABEL_STUDIO_API_KEY": "tok-123",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "pw-456",
            "REDIS_URL": "redis://:pw@x",
        }
    )
    assert "tok-123" not in repr(s) and "pw-456" not in repr(s) and ":pw@" not in repr(s)


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SEGGPT_ENSEMBLE": "fetaure"}, "SEGGPT_ENSEMBLE"),
        ({"SEGGPT_SEG_TYPE": "panoptic"}, "SEGGPT_SEG_TYPE"),
        ({"SEGGPT_MULTILABEL": "both"}, "SEGGPT_MULTILABEL"),
        ({"SEGGPT_EXAMPLE_SELECTION": "random"}, "SEGGPT_EXAMPLE_SELECTION"),
        ({"SEGGPT_DTYPE": "float8"}, "SEGGPT_DTYPE"),
        ({"SEGGPT_DEVICE": "gpu"}, "SEGGPT_DEVICE"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"SEGGPT_NUM_EXAMPLES": "four"}, "SEGGPT_NUM_EXAMPLES"),
        ({"SEGGPT_NUM_EXAMPLES": "0"}, "SEGGPT_NUM_EXAMPLES"),
        ({"SEGGPT_CHUNK_SIZE": "-1"}, "SEGGPT_CHUNK_SIZE"),
        ({"SEGGPT_PREDICT_BUDGET_S": "soon"}, "SEGGPT_PREDICT_BUDGET_S"),
        ({"SEGGPT_DOWNLOAD_DEADLINE_S": "0"}, "SEGGPT_DOWNLOAD_DEADLINE_S"),
        ({"SEGGPT_DOWNLOAD_DEADLINE_S": "-5"}, "SEGGPT_DOWNLOAD_DEADLINE_S"),
        ({"SEGGPT_DOWNLOAD_DEADLINE_S": "a minute"}, "SEGGPT_DOWNLOAD_DEADLINE_S"),
        ({"BASIC_AUTH_USER": "admin"}, "BASIC_AUTH_PASS"),
    ],
)
def test_a_bad_setting_is_refused_at_start_up_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        Settings.from_env(env)


def test_download_deadline_defaults_to_a_minute_and_reaches_the_client() -> None:
    from seggpt_backend.service.jobs.entry import make_client

    assert Settings().download_deadline_s == 60.0
    s = Settings.from_env(
        {
            "SEGGPT_DOWNLOAD_DEADLINE_S": "2.5",
            "LABEL_STUDIO_URL": "http://ls:8080",
            "LABEL_STUDIO_API_KEY": "k",
        }
    )
    assert s.download_deadline_s == 2.5
    client = make_client(s)
    try:
        assert client.download_deadline_s == 2.5
    finally:
        client.close()


def test_good_values_of_the_closed_settings_are_accepted() -> None:
    s = Settings.from_env(
        {"SEGGPT_DEVICE": "cuda:1", "SEGGPT_DTYPE": "bf16", "LOG_LEVEL": "debug", "SEGGPT_ENSEMBLE": "none"}
    )
    assert (s.device, s.dtype, s.ensemble) == ("cuda:1", "bf16", "none")


def test_the_command_line_exits_2_with_the_bad_setting_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from seggpt_backend.cli import main

    monkeypatch.setenv("SEGGPT_SEG_TYPE", "panoptic")
    assert main(["serve"]) == 2
    assert "SEGGPT_SEG_TYPE='panoptic'" in capsys.readouterr().err
