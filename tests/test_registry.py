"""Model strings resolve in one place; ModelOptions go where they apply, refused elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import smysl
from smysl import registry
from smysl.options import ModelOptions


@pytest.mark.parametrize(("model", "scheme", "rest"), [
    ("openrouter:qwen/qwen3-embedding-8b", "openrouter", "qwen/qwen3-embedding-8b"),
    ("st:all-minilm-l6-v2", "st", "all-minilm-l6-v2"),
    ("tei:http://h:8080", "tei", "http://h:8080"),
    ("qwen3:/models/q", "qwen3", "/models/q"),
    ("qwen3-embedding:0.6b", "qwen3", "qwen3-embedding:0.6b"),  # an alias, not a scheme
    ("Qwen/Qwen3-Embedding-0.6B", "qwen3", "Qwen/Qwen3-Embedding-0.6B"),
    ("C:\\models\\q", "qwen3", "C:\\models\\q"),  # a Windows drive, not a scheme
])
def test_split(model: str, scheme: str, rest: str) -> None:
    assert registry.split(model) == (scheme, rest)


def test_every_builtin_scheme_has_a_factory() -> None:
    for scheme in registry.SCHEMES.values():
        if scheme.name in ("qwen3", "st"):
            continue  # importing them pulls torch; covered by their own tests
        assert callable(scheme.factory())


@pytest.fixture
def fake_scheme() -> Any:
    seen: dict[str, Any] = {}

    class Fake(smysl.BaseEmbedder):
        dimensions = 4

        def _embed(self, texts: list[str], *, truncate: bool, progress: Any = None) -> np.ndarray:
            return np.ones((len(texts), 4), dtype=np.float32)

    def factory(rest: str, options: ModelOptions, **kwargs: Any) -> Fake:
        seen.update(rest=rest, options=options, kwargs=kwargs)
        return Fake()

    registry.register("fake-test", factory, options={"max_tokens"}, remote=True)
    yield seen
    del registry.SCHEMES["fake-test"]


def test_options_and_backend_kwargs_reach_the_factory(fake_scheme: dict[str, Any]) -> None:
    m = smysl.load("fake-test:m1", ModelOptions(max_tokens=8), api_key="k")
    assert fake_scheme["rest"] == "m1" and fake_scheme["kwargs"] == {"api_key": "k"}
    assert fake_scheme["options"] == ModelOptions(max_tokens=8)
    assert m.embed(["x"]).shape == (1, 4)
    smysl.load("fake-test:m1", max_tokens=16)  # keyword form, merged into ModelOptions
    assert fake_scheme["options"] == ModelOptions(max_tokens=16)
    smysl.load("fake-test:m1", ModelOptions(max_tokens=16), max_tokens=4)  # keywords win
    assert fake_scheme["options"].max_tokens == 4


def test_an_option_a_backend_cannot_use_is_refused_by_flag_name(
        fake_scheme: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"does not use the option\(s\) device \(--device\), "
                                         r"quantize \(--quantize\)"):
        smysl.load("fake-test:m1", ModelOptions(device="cuda", quantize="int8"))
    # "auto" and None mean "the backend's default": nothing to refuse
    smysl.load("fake-test:m1", ModelOptions(device="auto", dtype="auto"))


def test_providers_refuse_engine_options() -> None:
    with pytest.raises(ValueError, match=r"--quantize"):
        smysl.load("openrouter:qwen/qwen3-embedding-8b", quantize="int8")
    with pytest.raises(ValueError, match=r"--in-process"):
        smysl.load("tei:http://127.0.0.1:9", process=False)


def test_providers_take_the_limits_they_share_with_the_engine(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-test")
    p = smysl.load("openrouter:qwen/qwen3-embedding-8b",
                   ModelOptions(max_tokens=100, max_batch_size=7, max_batch_tokens=900))
    try:
        assert p.max_tokens == 100
        assert (p.config.max_batch_texts, p.config.max_batch_tokens) == (7, 900)  # type: ignore[attr-defined]
    finally:
        p.close()


@pytest.mark.parametrize("bad", [{"threads": 0}, {"max_tokens": -1}, {"max_batch_size": True}])
def test_model_options_validate(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be a positive integer"):
        ModelOptions(**bad)


def test_max_tokens_1_is_refused() -> None:
    """A review's: ``--max-tokens 1 --truncate`` cut every text to its EOS alone, every vector
    the same, without a word."""
    with pytest.raises(ValueError, match="1 leaves no token of a text beside its EOS"):
        ModelOptions(max_tokens=1)
    assert ModelOptions(max_tokens=2).max_tokens == 2


def test_bad_model_strings() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        smysl.load("  ")


def test_local_strings_go_to_the_engine(tiny_dir: Path) -> None:
    m = smysl.load(str(tiny_dir), device="cpu", max_tokens=8)
    try:
        assert m.info().backend == "qwen3" and m.max_tokens == 8
    finally:
        m.close()


def test_names_of_aliases_and_paths() -> None:
    names = registry.names_of("qwen3-embedding:0.6b")
    assert {"qwen3-embedding:0.6b", "qwen/qwen3-embedding-0.6b", "qwen3-embedding"} <= names
    assert "m" in registry.names_of("/models/m/")
    # a remote model answers to its API's own name, as that API's clients send it (a review's:
    # a Cohere SDK sending "rerank-v3.5" to a server proxying cohere:rerank-v3.5 got 404)
    assert "rerank-v3.5" in registry.names_of("cohere:rerank-v3.5")
    assert {"baai/bge-reranker-v2-m3", "bge-reranker-v2-m3"} <= registry.names_of(
        "siliconflow:BAAI/bge-reranker-v2-m3")
    assert "text-embedding-3-small" in registry.names_of("openai:text-embedding-3-small")
    assert {"qwen/qwen3-embedding-8b", "qwen3-embedding:8b"} <= registry.names_of(
        "openrouter:qwen/qwen3-embedding-8b")
    assert not any("http" in n.partition(":")[0] for n in registry.names_of("tei:http://h:80"))
    # the bare family name of a remote one stands for no size (a diff review's: it answered
    # for the 0.6B by its alias)
    bare = registry.names_of("ollama:qwen3-embedding")
    assert "qwen3-embedding" in bare and not any("0.6b" in n for n in bare)


def test_loaded_models_remember_a_string_that_loads_them_again(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An index built from Python recorded the backend's name (``all-minilm-l6-v2``, no scheme),
    so `smysl index search kb` without --model could not load it (found by the doc examples).
    ``smysl.load`` now stamps the string it was given, a local folder made absolute."""
    from smysl.toolkit import Index, IndexConfig, StoreConfig

    monkeypatch.chdir(tiny_dir.parent)
    m = smysl.load(tiny_dir.name, device="cpu")
    assert m.source == str(tiny_dir.resolve())
    kb = StoreConfig(uri=str(tmp_path / "kb"))
    with Index.create_or_open(m, IndexConfig(kb)) as ix:
        ix.add_texts(["a note"])
    monkeypatch.chdir(tmp_path)
    again = smysl.load(Index.stored_model(kb), device="cpu")
    assert again.fingerprint() == m.fingerprint()


