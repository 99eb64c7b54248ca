"""Configuration: the contract shape, errors that name file/line/field, env interpolation, secrets."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import openai
import pytest
import respx

from router import AsyncRouter, ConfigError, Router, load_config

CONTRACT = {
    "backends": {"wall": {"provider": "openai", "base_url": "http://127.0.0.1:9000/v1", "api_key": "x"}},
    "models": {
        "primary": {"deployments": [{"backend": "wall", "model": "m1"}], "fallbacks": ["fallback"]},
        "fallback": {"deployments": [{"backend": "wall", "model": "m2"}]},
    },
}
SECRET = "sk-test-9f8e7d6c5b4a"


def test_contract_shape_loads() -> None:
    router = AsyncRouter.from_config(CONTRACT)
    assert router.aliases == ["primary", "fallback"]


def test_yaml_errors_name_file_line_and_field_all_at_once(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "backends:\n"
        "  wall: {provider: openai, base_url: 'http://127.0.0.1:9000/v1'}\n"
        "  fast: {provider: groqq}\n"
        "models:\n"
        "  primary:\n"
        "    deployments:\n"
        "      - {backend: wal, model: m1}\n"
        "    fallbacks: [nope]\n"
        "    colour: red\n"
        "timeouts: {connect_s: -1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = [str(issue) for issue in caught.value.issues]
    assert lines == [
        f"{path}:3: backends.fast.provider: unknown provider 'groqq'; known: deepseek, groq, cerebras, vllm, "
        "llamacpp, openai",
        f"{path}:7: models.primary.deployments[0].backend: unknown backend 'wal'; known: wall, fast",
        f"{path}:8: models.primary.fallbacks[0]: unknown model 'nope'; known: primary",
        f"{path}:9: models.primary.colour: unknown field",
        f"{path}:10: timeouts.connect_s: Input should be greater than 0",
    ]


def test_two_aliases_giving_one_deployment_different_circuit_settings_is_an_error(tmp_path: Path) -> None:
    """A deployment has one circuit whichever aliases list it: conflicting settings are named, with the
    way out; the same settings, or settings on the backend, are fine."""
    path = tmp_path / "router.yaml"
    base = (
        "backends:\n"
        "  a: {provider: openai, base_url: 'http://127.0.0.1:9000/v1'}\n"
        "models:\n"
        "  chat:\n"
        "    deployments: [{backend: a, model: m}]\n"
        "    circuit: {failures: 3}\n"
        "  batch:\n"
        "    deployments: [{backend: a, model: m}]\n"
    )
    path.write_text(base + "    circuit: {failures: 10, cooldown_s: 2}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}:9: models.batch.circuit: deployment a/m has one circuit, and models.chat gives it other settings "
        "(cooldown_s, failures): set them on backends.a.circuit, or the same in both aliases"
    ]
    path.write_text(base + "    circuit: {failures: 3}\n")
    load_config(path)
    path.write_text(
        base.replace("    circuit: {failures: 3}\n", "").replace("9000/v1'}", "9000/v1', circuit: {failures: 3}}")
    )
    load_config(path)


def test_toml_errors_name_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        '[backends.wall]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9000/v1"\n\n'
        '[[models.primary.deployments]]\nbackend = "wall"\nmodel = "m1"\n\n'
        '[models.primary]\npolicy = "fastestest"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:10: models.primary.policy: unknown policy 'fastestest'; known: cheapest, fastest, least-loaded, ordered, weighted"
    ]


def test_broken_yaml_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("backends:\n  a: {provider: openai\nmodels: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: not valid YAML"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")


def test_env_interpolation(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(
        "backends:\n"
        "  g: {provider: groq, api_key: '${MY_GROQ_KEY}'}\n"
        "  l: {provider: llamacpp, base_url: 'http://127.0.0.1:${LLAMA_PORT:-8080}/v1'}\n"
        "models:\n  m: {deployments: [{backend: g, model: x}]}\n"
    )
    config = load_config(path, env={"MY_GROQ_KEY": SECRET})
    assert config.backends["g"].api_key is not None and config.backends["g"].api_key.get_secret_value() == SECRET
    assert config.backends["l"].base_url == "http://127.0.0.1:8080/v1"
    with pytest.raises(ConfigError, match=r"router\.yaml:2: backends\.g\.api_key: environment variable MY_GROQ_KEY"):
        load_config(path, env={})


def test_hosted_provider_reads_its_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, httpx2_mock: respx.Router
) -> None:
    monkeypatch.setenv("GROQ_API_KEY", SECRET)
    route = httpx2_mock.post("https://api.groq.com/openai/v1/chat/completions").mock(
        return_value=httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "openai/gpt-oss-20b",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            },
        )
    )
    config = {
        "backends": {"groq": {"provider": "groq"}},
        "models": {"oss": {"deployments": [{"backend": "groq", "model": "openai/gpt-oss-20b"}]}},
    }
    with Router.from_config(config) as router:
        router.chat.completions.create(model="oss", messages=[{"role": "user", "content": "hi"}])
    assert route.calls.last.request.headers["authorization"] == f"Bearer {SECRET}"


def test_missing_key_fails_that_backend_without_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    config = {
        "backends": {"ds": {"provider": "deepseek"}},
        "models": {"flash": {"deployments": [{"backend": "ds", "model": "deepseek-flash"}]}},
    }
    with Router.from_config(config) as router, pytest.raises(openai.AuthenticationError, match="DEEPSEEK_API_KEY"):
        router.chat.completions.create(model="flash", messages=[{"role": "user", "content": "hi"}])


def test_api_key_never_in_repr_log_or_exception(httpx2_mock: respx.Router, caplog: pytest.LogCaptureFixture) -> None:
    """Some providers echo the key in a 401; it must not reach the caller or the logs."""
    httpx2_mock.post("https://api.cerebras.ai/v1/chat/completions").mock(
        return_value=httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {SECRET}"}})
    )
    config = {
        "backends": {"cb": {"provider": "cerebras", "api_key": SECRET}},
        "models": {"oss": {"deployments": [{"backend": "cb", "model": "gpt-oss-120b"}]}},
    }
    caplog.set_level(logging.DEBUG)
    with Router.from_config(config) as router:
        with pytest.raises(openai.AuthenticationError) as caught:
            router.chat.completions.create(model="oss", messages=[{"role": "user", "content": "hi"}])
        surfaces = [
            repr(router),
            repr(router.config),
            str(router.config.model_dump()),
            repr(router._async._path.table.adapters),
        ]
    error = caught.value
    surfaces += [
        str(error),
        repr(error),
        str(error.body),
        str(error.request.headers),
        str(error.response.headers),
        str(error.attempts),
        caplog.text,
    ]  # type: ignore[attr-defined]
    leaks = [s for s in surfaces if SECRET in s]
    assert leaks == []
    assert "attempt failed: cb/gpt-oss-120b auth" in caplog.text  # the failure was logged, redacted
    assert "[redacted]" in str(error)
