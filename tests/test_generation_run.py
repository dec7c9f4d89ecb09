"""ZeroGen on a tiny random causal LM: seeded generation, resume without duplicates, sharding, a whole run."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit import distributed
from plmkit.errors import ConfigError
from plmkit.generation import GenerationConfig, ResumeMismatchError, iter_raw, load_spec, synthesise, zerogen
from plmkit.generation.dataset import write_synthetic
from plmkit.generation.filters import drop_disagreeing, filter_samples, stop_strings
from plmkit.generation.task_models import BiLSTMClassifier, TaskModelConfig, build_task_model
from plmkit.generation.zeroshot import label_agreement, sequence_losses, zero_shot_predict
from plmkit.textgen import generate, stop_index

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


def test_max_chunks_makes_the_first_chunks_and_a_later_call_the_rest(make_decoder, tmp_path, whole):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    assert synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False, max_chunks=2)["chunks_made"] == 2
    assert list(iter_raw(tmp_path)) == whole[:8]  # chunks 0 and 1: 2 prompts x 2 samples each
    assert synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)["chunks_made"] == 4
    assert list(iter_raw(tmp_path)) == whole


def test_resuming_with_other_settings_is_refused(make_decoder, tmp_path):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)
    with pytest.raises(ResumeMismatchError, match="generation"):
        synthesise(backbone, spec, GenerationConfig(**{**CONFIG.__dict__, "top_p": 0.5}), tmp_path, progress=False)


def test_self_debiasing_passes_each_sample_the_same_conditions_counter_prompts(make_decoder, tmp_path, whole):
    backbone, spec = make_decoder("llama"), load_spec({**SPEC, "counter_labels": {"positive": []}})
    config = GenerationConfig(**{**CONFIG.__dict__, "self_debias": True, "debias_decay": 50.0})
    synthesise(backbone, spec, config, tmp_path, batch_size=8, progress=False)
    rows = list(iter_raw(tmp_path))
    assert json.loads((tmp_path / "generation.json").read_text())["generation"]["self_debias"] is True
    conditions = [json.loads(line)["condition"] for line in (tmp_path / "conditions.jsonl").open()]
    units = [(label, condition) for condition in conditions for label in spec.labels]
    for k in (0, 3):  # chunk k: units 2k, 2k + 1, each 2 samples, seeded by the chunk
        chunk = units[2 * k:2 * k + 2]
        direct = generate(backbone, [spec.prompt(label, c) for label, c in chunk], max_new_tokens=5,
                          num_return_sequences=2, seed=zerogen.chunk_seed(1, k), stop=stop_strings(True),
                          counter_prompts=[[spec.prompt("positive", c)] if label == "negative" else []
                                           for label, c in chunk], debias_decay=50.0)
        assert [r["raw"] for r in rows if r["chunk"] == k] == [text for texts in direct for text in texts]
    negatives = [(a["raw"], b["raw"]) for a, b in zip(rows, whole, strict=True) if a["label"] == "negative"]
    assert sum(a != b for a, b in negatives) >= 3  # debiasing changed the negative samples
    assert [r["raw"] for r in rows if r["label"] == "positive"] == [r["raw"] for r in whole if r["label"] == "positive"]


def test_a_folder_written_before_a_setting_existed_still_resumes(make_decoder, tmp_path, whole):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False, max_chunks=2)
    manifest = json.loads((tmp_path / "generation.json").read_text())
    for key in ("self_debias", "debias_decay"):
        del manifest["generation"][key]
    del manifest["spec"]["counter_labels"]
    (tmp_path / "generation.json").write_text(json.dumps(manifest))
    assert synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)["chunks_made"] == 4
    assert list(iter_raw(tmp_path)) == whole
    with pytest.raises(ResumeMismatchError, match="generation"):
        synthesise(backbone, spec, GenerationConfig(**{**CONFIG.__dict__, "self_debias": True}), tmp_path,
                   progress=False)


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
    assert sequence_losses(backbone, texts, batch_size=2) == pytest.approx(batched, rel=1e-5)  # put back in order
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


# ------------------------------------------------------------------------------ stop strings
PROMPTS = ["the movie was", "a", "this film is really very boring and the plot", "the team", "music and"]
STOP = ["film", "plot"]


def _cut_after_stop(text: str) -> str:
    """A no-stop text cut right after its first stop string (by hand: earliest end position)."""
    ends = [text.find(s) + len(s) for s in STOP if s in text]
    return text[:min(ends)] if ends else text


def test_stop_strings_end_rows_early_and_leave_the_text_before_them_unchanged(make_decoder):
    backbone = make_decoder("llama")
    calls = []
    backbone.model.register_forward_hook(lambda *args: calls.append(1))
    kwargs = {"max_new_tokens": 12, "num_return_sequences": 4, "seed": 5, "top_p": 1.0}
    free = generate(backbone, PROMPTS, batch_size=1, **kwargs)
    free_calls = len(calls)
    calls.clear()
    stopped = generate(backbone, PROMPTS, batch_size=1, stop=STOP, **kwargs)
    assert stopped == [[_cut_after_stop(text) for text in row] for row in free]
    ended = [(a, b) for row_a, row_b in zip(free, stopped, strict=True) for a, b in zip(row_a, row_b, strict=True)
             if a != b]
    assert len(ended) >= 3  # enough rows meet a stop string for the check to mean something
    assert all(len(b) < len(a) and b.endswith(tuple(STOP)) and a.startswith(b) for a, b in ended)
    assert len(calls) < free_calls  # one row per batch: a stopped row ends its batch, fewer forward passes
    for batch_size in (3, 20):
        assert generate(backbone, PROMPTS, batch_size=batch_size, stop=STOP, **kwargs) == stopped
    rows = []  # rows per forward pass of one batch of all 20 sequences: stopped rows leave it
    backbone.model.register_forward_hook(lambda _m, _a, kw, _o: rows.append(kw["input_ids"].shape[0]),
                                         with_kwargs=True)
    generate(backbone, PROMPTS, batch_size=20, stop=STOP, **kwargs)
    assert rows[0] == 20 and rows == sorted(rows, reverse=True) and rows[-1] < 20


def test_stop_ignores_leading_whitespace_and_is_checked():
    assert stop_index("\n\nabc\ndef", ["\n"]) == 6
    assert stop_index(' a "b" c', ['"', "b"]) == 4
    assert stop_index("abc", ['"']) is None


@pytest.mark.parametrize("stop", [[""], ["a", 3], 5])
def test_bad_stop_strings_are_config_errors(make_decoder, stop):
    with pytest.raises(ConfigError, match="stop must be"):
        generate(make_decoder("llama"), ["a"], stop=stop)


def test_synthesis_stops_samples_at_the_filters_cut_strings(whole):
    assert stop_strings() == ['"', "\n"] and stop_strings(cut_at_quote=False) == ["\n"]
    assert all(stop_index(row["raw"], stop_strings()) in (None, len(row["raw"])) for row in whole)


def test_consistency_keeps_exactly_the_samples_zero_shot_prompting_labels_as_generated(make_decoder, tmp_path):
    backbone, spec = make_decoder("llama"), load_spec(SPEC)
    synthesise(backbone, spec, CONFIG, tmp_path, batch_size=8, progress=False)
    passed, _ = filter_samples(iter_raw(tmp_path), spec.filters)  # the text rules alone
    predicted = zero_shot_predict(backbone, spec, [r["text"] for r in passed])
    agrees = [spec.labels[p] == r["label"] for r, p in zip(passed, predicted, strict=True)]
    assert 0 < sum(agrees) < len(passed)  # the tiny random generator gets some labels "wrong": a real test
    assert label_agreement(backbone, spec, passed).tolist() == agrees
    info = write_synthetic(tmp_path, spec, held_out=0.25, seed=0,
                           agree=lambda kept: label_agreement(backbone, spec, kept))
    counts = info["filter_counts"]
    assert counts["label_mismatch"] == agrees.count(False) and counts["kept"] == agrees.count(True)
    written = [json.loads(line)["text"] for split in ("train", "validation", "test")
               for line in (tmp_path / "synthetic" / f"{split}.jsonl").read_text().splitlines()]
    assert sorted(written) == sorted(r["text"] for r, ok in zip(passed, agrees, strict=True) if ok)


def test_drop_disagreeing_needs_one_flag_per_sample():
    with pytest.raises(ValueError, match="one agreement flag per kept sample"):
        drop_disagreeing([{"text": "a"}], {"kept": 1}, [True, False])
