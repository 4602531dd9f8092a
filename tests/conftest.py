"""Shared fixtures: the real BreakHis samples and manifest, and a synthetic learnable data set."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "breakhis"
# The bundled whole-field model (the small CNN that was models/default before the field recipe): one tile
# is one 200X field (700x460 px at 0.5 um/px), the scale the slide machinery's tests count tiles in.
WHOLE_FIELD_MODEL = REPO / "models" / "small-cnn"


@pytest.fixture(scope="session", autouse=True)
def feature_cache_in_a_temporary_folder(tmp_path_factory):
    """Fast mode's on-disk feature cache never touches the user's ~/.cache during tests."""
    os.environ["BREAKHIS_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("feature_cache"))


@pytest.fixture(scope="session", autouse=True)
def one_jax_compilation_cache_for_the_run(tmp_path_factory):
    """The suite's JAX child processes (core.testing.jax_process, bench/gpu_train.py --smoke) compiled the same
    small XLA programs again, each: one GAN's 62 weight initialisers took 11-20 s of compiling alone (cProfile).
    They share JAX's persistent cache for this run instead (no minimum compile time, so the small programs are
    kept too). One cache per worker: JAX locks its cache files only with the optional filelock package, so two
    workers could read an entry the other is writing. Measured on 2 idle cores: the R1 test's script 46 s cold,
    17.6 s with the cache warm; the GAN learning script 42 s cold, 33 s after the R1 one."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-compilation-cache"))
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


@pytest.fixture(scope="session", autouse=True)
def runs_folder_outside_the_checkout(tmp_path_factory):
    """Nothing a test runs lands in the checkout's runs/ (a run claimed outside the runs folder leaves its path
    there: core.paths.claimed_folders); tests that need a runs folder set their own."""
    os.environ["BREAKHIS_RUNS_DIR"] = str(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The 22 real BreakHis images (shared/ in CI, or the bundled copies in assets/)."""
    for candidate in (SHARED / "samples", REPO / "assets" / "samples"):
        if candidate.is_dir():
            return candidate
    pytest.fail("No BreakHis samples found in ../shared/breakhis/samples or assets/samples")


@pytest.fixture(scope="session")
def manifest_path() -> Path:
    for candidate in (SHARED / "manifest.csv", REPO / "assets" / "breakhis_manifest.csv"):
        if candidate.is_file():
            return candidate
    pytest.fail("No BreakHis manifest found")


@pytest.fixture(scope="session")
def synthetic_breakhis(tmp_path_factory) -> Path:
    """96 synthetic images: 8 subtypes x 3 cases x 4 images, BreakHis layout and names."""
    from core.testing.synthetic import write_synthetic_breakhis

    return write_synthetic_breakhis(tmp_path_factory.mktemp("synthetic_breakhis"))


# ---------------------------------------------------------------- the store, on SQLite and PostgreSQL

@pytest.fixture(scope="session")
def postgres_server():
    """One throw-away PostgreSQL server for the whole run (tests/store_servers.py)."""
    from tests.store_servers import PostgresServer, postgres_bin

    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql; .ci/run does)")
    server = PostgresServer(bin_dir)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """An empty database of each kind: every store test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'breakhis.db'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture
def store(store_url):
    from core.store.audit import Store

    opened = Store.open(store_url)
    yield opened
    opened.close()
