"""Strict values (issue 23, item 7): booleans are booleans, YAML 1.1 surprises (base-60 and octal
numbers, yes/no/on/off) are refused or read as words, a key given twice in a file is refused in
any spelling, component names are identifiers, and a plugin whose import blocks is named."""

import sys
import time
import typing

import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from mim_lightning import hookimpl
from mim_lightning.cli import main
from mim_lightning.config import Config, load_config
from mim_lightning.config_yaml import parse_yaml
from mim_lightning.errors import MimError
from mim_lightning.experiments import grid as grids
from mim_lightning.plugins import manager as plugins

from helpers import TINY, plugin_registered


def bool_keys(model=Config, prefix=""):
    """Every dotted config key whose type is bool (or allows true/false, like data.stream)."""
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += bool_keys(annotation, f"{prefix}{name}.")
        elif annotation is bool or True in typing.get_args(annotation):
            keys.append(prefix + name)
    return keys


BOOL_KEYS = bool_keys()


def refused(overrides=(), path=None) -> str:
    with pytest.raises(MimError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def one_error_line(result) -> str:
    """The single 'Error: ...' line of a failed command (warnings aside), no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("Warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# --- booleans are booleans ----------------------------------------------------------------------

@pytest.mark.parametrize("key", BOOL_KEYS)
def test_boolean_keys_take_true_and_false_only(key):
    section, name = key.split(".")
    for value in (True, False):
        assert getattr(getattr(load_config(None, [f"{key}={str(value).lower()}"]), section), name) is value
    for text in ["1", "0", "yes", "no", "on", "off", "Y", "'true'", "1.0"]:
        message = refused([f"{key}={text}"])
        assert f"config key '{key}'" in message and "true or false" in message, message


def test_data_stream_takes_auto_true_false_only():
    assert [load_config(None, [f"data.stream={v}"]).data.stream for v in ("auto", "true", "false")] == ["auto", True, False]
    assert "config key 'data.stream': must be auto or a boolean: write auto, true or false (got 1)" in refused(["data.stream=1"])


def test_cli_refuses_a_number_for_a_boolean_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), "--set", "data.stream=1"])
    assert "config key 'data.stream'" in one_error_line(result)
    assert result.exit_code == 1 and not (tmp_path / "run").exists()


def test_yaml_file_booleans(tmp_path):
    assert {"data.split_samples", "data.stream", "stage1.center", "stage1.joint", "stage2.rescale",
            "checks.strict", "baseline.uncentred"} <= set(BOOL_KEYS)  # every boolean key is tested above
    path = tmp_path / "c.yaml"
    path.write_text("stage1: {center: yes}\n")
    assert "config key 'stage1.center': must be a boolean: write true or false (got 'yes')" in refused(path=path)
    path.write_text("stage1: {center: false, joint: True}\n")
    cfg = load_config(path)
    assert cfg.stage1.center is False and cfg.stage1.joint is True


# --- YAML 1.1 surprises -------------------------------------------------------------------------

@pytest.mark.parametrize("text, needle", [
    ("seed: 1:30\n", "1:30 at line 1 is a YAML 1.1 base-60 number (90); write 90"),
    ("data:\n  alpha: 1:30.5\n", "1:30.5 at line 2 is a YAML 1.1 base-60 number (90.5)"),
    ("seed: 010\n", "010 at line 1 is a YAML 1.1 octal number (8); write 8, or drop the leading zeros"),
    ("data: {d: 64, <<: {d: 128}}\n", "YAML merge key << at line 1"),
])
def test_yaml_1_1_numbers_and_merge_keys_are_refused(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert needle in refused(path=path)


@pytest.mark.parametrize("override", ["seed=1:30", "seed=-1:00", "data.d=0100"])
def test_yaml_1_1_numbers_are_refused_in_overrides(override):
    message = refused([override])
    assert message.startswith(f"--set '{override}': ") and "YAML 1.1" in message, message


def test_words_that_yaml_1_1_read_as_booleans_are_words(tmp_path):
    assert parse_yaml("a: yes\nb: No\nc: ON\nd: off\ne: true\nf: False") == {
        "a": "yes", "b": "No", "c": "ON", "d": "off", "e": True, "f": False}
    path = tmp_path / "c.yaml"
    path.write_text("baseline: {spectral: off}\n")
    assert load_config(path).baseline.spectral == "off"
    assert load_config(None, ["baseline.spectral=off"]).baseline.spectral == "off"
    assert "config key 'baseline.spectral'" in refused(["baseline.spectral=false"])  # a boolean is no word
    assert load_config(None, ["trainer.strategy='1:30'"]).trainer.strategy == "1:30"  # quoted: text
    # a run folder's config.yaml (yaml.safe_dump quotes such words) reads back as written
    cfg = load_config(None, ["baseline.spectral=off", "trainer.strategy='no'", "data.stream=false"])
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    assert load_config(path) == cfg


# --- a key given twice --------------------------------------------------------------------------

def sweep_file(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text("data: {d: 32, alpha2: 8, n_test: 512}\nmodel: {width: 32}\nstage1: {steps: 3}\n" + text)
    return path


@pytest.mark.parametrize("text, overrides, needle", [
    ("sweep:\n  data.alpha: [1, 2]\n  data: {alpha: [4]}\n", [],
     "sweep: key 'data.alpha' is given twice, flat and nested; give each key once"),
    ("sweep:\n  data: {alpha: [4]}\n  data.alpha: [1, 2]\n", [], "key 'data.alpha' is given twice, flat and nested"),
    ("sweep:\n  data.alpha: [1, 2]\n", ["data.alpha=3"],
     "--set data.alpha: the sweep gives data.alpha a list of values, so every run would ignore this one"),
    ("sweep:\n  data.alpha: [1, 2]\n", ["data={alpha: 3}"], "--set data.alpha: the sweep gives data.alpha"),
    ("sweep:\n  variant: [{name: j, stage1.joint: true}]\n  stage1: {joint: [true, false]}\n", [],
     "sweep key 'stage1.joint' is swept and also set by variant 'j'; set it in one place"),
    ("sweep:\n  variant: [{name: j, stage1.joint: true, stage1: {joint: false}}]\n", [],
     "key 'stage1.joint' is given twice, flat and nested"),
])
def test_a_sweep_key_given_twice_is_refused(tmp_path, text, overrides, needle):
    path = sweep_file(tmp_path, text)
    with pytest.raises(MimError) as info:
        grids.load_sweep(path, overrides)
    assert needle in str(info.value), str(info.value)
    result = CliRunner().invoke(main, ["sweep", str(path), "--out", str(tmp_path / "out"),
                                       *[a for o in overrides for a in ("--set", o)]])
    assert needle in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_set_replaces_a_swept_list_however_the_file_spells_it(tmp_path):
    for written in ("data.alpha: [1, 2]", "data: {alpha: [1, 2]}"):
        path = sweep_file(tmp_path, f"sweep:\n  {written}\n  seed: [0]\n")
        sweep = grids.load_sweep(path, ["sweep.data.alpha=[4, 8]", "sweep.model.width=[16]"])
        assert sweep.axes == {"data.alpha": [4, 8], "seed": [0], "model.width": [16]}
    path = sweep_file(tmp_path, "sweep:\n  data.alpha: [1, 2]\n")  # the file itself gives each key once
    with pytest.raises(MimError, match="given twice, flat and nested"):
        grids.load_sweep(path, ["sweep.data={alpha: [4]}", "sweep={data: {alpha: [8]}, data.alpha: [16]}"])


# --- component names are identifiers ------------------------------------------------------------

BAD_NAMES = ["sum_he2 ", " lead", "two words", "new\nline", "x" * 5000, "", "1st", "tab\t"]


class BadNames:
    @hookimpl
    def register_links(self, register):
        for name in BAD_NAMES:
            register(name, lambda z: z[..., 0] ** 2 - 1)
        register("good.name-2", lambda z: z[..., 0] ** 2 - 1)


def test_a_name_that_is_not_an_identifier_is_not_registered(capsys):
    with plugin_registered(BadNames(), "bad_names"):
        registry = plugins.get_registry()
        errors = registry.plugins["bad_names"].errors
        assert "good.name-2" in registry.names("link")
        assert not set(BAD_NAMES) & set(registry.names("link"))
        assert len(errors) == len(BAD_NAMES)
        assert all("is not a name: use a letter or _" in e and "\n" not in e and len(e) < 300 for e in errors), errors
        result = CliRunner().invoke(main, ["plugins"])
        assert result.exit_code == 1 and "ERROR        link name 'sum_he2 ' is not a name" in result.output


@pytest.mark.parametrize("args", [["check", "--link", "sum_he2 "], ["theory", "--link", " sum_he2"],
                                  ["check", "--activation", "relu\n"]])
def test_a_lookup_with_blanks_is_refused_not_stripped(args):
    with plugin_registered(BadNames(), "bad_names"):
        line = one_error_line(CliRunner().invoke(main, args))
    assert f"unknown {args[1][2:]} {args[2]!r} (a {args[1][2:]} name is a letter or _" in line, line


def test_a_config_name_with_blanks_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('data: {link: "sum_he2 "}\n')
    result = CliRunner().invoke(main, ["train", str(path), "--out", str(tmp_path / "run"), *[
        a for o in TINY for a in ("--set", o)]])
    assert "data.link: unknown link 'sum_he2 ' (a link name is" in one_error_line(result)


# --- a plugin whose import blocks ---------------------------------------------------------------

def write_plugin(path, dist, module, source, entry_name):
    (path / f"{module}.py").write_text(source)
    info = path / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[mim_lightning]\n{entry_name} = {module}\n")


def test_a_slow_plugin_is_named_with_how_to_skip_it(monkeypatch, tmp_path, capsys):
    write_plugin(tmp_path, "mim-sleepy", "mim_sleepy", "import time\ntime.sleep(1.5)\n", "sleepy")
    write_plugin(tmp_path, "mim-quick", "mim_quick", "", "quick")
    write_plugin(tmp_path, "mim-slow-hook", "mim_slow_hook", "import time\nfrom mim_lightning import hookimpl\n\n"
                 "@hookimpl\ndef register_links(register):\n    time.sleep(1.0)\n", "slow_hook")
    for module in ("mim_sleepy", "mim_quick", "mim_slow_hook"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "SLOW_PLUGIN_S", 0.3)
    entry_points = sorted((ep for ep in plugins.metadata.entry_points(group=plugins.GROUP)
                           if ep.name in ("sleepy", "quick", "slow_hook")), key=lambda ep: ep.name)
    manager = plugins.make_plugin_manager()
    started = time.monotonic()
    infos = plugins.load_entrypoints(manager, "sleepy,quick,slow_hook", entry_points)
    assert time.monotonic() - started >= 1.5 and all(info.loaded for info in infos)
    plugins.build_registry(manager, infos)
    time.sleep(0.5)  # the watchdogs of the quick import and hooks were cancelled: they print nothing
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if "still" in line] == [
        "Warning: plugin 'sleepy' (entry point sleepy = mim_sleepy, mim-sleepy 0.1) is still importing after"
        " 0.3 s; if it hangs, stop with Ctrl-C and skip it with MIM_LIGHTNING_PLUGINS='quick,slow_hook'",
        "Warning: plugin 'slow_hook' (entry point slow_hook = mim_slow_hook, mim-slow-hook 0.1) is still in"
        " register_links after 0.3 s; if it hangs, stop with Ctrl-C and skip it with"
        " MIM_LIGHTNING_PLUGINS='quick,sleepy'"], err
