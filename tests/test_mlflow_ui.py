"""The MLflow UI as a user sees it: a real `mlflow server` on a store that the project's own ladder and trainer
filled, opened in headless Chromium (Debian's, driven by Playwright). The ladder's grouping run holds its
training runs; a run's page and its metric charts show the plan's predictions beside the measurements.

Each view checked is saved as a screenshot under pytest's temporary folder (`mlflow-ui-screenshots0/`); a
failing check names its screenshot. Where Playwright or a Chromium is missing, the tests skip and say which.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (it comes with the "
                                 "test extras: pip install -c constraints.txt -e '.[test]')")
expect = playwright.expect

EXPERIMENT = "demo-ladder"
#: The two smallest ladder points (one per width) and the held-out run: three runs nested under "ladder"
TRAINED = ("h16-l1-t2k", "h24-l1-t3k", "h48-l1-t28k-heldout")
HELD_OUT = TRAINED[-1]
#: The held-out run's predicted eval loss. `planner ladder predict` writes it after all nine points have
#: trained (too long here; the fit is tested in test_ladder.py and test_demo.py): this stand-in reaches
#: the trainer the same way, as the run's `plan.loss_predicted`, and is logged as `loss_predicted`.
PREDICTED_LOSS = 2.9

# The trainer, in one fresh interpreter for the three runs (torch and MLflow imported once, not three times).
TRAIN = "import json, sys\nfrom pretrain.train import main\nsys.exit(max(main(argv) for argv in json.loads(sys.argv[1])))"


def _chromium() -> str:
    """Debian's Chromium (`make test` installs it where apt can), else the one `playwright install` fetched."""
    system = shutil.which("chromium") or shutil.which("chromium-browser")
    if system:
        return system
    with playwright.sync_playwright() as p:
        bundled = p.chromium.executable_path
    if not Path(bundled).is_file():
        pytest.skip("no Chromium: neither Debian's `chromium` (make test installs it with apt, as root) nor "
                    "Playwright's download (`playwright install chromium`) is on this machine")
    return bundled


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    with playwright.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=executable)
        except Exception as exc:
            pytest.skip(f"Chromium at {executable} does not start: {str(exc).splitlines()[0][:200]}")
        yield chromium
        chromium.close()


def _has_a_run(db: Path) -> bool:
    """Whether the trainer has created MLflow's tables in the SQLite store and put a run in it."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_ui(browser, tmp_path_factory):
    """The URL of an `mlflow server` on a demo-style store: `planner ladder`'s run configs for a small ladder
    on the dense Markov source, three of them trained by the trainer with tracking on (nested under
    "ladder", as the demo's are). The server starts as soon as the first run is in the store (MLflow's
    tables exist then), while the trainer goes on; it is stopped, with its process group, at the end.
    Set up after `browser`, so nothing is trained where the tests skip."""
    from planner.laws import ladder
    from pretrain.data.synthetic import write_dense_shards

    root = tmp_path_factory.mktemp("mlflow-ui")
    write_dense_shards(root / "data/train", vocab=64, seq_len=64, rows=512)
    write_dense_shards(root / "data/eval", vocab=64, seq_len=64, rows=64, seed=9)
    design = ladder.design(widths=[16, 24, 32], holdout_width=48, layers=1, vocab=64, seq_len=64, batch_tokens=128,
                           ladder_flops=1.5e10, target_flops=1e10, multiples=[1, 2, 4])
    ladder.write(design, str(root / "ladder"), train=str(root / "data/train"), eval_data=str(root / "data/eval"),
                 micro_batch=2, experiment=EXPERIMENT, bootstrap=10, python=sys.executable)
    runs = [["--config", str(root / "ladder/points" / name / "run.yaml")] for name in TRAINED]
    runs[-1].append(f"plan.loss_predicted={PREDICTED_LOSS}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log, server_log = (root / "train.log").open("w"), (root / "server.log").open("w")
    trainer = subprocess.Popen([sys.executable, "-c", TRAIN, json.dumps(runs)], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    server = None
    try:
        db = root / "ladder/mlflow.db"
        while trainer.poll() is None and not _has_a_run(db):
            time.sleep(0.2)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=root, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        assert trainer.wait(timeout=600) == 0, (root / "train.log").read_text()[-3000:]
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _answers(url):
            assert server.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        yield url
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()
        server_log.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlflow-ui-screenshots")
    print(f"\nMLflow UI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def context(browser, mlflow_ui):
    """One browser context for the module, so MLflow's scripts are fetched once and then come from its cache.
    MLflow keeps what a user chose (the view, an unfolded run) in local storage: emptied as each test opens the
    UI, so every test starts as a first visit."""
    context = browser.new_context(viewport={"width": 1800, "height": 1100})
    context.set_default_timeout(30_000)  # MLflow's pages on a busy 2-core machine: seconds, not milliseconds
    expect.set_options(timeout=30_000)
    context.add_init_script("window.localStorage.clear(); window.sessionStorage.clear();")
    yield context
    context.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    yield page
    page.close()


@contextmanager
def looking_at(page, screenshots: Path, name: str):
    """Checks made on one view of the page; the view is saved as `name`.png when they pass and when they fail,
    and a failure names the file."""
    path = screenshots / f"{name}.png"
    try:
        yield
    except AssertionError as exc:
        page.screenshot(path=path)
        raise AssertionError(f"{exc}\nthe page: {path}") from exc
    page.screenshot(path=path)


def open_experiment(page, url: str):
    """As a user does: the experiments list, the model-training view, the demo's experiment."""
    page.goto(url + "/#/experiments")
    page.get_by_text("Model training", exact=True).click()  # MLflow 3 opens on its GenAI view
    page.get_by_role("link", name=EXPERIMENT, exact=True).click()


