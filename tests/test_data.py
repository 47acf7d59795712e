import numpy as np
import pytest
import torch

from pfm import InvalidInputError, InvalidTypeError, PreferenceDataset, PreferenceFlow, collect_preferences
from pfm.errors import FileFormatError, MissingFileError


def make(n=10, shape=(3,), context="label"):
    ch, rj = torch.randn(n, *shape), torch.randn(n, *shape)
    c = {"label": torch.randint(0, 4, (n,)), "vector": torch.randn(n, 5), None: None}[context]
    return PreferenceDataset(ch, rj, c)


def test_shapes_and_kinds():
    ds = make(shape=(2, 4, 4))
    assert ds.output_shape == (2, 4, 4) and ds.context_kind == "label" and len(ds) == 10
    assert make(context="vector").context_shape == (5,)
    assert make(context=None).context_kind is None
    c, y1, y0 = ds[3]
    assert y1.shape == (2, 4, 4) and c.dtype == torch.int64
    # numpy in, integers converted to float, 1-D float context becomes (N, 1)
    ds2 = PreferenceDataset(np.arange(6).reshape(3, 2), np.zeros((3, 2), dtype=np.uint8), np.array([0.5, 1.0, 2.0]))
    assert ds2.chosen.dtype == torch.float32 and ds2.context_shape == (1,)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(chosen=torch.randn(5, 2), rejected=torch.randn(4, 2)), InvalidInputError, "same shape"),
        (dict(chosen=torch.randn(5, 2), rejected=torch.randn(5, 3)), InvalidInputError, "(5, 3)"),
        (dict(chosen=torch.randn(0, 2), rejected=torch.randn(0, 2)), InvalidInputError, "empty"),
        (dict(chosen=torch.tensor([[float("nan"), 1.0]]), rejected=torch.zeros(1, 2)), InvalidInputError, "NaN"),
        (dict(chosen=torch.zeros(1, 2), rejected=torch.tensor([[float("inf"), 1.0]])), InvalidInputError, "rejected"),
        (dict(chosen=np.array([["a", "b"]]), rejected=np.zeros((1, 2))), InvalidTypeError, "real numbers"),
        (dict(chosen=torch.zeros(2, 2, dtype=torch.bool), rejected=torch.zeros(2, 2)), InvalidTypeError, "bool"),
        (dict(chosen=torch.zeros(2, 2, dtype=torch.complex64), rejected=torch.zeros(2, 2)), InvalidTypeError, "real"),
        (dict(chosen="abc", rejected=torch.zeros(2, 2)), InvalidTypeError, "chosen"),
        (dict(chosen=torch.zeros(3, 2), rejected=torch.zeros(3, 2), context=torch.zeros(2, dtype=torch.long)),
         InvalidInputError, "context has 2 rows"),
        (dict(chosen=torch.zeros(2, 2), rejected=torch.zeros(2, 2), context=torch.tensor([0, -1])),
         InvalidInputError, ">= 0"),
        (dict(chosen=torch.zeros(2, 2), rejected=torch.zeros(2, 2), context=torch.tensor([[0.0], [np.nan]])),
         InvalidInputError, "context contains"),
        (dict(chosen=torch.zeros(2, 2), rejected=torch.zeros(2, 2), context=torch.tensor(1.0)),
         InvalidInputError, "context must have shape"),
        (dict(chosen=[[1.0, 2.0], [3.0]], rejected=torch.zeros(2, 2)), InvalidInputError, "ragged"),
    ],
)
def test_validation_errors(kwargs, exc, words):
    with pytest.raises(exc) as info:
        PreferenceDataset(**kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("suffix", [".npz", ".parquet"])
@pytest.mark.parametrize("context", ["label", "vector", None])
def test_round_trip(tmp_path, suffix, context):
    ds = make(shape=(2, 3), context=context)
    path = ds.save(tmp_path / f"d{suffix}")
    back = PreferenceDataset.load(path)
    assert torch.equal(back.chosen, ds.chosen) and torch.equal(back.rejected, ds.rejected)
    assert (back.context is None) == (ds.context is None)
    if ds.context is not None:
        assert torch.equal(back.context, ds.context) and back.context.dtype == ds.context.dtype


def test_foreign_parquet_without_metadata(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"chosen": [[1.0, 2.0], [3.0, 4.0]], "rejected": [[0.0, 0.0], [1.0, 1.0]],
                             "context": [0, 1]}), tmp_path / "x.parquet")
    ds = PreferenceDataset.load(tmp_path / "x.parquet")
    assert ds.output_shape == (2,) and ds.context_kind == "label"
    pq.write_table(pa.table({"chosen": [[1.0, 2.0], [3.0]], "rejected": [[0.0, 0.0], [1.0]]}),
                   tmp_path / "ragged.parquet")
    with pytest.raises(FileFormatError, match="different lengths"):
        PreferenceDataset.load(tmp_path / "ragged.parquet")


