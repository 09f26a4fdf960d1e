"""dvc.yaml tells the truth about the code: every stage's command runs a module whose own imports are all
declared as deps (so `dvc repro` re-runs a stage when any code it runs changes), and every param a stage
names exists in params.yaml."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.core.base import manifests, paths
from pipeline.core.base.params import load_params
from pipeline.core.base.stages import STAGES as TABLE

REPO = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = SPEC["stages"]


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _pipeline_imports(path: Path) -> set[str]:
    """Names of ``pipeline`` modules imported by the file at ``path`` (anywhere in it, lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("pipeline")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return found


def code_files_run_by(module: str) -> set[str]:
    """Repo-relative files of every ``pipeline`` module that ``python -m module`` can import."""
    entry = f"{module}.__main__" if (REPO.joinpath(*module.split(".")) / "__main__.py").exists() else module
    seen: set[str] = set()
    todo = [entry, f"{module}.stage"]  # the stage's work, which core/base/stage_cli.py imports by name
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is not None:
            todo.extend(_pipeline_imports(path))
    files = {str(_module_file(n).relative_to(REPO)) for n in seen if _module_file(n)}
    # (package docstrings only: an edit to them changes no stage's result)
    return files - {"pipeline/__init__.py", "pipeline/core/__init__.py", "pipeline/mirror/__init__.py"}


def _covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dep(stage: str) -> None:
    spec = STAGES[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    missing = sorted(f for f in code_files_run_by(module) if not _covered(f, spec["deps"]))
    assert not missing, f"stage {stage} runs code that dvc.yaml does not list as deps: {missing}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_named_param_exists(stage: str) -> None:
    params = load_params(REPO / "params.yaml").to_dict()
    for dotted in STAGES[stage].get("params", []):
        node = params
        for key in dotted.split("."):
            assert key in node, f"stage {stage} names param {dotted}, which params.yaml does not have"
            node = node[key]


def test_the_stages_are_the_table_of_stages() -> None:
    # one list of stages: dvc.yaml runs exactly the table's, in its order, each as `python -m` of its package
    assert list(STAGES) == [stage.name for stage in TABLE]
    assert {name: spec["cmd"] for name, spec in STAGES.items()} == {s.name: f"python -m {s.module}" for s in TABLE}
    for stage in TABLE:
        assert (REPO / "pipeline/stages" / stage.name / "__main__.py").is_file(), stage.name
        assert (REPO / "pipeline/stages" / stage.name / "stage.py").is_file(), stage.name


@pytest.mark.parametrize("stage", TABLE, ids=lambda stage: stage.name)
def test_the_params_a_stage_tracks_are_its_sections_in_the_table(stage) -> None:
    named = {dotted.split(".")[0] for dotted in STAGES[stage.name].get("params", [])}
    assert named <= set(stage.sections), f"{stage.name} tracks {sorted(named - set(stage.sections))} in dvc.yaml"


def test_the_checker_sees_a_missing_dep() -> None:
    # the crop stage imports pipeline.core.images.imaging; without that room in deps the check must complain
    files = code_files_run_by("pipeline.stages.crop")
    assert "pipeline/core/images/imaging.py" in files
    assert not _covered("pipeline/core/images/imaging.py",
                        [d for d in STAGES["crop"]["deps"] if d != "pipeline/core/images"])


def _core_rooms(files: set[str]) -> set[str]:
    """``pipeline/core/<room>`` for every core file in ``files``."""
    return {"/".join(f.split("/")[:3]) for f in files if f.startswith("pipeline/core/") and f.count("/") >= 3}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_deps_are_no_wider_than_the_imports(stage: str) -> None:
    # a room listed but never imported would re-run the stage for edits that cannot change its results
    spec = STAGES[stage]
    module = spec["cmd"].split("python -m ", 1)[1].split()[0]
    listed = {d.rstrip("/") for d in spec["deps"] if d.startswith("pipeline/")}
    run = code_files_run_by(module)
    assert "pipeline/core" not in listed, f"stage {stage} lists the whole core; name the rooms it imports"
    unused = sorted(d for d in listed if not any(_covered(f, [d]) for f in run))
    assert not unused, f"stage {stage} lists code deps it never imports: {unused}"


def test_only_the_package_stage_depends_on_the_publishing_room() -> None:
    users = sorted(name for name, spec in STAGES.items()
                   if any(_covered("pipeline/core/publish/registry.py", [d]) for d in spec["deps"]))
    assert users == ["package"]


#: folders of one file per photo or crop -> the stages that may name the folder itself (as an output or a
#: dep); every other reader names the manifest that lists its files with their hash (the header of dvc.yaml)
PER_ITEM_FOLDERS = {
    "data/images": ["download"],                  # crop, split: data/images/manifest.parquet (md5)
    "data/crops": ["clean", "crop"],              # clean hashes the crops; audit, split: data/clean (sha256)
    "data/splits": ["split"],                     # shards: data/clean; train, evaluate, package: data/shards
}
#: what stands in for each folder, and the column (or index field) that holds each file's hash
STANDS_FOR = {"data/images/manifest.parquet": ("md5", manifests.IMAGES.columns),
              "data/clean": ("sha256", manifests.CLEAN.columns)}


def _names(spec: dict) -> set[str]:
    outs = {next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])}
    return {entry.rstrip("/") for entry in [*spec.get("deps", []), *outs]}


@pytest.mark.parametrize("folder", sorted(PER_ITEM_FOLDERS))
def test_a_folder_of_a_file_per_item_is_walked_by_as_few_stages_as_can_be(folder: str) -> None:
    # DVC walks every file of a folder dep or output on every `dvc status` / `dvc repro`, once per stage that
    # names it: 100,000 files cost ~10 CPU s a walk (bench/dvc_layout_bench.py)
    naming = sorted(name for name, spec in STAGES.items() if folder in _names(spec))
    assert naming == PER_ITEM_FOLDERS[folder], f"{folder} is named by {naming}; name its manifest instead"


