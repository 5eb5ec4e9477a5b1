"""Configuration: embedded defaults, file, environment, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicegw.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("VOICEGW_")]:
        monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voicegw.toml"
    path.write_text(text)
    return path


def test_embedded_defaults_need_no_file() -> None:
    s = load_settings()
    assert (s.sip.host, s.sip.udp_port, s.sip.tcp_port) == ("127.0.0.1", 5060, 5060)
    assert (s.http.host, s.http.port) == ("127.0.0.1", 8080)
    assert s.database_url == "sqlite+aiosqlite:///var/voicegw.db"
    assert s.recordings_root == Path("var/recordings")
    assert s.key_dir == Path("var/keys")


def test_example_config_is_valid_and_matches_defaults() -> None:
    example = Path(__file__).parents[2] / "config" / "voicegw.example.toml"
    assert load_settings(example) == load_settings()


def test_file_values_are_used(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "[http]\nport = 9090\n[sip]\nt1 = 0.25\n"))
    assert s.http.port == 9090
    assert s.sip.t1 == 0.25


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_HTTP__PORT", "9191")
    monkeypatch.setenv("VOICEGW_DATABASE__URL", "postgresql+asyncpg://db/voicegw")
    s = load_settings(write(tmp_path, "[http]\nport = 9090\n"))
    assert s.http.port == 9191
    assert s.database_url == "postgresql+asyncpg://db/voicegw"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_CONFIG", str(write(tmp_path, 'node_name = "edge-7"\n')))
    assert load_settings().node_name == "edge-7"


def test_out_of_range_value_names_key_file_and_limit(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 70000\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    text = str(err.value)
    assert "http.port" in text
    assert str(path) in text
    assert "less than or equal to 65535" in text
    assert "70000" in text


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sip\.udp_prot: unknown key"):
        load_settings(write(tmp_path, "[sip]\nudp_prot = 5060\n"))


def test_enumerated_value_lists_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"logging\.format: .*'json' or 'text'"):
        load_settings(write(tmp_path, '[logging]\nformat = "xml"\n'))


def test_bad_environment_value_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEGW_SIP__T1", "fast")
    with pytest.raises(ConfigError, match=r"sip\.t1"):
        load_settings()


def test_tls_port_requires_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_port needs tls_certificate and tls_private_key"):
        load_settings(write(tmp_path, "[sip]\ntls_port = 5061\n"))


def test_rtp_range_must_be_ordered(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="rtp_port_max must be greater"):
        load_settings(write(tmp_path, "[media]\nrtp_port_min = 30000\nrtp_port_max = 20000\n"))


def test_not_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[http\nport=1"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
