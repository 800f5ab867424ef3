"""An installed wheel works like the checkout.

The wheel is built from a copy of the source tree (``pip wheel --no-deps``: setuptools
would otherwise leave ``build/`` in the checkout, and stale files there end up in later
wheels), installed with ``--no-deps`` into a fresh virtualenv under ``tmp_path``, and run
from ``tmp_path``. The dependencies come from this test run's own environment through a
``.pth`` line naming its site-packages: a plain path entry, so the ``.pth`` files in there
(the editable install's finder, which maps ``ingest`` & co. to the checkout) are not run.
Every test checks that the code it runs is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from pathlib import Path

import pytest
from support import ROOT, Server, clickhouse_rows, event, request

from storage.migrations import discover

PACKAGES = ("ingest", "auth", "storage", "migrations")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "sluice"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "build", "*.egg-info", "__pycache__", ".*_cache", "results"
        ),
    )
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), "."],
        cwd=src, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = dist.glob("sluice-*.whl")
    return built


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv holding the wheel; returns its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    site = Path(run_python(venv, "import sysconfig; print(sysconfig.get_paths()['purelib'])"))
    (site / "_sluice_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return site


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything pointing Python at the checkout (an empty
    ``PYTHONPATH`` counts as unset, and still overrides the value ``Server`` inherits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "PYTHONPATH": "", "LOG_FORMAT": "json", **extra}


def run_python(venv: Path, code: str) -> str:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], cwd=venv.parent, env=clean_env(),
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return proc.stdout.strip()


def test_the_wheel_ships_every_migration_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped <= names, shipped - names
    assert {"migrations/postgres/0001_initial.sql"} <= shipped  # the glob saw the files


def test_the_wheel_ships_the_dashboard(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "ingest" / "dashboard_static").iterdir()
        if p.is_file()
    }
    assert {"ingest/dashboard_static/index.html", "ingest/dashboard_static/dashboard.js"} <= shipped
    assert shipped <= names, shipped - names


def test_installed_wheel_migrates_and_serves(
    wheel: Path, tmp_path: Path, database_url: str
) -> None:
    venv = tmp_path / "venv"
    site = install(wheel, venv)
    where = run_python(venv, "import ingest, auth, storage, migrations, storage.migrations as m;"
                       "print(ingest.__file__, auth.__file__, storage.__file__, "
                       "migrations.__file__, m.MIGRATIONS_DIR)")  # fmt: skip
    assert where.split() == [
        *(str(site / name / "__init__.py") for name in PACKAGES),
        str((site / "migrations").resolve()),
    ]
    data = tmp_path / "data"
    env = clean_env(DATABASE_URL=database_url, DATA_DIR=str(data))

    def sluice(*args: str) -> dict:
        proc = subprocess.run(
            [str(venv / "bin" / "sluice"), *args, "--json"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert sluice("migrate", "up") == {
        "postgres": {"applied": [m.version for m in discover("postgres")]},
        "clickhouse": {"applied": [m.version for m in discover("clickhouse")]},
    }
    created = sluice("projects", "create", "x")

    server = Server(data, env, command=[str(venv / "bin" / "sluice")], cwd=tmp_path)
    try:
        server.wait_ready()
        event_id = str(uuid.uuid4())
        reply = server.post({"token": created["token"], "events": [event(uuid=event_id)]})
        assert (reply.status, reply.json()) == (202, {"accepted": 1, "rejected": 0, "errors": []})
        page = request(server.url + "/dashboard/dashboard.js")  # the wheel's own copy
        assert page.body == (site / "ingest" / "dashboard_static" / "dashboard.js").read_bytes()
        assert server.stop() == 0
    finally:
        server.kill()
    rows = clickhouse_rows(
        data / "clickhouse",
        "SELECT toString(event_id), toString(project_id), event FROM events_raw_v1",
    )
    assert rows == [(event_id, created["project_id"], "page_view")]


@pytest.mark.parametrize(
    ("removed", "store"), [("migrations", "postgres"), ("migrations/clickhouse", "clickhouse")]
)
def test_an_install_without_its_migrations_stops_serve_and_migrate(
    wheel: Path, tmp_path: Path, removed: str, store: str
) -> None:
    site = install(wheel, tmp_path / "venv")
    shutil.rmtree(site / removed)  # as if the wheel had been built without them
    data = tmp_path / "data"
    env = clean_env(DATA_DIR=str(data))
    expected = (
        f"sluice: no {store} migrations in {(site / 'migrations').resolve() / store}: this "
        "Sluice installation is incomplete (they ship in its wheel as package data); "
        "reinstall Sluice\n"
    )
    for args in (["migrate", "up"], ["migrate", "dry-run"], ["serve"], ["projects", "create", "x"]):
        proc = subprocess.run(
            [str(tmp_path / "venv" / "bin" / "sluice"), *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert (proc.returncode, proc.stderr, proc.stdout) == (1, expected, ""), args
    assert not data.exists()  # stopped before any store was started
