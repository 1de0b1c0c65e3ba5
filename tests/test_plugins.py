"""Plugins: entry-point loading, MIM_LIGHTNING_PLUGINS, registration errors, broken plugins, `mim plugins`.

In-memory plugins go on a fresh PluginManager (``make_plugin_manager``); plugins that must be found
through entry points are written as a dist-info directory on a temporary sys.path entry (what an
installed package looks like to importlib.metadata), or installed with pip (the example plugin).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from mim_lightning import hookimpl
from mim_lightning.plugins import manager as plugins
from mim_lightning.cli import main

from helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins" / "mim-example-plugin"
EXAMPLE_SETS = ["data.link=cubic_saddle", "model.activation=u_tanh", "stage1.loss=fair"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(items):
    return [arg for item in items for arg in ("--set", item)]


def use_plugins(monkeypatch, value):
    """Set MIM_LIGHTNING_PLUGINS (None: unset) and forget what was loaded."""
    if value is None:
        monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(plugins.ENV_VAR, value)
    plugins.reset()


def fake_dist(path: Path, dist: str, module: str, source: str, entry_name: str, version="0.1"):
    """An installed-looking distribution: module file plus dist-info with a mim_lightning entry point."""
    (path / f"{module}.py").write_text(source)
    info = path / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[mim_lightning]\n{entry_name} = {module}\n")


def registry_with(*objects):
    """A registry built from the built-ins plus in-memory plugin objects, on a fresh PluginManager."""
    manager = plugins.make_plugin_manager()
    for i, obj in enumerate(objects):
        manager.register(obj, name=getattr(obj, "name", f"mem{i}"))
    return plugins.build_registry(manager)


def plugin(name, **hooks):
    """An in-memory plugin object named ``name`` with the given hook implementations."""
    return SimpleNamespace(name=name, **{hook: hookimpl(fn) for hook, fn in hooks.items()})


# --- the example plugin, installed with pip ---------------------------------------------------------

@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory):
    """pip-install plugins/mim-example-plugin into a temporary target on sys.path (not the venv itself,
    so concurrent test runs and the developer's environment are left alone)."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("pip is not available")
    source = tmp_path_factory.mktemp("src") / "mim-example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                    "--target", str(target), str(source)], check=True, capture_output=True)
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("mim_example_plugin", None)


def test_example_plugin_is_listed(example_plugin, monkeypatch):
    use_plugins(monkeypatch, "example")
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    example = listing["example"]
    assert example == {"name": "example", "distribution": "mim-example-plugin", "version": "0.1.0",
                       "builtin": False, "entry_point": "example = mim_example_plugin",
                       "links": ["cubic_saddle"], "losses": ["fair"], "activations": ["u_tanh"], "error": None}
    builtins = [p for p in listing.values() if p["builtin"]]
    assert {p["name"] for p in builtins} == set(plugins.DEFAULT_PLUGINS)
    assert all(p["distribution"] == "mim-lightning" and p["error"] is None for p in builtins)
    assert "z1z2" in listing["mim_lightning.plugins.builtins.links"]["links"]
    text = run("plugins").stdout
    assert "example  (mim-example-plugin 0.1.0, entry point example = mim_example_plugin)" in text
    assert "mim_lightning.plugins.builtins.links  (built-in" in text


def test_example_plugin_is_loaded_when_the_variable_is_unset(example_plugin, monkeypatch):
    use_plugins(monkeypatch, None)
    assert "example" in {info.name for info in plugins.plugin_infos()}
    use_plugins(monkeypatch, "mim-example-plugin")  # a distribution name selects its entry points too
    assert "example" in {info.name for info in plugins.plugin_infos()}


def test_train_with_the_example_plugin(example_plugin, monkeypatch, tmp_path):
    use_plugins(monkeypatch, "example")
    result = run("train", "--out", tmp_path, *sets(TINY), *sets(EXAMPLE_SETS))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["data"]["link"] == "cubic_saddle"
    assert results["config"]["model"]["activation"] == "u_tanh"
    assert results["config"]["stage1"]["loss"] == "fair"


def test_the_example_plugins_link_makes_the_labels(example_plugin, monkeypatch):
    """The labels a run trains on come from the plugin's g(z) = z1^2 - z2^2 + z1 (z2^2 - 1) / 2 at
    z = U x: Hermite projections E[y He2(z1)] = 2, E[y z1 He2(z2)] = 1, E[y He2(z2)] = -2, E[y] = 0
    (each within 5 standard errors over D1), which no built-in link has together."""
    import torch

    from mim_lightning.config import load_config
    from mim_lightning.training.run import build

    use_plugins(monkeypatch, "example")
    cfg = load_config(None, [*TINY, *EXAMPLE_SETS, "data.d=16", "data.alpha=4000"])
    _, dm, _ = build(cfg)
    x, y = (t[0].double() for t in dm.tensors["d1"])
    z = x @ dm.U[0].double().T
    he2 = z * z - 1
    for feature, want in ((he2[:, 0], 2.0), (z[:, 0] * he2[:, 1], 1.0), (he2[:, 1], -2.0), (torch.ones_like(y), 0.0)):
        product = y * feature
        error = product.std() / len(y) ** 0.5
        assert abs(product.mean().item() - want) < 5 * error.item(), (want, product.mean().item(), error.item())


def test_example_plugin_satisfies_the_assumptions(example_plugin, monkeypatch):
    use_plugins(monkeypatch, "example")
    result = run("check", "--link", "cubic_saddle", "--loss", "fair", "--activation", "u_tanh", "--json")
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["checks"]
    assert [(c["assumption"], c["holds"]) for c in checks] == [(1, True), (2, True), (3, True), (5, True)]
    assert checks[0]["degree"] == 3


def test_example_plugin_is_not_loaded_by_default_in_tests(example_plugin, tmp_path):
    result = run("train", "--out", tmp_path, *sets(TINY), "--set", "data.link=cubic_saddle")
    assert result.exit_code == 1
    assert "unknown link 'cubic_saddle'" in result.output


# --- MIM_LIGHTNING_PLUGINS ----------------------------------------------------------------------------

class FakeEntryPoint:
    def __init__(self, name, obj, dist="mim-fake"):
        self.name, self.value, self._obj = name, f"{name}_module", obj
        self.dist = SimpleNamespace(metadata={"Name": dist}, version="1.0")

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


def entry_points():
    links = lambda name: plugin(name, register_links=lambda register: register(f"{name}_link", lambda z: z[..., 0]))  # noqa: E731
    return [FakeEntryPoint("alpha", links("alpha"), "mim-alpha"), FakeEntryPoint("beta", links("beta"), "mim-beta")]


@pytest.mark.parametrize("value, loaded, missing", [
    (None, ["alpha", "beta"], []),
    ("", [], []),
    ("beta", ["beta"], []),
    (" alpha , nope ", ["alpha"], ["nope"]),
    ("mim-beta", ["beta"], []),
])
def test_plugin_selection_variable(value, loaded, missing):
    manager = plugins.make_plugin_manager()
    infos = plugins.load_entrypoints(manager, value, entry_points())
    assert [i.name for i in infos if i.loaded] == loaded
    assert [i.name for i in infos if not i.loaded] == missing
    for info in infos:
        if not info.loaded:
            assert "not installed" in info.error and "alpha, beta" in info.error
    registry = plugins.build_registry(manager, infos)
    assert {f"{n}_link" for n in loaded} <= set(registry.names("link"))
    assert not {f"{n}_link" for n in {"alpha", "beta"} - set(loaded)} & set(registry.names("link"))


def test_entry_points_are_loaded_once(monkeypatch, tmp_path):
    fake_dist(tmp_path, "mim-counting", "mim_counting", "import builtins\nbuiltins.MIM_COUNT = getattr(builtins, 'MIM_COUNT', 0) + 1\n", "counting")
    monkeypatch.syspath_prepend(str(tmp_path))
    use_plugins(monkeypatch, "counting")
    plugins.get_registry()
    plugins.get_registry.cache_clear()
    plugins.get_registry()
    import builtins
    assert builtins.MIM_COUNT == 1
    del builtins.MIM_COUNT


# --- registration errors ------------------------------------------------------------------------------

def test_duplicate_name_names_both_plugins(capsys):
    first = plugin("first", register_links=lambda register: register("twin", lambda z: z[..., 0]))
    second = plugin("second", register_links=lambda register: register("twin", lambda z: z[..., 1]))
    registry = registry_with(first, second)
    error = registry.plugins["second"].error
    assert "link 'twin' is already registered by plugin 'first'" in error
    assert registry.plugins["first"].error is None
    assert registry.get("link", "twin").plugin == "first"  # the first one wins ...
    assert "plugin 'second'" in capsys.readouterr().err  # ... with a warning naming the loser


def test_duplicate_of_a_builtin_is_blamed_on_the_plugin():
    shadow = plugin("shadow", register_links=lambda register: register("z1z2", lambda z: z[..., 0]))
    registry = registry_with(shadow)
    assert "already registered by plugin 'mim_lightning.plugins.builtins.links' (built-in)" in registry.plugins["shadow"].error
    assert registry.plugins["mim_lightning.plugins.builtins.links"].error is None


def test_non_callable_is_rejected():
    registry = registry_with(plugin("bad", register_losses=lambda register: register("nope", 3.0)))
    assert "loss 'nope' is not callable (got float)" in registry.plugins["bad"].error
    assert "nope" not in registry.names("loss")


@pytest.mark.parametrize("hook, fn, expected", [
    ("register_links", lambda z, w: z, "link 'x' must take 1 argument(s) (z)"),
    ("register_losses", lambda t: t, "loss 'x' must take 2 argument(s) (t, y)"),
    ("register_activations", lambda: 0, "activation 'x' must take 1 argument(s) (u)"),
])
def test_wrong_arity_is_rejected(hook, fn, expected):
    registry = registry_with(plugin("bad", **{hook: lambda register: register("x", fn)}))
    assert expected in registry.plugins["bad"].error


@pytest.mark.parametrize("metadata, expected", [
    ({"min_r": 0}, "min_r must be an integer >= 1"),
    ({"degree": "two"}, "degree must be an integer >= 0 or None"),
])
def test_bad_metadata_is_rejected(metadata, expected):
    registry = registry_with(plugin("bad", register_links=lambda register: register("x", lambda z: z, **metadata)))
    assert expected in registry.plugins["bad"].error


def test_metadata_is_accepted_and_stored():
    registry = registry_with(plugin("ok", register_links=lambda register: register("x", lambda z: z[..., 2], min_r=3, degree=1)))
    assert registry.plugins["ok"].error is None
    assert registry.get("link", "x").metadata == {"min_r": 3, "degree": 1}


def test_a_hook_that_raises_keeps_what_it_registered_and_spares_the_others():
    def half(register):
        register("first_half", lambda z: z[..., 0])
        raise RuntimeError("oops\nsecond line")

    good = plugin("good", register_activations=lambda register: register("good_act", lambda u: u * u))
    registry = registry_with(plugin("flaky", register_links=half), good)
    assert registry.plugins["flaky"].error == "register_links raised RuntimeError: oops second line"
    assert "first_half" in registry.names("link")
    assert "good_act" in registry.names("activation") and registry.plugins["good"].error is None


def test_misspelt_hook_and_bad_argument_name_are_reported():
    typo = plugin("typo", register_link=lambda register: None)
    wrong_arg = plugin("wrong", register_links=lambda reg: None)
    infos = plugins.load_entrypoints(plugins.make_plugin_manager(), None,
                                     [FakeEntryPoint("typo", typo), FakeEntryPoint("wrong", wrong_arg)])
    errors = {info.name: info.error for info in infos}
    assert "unknown hook(s) register_link" in errors["typo"]
    assert "could not be registered" in errors["wrong"] and "reg" in errors["wrong"]
    assert all("\n" not in e for e in errors.values())


# --- broken plugins don't break the CLI ---------------------------------------------------------------

@pytest.fixture
def broken_plugin(monkeypatch, tmp_path):
    fake_dist(tmp_path, "mim-broken", "mim_broken", "import a_module_that_does_not_exist\n", "broken", "0.3")
    fake_dist(tmp_path, "mim-fine", "mim_fine",
              "from mim_lightning import hookimpl\n\n@hookimpl\ndef register_activations(register):\n"
              "    register('fine_act', lambda u: u * u / 2)\n", "fine")
    monkeypatch.syspath_prepend(str(tmp_path))
    use_plugins(monkeypatch, "broken,fine")


def test_broken_plugin_is_reported_by_mim_plugins(broken_plugin):
    result = run("plugins", "--json")
    assert result.exit_code == 1  # the whole listing, then the failure in the exit status
    listing = {p["name"]: p for p in json.loads(result.stdout)}
    broken = listing["broken"]
    assert (broken["distribution"], broken["version"], broken["links"]) == ("mim-broken", "0.3", [])
    assert broken["error"] == "import failed: ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    assert listing["fine"]["activations"] == ["fine_act"] and listing["fine"]["error"] is None
    warning = [line for line in result.stderr.splitlines() if "broken" in line]
    assert warning == ["Warning: plugin 'broken' (entry point broken = mim_broken, mim-broken 0.3) is broken: "
                       "import failed: ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"]
    listing = run("plugins")
    assert "ERROR        import failed" in listing.stdout and listing.exit_code == 1


def test_mim_plugins_exits_0_when_every_plugin_loads(monkeypatch, tmp_path):
    fake_dist(tmp_path, "mim-fine", "mim_fine",
              "from mim_lightning import hookimpl\n\n@hookimpl\ndef register_activations(register):\n"
              "    register('fine_act', lambda u: u * u / 2)\n", "fine")
    monkeypatch.syspath_prepend(str(tmp_path))
    use_plugins(monkeypatch, "fine")
    assert run("plugins").exit_code == 0


@pytest.fixture
def rude_plugins(monkeypatch, tmp_path):
    """A plugin that ends the process at import, one that exits in a hook, and one that prints."""
    hook = "from mim_lightning import hookimpl\n\n@hookimpl\ndef register_links(register):\n"
    fake_dist(tmp_path, "mim-quitter", "mim_quitter", "import os\nos._exit(0)\n", "quitter")
    fake_dist(tmp_path, "mim-hook-exit", "mim_hook_exit", hook + "    import sys; sys.exit(3)\n", "hook_exit")
    fake_dist(tmp_path, "mim-chatty", "mim_chatty", "print('hello from chatty')\n" + hook
              + "    print('registering')\n    register('chatty_link', lambda z: z[..., 0] ** 2 - 1)\n", "chatty")
    monkeypatch.syspath_prepend(str(tmp_path))
    use_plugins(monkeypatch, "quitter,hook_exit,chatty")


def test_plugins_can_neither_end_the_process_nor_garble_stdout(rude_plugins):
    import os

    exit_before = os._exit
    result = run("plugins", "--json")
    assert os._exit is exit_before and sys.exit.__module__ == "sys"  # restored
    assert result.exit_code == 1  # listed, with the failures in the exit status
    listing = {p["name"]: p for p in json.loads(result.stdout)}  # stdout is pure JSON
    assert listing["quitter"]["error"] == "import failed: PluginExit: tried to exit the process (exit code 0)"
    assert listing["hook_exit"]["error"] == "register_links raised PluginExit: tried to exit the process (exit code 3)"
    assert listing["chatty"]["links"] == ["chatty_link"] and listing["chatty"]["error"] is None
    assert "hello from chatty" in result.stderr and "registering" in result.stderr


def test_a_rude_plugin_does_not_stop_the_others(rude_plugins, tmp_path):
    result = run("check", "--link", "chatty_link", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checks"][0]["component"] == "chatty_link"


def test_broken_plugin_does_not_stop_training(broken_plugin, tmp_path):
    result = run("train", "--out", tmp_path / "run", *sets(TINY), "--set", "model.activation=fine_act")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "plugin 'broken'" in line]
    assert len(warnings) == 1 and "import failed" in warnings[0]   # said once, although not needed
    assert (tmp_path / "run" / "results.json").exists()


def test_unknown_component_mentions_the_broken_plugin(broken_plugin, tmp_path):
    result = run("train", "--out", tmp_path / "run", *sets(TINY), "--set", "data.link=from_broken")
    assert result.exit_code == 1
    assert "Warning: plugin 'broken'" in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: data.link: unknown link 'from_broken'") and "1 plugin(s) failed to load" in error
    assert "Traceback" not in result.output

