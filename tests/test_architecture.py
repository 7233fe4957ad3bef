"""The house: no import cycles and no arrow up the layers of docs/architecture.md, lazy imports
included; the deprecated ``lightseg.engine`` names still resolve, with a warning."""

import textwrap
import warnings

import pytest

from lightseg.tools import imports


def test_lightseg_has_no_import_cycle_and_no_upward_import():
    assert imports.problems() == []


def test_the_checker_finds_a_lazy_cycle_and_an_upward_arrow(tmp_path):
    pkg = tmp_path / "lightseg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "meta.py").write_text("from lightseg.models import build\n")  # facts -> models: up
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "build.py").write_text("from lightseg.models.registry import get_entry\n")
    (pkg / "models" / "registry.py").write_text(
        textwrap.dedent(
            """
            def get_entry():
                from lightseg.models.build import create_model  # lazy, still a cycle
            """
        )
    )
    found = imports.problems(pkg)
    assert "import cycle: lightseg.models.build <-> lightseg.models.registry" in found
    assert any(p.startswith("lightseg.meta (facts) imports lightseg.models.build") for p in found)
    assert len(found) == 2


def test_training_and_deploy_never_import_each_other():
    graph = imports.import_graph()
    for src, targets in graph.items():
        for a, b in (("lightseg.training", "lightseg.deploy"), ("lightseg.deploy", "lightseg.training")):
            if src.startswith(a):
                assert not [t for t in targets if t.startswith(b)], src


def test_old_engine_names_resolve_with_a_deprecation_warning():
    from lightseg.deploy.runners import build_runner
    from lightseg.training import train

    with pytest.warns(DeprecationWarning, match="lightseg.deploy.runners"):
        from lightseg.engine.backends import build_runner as old_build_runner
    with pytest.warns(DeprecationWarning, match="lightseg.training.loop"):
        from lightseg.engine.train import train as old_train
    assert old_build_runner is build_runner and old_train is train
    with warnings.catch_warnings(), pytest.raises(ImportError):
        warnings.simplefilter("ignore")
        from lightseg.engine.backends import no_such_name  # noqa: F401
