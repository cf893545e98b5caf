"""What a new user meets first: every mistake is one line and exit 2 (no traceback), Ctrl-C
is one line and exit 130, output that tells the truth, `demo` that reuses its input, help
that shows defaults. The CLI runs as a real process, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import sn5dask_cli

AOI = "AOI_99_Synthetic"


def cli(*args, timeout: float = 180, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> tuple[int, str]:
    process = sn5dask_cli(*args, env=env, cwd=cwd)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def assert_one_line_exit_2(code: int, output: str, *words: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output and "Value error" not in output and "Field required" not in output
    for word in words:
        assert word in output, (word, output)


@pytest.mark.parametrize("args, words", [
    (["--buffer-m", "inf"], ["--buffer-m must be a finite number"]),
    (["--max-label-mb", "inf"], ["--max-label-mb must be a finite number"]),
    (["--buffer-m", "-1"], ["--buffer-m must be greater than 0"]),
    (["--percentiles", "2"], ["--percentiles takes exactly two values"]),
    (["--scheduler", "tcp//127.0.0.1:8786"], ["--scheduler", "is not a scheduler address"]),
    (["--scheduler", "tcp://host:99999"], ["is not a scheduler address"]),
    (["--workers", "0"], ["--workers must be at least 1"]),
])
def test_bad_numbers_and_addresses(small_aoi, tmp_path, args, words) -> None:
    code, output = cli("run", small_aoi.root, "--out", tmp_path / "out", *args, timeout=60)
    assert_one_line_exit_2(code, output, *words)


def test_out_that_is_a_file(small_aoi, tmp_path) -> None:
    target = tmp_path / "a_file"
    target.write_text("x")
    code, output = cli("run", small_aoi.root, "--out", target, timeout=60)
    assert_one_line_exit_2(code, output, "is a file, not a folder")
    code, output = cli("demo", target, timeout=60)
    assert_one_line_exit_2(code, output, "is a file, not a folder")


def test_demo_with_no_chips(tmp_path) -> None:
    code, output = cli("demo", tmp_path / "d", "--chips", "0", timeout=60)
    assert code == 2 and "--chips" in output and "Traceback" not in output


def test_band_beyond_the_chips_is_one_line_not_n_failed_chips(small_aoi, tmp_path) -> None:
    code, output = cli("run", small_aoi.root, "--out", tmp_path / "out", "--bands", "9,3,2",
                       "--workers", "1")
    lines = [line for line in output.splitlines() if line.strip() and "dask dashboard" not in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in output, output
    assert "--bands 9,3,2: the chips of AOI_99_Synthetic have 8 band(s)" in output
    assert "choose bands between 1 and 8" in output


def test_stats_errors_are_not_called_run_configuration(small_aoi) -> None:
    code, output = cli("stats", small_aoi.root, "--percentiles", "2", timeout=60)
    assert_one_line_exit_2(code, output, "--percentiles takes exactly two values")
    assert "run configuration" not in output


def test_a_second_run_on_a_locked_out_fails_before_any_cluster(small_aoi, tmp_path) -> None:
    from tests.procs import lock_held_elsewhere

    out = tmp_path / "out"
    with lock_held_elsewhere(str(out / AOI / ".sn5dask.lock")) as holder:
        code, output = cli("run", small_aoi.root, "--out", out, timeout=60)
    assert_one_line_exit_2(code, output, "another sn5dask run holds this output",
                           f"host {socket.gethostname()} pid {holder.pid}")
    assert "dask dashboard" not in output and "8787" not in output


#: distributed's `sync()` interrupted before the coroutine it waits for has started: its
#: event loop is kept busy while a real SIGINT reaches the main thread.
INTERRUPTED_SYNC = """
import os, signal, threading, time, asyncio
from sn5dask.cli import _setup_logging
_setup_logging(False)  # first, as the command does: distributed then logs through it
from distributed.utils import LoopRunner, sync
runner = LoopRunner(asynchronous=False)
runner.start()
runner.loop.add_callback(lambda: time.sleep(0.5))
threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
try:
    sync(runner.loop, asyncio.sleep, 5)
except KeyboardInterrupt:
    print("interrupted", flush=True)