def test_portable_model_strings(tiny_dir: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Ray actor (another working directory) is sent: a relative folder loaded
    another model of the same name there (the cluster's), an `st:` one too."""
    monkeypatch.chdir(tiny_dir.parent)
    absolute = str(tiny_dir.resolve())
    assert registry.portable_model(tiny_dir.name) == absolute
    assert registry.portable_model(f"st:{tiny_dir.name}") == f"st:{absolute}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qwen3-embedding").mkdir()
    for kept in ("Qwen/Qwen3-Embedding-0.6B", "qwen3-embedding:0.6b", "st:no/such/folder",
                 "openai:qwen3-embedding", "ollama-store:qwen3-embedding", "", "st:", "st: ",
                 "qwen3:"):  # Hub ids, an alias, model names, nothing (not the folder here)
        assert registry.portable_model(kept) == kept


def test_an_index_records_the_model_string_without_a_password(tmp_path: Path) -> None:
    """The string an index records to load its model again (and eval reports) keeps a URL's
    host and path, not its user part: index metadata is readable by whoever reads the index."""
    pytest.importorskip("lancedb")
    pytest.importorskip("httpx")
    from smysl.toolkit import Index, IndexConfig, StoreConfig

    m = smysl.load("openai:http://u:s3cret@127.0.0.1:9/v1#m", dimensions=16)
    assert m.source == "openai:http://u:s3cret@127.0.0.1:9/v1#m"  # kept, to connect with
    kb = StoreConfig(uri=str(tmp_path / "kb"))
    with Index.create_or_open(m, IndexConfig(kb)):
        pass
    assert Index.stored_model(kb) == "openai:http://127.0.0.1:9/v1#m"


@pytest.mark.parametrize("field", ["device", "dtype", "revision"])
def test_an_empty_placement_or_revision_is_refused_not_taken_for_the_default(field: str) -> None:
    from smysl.options import ModelOptions

    with pytest.raises(ValueError, match=f"{field} \\(--{field}\\) must not be empty"):
        ModelOptions(**{field: " "})


def test_an_empty_table_name_is_refused() -> None:
    """LanceDB took "" and reported the store damaged, advising a rebuild."""
    from smysl.toolkit.store import StoreConfig

    with pytest.raises(ValueError, match=r"table .* must not be empty"):
        StoreConfig.parse("kb", table="")


def test_options_are_checked_as_given() -> None:
    """``process="no"`` started a child process; ``threads=np.int64(1)`` was refused while
    ``dimensions`` takes numpy integers; options as a dict were an AttributeError."""
    for bad in ({"process": "no"}, {"process": 0}, {"cuda_kernels": "x"}):
        with pytest.raises(ValueError, match="must be True or False"):
            ModelOptions(**bad)
    opts = ModelOptions(threads=np.int64(2), process=np.bool_(False))
    assert (opts.threads, type(opts.threads), opts.process) == (2, int, False)
    with pytest.raises(TypeError, match="options must be a ModelOptions, got dict"):
        smysl.load("st:all-minilm-l6-v2", {"threads": 1})  # type: ignore[arg-type]


def test_the_family_name_refers_to_every_size() -> None:
    """A client set to Ollama's bare ``qwen3-embedding`` asks for no size: a server of the 8B
    answered it 404 (only the 0.6B, its alias when loading, took it)."""
    from smysl.registry import FAMILY, names_of

    for repo in ("Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-4B", "qwen3-embedding:8b"):
        assert FAMILY in names_of(repo), repo
    assert FAMILY not in names_of("st:all-minilm-l6-v2")
