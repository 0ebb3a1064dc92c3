"""The pool manifest parser (no ComfyUI needed): expansion into jobs, hashes, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.dti_pool.manifest import ManifestError, load_manifest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "workflows" / "pool_example.toml"


def _subject(root: Path, name: str, n: int = 2, payload: bytes = b"img") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(payload + bytes([i]))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _write(root: Path, text: str, name: str = "m.toml") -> Path:
    path = root / name
    path.write_text(text)
    return path


BASIC = """
[defaults]
methods = ["dti", "ti"]
steps = 30
resolution = 512
[[subjects]]
name = "teapot"
images = "teapot"
initializer = "teapot"
captions = ["a photo of {}", "a {} on a table"]
steps = 12
[[subjects]]
name = "cat"
images = ["cat/0.png", "cat/1.png"]
initializer = "cat"
methods = ["dti"]
"""


def test_subjects_expand_into_one_job_per_method_with_defaults_and_overrides(tmp_path):
    _subject(tmp_path, "teapot")
    _subject(tmp_path, "cat")
    manifest = load_manifest(_write(tmp_path, BASIC))
    jobs = {(j.subject, j.method): j for j in manifest.jobs}
    assert sorted(jobs) == [("cat", "dti"), ("teapot", "dti"), ("teapot", "ti")]
    teapot = jobs["teapot", "ti"]
    assert teapot.settings == {"steps": 12, "resolution": 512, "initializer": "teapot",
                               "captions": "a photo of {}\na {} on a table", "method": "ti"}
    assert jobs["cat", "dti"].settings["steps"] == 30
    assert [p.name for p in teapot.images] == ["0.png", "1.png"]  # notes.txt is not an image
    assert manifest.graph_path == REPO / "workflows" / "api" / "dti_train_api.json"
    names = [j.name for j in manifest.jobs]
    assert len(set(names)) == len(names)
    assert all(n.startswith(f"{j.subject}-{j.method}-") and len(n.rsplit("-", 1)[1]) == 8 for n, j in zip(names, manifest.jobs))


def test_json_manifest_gives_the_same_jobs_as_toml(tmp_path):
    _subject(tmp_path, "teapot")
    _subject(tmp_path, "cat")
    import tomllib

    toml_jobs = load_manifest(_write(tmp_path, BASIC)).jobs
    json_jobs = load_manifest(_write(tmp_path, json.dumps(tomllib.loads(BASIC)), "m.json")).jobs
    assert [(j.name, j.settings) for j in toml_jobs] == [(j.name, j.settings) for j in json_jobs]


def test_entry_hash_follows_settings_and_image_bytes_only(tmp_path):
    _subject(tmp_path, "teapot")
    _subject(tmp_path, "cat")
    path = _write(tmp_path, BASIC)
    before = {j.name for j in load_manifest(path).jobs}
    assert {j.name for j in load_manifest(path).jobs} == before  # stable across reads
    _subject(tmp_path, "cat", payload=b"other")  # new photos of the cat
    after = {j.name for j in load_manifest(path).jobs}
    changed = before ^ after
    assert {n.split("-")[0] for n in changed} == {"cat"}
    _write(tmp_path, BASIC.replace("steps = 12", "steps = 13"))
    assert {n.split("-")[0] for n in after ^ {j.name for j in load_manifest(path).jobs}} == {"teapot"}


@pytest.mark.parametrize("text, message", [
    ("[[subjects]]\nname = 'x'\nimages = 'teapot'\n", "no 'initializer'"),
    ("[[subjects]]\nname = 'x'\ninitializer = 'dog'\n", "no 'images'"),
    ("[[subjects]]\nname = 'x'\nimages = 'missing'\ninitializer = 'dog'\n", "images folder 'missing' not found"),
    ("[[subjects]]\nname = 'a b'\nimages = 'teapot'\ninitializer = 'dog'\n", "'name' must be"),
    ("[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\n[[subjects]]\nname = 'x'\nimages = 'teapot'\n"
     "initializer = 'dog'\n", "appears twice"),
    ("stepz = 3\n[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\n", "unknown top-level key(s) ['stepz']"),
    ("[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\nmethod = 'ti'\n", "use 'methods = [...]'"),
    ("[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\nmethods = []\n", "non-empty list"),
    ("[[subjects]]\nname = 'x'\nimages = ['teapot/0.png', 'teapot/notes.txt']\ninitializer = 'dog'\n", "notes.txt not one of"),
    ("[defaults]\nsteps = 3\n", "no subjects"),
    ("graph = 'nowhere.json'\n[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\n", "graph 'nowhere.json' not found"),
    ("[[subjects]]\nname = 'x'\nimages = 'teapot'\ninitializer = 'dog'\nsteps = [1, 2]\n", "setting 'steps' must be a single value"),
    ("[[subjects\nname = 'x'\n", "not valid TOML"),
])
def test_refusals_name_what_is_wrong(tmp_path, text, message):
    _subject(tmp_path, "teapot")
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path, text))
    assert message in str(err.value)


def test_shipped_example_parses(tmp_path):
    # The example's image folders are the user's; give it some next to a copy.
    text = EXAMPLE.read_text()
    import tomllib

    doc = tomllib.loads(text)
    for subject in doc["subjects"]:
        images = subject["images"]
        for rel in [images] if isinstance(images, str) else [str(Path(p).parent) for p in images]:
            _subject(tmp_path, rel)
        if not isinstance(images, str):
            for p in images:
                (tmp_path / p).write_bytes(b"x")
    manifest = load_manifest(_write(tmp_path, text, "pool_example.toml"))
    assert len(manifest.jobs) >= 3 and len({j.method for j in manifest.jobs}) >= 2