time.sleep(1)
runner.stop()
"""


def test_ctrl_c_before_distributed_started_waiting_shows_no_traceback() -> None:
    # distributed then logs a NameError from its own `cancel` callback (CI saw it under
    # `sn5dask run`); the CLI's logging drops that record and nothing else.
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_SYNC], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.stdout.strip() == "interrupted", done.stderr
    assert "Traceback" not in done.stderr and "NameError" not in done.stderr, done.stderr


def test_ctrl_c_is_one_line_and_exit_130(tmp_path) -> None:
    from sn5dask.synthetic import make_synthetic_aoi

    aoi = make_synthetic_aoi(tmp_path / "in", n_chips=16, size=600, seed=4)
    process = sn5dask_cli("run", aoi.root, "--out", tmp_path / "out", "--workers", "2")
    rgb = tmp_path / "out" / AOI / "PS-RGB"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if rgb.exists() and len(list(rgb.glob("*.tif"))) >= 2:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: interrupted after ") and line.endswith(
        "of 16 chips; run the same command again to resume")


def test_rerun_with_nothing_to_do_and_demo_reuses_its_input(tmp_path) -> None:
    code, output = cli("demo", tmp_path, "--chips", "3", "--size", "64", "--workers", "1")
    assert code == 0 and "chips written in" in output, output
    marker = tmp_path / "input" / ".sn5dask-synthetic.json"
    stamp = marker.stat().st_mtime_ns
    code, output = cli("demo", tmp_path, "--chips", "3", "--size", "64", "--workers", "1")
    assert code == 0 and "reused (already there and intact)" in output, output
    assert "all 3 chips already done" in output and "0.00" not in output
    assert marker.stat().st_mtime_ns == stamp
    # A damaged input is written anew.
    image = next((tmp_path / "input" / AOI / "PS-MS").glob("*.tif"))
    image.write_bytes(image.read_bytes()[:1000])
    code, output = cli("demo", tmp_path, "--chips", "3", "--size", "64", "--workers", "1")
    assert code == 0 and "chips written in" in output, output


def test_progress_counts_failed_chips_as_the_table_does(small_aoi, tmp_path) -> None:
    root = tmp_path / "in"
    shutil.copytree(small_aoi.root, root)
    (root / AOI / "PS-MS" / f"SN5_roads_train_{AOI}_PS-MS_chip2.tif").write_bytes(b"not a tiff")
    code, output = cli("run", root, "--out", tmp_path / "out", "--workers", "1", "--formats", "geotiff")
    assert code == 1, output
    assert "6/6 1 failed" in " ".join(output.split()), output


def test_help_shows_defaults_and_every_flag_has_help() -> None:
    code, output = cli("run", "--help", timeout=60)
    text = " ".join(output.split())
    assert code == 0 and "ROOT" in text and "required" in text
    for default in ("(5,3,2)", "(2,98)", "(deflate)", "(geotiff,zarr)", "(64)"):
        assert default in text, default
    import typer.main

    from sn5dask.cli import app

    for command in typer.main.get_command(app).commands.values():
        for parameter in command.params:
            assert getattr(parameter, "help", None), (command.name, parameter.name)


def test_dashboard_mistakes_are_one_line(tmp_path) -> None:
    code, output = cli("dashboard", tmp_path, "--scheduler", "tcp//127.0.0.1:8786", timeout=60)
    assert_one_line_exit_2(code, output, "--scheduler", "is not a scheduler address")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, output = cli("dashboard", tmp_path, "--port", port, timeout=120)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in output, output
    assert lines[-1].startswith(f"error: port {port}:") and "choose another with --port" in lines[-1]


def test_dashboard_port_taken_is_not_a_warning(small_aoi, tmp_path) -> None:
    """With 8787 taken (a notebook's cluster), the run serves its dashboard elsewhere and
    says where, without distributed's four-line UserWarning."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("0.0.0.0", 8787))
        holder.listen()
    except OSError:
        pass  # already taken by something else: the case is set up all the same
    try:
        code, output = cli("run", small_aoi.root, "--out", tmp_path / "out", "--formats", "geotiff",
                           "--workers", "1")
    finally:
        holder.close()
    assert code == 0, output
    assert "UserWarning" not in output and "already in use" not in output, output
    link = next(line for line in output.splitlines() if line.startswith("dask dashboard:"))
    assert ":8787/" not in link


def test_a_relative_out_resumes_and_validates_from_any_folder(tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code, output = cli("demo", "demo", "--chips", "3", "--size", "64", "--workers", "1", cwd=work)
    assert code == 0, output
    out = work / "demo" / "output" / AOI
    assert f"outputs in {out}: PS-RGB/" in output  # the AOI folder, where they are
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    assert len(list(out.glob("PS-RGB/*.tif"))) == 3
    # The same run again, with relative paths: nothing is made again.
    code, output = cli("run", "demo/input", "--out", "demo/output", "--workers", "1", cwd=work)
    assert code == 0 and "all 3 chips already done" in output, output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")} == written
    code, output = cli("demo", "demo", "--chips", "3", "--size", "64", "--workers", "1", cwd=work)
    assert code == 0 and "all 3 chips already done" in output, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["root"] == str(work / "demo" / "input")
    assert json.loads((out / "stats.json").read_text())["root"] == str(work / "demo" / "input")
    # validate reads the recorded sources from another folder
    code, output = cli("validate", "demo/output", cwd=work)
    assert code == 0 and ": OK" in output, output
    code, output = cli("validate", out.parent, cwd=tmp_path)
    assert code == 0 and ": OK" in output, output


def test_tilde_means_home_for_root_out_and_config(small_aoi, tmp_path) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(), work.mkdir()
    shutil.copytree(small_aoi.root, home / "data")
    env = {"HOME": str(home)}
    code, output = cli("run", "~/data", "--out=~/x", "--workers", "1", "--formats", "geotiff",
                       cwd=work, env=env)
    assert code == 0, output
    assert not (work / "~").exists()
    assert (home / "x" / "catalog.json").is_file()
    assert len(list((home / "x" / AOI / "PS-RGB").glob("*.tif"))) == 6
    assert f"manifest: {home / 'x' / AOI / 'manifest.json'}" in " ".join(output.split())
    code, output = cli("validate", "~/x", cwd=work, env=env)
    assert code == 0 and ": OK" in output, output
    (home / "run.yaml").write_text("root: ~/data\nout: ~/y\nformats: geotiff\nworkers: 1\n")
    code, output = cli("run", "--config", "~/run.yaml", cwd=work, env=env)
    assert code == 0, output
    assert (home / "y" / "catalog.json").is_file() and not (work / "~").exists()


def test_a_script_without_the_main_guard_is_one_clear_error(small_aoi, tmp_path) -> None:
    script = tmp_path / "prepare.py"
    script.write_text(
        "import sn5dask\n"
        f"sn5dask.run(sn5dask.RunConfig(root={str(small_aoi.root)!r}, out={str(tmp_path / 'o')!r}, workers=1))\n"
    )
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"sn5dask.errors.ConfigError: {script}, line 2: ") and last.endswith(
        'put the call under `if __name__ == "__main__":` (README: Python API)'), done.stderr
    assert done.stderr.count("Traceback") == 1 and "Nanny" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_run_from_a_script_leaves_its_environment_as_it_was(small_aoi, tmp_path) -> None:
    script = tmp_path / "prepare.py"
    script.write_text(
        "import json, os\n"
        "import rasterio  # sets GDAL's CA bundle variables when imported, as it always does\n"
        "import sn5dask\n"
        "if __name__ == '__main__':\n"
        "    before = dict(os.environ)\n"
        f"    summary = sn5dask.run(sn5dask.RunConfig(root={str(small_aoi.root)!r}, out='o', workers=1))\n"
        "    after = dict(os.environ)\n"
        "    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))\n"
        "    print(json.dumps({'changed': changed, 'failed': summary.failed}))\n"
    )
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"changed": [], "failed": 0}
    assert (tmp_path / "o" / AOI / "manifest.json").is_file()


