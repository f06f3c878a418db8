"""FLA source selection (pip vs local clone), the compatibility guard and doctor, all without a GPU."""

import subprocess
import sys
import textwrap

import pytest

from hybridlm.ops.fla_compat import fla_compat_problem, parse_version


def make_fake_clone(root, version="9.9.9", git=False):
    (root / "fla").mkdir(parents=True)
    (root / "fla" / "__init__.py").write_text(f"__version__ = '{version}'\nMARK = 'fake clone'\n")
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        subprocess.run(["git", "-C", str(root), "-c", "user.email=a@b", "-c", "user.name=n", "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(root), "-c", "user.email=a@b", "-c", "user.name=n", "commit", "-qm", "x"],
                       check=True)
    return root


def run_isolated(code: str, env_path: str | None = None) -> subprocess.CompletedProcess:
    """Source selection changes sys.path and sys.modules: test it in a fresh interpreter."""
    import os

    env = dict(os.environ)
    env.pop("HYBRIDLM_FLA_PATH", None)
    if env_path:
        env["HYBRIDLM_FLA_PATH"] = env_path
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


def test_local_clone_goes_first_and_is_recorded_with_git_state(tmp_path):
    clone = make_fake_clone(tmp_path / "flash-linear-attention", git=True)
    (clone / "fla" / "edited.py").write_text("# uncommitted\n")
    result = run_isolated(f"""
        import json
        from hybridlm.fla_source import activate_fla_source
        info = activate_fla_source({str(clone)!r})
        import fla
        print(json.dumps(info)); print(fla.MARK)
    """)
    assert result.returncode == 0, result.stderr
    import json

    info = json.loads(result.stdout.splitlines()[0])
    assert info["source"] == "local_clone" and info["version"] == "9.9.9"
    assert info["path"] == str((clone / "fla").resolve())
    assert len(info["commit"]) == 40 and info["dirty"] is True
    assert result.stdout.splitlines()[1] == "fake clone"


def test_environment_variable_selects_the_clone(tmp_path):
    clone = make_fake_clone(tmp_path / "clone")
    result = run_isolated("""
        from hybridlm.fla_source import activate_fla_source
        print(activate_fla_source(None)["source"])
    """, env_path=str(clone))
    assert result.stdout.strip() == "local_clone", result.stderr


def test_path_without_fla_package_fails_clearly(tmp_path):
    result = run_isolated(f"""
        from hybridlm.fla_source import activate_fla_source
        activate_fla_source({str(tmp_path)!r})
    """)
    assert result.returncode != 0 and "holds no `fla` package" in result.stderr


def test_fla_already_imported_elsewhere_fails_clearly(tmp_path):
    first = make_fake_clone(tmp_path / "first")
    second = make_fake_clone(tmp_path / "second")
    result = run_isolated(f"""
        import sys
        sys.path.insert(0, {str(first)!r})
        import fla
        from hybridlm.fla_source import activate_fla_source
        activate_fla_source({str(second)!r})
    """)
    assert result.returncode != 0 and "already imported from" in result.stderr


def test_pip_install_is_recognised_by_its_metadata():
    pytest.importorskip("fla")
    result = run_isolated("""
        from hybridlm.fla_source import fla_info
        info = fla_info(); print(info["source"], info["version"])
    """)
    assert result.stdout.split() == ["pip", "0.6.0"], result.stderr


def test_train_records_the_clone_in_results(tmp_path):
    """The CLI flag reaches results.json (fake clone; CPU kernels)."""
    clone = make_fake_clone(tmp_path / "clone", version="1.2.3")
    result = run_isolated(f"""
        import json
        from hybridlm.cli import main
        rc = main(["train", "--preset", "tiny", "--set", "train.max_steps=2", "--set", "train.eval_interval=2",
                   "--fla-path", {str(clone)!r}, "--out", {str(tmp_path / 'run')!r}, "--no-progress"])
        print(json.dumps(json.load(open({str(tmp_path / 'run' / 'results.json')!r}))["environment"]["fla"]))
    """)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    fla = json.loads(result.stdout.splitlines()[-1])
    assert fla["source"] == "local_clone" and fla["version"] == "1.2.3"


@pytest.mark.parametrize("fla, triton, cap, tilelang, bad", [
    ("0.6.0", "3.6.0", (9, 0), False, True),      # the known-bad combination
    ("0.6.0", "3.6.0", (9, 0), True, False),      # tilelang routes the bad kernel around Triton
    ("0.6.0", "3.7.1", (9, 0), False, False),     # fixed Triton
    ("0.6.0", "3.3.1", (9, 0), False, False),     # before the regression
    ("0.6.0", "3.6.0", (8, 0), False, False),     # not Hopper
    ("0.6.0", None, (9, 0), True, True),          # no triton at all
    (None, "3.6.0", (9, 0), True, True),          # no FLA
])
def test_compatibility_guard(fla, triton, cap, tilelang, bad):
    problem = fla_compat_problem(fla, triton, cap, tilelang)
    assert (problem is not None) == bad
    if fla == "0.6.0" and triton == "3.6.0" and bad:
        assert "pip install tilelang" in problem and "3.7.1" in problem


def test_version_parsing():
    assert parse_version("3.6.0+git9f0c") == (3, 6, 0)
    assert parse_version("3.7") == (3, 7, 0)
    assert parse_version(None) == ()


def test_auto_falls_back_with_warning_and_fla_stops(monkeypatch):
    import torch

    from hybridlm.errors import BackendError
    from hybridlm.ops import gdn_fla
    from hybridlm.ops.gated_delta_rule import resolve_backend

    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (False, "FLA 0.6.0 refuses ... install tilelang"))
    import importlib

    module = importlib.import_module("hybridlm.ops.gated_delta_rule")
    monkeypatch.setattr(module, "fla_usable", gdn_fla.fla_usable)
    with pytest.warns(UserWarning, match="install tilelang"):
        assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(BackendError, match="install tilelang"):
        resolve_backend("fla", torch.device("cuda"))
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_doctor_output(capsys):
    from hybridlm.doctor import print_doctor

    print_doctor()
    out = capsys.readouterr().out
    for key in ("python", "torch", "cuda", "gpu", "triton", "fla", "tilelang", "kernels (auto)"):
        assert any(line.startswith(key) for line in out.splitlines()), key