def test_load_errors(tmp_path):
    with pytest.raises(MissingFileError):
        PreferenceDataset.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FileFormatError, match="not a readable .npz"):
        PreferenceDataset.load(bad)
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(FileFormatError, match="lacks"):
        PreferenceDataset.load(tmp_path / "other.npz")
    good = make().save(tmp_path / "good.npz")
    good.write_bytes(good.read_bytes()[:100])  # truncated
    with pytest.raises(FileFormatError):
        PreferenceDataset.load(good)
    (tmp_path / "c.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(FileFormatError, match="parquet"):
        PreferenceDataset.load(tmp_path / "c.parquet")
    with pytest.raises(InvalidInputError, match=".npz or .parquet"):
        make().save(tmp_path / "x.csv")


def test_failed_save_keeps_old_file(tmp_path, monkeypatch):
    path = make(n=4).save(tmp_path / "d.npz")
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(RuntimeError):
        make(n=8).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp file left


def test_split_subset_from_dict():
    ds = make(n=20)
    tr, te = ds.split(0.25, seed=1)
    assert len(tr) == 15 and len(te) == 5
    with pytest.raises(InvalidInputError, match="test_fraction"):
        ds.split(1.5)
    d2 = PreferenceDataset.from_dict({"chosen": ds.chosen.numpy(), "rejected": ds.rejected.numpy(),
                                      "context": ds.context.numpy()})
    assert torch.equal(d2.chosen, ds.chosen)
    with pytest.raises(InvalidInputError, match="rejected"):
        PreferenceDataset.from_dict({"chosen": [[1.0]]})



def test_from_dict_takes_a_hugging_face_dataset_and_says_what_its_columns_are():
    datasets = pytest.importorskip("datasets")

    ds = make(n=12)
    hf = datasets.Dataset.from_dict({"chosen": ds.chosen.numpy().tolist(), "rejected": ds.rejected.numpy().tolist(),
                                     "context": ds.context.numpy().tolist()})
    back = PreferenceDataset.from_dict(hf)
    assert torch.equal(back.chosen, ds.chosen) and torch.equal(back.context, ds.context)
    assert back.context_kind == ds.context_kind == "label"
    unlabeled = PreferenceDataset.from_dict(hf.remove_columns("context"))
    assert unlabeled.context is None and torch.equal(unlabeled.rejected, ds.rejected)
    with pytest.raises(InvalidInputError, match=r"\['rejected'\]; got \['chosen', 'context'\]"):  # was a crash
        PreferenceDataset.from_dict(hf.remove_columns("rejected"))
    with pytest.raises(InvalidTypeError, match="mapping of arrays or a datasets.Dataset"):
        PreferenceDataset.from_dict([{"chosen": [1.0], "rejected": [0.0]}])

def _reference(context, n):
    return torch.randn(n, 2) + (0 if context is None else context[:, None].float())


def test_collect_with_score():
    ctx = torch.arange(5)
    ds = collect_preferences(_reference, lambda y, c: y.sum(1), ctx, pairs_per_context=20)
    assert len(ds) == 100 and ds.context_kind == "label"
    assert bool((ds.chosen.sum(1) > ds.rejected.sum(1)).all())
    assert torch.equal(ds.context.sort().values, ctx.repeat_interleave(20))


def test_collect_pairwise_and_unconditional():
    ds = collect_preferences(_reference, lambda a, b, c: a[:, 0] > b[:, 0], n=50)
    assert ds.context is None and len(ds) == 50
    assert bool((ds.chosen[:, 0] > ds.rejected[:, 0]).all())
    # probabilities are sampled: p = 1 always picks a, p = 0 always picks b
    ds1 = collect_preferences(_reference, lambda a, b, c: torch.ones(len(a)), n=30, kind="pairwise", seed=0)
    assert len(ds1) == 30


def test_collect_ties_and_errors():
    with pytest.raises(InvalidInputError, match="tie"):
        collect_preferences(_reference, lambda y, c: torch.zeros(len(y)), n=10)
    ds = collect_preferences(_reference, lambda y, c: torch.zeros(len(y)), n=10, drop_ties=False)
    assert len(ds) == 10
    with pytest.raises(InvalidInputError, match="n="):
        collect_preferences(lambda c, n: torch.randn(n + 1, 2), lambda y, c: y.sum(1), n=10)
    with pytest.raises(InvalidInputError, match="shape \\(10,\\)"):
        collect_preferences(_reference, lambda y, c: y, n=10)
    with pytest.raises(InvalidInputError, match="required"):
        collect_preferences(_reference, lambda y, c: y.sum(1))
    with pytest.raises(InvalidInputError, match="\\[0, 1\\]"):
        collect_preferences(_reference, lambda a, b, c: torch.full((len(a),), 2.0), n=5)
    with pytest.raises(InvalidTypeError, match="reference"):
        collect_preferences(None, lambda y, c: y.sum(1), n=5)


def test_npy_directory_is_memory_mapped_and_trains_like_memory(tmp_path):
    import numpy as np

    from pfm import PreferenceFlow

    g = torch.Generator().manual_seed(0)
    y0 = torch.randn(3000, 2, generator=g)
    ds = PreferenceDataset(y0 + 1.0, y0, torch.arange(3000) % 3)
    ds.save(tmp_path / "prefs")
    assert sorted(p.name for p in (tmp_path / "prefs").iterdir()) == ["chosen.npy", "context.npy", "rejected.npy"]
    mm = PreferenceDataset.load(tmp_path / "prefs")
    assert mm.memory_mapped and not ds.memory_mapped
    assert torch.equal(mm.chosen, ds.chosen) and torch.equal(mm.context, ds.context)
    flows = []
    for data in (ds, mm):
        torch.manual_seed(0)
        flow = PreferenceFlow.for_dataset(data, hidden=16, depth=2)
        flow.fit(data, steps=30, batch_size=64, progress=False, validation_fraction=0)  # mmap: never held out
        flows.append(flow)
    a, b = (f.state_dict() for f in flows)
    assert all(torch.equal(a[k], b[k]) for k in a)  # batch-by-batch reads change nothing
    writer = np.load(tmp_path / "prefs" / "chosen.npy", mmap_mode="r+")
    writer[-1] = 123.0
    writer.flush()
    assert float(mm.chosen[-1, 0]) == 123.0  # the tensor reads the file's pages (Linux): no copy was made
    (tmp_path / "prefs" / "rejected.npy").unlink()
    with pytest.raises(FileFormatError, match="no rejected.npy"):
        PreferenceDataset.load(tmp_path / "prefs")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    with pytest.raises(InvalidInputError, match="not a data set directory"):
        ds.save(tmp_path / "other")


def test_a_split_of_a_data_set_trains():
    ds = PreferenceDataset(torch.randn(100, 2) + 1, torch.randn(100, 2))
    train, test = ds.split(0.2)
    assert not train.memory_mapped and not test.to("cpu").memory_mapped
    PreferenceFlow.for_dataset(train, hidden=8, depth=1).fit(train, steps=3, progress=False)


def test_a_parquet_file_declaring_more_rows_than_memory_allows_is_refused_before_reading(tmp_path, monkeypatch):
    """Issue 52: run-length encoding lets a file of a few kB declare millions of rows; the declared size is checked
    against the memory budget before anything is read (a 2*10^7-row file had been an ArrowMemoryError)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    n = 1_000_000
    flat = pa.array(np.zeros(2 * n, np.float32))
    col = pa.FixedSizeListArray.from_arrays(flat, 2)
    pq.write_table(pa.table({"chosen": col, "rejected": col}), tmp_path / "many.parquet")
    assert (tmp_path / "many.parquet").stat().st_size < 200_000  # a small file ...
    monkeypatch.setenv("PFM_MEMORY_BUDGET", str(8 * 4 * n - 1))  # ... one byte short of its 4 values a row
    with pytest.raises(FileFormatError, match=r"declares 1,000,000 rows of 4 values, 32,000,000 bytes to read, over "
                                              r"the memory budget of 31,999,999 bytes"):
        PreferenceDataset.load(tmp_path / "many.parquet")
    monkeypatch.setenv("PFM_MEMORY_BUDGET", str(8 * 4 * n))
    assert len(PreferenceDataset.load(tmp_path / "many.parquet")) == n
    monkeypatch.setenv("PFM_MEMORY_BUDGET", "lots")
    with pytest.raises(InvalidInputError, match="PFM_MEMORY_BUDGET must be a number of bytes"):
        PreferenceDataset.load(tmp_path / "many.parquet")