def test_mistakes_found_after_discovery_are_one_line_and_leave_nothing(small_aoi, tmp_path) -> None:
    out = tmp_path / "out"
    code, output = cli("run", small_aoi.root, "--out", out, "--bands", "9,3,2", "--workers", "1")
    assert code == 2 and "Traceback" not in output, output  # after the dashboard link
    assert output.strip().splitlines()[-1].startswith("error: --bands 9,3,2: the chips of")
    assert not (out / AOI).exists()
    # distributed's connect timeout is dask config; shortened here
    code, output = cli("run", small_aoi.root, "--out", out, "--scheduler", "tcp://127.0.0.1:9",
                       env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert_one_line_exit_2(code, output, "--scheduler tcp://127.0.0.1:9: no scheduler answered")
    code, output = cli("run", "s3://bucket/in", "--out", out,
                       env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
                            "AWS_SECRET_ACCESS_KEY": "s", "AWS_MAX_ATTEMPTS": "1"})
    assert_one_line_exit_2(code, output, "s3://bucket/in: cannot connect to the S3 endpoint http://127.0.0.1:9")
    for args, words in ((["--percentiles", "98,2"], "error: --percentiles needs low,high with 0 <= low <= high <= 100 (got '98,2')"),
                        (["--bands", "0,1"], "error: --bands takes 1-based band numbers (got '0,1')")):
        code, output = cli("run", small_aoi.root, "--out", out, *args)
        assert_one_line_exit_2(code, output, words)


def test_square_brackets_in_paths_and_messages_are_kept(tmp_path) -> None:
    root = tmp_path / "raw[old]"
    root.mkdir()
    code, output = cli("run", root, "--out", tmp_path / "out")
    assert_one_line_exit_2(code, output, f"{root}: no chips found")