def ladder_run(page):
    return page.get_by_role("link", name="ladder", exact=True)


def expand_ladder(page):
    """Open the "ladder" grouping run's row (its expander is the one button in its name's cell)."""
    page.get_by_role("gridcell").filter(has=ladder_run(page)).get_by_role("button").click()


def open_held_out_run(page, url: str):
    open_experiment(page, url)
    expand_ladder(page)
    page.get_by_role("link", name=HELD_OUT, exact=True).click()
    page.get_by_role("heading", name=HELD_OUT).wait_for()


def test_the_experiment_shows_one_ladder_run_with_the_training_runs_folded_under_it(page, mlflow_ui, screenshots):
    open_experiment(page, mlflow_ui)
    with looking_at(page, screenshots, "1-experiment-ladder-folded"):
        expect(ladder_run(page)).to_have_count(1)
        expect(page.get_by_text(f"{len(TRAINED) + 1} matching runs")).to_be_visible()
        for name in TRAINED:
            expect(page.get_by_role("link", name=name, exact=True)).to_have_count(0)
    expand_ladder(page)
    with looking_at(page, screenshots, "2-experiment-ladder-unfolded"):
        for name in TRAINED:
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()


def test_a_training_runs_page_links_to_the_ladder_run_as_its_parent(page, mlflow_ui, screenshots):
    open_experiment(page, mlflow_ui)
    ladder_page = ladder_run(page).get_attribute("href")  # #/experiments/<id>/runs/<the ladder run's id>
    expand_ladder(page)
    page.get_by_role("link", name=HELD_OUT, exact=True).click()
    with looking_at(page, screenshots, "3-held-out-run-overview"):
        expect(page.get_by_role("heading", name=HELD_OUT)).to_be_visible()
        expect(page.get_by_text("Parent run", exact=True)).to_be_visible()
        expect(ladder_run(page)).to_have_attribute("href", ladder_page)


#: what the plan predicted and what the run measured, logged side by side by the trainer
PREDICTED_AND_MEASURED = (("loss_predicted", "eval_loss"), ("model_state_bytes_predicted", "model_state_bytes_measured"),
                          ("activation_bytes_predicted", "activation_bytes_measured"))


def test_a_runs_metrics_list_each_prediction_beside_its_measurement(page, mlflow_ui, screenshots):
    open_held_out_run(page, mlflow_ui)
    search = page.get_by_placeholder("Search metrics")
    for predicted, measured in PREDICTED_AND_MEASURED:
        search.fill(predicted.removesuffix("_predicted"))
        with looking_at(page, screenshots, f"4-held-out-run-metrics-{predicted}"):
            for metric in (predicted, measured):
                expect(page.get_by_role("link", name=metric, exact=True)).to_be_visible()
            if predicted == "loss_predicted":  # the value the run was given
                row = page.get_by_role("row").filter(has=page.get_by_role("link", name=predicted, exact=True))
                expect(row).to_contain_text(f"{PREDICTED_LOSS:g}")


def test_a_runs_metric_charts_plot_the_predicted_and_the_measured_loss(page, mlflow_ui, screenshots):
    open_held_out_run(page, mlflow_ui)
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_placeholder("Search metric charts").fill("loss")
    with looking_at(page, screenshots, "5-held-out-run-loss-charts"):
        for metric in ("loss_predicted", "eval_loss", "loss"):
            card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                has=page.get_by_role("heading", name=metric, exact=True))
            expect(card.get_by_text(f"{HELD_OUT} ({metric})", exact=True)).to_be_visible()  # the run's line
            expect(card.get_by_text("Step", exact=True)).to_be_visible()  # the plot drawn, its x axis
        expect(page.get_by_role("heading", name="grad_norm", exact=True)).to_have_count(0)  # the search filtered
