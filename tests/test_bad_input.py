"""Generated bad input (data files, configs, CLI arguments): every case keeps the one-line promise.

From Python a bad input raises :class:`pyro_vae.PyroVAEError` whose message is
one line; through ``pyro-vae train`` it exits 2 with exactly one stderr line
``pyro-vae: error: ...``, no traceback, and nothing written.  Inputs that a
generator makes valid by chance are recognised by an independent oracle and
must load; none is skipped.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_vae as pv
from pyro_vae.cli import main
from pyro_vae.config import OneLatent

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """A temporary folder of this test's own, also as tempfile's default: every stray file shows."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    monkeypatch.setenv("TMPDIR", str(base))
    return base


def listing(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def one_line_error(fn) -> str:
    with pytest.raises(pv.PyroVAEError) as info:
        fn()
    msg = str(info.value)
    assert msg.strip() and "\n" not in msg and "\r" not in msg, repr(msg)
    return msg


def cli_user_error(capsys, argv, work: Path, out: Path) -> str:
    """Run ``pyro-vae`` in-process; assert exit 2, one error line, no traceback, nothing written."""
    before = listing(work)
    capsys.readouterr()
    code = main([str(a) for a in argv])
    stdout, stderr = capsys.readouterr()
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: "), stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists()
    assert listing(work) == before
    return lines[0]


# --------------------------------------------------------------------------
# an independent oracle: what a valid data file is


def valid_matrix(arr) -> bool:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf" or arr.ndim == 0 or arr.shape[0] == 0 or math.prod(arr.shape[1:]) == 0:
        return False
    with np.errstate(invalid="ignore", over="ignore"):  # the oracle looks; it need not warn
        values = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    return bool(np.isfinite(values).all() and (np.abs(values) <= F32_MAX).all())


def npy_oracle(raw: bytes):
    """The array in ``.npy`` bytes, or None where numpy itself cannot read them cleanly."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)(f)
        if len(raw) - f.tell() < math.prod(shape) * dtype.itemsize or dtype.hasobject:
            return None
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    except Exception:
        return None


def npz_oracle(raw: bytes):
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            key = "x" if "x" in names else names[0] if len(names) == 1 else None
            return None if key is None else npy_oracle(z.read(key + ".npy"))
    except Exception:
        return None


def csv_oracle(raw: bytes):
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]

    def num(c):
        try:
            float(c)
            return True
        except ValueError:
            return False

    if rows and not all(num(c) for c in rows[0]):
        rows = rows[1:]
    if not rows or len({len(r) for r in rows}) > 1 or not all(num(c) for r in rows for c in r):
        return None
    return np.array([[float(c) for c in r] for r in rows])


ORACLES = {".npy": npy_oracle, ".npz": npz_oracle, ".csv": csv_oracle}


def expect_valid(suffix: str, raw: bytes) -> bool:
    arr = ORACLES[suffix](raw)
    return arr is not None and valid_matrix(arr)


# --------------------------------------------------------------------------
# (a) data files


def npy_bytes(arr) -> bytes:
    f = io.BytesIO()
    np.save(f, arr, allow_pickle=True)
    return f.getvalue()


def npz_bytes(arr) -> bytes:
    f = io.BytesIO()
    np.savez(f, x=arr)
    return f.getvalue()


def csv_bytes(arr) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in np.atleast_2d(arr)).encode()


GOOD = np.arange(12, dtype=np.float32).reshape(4, 3) / 7

#: array contents that no source may take silently
bad_contents = st.sampled_from([
    np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]]),
    np.array([[1.0, np.inf], [2.0, -np.inf], [4.0, 5.0]]),
    np.array([[1e300, 1.0], [2.0, 3.0], [4.0, 5.0]]),                    # beyond float32
    np.array([[1.0, -4e38], [2.0, 3.0], [4.0, 5.0]]),
    np.ones((3, 2), dtype=np.complex64),
    np.array(["2020-01-01"] * 6, dtype="datetime64[D]").reshape(3, 2),
    np.array([1, 2, 3], dtype="timedelta64[s]"),
    np.array([["a", "b"], ["c", "d"]]),
    np.array([[b"a", b"b"], [b"c", b"d"]]),
    np.array([[1, None], [2, 3]], dtype=object),
    np.zeros((2,), dtype=[("a", "f4"), ("b", "i4")]),
    np.zeros((0, 3)), np.zeros((3, 0)), np.float32(1.0),
])


@st.composite
def damaged_files(draw):
    """(suffix, bytes) of a data file: good content, bad content, or damaged bytes."""
    suffix = draw(st.sampled_from([".npy", ".npz", ".csv"]))
    how = draw(st.sampled_from(["bad-content", "random", "truncate", "flip", "prefix", "bom", "non-utf8", "cell"]))
    if how == "bad-content":
        arr = draw(bad_contents)
        if suffix == ".csv":
            return suffix, (csv_bytes(arr) if arr.dtype.kind in "f" and arr.ndim == 2 and arr.size
                            else b"a,b\n" + "\n".join(",".join(map(str, r)) for r in np.atleast_2d(arr)).encode())
        return suffix, (npy_bytes if suffix == ".npy" else npz_bytes)(arr)
    good = {".npy": npy_bytes, ".npz": npz_bytes, ".csv": csv_bytes}[suffix](GOOD)
    if how == "random":
        return suffix, draw(st.binary(max_size=300))
    if how == "truncate":
        return suffix, good[: draw(st.integers(0, len(good) - 1))]
    if how == "flip":
        i = draw(st.integers(0, min(len(good), 200) - 1))
        return suffix, good[:i] + bytes([good[i] ^ draw(st.integers(1, 255))]) + good[i + 1:]
    if how == "prefix":
        return suffix, draw(st.binary(min_size=1, max_size=20)) + good
    if how == "bom":  # a valid file with a byte-order mark: a CSV must keep every row
        return suffix, b"\xef\xbb\xbf" + good
    if how == "non-utf8":
        i = draw(st.integers(0, len(good)))
        return suffix, good[:i] + draw(st.sampled_from([b"\xff", b"\xfe\x00", b"\xc0\xaf", b"\x80"])) + good[i:]
    cell = draw(st.sampled_from(["nan", "inf", "-inf", "1e39", "1e400", "x", "", "1,2", "0x10"]))
    text = csv_bytes(GOOD).decode().splitlines()
    row = draw(st.integers(0, len(text) - 1))
    text[row] = cell + text[row][text[row].index(","):]
    return ".csv", "\n".join(text).encode()


@SETTINGS
@given(case=damaged_files())
def test_generated_data_files_fail_in_one_line_or_load(private_tmp, case):
    suffix, raw = case
    work = Path(tempfile.mkdtemp(dir=private_tmp))
    path = work / f"x{suffix}"
    path.write_bytes(raw)
    cfg = pv.DataConfig(train=str(path), test_fraction=0.25)
    try:
        if expect_valid(suffix, raw):
            ds = pv.load_data(cfg)  # valid by chance: it must load, every row kept
            n = np.asarray(ORACLES[suffix](raw)).shape[0]
            held_out = round(n * 0.25)  # none: the test metrics use the training rows
            assert len(ds.train) == n - held_out and (held_out == 0 or len(ds.test) == held_out)
        else:
            one_line_error(lambda: pv.load_data(cfg))
        assert listing(work) == {path.name}
    finally:
        shutil.rmtree(work)


def test_csv_with_byte_order_mark_keeps_its_first_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbf" + csv_bytes(GOOD))
    ds = pv.load_data(pv.DataConfig(train=str(path), test_fraction=0.0))
    assert ds.train.shape == (4, 3)
    assert np.allclose(ds.train.numpy(), GOOD)


def write_idx(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def idx_oracle(raw: bytes, ndim: int):
    if len(raw) < 4:
        return None
    zero, code, nd = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != 0x08 or nd != ndim or len(raw) < 4 + 4 * nd:
        return None
    shape = struct.unpack(">" + "I" * nd, raw[4:4 + 4 * nd])
    if len(raw) - 4 - 4 * nd != math.prod(shape) or shape[0] == 0:
        return None
    return shape


@SETTINGS
@given(which=st.sampled_from(["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"]),
       how=st.sampled_from(["random", "truncate", "flip-header", "extend", "gzip-garbage"]), data=st.data())
def test_generated_idx_files_fail_in_one_line_or_load(private_tmp, which, how, data):
    folder = Path(tempfile.mkdtemp(dir=private_tmp))
    files = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        files[f"{prefix}-images-idx3-ubyte"] = write_idx(np.full((n, 3, 3), 7, np.uint8))
        files[f"{prefix}-labels-idx1-ubyte"] = write_idx(np.arange(n, dtype=np.uint8))
    good = files[which]
    if how == "random":
        raw = data.draw(st.binary(max_size=64))
    elif how == "truncate":
        raw = good[: data.draw(st.integers(0, len(good) - 1))]
    elif how == "flip-header":
        i = data.draw(st.integers(0, 4 + 4 * (3 if "images" in which else 1) - 1))
        raw = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
    else:
        raw = good + data.draw(st.binary(min_size=1, max_size=16))
    files[which] = raw
    for name, content in files.items():
        if how == "gzip-garbage" and name == which:
            packed = gzip.compress(good)  # cut short, if only by its trailer
            (folder / (name + ".gz")).write_bytes(packed[: data.draw(st.integers(0, len(packed) - 1))])
        else:
            (folder / name).write_bytes(content)
    cfg = pv.DataConfig(source="mnist", path=str(folder))
    shape = idx_oracle(raw, 3 if "images" in which else 1)
    try:
        if how != "gzip-garbage" and shape is not None and shape[0] == (6 if which.startswith("train") else 4):
            pv.load_data(cfg)  # valid by chance (the images and labels still pair up): it loads
        else:
            one_line_error(lambda: pv.load_data(cfg))
    finally:
        shutil.rmtree(folder)


# --------------------------------------------------------------------------
# (b) configs

#: per key: values that are valid (noise around the poison) and values that must be refused
VALID = {
    ("data", "test_fraction"): [0.0, 0.2], ("data", "split_seed"): [0, 7, 2**62],
    ("data", "binarize"): ["auto", "none"], ("model", "latent_dim"): [2, 8],
    ("model", "likelihood"): ["normal", "bernoulli"], ("train", "epochs"): [1, 3],
    ("train", "lr"): [1e-3, 0.5], ("train", "seed"): [0, 123, 2**63 - 1], ("train", "batch_size"): [16],
}
POISON = {
    ("data", "test_fraction"): [1.0, -0.1, "0.1", True], ("data", "split_seed"): [-1, 1.5, "0"],
    ("data", "num_points"): [1, 0, 2**41], ("data", "source"): ["digit", 3],
    ("data", "path"): [4], ("data", "binarize"): ["sometimes"],
    ("model", "latent_dim"): [0, -3, 10**9, 2**24 + 1, 2.0, "8"], ("model", "levels"): [1, 10**9],
    ("model", "encoder"): [{"hidden": [0]}, {"hidden": [2**30]}, {"hidden": "400"}, {"width": 3}, 5],
    ("model", "likelihood"): ["bernouli", ""], ("model", "scale"): [-1.0, "fixed"],
    ("train", "seed"): [-1, -(2**63), 1.0, "0"], ("train", "epochs"): [0, "ten", 2.5],
    ("train", "lr"): [0, -1.0, "fast"], ("train", "batch_size"): [0, 2**31],
    ("train", "num_particles"): [0, 2**25], ("train", "device"): ["tpu"],
    ("train", "beta"): [-0.5], ("train", "on_nonfinite"): ["ignore"],
}

unknown_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
    lambda k: k not in {f.name for cls in (pv.DataConfig, OneLatent, pv.GraphSpec, pv.ProgramSpec, pv.TrainConfig)
                        for f in __import__("dataclasses").fields(cls)})


@st.composite
def bad_configs(draw):
    """A nested dict with valid noise and at least one unknown key, wrong type or out-of-range value."""
    values: dict = {}
    for (section, key) in draw(st.lists(st.sampled_from(sorted(VALID)), max_size=4, unique=True)):
        values.setdefault(section, {})[key] = draw(st.sampled_from(VALID[(section, key)]))
    kind = draw(st.sampled_from(["poison", "unknown-key", "unknown-section", "not-a-table"]))
    if kind == "poison":
        section, key = draw(st.sampled_from(sorted(POISON)))
        values.setdefault(section, {})[key] = draw(st.sampled_from(POISON[(section, key)]))
    elif kind == "unknown-key":
        values.setdefault(draw(st.sampled_from(["data", "model", "train"])), {})[draw(unknown_key)] = 1
    elif kind == "unknown-section":
        values[draw(unknown_key.filter(lambda k: k not in ("data", "model", "train")))] = {"a": 1}
    else:
        values[draw(st.sampled_from(["data", "model", "train"]))] = draw(st.sampled_from([1, "x", [1, 2]]))
    return values


def toml_text(values: dict) -> str:
    def scalar(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        return "{ " + ", ".join(f"{k} = {scalar(x)}" for k, x in v.items()) + " }"

    top = [f"{k} = {scalar(v)}" for k, v in values.items() if not isinstance(v, dict)]
    body = [f"[{s}]\n" + "".join(f"{k} = {scalar(v)}\n" for k, v in t.items())
            for s, t in values.items() if isinstance(t, dict)]
    return "\n".join(top + body) + "\n"


@SETTINGS
@given(values=bad_configs(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "non-utf8"]))
def test_generated_configs_fail_in_one_line(private_tmp, values, encoding):
    # the schema's checks as the config is read, the registries' names before any data is (what pv.train runs)
    one_line_error(lambda: pv.check_config(pv.config_from_dict(values)))
    raw = toml_text(values).encode("utf-8-sig" if encoding == "utf-8-sig" else "utf-8")
    if encoding == "non-utf8":
        raw = raw.replace(b"\n", b" # \xe9t\xe9\n", 1)
    path = private_tmp / "c.toml"
    path.write_bytes(raw)
    msg = one_line_error(lambda: pv.check_config(pv.load_config(path)))
    if encoding == "non-utf8":
        assert "not UTF-8" in msg and "save it as UTF-8" in msg


# --------------------------------------------------------------------------
# (c) the CLI: `pyro-vae train` with bad configs, data files and --set arguments


@SETTINGS
@given(values=bad_configs())
def test_cli_train_with_a_generated_bad_config(private_tmp, capsys, values):
    work = Path(tempfile.mkdtemp(dir=private_tmp))
    (work / "c.toml").write_text(toml_text(values))
    try:
        cli_user_error(capsys, ["train", work / "c.toml", "--out", work / "out", "--quiet", "--no-plots"], work,
                       work / "out")
    finally:
        shutil.rmtree(work)


@SETTINGS
@given(case=damaged_files())
def test_cli_train_with_a_generated_bad_data_file(private_tmp, capsys, case):
    suffix, raw = case
    work = Path(tempfile.mkdtemp(dir=private_tmp))
    path = work / f"x{suffix}"
    path.write_bytes(raw)
    try:
        if expect_valid(suffix, raw):
            pv.load_data(pv.DataConfig(train=str(path)))  # valid by chance: it loads (training is not this test's job)
        else:
            cli_user_error(capsys, ["train", "--set", f"data.train={path}", "--out", work / "out", "--quiet",
                                    "--no-plots"], work, work / "out")
    finally:
        shutil.rmtree(work)


@SETTINGS
@given(section_key=st.sampled_from(sorted(POISON)), data=st.data())
def test_cli_train_with_a_generated_bad_set_argument(private_tmp, capsys, section_key, data):
    section, key = section_key
    value = data.draw(st.sampled_from(POISON[section_key]))
    literal = toml_text({"v": value}).split(" = ", 1)[1].strip() if not isinstance(value, dict) else \
        "{ " + ", ".join(f"{k} = {toml_text({'v': v}).split(' = ', 1)[1].strip()}" for k, v in value.items()) + " }"
    work = Path(tempfile.mkdtemp(dir=private_tmp))
    try:
        cli_user_error(capsys, ["train", "--set", f"{section}.{key}={literal}", "--out", work / "out", "--quiet",
                                "--no-plots"], work, work / "out")
    finally:
        shutil.rmtree(work)


SPECIAL = {
    "fifo": lambda p: os.mkfifo(p),
    "dev-zero": lambda p: os.symlink("/dev/zero", p),
    "dev-urandom": lambda p: os.symlink("/dev/urandom", p),
    "folder": lambda p: os.mkdir(p),
    "missing": lambda p: None,
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
@pytest.mark.parametrize("suffix", [".npy", ".csv", ".toml"])
def test_special_files_are_refused_before_reading(private_tmp, capsys, kind, suffix):
    work = private_tmp / "w"
    work.mkdir()
    path = work / f"x{suffix}"
    SPECIAL[kind](path)
    argv = ["train", path] if suffix == ".toml" else ["train", "--set", f"data.train={path}"]
    line = cli_user_error(capsys, argv + ["--out", work / "out"], work, work / "out")
    assert str(path) in line


def test_too_long_names_are_one_line(private_tmp, capsys):
    work = private_tmp / "w"
    work.mkdir()
    long = work / ("n" * 300 + ".npy")
    line = cli_user_error(capsys, ["train", "--set", f"data.train={long}", "--out", work / "out"], work, work / "out")
    assert "too long" in line
    line = cli_user_error(capsys, ["train", work / ("c" * 300 + ".toml"), "--out", work / "out"], work, work / "out")
    assert "too long" in line
