"""ZeroGen on a tiny random causal LM: seeded generation, resume without duplicates, sharding, a whole run."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit import distributed
from plmkit.generation import GenerationConfig, ResumeMismatchError, iter_raw, load_spec, synthesise, zerogen
from plmkit.generation.dataset import write_synthetic
from plmkit.generation.task_models import BiLSTMClassifier, TaskModelConfig, build_task_model
from plmkit.generation.zeroshot import sequence_losses, zero_shot_predict

SPEC = {"name": "tiny", "labels": ["negative", "positive"],
        "condition": {"prompt": "the movie", "max_new_tokens": 4, "max_words": 12},
        "prompts": {"negative": "a bad movie {condition} was", "positive": "a good movie {condition} was"},
        "zero_shot": "the {label} movie {text}", "filters": {"min_words": 1, "max_words": 50}}
CONFIG = GenerationConfig(n=24, samples_per_condition=2, max_new_tokens=5, chunk_size=2, seed=1)  # 6 chunks


@pytest.fixture(scope="module")
def whole(_decoder_cache, tmp_path_factory):
    """One uninterrupted single-process run (shared by the tests that compare against it)."""
    folder = tmp_path_factory.mktemp("whole")
    synthesise(_decoder_cache["llama"], load_spec(SPEC), CONFIG, folder, batch_size=8, progress=False)
    return list(iter_raw(folder))


def _keys(rows):
    return [(r["unit"], r["sample"]) for r in rows]


def test_generation_is_seeded_and_independent_of_batch_size(make_decoder, tmp_path, whole):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    stats = synthesise(backbone, spec, CONFIG, tmp_path / "b", batch_size=3, progress=False)
    assert stats["chunks"] == 6 and stats["samples_made"] == 24
    first, second = whole, list(iter_raw(tmp_path / "b"))
    assert first == second and len(first) == 24
    assert sorted(_keys(first)) == [(u, s) for u in range(12) for s in range(2)]
    assert [r["label"] for r in first[::2]] == ["negative", "positive"] * 6
    synthesise(backbone, spec, GenerationConfig(**{**CONFIG.__dict__, "seed": 2}), tmp_path / "c",
               batch_size=8, progress=False)
    other = list(iter_raw(tmp_path / "c"))
    assert sum(a["raw"] != b["raw"] for a, b in zip(first, other, strict=True)) > 12


def test_an_interrupted_run_resumes_without_duplicates(make_decoder, tmp_path, monkeypatch, whole):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    real_chunk, calls = zerogen._generate_chunk, []

    def interrupted(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[3])
        return real_chunk(*args)

    monkeypatch.setattr(zerogen, "_generate_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesise(backbone, spec, CONFIG, tmp_path / "run", batch_size=8, progress=False)
    raw = tmp_path / "run" / "raw.rank0.jsonl"
    assert len(raw.read_text().splitlines()) == 8  # two finished chunks of 2 prompts x 2 samples
    with open(raw, "a") as handle:  # a third chunk whose write was cut short
        handle.write(json.dumps({"chunk": 2, "unit": 4, "sample": 0, "label": "negative", "raw": "x"}) + "\n")
        handle.write('{"chunk": 2, "unit": 4, "sam')
    calls.clear()
    monkeypatch.setattr(zerogen, "_generate_chunk", lambda *args: calls.append(args[3]) or real_chunk(*args))
    stats = synthesise(backbone, spec, CONFIG, tmp_path / "run", batch_size=8, progress=False)
    assert calls == [2, 3, 4, 5] and stats["chunks_found"] == 2
    resumed = list(iter_raw(tmp_path / "run"))
    assert resumed == whole
    assert len(set(_keys(resumed))) == len(resumed) == 24
    assert len(raw.read_text().splitlines()) == 24  # the cut-short chunk was dropped from the file
    calls.clear()
    assert synthesise(backbone, spec, CONFIG, tmp_path / "run", progress=False)["samples_made"] == 0 and not calls


def test_resuming_with_other_settings_is_refused(make_decoder, tmp_path):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)
    with pytest.raises(ResumeMismatchError, match="generation"):
        synthesise(backbone, spec, GenerationConfig(**{**CONFIG.__dict__, "top_p": 0.5}), tmp_path, progress=False)


def test_ranks_share_the_chunks_and_together_make_the_single_process_set(make_decoder, tmp_path, monkeypatch,
                                                                           whole):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        stats = synthesise(backbone, spec, CONFIG, tmp_path / "two", batch_size=8, progress=False)
        assert stats["chunks_made"] == 3
        chunks = {json.loads(line)["chunk"] for line in (tmp_path / "two" / f"raw.rank{rank}.jsonl").open()}
        assert chunks == set(range(rank, 6, 2))
    assert list(iter_raw(tmp_path / "two")) == whole


def test_synthetic_set_loads_back_as_a_task(make_decoder, tmp_path):
    from plmkit.tasks import load_task

    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)
    info = write_synthetic(tmp_path, spec, held_out=0.25, seed=0)
    task = load_task(str(tmp_path / "synthetic"), label_names=spec.labels)
    assert task.label_names == spec.labels
    assert (len(task.train), len(task.validation), len(task.test)) == tuple(info["sizes"].values())
    assert info["filter_counts"]["generated"] == 24 and sum(info["kept_per_label"].values()) == len(
        task.train) + len(task.validation) + len(task.test)
    import datasets

    saved = datasets.load_from_disk(str(tmp_path / "synthetic" / "dataset"))
    assert saved["train"]["text"] == task.train["text"]


def test_sequence_losses_match_a_per_text_computation(make_decoder):
    backbone = make_decoder("llama")
    texts = ["the movie was good", "bad", "a very long and boring plot of the film"]
    batched = sequence_losses(backbone, texts, batch_size=3)
    for text, loss in zip(texts, batched, strict=True):
        ids = backbone.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = backbone.model(ids).logits[0, :-1]
        expected = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        assert loss == pytest.approx(expected, rel=1e-4)
    spec = load_spec(SPEC)
    predictions = zero_shot_predict(backbone, spec, texts)
    filled = [[spec.zero_shot.format(label=label, text=t) for label in spec.labels] for t in texts]
    assert predictions.tolist() == [int(sequence_losses(backbone, row).argmin()) for row in filled]


def test_bilstm_ignores_padding_and_learns(make_decoder):
    model, tokenizer = build_task_model(TaskModelConfig(hidden_size=16, embedding_dim=8, dropout=0.0),
                                        ["good fun film", "bad boring film"], 2)
    assert isinstance(model, BiLSTMClassifier)
    model.eval()
    alone = tokenizer(["good fun"], return_tensors="pt")
    padded = tokenizer(["good fun", "bad boring film and more"], return_tensors="pt", padding=True)
    assert torch.allclose(model(**alone)[0], model(**padded)[0], atol=1e-6)
    assert tokenizer.convert_ids_to_tokens(tokenizer("unseen good")["input_ids"])[1:3] == ["[UNK]", "good"]
