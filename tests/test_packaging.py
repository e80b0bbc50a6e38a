"""Packaging: pyproject.toml's packages, data and dependencies, its console scripts (each a working
`--help`), flag help from the options' source comments, `run_all.sh --help` naming every option
it parses, and predict's / serve's `--topk` (with `--top` a deprecated alias)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import io
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from common import cli
from common.paths import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
CODE_DIRS = ("common", "solutions", "ensembling", "md5", "ocr", "mini")


def _resolve(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def script(name: str):
    """The function pyproject.toml's console script `name` calls."""
    return _resolve(SCRIPTS[name])


# --- console scripts -------------------------------------------------------------------------


def test_every_console_script_is_a_main_of_argv_that_exists():
    assert len(SCRIPTS) >= 15 and all(name.startswith("cdiscount-") for name in SCRIPTS)
    for name, target in SCRIPTS.items():
        assert target.startswith("common.cli:command."), f"{name}: {target} is not run through common.cli.run"
        entry = _resolve(target)
        assert isinstance(entry, cli.Command) and callable(entry), name
        params = inspect.signature(entry).parameters
        assert list(params) == ["argv"] and params["argv"].default is None, f"{name}: not main(argv=None)"
        # the wrapped command: the module's main(argv=None), the one its `python -m` runs
        assert entry.module == target.partition(":command.")[2]
        main = importlib.import_module(entry.module).main
        assert callable(main) and "argv" in inspect.signature(main).parameters, f"{name} -> {entry.module}"
    with pytest.raises(ModuleNotFoundError):
        cli.command.common.no_such_stage([])
    with pytest.raises(AttributeError):
        cli.command.common.__wrapped__