def test_what_stands_for_a_folder_carries_each_file_s_hash() -> None:
    for stand_in, (column, columns) in STANDS_FOR.items():
        assert column in columns, f"{stand_in} has no {column} column: it cannot stand for the files"
        readers = [name for name, spec in STAGES.items() if stand_in in spec.get("deps", [])]
        assert readers, f"no stage reads {stand_in}"


def _stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["pipeline", "stages"] else None


def _imports_of(folder: str) -> dict[str, set[str]]:
    """``{repo-relative file: pipeline modules it imports}`` for every file under ``folder``."""
    return {str(path.relative_to(REPO)): _pipeline_imports(path) for path in sorted((REPO / folder).rglob("*.py"))}


def test_a_stage_never_imports_another_stage() -> None:
    crossing = {}
    for file, imported in _imports_of("pipeline/stages").items():
        own = Path(file).relative_to("pipeline/stages").parts[0].removesuffix(".py")
        others = sorted(m for m in imported if _stage_of(m) not in (None, own))
        if others:
            crossing[file] = others
    assert not crossing, f"stages import other stages (move what they share to pipeline/core): {crossing}"


@pytest.mark.parametrize("folder", ["pipeline/core", "pipeline/mirror"])
def test_the_core_and_the_mirror_import_no_stage_or_command(folder: str) -> None:
    allowed = ("pipeline.core",) if folder == "pipeline/core" else ("pipeline.core", "pipeline.mirror")
    wrong = {file: sorted(m for m in imported if not m.startswith(allowed) and m != "pipeline")
             for file, imported in _imports_of(folder).items()}
    assert not {f: m for f, m in wrong.items() if m}, wrong


def test_the_layout_check_sees_a_crossing(tmp_path: Path) -> None:
    # a stage importing another must be caught by the AST scan the checks above rely on
    bad = tmp_path / "x.py"
    bad.write_text("from pipeline.stages.download.verify import verify\nfrom pipeline.core.base import paths\n")
    imported = _pipeline_imports(bad)
    assert _stage_of("pipeline.stages.download.verify") == "download" and "pipeline.stages.download.verify" in imported


# The core's rooms, each importing only rooms listed before it: the foundation first, nothing circular.
ROOM_ORDER = ["base", "net", "images", "publish", "compute", "learn", "audit"]


def test_the_core_rooms_import_only_rooms_below_them() -> None:
    rooms = sorted(p.name for p in (REPO / "pipeline/core").iterdir() if (p / "__init__.py").exists())
    assert rooms == sorted(ROOM_ORDER), "a new room of the core needs its place in ROOM_ORDER"
    upward = {}
    for file, imported in _imports_of("pipeline/core").items():
        own = Path(file).parts[2]
        if own not in ROOM_ORDER:
            continue
        used = {m.split(".")[2] for m in imported if m.startswith("pipeline.core.") and m.count(".") >= 2}
        above = sorted(r for r in used if ROOM_ORDER.index(r) > ROOM_ORDER.index(own))
        if above:
            upward[file] = above
    assert not upward, f"core rooms importing rooms above them (move the shared part down): {upward}"


#: what asks a store which kind it is (a folder or an object store): each kind's policy lives in its class in
#: pipeline/core/compute/store.py, and a stage only calls a Store's methods
STORE_KIND_NAMES = {"is_remote", "_is_url", "FolderStore", "ObjectStore"}


def _store_kind_branches(source: str, name: str) -> list[str]:
    """``name:line: what`` for each place ``source`` asks for the store's kind: a kind test by name (a call,
    an import, an ``isinstance`` against a kind's class), or a hand-made one (``"://" in location``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        used = [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
            [alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else []
        if isinstance(node, ast.Compare):
            used += [o.value for o in (node.left, *node.comparators) if isinstance(o, ast.Constant) and o.value == "://"]
        found += [f"{name}:{node.lineno}: {what}" for what in used if what in STORE_KIND_NAMES | {"://"}]
    return found


def test_no_stage_asks_which_kind_of_store_it_has() -> None:
    found = [line for path in sorted((REPO / "pipeline/stages").rglob("*.py"))
             for line in _store_kind_branches(path.read_text(), str(path.relative_to(REPO)))]
    assert not found, f"stage code branches on the store's kind (give the Store a method instead): {found}"


def test_the_store_kind_check_sees_a_branch() -> None:
    bad = ("from pipeline.core.compute.store import is_remote\n"
           "def f(store, x):\n    return store.is_remote(x) or '://' in x or isinstance(x, ObjectStore)\n")
    found = [line.rsplit(": ", 1)[1] for line in _store_kind_branches(bad, "x.py")]
    assert sorted(found) == ["://", "ObjectStore", "is_remote", "is_remote"], found


def test_the_embeddings_cache_is_no_dvc_output_and_git_ignores_it() -> None:
    """A cache by content is not a result: as an output DVC hashed its one file per crop on every ``dvc
    status`` and re-ran the audit when another run had added to it. Undeclared, git must still ignore it."""
    outs = [next(iter(o)) if isinstance(o, dict) else o for s in STAGES.values() for o in s.get("outs", [])]
    assert str(paths.EMBEDDINGS_DIR) not in outs
    ignored = subprocess.run(["git", "check-ignore", "-q", f"{paths.EMBEDDINGS_DIR}/mobilenet_v2-32px/ab/x.npy"],
                             cwd=REPO, check=False)
    assert ignored.returncode == 0
