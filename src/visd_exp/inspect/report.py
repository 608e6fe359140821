"""Execute the inspection notebooks for one run (or multirun) and write them as HTML next to it.

    python -m visd_exp.inspect.report <run dir> [--out DIR] [--timeout S]    # also: make report RUN=<dir>

Each notebook in notebooks/ is executed top to bottom with nbclient in a fresh kernel whose environment
carries VISD_RUN_DIR=<run dir> and VISD_OUT_DIR=<out> (default <run dir>/report). The figures the
notebooks save land in <out>, with inspect_curves.{html,ipynb} and token_credit.{html,ipynb}. A notebook
that fails is still written (with its error) and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

NOTEBOOKS = ("inspect_curves.ipynb", "token_credit.ipynb")


def notebooks_dir() -> Path:
    """notebooks/ of the project (env VISD_NOTEBOOKS_DIR overrides)."""
    if os.environ.get("VISD_NOTEBOOKS_DIR"):
        return Path(os.environ["VISD_NOTEBOOKS_DIR"])
    return Path(__file__).resolve().parents[3] / "notebooks"


def kernel_config():
    """CurveZMQ transport encryption for the kernel when libzmq supports it (else ipykernel warns)."""
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


def execute_notebook(
    path: str | Path,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    timeout: int = 600,
    env: dict | None = None,
):
    """Run a notebook against `run_dir` in a fresh kernel; returns the executed notebook (raises
    nbclient's CellExecutionError on a failing cell, with the partly executed notebook in `.nb`)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    kernel_env = {**os.environ, "VISD_RUN_DIR": str(Path(run_dir).resolve()), **(env or {})}
    if out_dir is not None:
        kernel_env["VISD_OUT_DIR"] = str(Path(out_dir).resolve())
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        config=kernel_config(),
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(env=kernel_env)
    except CellExecutionError as error:
        error.nb = nb
        raise
    return nb


def report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    timeout: int = 600,
    notebooks: tuple[str, ...] = NOTEBOOKS,
) -> tuple[list[Path], list[str]]:
    """Execute each notebook and write <out>/<name>.html and .ipynb; returns (html paths, failed names)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    from visd_exp.inspect.notebook_html import write_notebook_html

    run_dir = Path(run_dir).resolve()
    out_dir = Path(out_dir).resolve() if out_dir else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    written, failed = [], []
    for name in notebooks:
        source = notebooks_dir() / name
        try:
            nb = execute_notebook(source, run_dir, out_dir, timeout)
        except CellExecutionError as error:
            print(f"{name} failed:\n{error}", file=sys.stderr)
            nb, failed = error.nb, [*failed, name]
        stem = Path(name).stem
        nbformat.write(nb, out_dir / f"{stem}.ipynb")
        written.append(write_notebook_html(nb, out_dir / f"{stem}.html", title=f"{stem}: {run_dir}"))
        print(f"wrote {written[-1]}")
    return written, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visd_exp.inspect.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dir", help="a run or multirun directory")
    parser.add_argument("--out", default=None, help="output directory (default: <run_dir>/report)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    if not Path(args.run_dir).is_dir():
        parser.error(f"not a directory: {args.run_dir}")
    _, failed = report(args.run_dir, args.out, args.timeout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