def _help_of(entry, argv=("--help",)) -> tuple[int | str | None, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        entry(list(argv))
    return done.value.code, out.getvalue()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_prints_its_help(name):
    code, text = _help_of(_resolve(SCRIPTS[name]))
    assert code == 0 and text.startswith("usage:") and "--work" in text, name


def test_trainer_help_without_a_recipe_shows_the_recipe_flags_and_how_to_pick_recipes():
    code, text = _help_of(script("cdiscount-train-dylan"))
    assert code == 0
    assert "the largest micro-batch one process holds" in text  # TrainConfig.batch_size's comment
    assert "--profile mini|full" in text and "--fast-dev-run" in text
    code, text = _help_of(script("cdiscount-train-convoluted"))  # its default stage, base: BaseConfig's own fields and defaults
    assert code == 0 and "--feature-clip" in text and "the team clipped features" in text and '[default: "sgd"]' in " ".join(text.split())


def test_python_m_help_of_a_trainer_is_the_same_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "solutions.dylan.train", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the largest micro-batch one process holds" in done.stdout and "[default: 64]" in done.stdout


def test_a_console_script_reports_bad_input_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        script("cdiscount-train-dylan")(["--work", str(tmp_path)])  # neither --config nor --profile
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_an_int_returned_by_main_is_the_exit_status():
    with pytest.raises(SystemExit) as done:
        cli.run(lambda argv: 3, [])
    assert done.value.code == 3
    cli.run(lambda argv: {"a": 1}, [])  # a summary dict is no exit status
    cli.run(lambda argv: 0, [])


# --- flag help from the source comments ------------------------------------------------------


def _stage_options_classes() -> dict[str, type]:
    """Every options class a stage hands parse_stage (found in the sources, so a new stage is
    checked too), and every recipe kind's config class of every registered solution."""
    found: dict[str, type] = {}
    for directory in CODE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            for name in re.findall(r"parse_stage\([^,()]+,[^,()]+,\s*([A-Z]\w+)", path.read_text()):
                module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                found[name] = getattr(importlib.import_module(module), name)
    from common.registry import solutions

    for solution in solutions():
        kinds, _ = solution.kinds()
        for kind in kinds.values():
            found[kind.config.__name__] = kind.config
    return found


OPTION_CLASSES = _stage_options_classes()
LINE = re.compile(r"^\s+(\w+):[^#]*?\s#\s?(.*?)\s*$")  # `name: type = default  # comment`, one line


def _source_comments(cls: type) -> dict[str, str]:
    """The comment of each one-line field, read line by line (independently of common.cli)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        for line in inspect.getsource(klass).splitlines():
            m = LINE.match(line)
            if m and m.group(1) in {f.name for f in dataclasses.fields(klass)}:
                out[m.group(1)] = m.group(2)
    return out


def test_the_stage_options_classes_are_found():
    for name in ("TrainConfig", "BaseConfig", "FuseConfig", "BestfittingConfig", "StackConfig", "PredictOptions", "ServeOptions",
                 "RunOptions", "OcrOptions", "Md5Options", "FoldsOptions", "MiniOptions", "PlanOptions"):
        assert name in OPTION_CLASSES, name


@pytest.mark.parametrize("name", sorted(OPTION_CLASSES))
def test_every_commented_field_gets_its_comment_as_flag_help(name):
    cls = OPTION_CLASSES[name]
    parser = argparse.ArgumentParser()
    cli.add_fields(parser, cls)
    helps = {a.dest: (a.help or "").replace("%%", "%") for a in parser._actions}
    expected = _source_comments(cls)
    for field, comment in expected.items():
        assert helps[field].startswith(comment), f"{name}.{field}: help {helps[field]!r}, comment {comment!r}"
    for f in dataclasses.fields(cls):  # a field without a comment still says its default
        assert f.name in helps and "default:" in helps[f.name], f"{name}.{f.name}"
    parser.format_help()  # a `%` in a comment must not break --help


def test_most_flags_have_comments_and_the_fallback_is_no_comment():
    commented = sum(len(cli.field_comments(c)) for c in OPTION_CLASSES.values())
    total = sum(len(dataclasses.fields(c)) for c in OPTION_CLASSES.values())
    assert commented > 300 and commented > total / 2, (commented, total)
    made = dataclasses.make_dataclass("Made", [("x", int, dataclasses.field(default=1))])  # no source file
    assert cli.field_comments(made) == {}


def test_field_comments_skip_section_titles_methods_and_take_the_subclass_comment():
    @dataclasses.dataclass
    class Base:
        # a section title, not a field's comment
        a: int = 1
        b: str = "x#y"  # b's comment, after a string holding a hash
        c: list[int] = dataclasses.field(
            default_factory=list)  # c's comment, on the field's last line

        def method(self) -> None:
            z: int = 0  # not a field  # noqa: F841

    @dataclasses.dataclass
    class Child(Base):
        a: int = 2  # the subclass's a

    assert cli.field_comments(Base) == {"b": "b's comment, after a string holding a hash", "c": "c's comment, on the field's last line"}
    assert cli.field_comments(Child)["a"] == "the subclass's a"


def test_help_shows_the_yaml_value_when_a_config_is_given(tmp_path):
    recipe = REPO / "solutions" / "dylan" / "configs" / "mini_lite0.yaml"
    code, text = _help_of(script("cdiscount-train-dylan"), ["--config", str(recipe), "--help"])
    assert code == 0 and '[YAML: "tf_efficientnet_lite0"]' in " ".join(text.split())


# --- run_all.sh --help -----------------------------------------------------------------------


def _run_all_options() -> tuple[set[str], dict[str, set[str]]]:
    """(every option run_all.sh's argument loop parses, {option: the values its checks accept})."""
    text = (REPO / "run_all.sh").read_text()
    loop = text[text.index("while [ $# -gt 0 ]"):text.index("\ndone\n")]
    options = {o for pattern in re.findall(r"^\s*([-\w|]+)\)", loop, re.M) for o in pattern.split("|") if o.startswith("-")}
    option_of = {var: option for option, var in re.findall(r'^\s*(--[\w-]+)\) (\w+)="\$2"', loop, re.M)}  # --preset) PRESET="$2"
    values = {option_of[var]: set(choice.split("|")) for var, choice in re.findall(r'case "\$(\w+)" in ([\w|]+)\)', text)}
    values |= {option: set(choice.split("|")) for option, choice in re.findall(r'^\s*(--[\w-]+)\) \[\[ "\$\{2:-\}" =~ \^\(([\w|]+)\)\$', loop, re.M)}
    return options, values


def _help_entries(text: str) -> dict[str, str]:
    """{option: its help entry}: a line `  --option ...` and the more indented lines after it."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (--[\w-]+)", line)
        if m:
            current = m.group(1)
            entries[current] = entries.get(current, "") + line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def test_run_all_help_names_every_option_it_parses_and_every_value_it_accepts():
    options, values = _run_all_options()
    assert {"--data", "--seed", "--n-folds", "--preset", "--plan", "--speeds", "-h", "--help"} <= options and len(options) >= 20
    assert values["--preset"] == {"tiny", "default", "dev"} and values["--speeds"] == {"estimated", "recorded"}
    assert {"--profile", "--protocol"} <= set(values)
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", str(REPO / "run_all.sh"), flag], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", done.stdout), f"run_all.sh --help does not mention {option}"
        entries = _help_entries(done.stdout)
        for option in options - {"-h", "--help"}:
            assert option in entries, f"run_all.sh --help has no line of its own for {option}"
        for option, accepted in values.items():
            for value in accepted:
                assert re.search(rf"(?<![\w-]){value}(?![\w-])", entries[option]), f"run_all.sh --help: {option} does not name {value}"


# --- --topk, and --top as a deprecated alias -------------------------------------------------


def test_apply_aliases_renames_warns_once_and_stops_at_double_dash(capsys):
    aliases = {"--top": "--topk"}
    assert cli.apply_aliases(["--top", "3", "--top=4", "--", "--top"], aliases) == ["--topk", "3", "--topk=4", "--", "--top"]
    assert capsys.readouterr().err == "warning: --top is deprecated, use --topk\n"
    assert cli.apply_aliases(["--topk", "3", "--topper"], aliases) == ["--topk", "3", "--topper"]
    assert capsys.readouterr().err == ""


class _FakePredictor:
    source = "fake"

    def __init__(self):
        self.k, self.closed = None, False

    def close(self) -> None:
        self.closed = True

    def describe(self) -> str:
        return "a fake"

    def predict_products(self, products, k, keep=None):
        self.k = k
        return pd.DataFrame({"product": ["p"] * k, "rank": range(1, k + 1)})


@pytest.mark.parametrize("flag, warned", [("--topk", False), ("--top", True)])
def test_predict_takes_topk_and_the_old_top_with_one_warning(flag, warned, tmp_path, monkeypatch, capsys):
    import ensembling.predict.__main__ as predict_main
    from ensembling.predict.predictor import Predictor

    fake = _FakePredictor()
    monkeypatch.setattr(predict_main, "read_products", lambda opts: ["a product"])
    monkeypatch.setattr(Predictor, "from_work", staticmethod(lambda work, source=None: fake))
    out = tmp_path / "pred.csv"
    script("cdiscount-predict")(["--work", str(tmp_path), "--images", "a.jpg", flag, "3", "--out", str(out)])
    assert fake.k == 3 and len(pd.read_csv(out)) == 3 and fake.closed
    err = capsys.readouterr().err
    assert err.count("warning: --top is deprecated, use --topk") == (1 if warned else 0), err
    assert all("deprecated" not in line for line in err.splitlines() if not line.startswith("warning: --top "))


@pytest.mark.parametrize("flag, warned", [("--topk", False), ("--top", True)])
def test_serve_takes_topk_and_the_old_top_with_one_warning(flag, warned, tmp_path, monkeypatch, capsys):
    import uvicorn

    import ensembling.predict as predict_package
    import ensembling.serve as serve

    built = {}
    monkeypatch.setattr(predict_package.Predictor, "from_work", staticmethod(lambda work, source=None: _FakePredictor()))
    monkeypatch.setattr(serve, "build_app", lambda predictor, top, max_image_mb: built.setdefault("top", top))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: built.setdefault("kw", kw))
    script("cdiscount-serve")(["--work", str(tmp_path), flag, "7", "--port", "8123"])
    assert built["top"] == 7 and built["kw"]["port"] == 8123
    assert capsys.readouterr().err.count("warning: --top is deprecated, use --topk") == (1 if warned else 0)


def test_predict_and_serve_help_say_topk_and_name_the_alias():
    for entry in (script("cdiscount-predict"), script("cdiscount-serve")):
        code, text = _help_of(entry)
        text = " ".join(text.split())
        assert code == 0 and "--topk TOPK" in text and "(--top: a deprecated alias)" in text


# --- pyproject.toml: packages, data, dependencies, license -----------------------------------


def test_every_package_of_the_repo_is_listed_and_every_listed_one_exists():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for d in CODE_DIRS for p in (REPO / d).rglob("__init__.py")}
    assert on_disk <= listed, f"packages not in pyproject.toml: {sorted(on_disk - listed)}"
    for package in listed:
        assert (REPO / package.replace(".", "/")).is_dir(), package
    assert not {"tests", "bench", "scripts", "work", "docs"} & {p.split(".")[0] for p in listed}


def test_package_data_covers_every_data_file_of_the_packages():
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for package in listed:
        folder = REPO / package.replace(".", "/")
        for path in folder.iterdir():
            if path.is_file() and path.suffix != ".py" and path.name != "README.md":
                if not any(path.match(glob) for glob in data.get(package, [])):
                    missing.append(str(path.relative_to(REPO)))
    assert not missing, f"data files a wheel would lose: {missing}"


def _pins(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dependencies_come_from_the_requirements_files_and_setup_env_installs_them_all():
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]
    assert dynamic["dependencies"]["file"] == ["requirements.txt"]
    extras = dynamic["optional-dependencies"]
    assert {"dask", "onnx", "serve", "test", "all"} <= set(extras)
    files = {f for extra in extras.values() for f in extra["file"]} | {"requirements.txt"}
    on_disk = {p.name for p in REPO.glob("requirements*.txt")}
    assert files == on_disk
    setup = (REPO / "scripts" / "setup_env.sh").read_text()
    installed = set(re.search(r"REQUIREMENTS=\(([^)]*)\)", setup).group(1).split())
    assert installed == on_disk  # .venv (run_tests.sh, run_all.sh) gets every extra, as the tests need
    pins = [pin for name in sorted(on_disk) for pin in _pins(REPO / name)]
    assert all(re.fullmatch(r"[\w.\-]+(\[\w+\])?==[\w.]+", pin) for pin in pins), pins  # exact pins, no inline comments
    names = [pin.split("==")[0].split("[")[0].lower() for pin in pins]
    assert len(names) == len(set(names)), "a package pinned in two files"
    core = {pin.split("==")[0].lower() for pin in _pins(REPO / "requirements.txt")}
    assert {"torch", "torchvision", "timm", "numpy"} <= core and not {"pytest", "fastapi", "distributed", "onnx"} & core


def test_the_license_is_shipped():
    assert (REPO / "LICENSE").is_file() and "Permission is hereby granted" in (REPO / "LICENSE").read_text()
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_a_built_wheel_carries_the_code_the_recipes_and_the_resources(tmp_path):
    """`pip wheel` in a copy of the tree (the build writes build/ and *.egg-info beside pyproject.toml)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__}: pyproject.toml needs >= 77")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", *(p.name for p in REPO.glob("requirements*.txt"))):
        shutil.copy(REPO / name, src / name)
    for directory in CODE_DIRS:
        shutil.copytree(REPO / directory, src / directory, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "whl"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [p for d in CODE_DIRS for p in (REPO / d).rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != "README.md"]:
        assert str(path.relative_to(REPO)) in names, f"the wheel lacks {path.relative_to(REPO)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert all(f"{name} = {target}" in text for name, target in SCRIPTS.items())
