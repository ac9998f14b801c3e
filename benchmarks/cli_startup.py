"""How long the ``lir-agent`` command takes to answer, and where the time of a search goes.

Measured, each as the median of ``--repeats`` fresh processes:

* ``lir-agent --help`` and an argument error (``lir-agent search --bogus``), wall time;
* ``lir-agent search`` on an index of the shipped sample (examples/data, built in a temporary
  directory unless ``--index`` names one): the wall time until the first result line reaches
  stdout, and until the process ends;
* the same search broken down inside one fresh process, with ``time.perf_counter`` around the
  calls the command makes: importing the CLI, importing the index code (torch, transformers),
  opening the index, loading the model, encoding the query and searching, printing. Interpreter
  start is timed apart (``python -c pass``).

The floor of the issue: ``--help`` and an argument error in at most 1 s, and the first result of
a search in at most 3x the time of model loading plus the search itself. Run it with
``OMP_NUM_THREADS=1`` on a shared machine. Figures, not a timed test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "data" / "hotpotqa_paragraphs.jsonl"
QUERY = "Which film did Christopher Nolan direct in 2006?"

# Runs in a fresh interpreter: the calls `lir-agent search INDEX QUERY` makes, one stage at a time.
BREAKDOWN = """
import contextlib, io, json, sys, time
start = time.perf_counter()
from lir_agent import cli
imported_cli = time.perf_counter()
from lir_agent.sharded import open_index
imported_index = time.perf_counter()
index = open_index(sys.argv[1])
opened = time.perf_counter()
index.encoder
loaded = time.perf_counter()
hits = index.search(sys.argv[2], k=10)
searched = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    print(cli.format_hits(hits))
printed = time.perf_counter()
print(json.dumps({"import lir_agent.cli": imported_cli - start,
                  "import the index code (torch, transformers)": imported_index - imported_cli,
                  "open the index": opened - imported_index, "load the model": loaded - opened,
                  "encode the query and search": searched - loaded, "print": printed - searched}))
"""


def lir_agent_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m lir_agent.cli``."""
    script = Path(sys.executable).with_name("lir-agent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lir_agent.cli"]


def wall(command: list[str], expect_rc: int) -> float:
    """Wall time of one run of ``command``, which must exit with ``expect_rc``."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != expect_rc:
        raise SystemExit(f"{command} exited with {result.returncode}: {result.stderr}")
    return elapsed


def search_wall(command: list[str]) -> tuple[float, float]:
    """Seconds until the first result line reached stdout, and until the process ended."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    header = process.stdout.readline()
    first = process.stdout.readline()
    first_at = time.perf_counter() - start
    process.stdout.read()
    if process.wait() != 0 or not header.startswith("rank") or not first.strip():
        raise SystemExit(f"{command} failed (exit status {process.returncode})")
    return first_at, time.perf_counter() - start


def build_index(path: Path) -> float:
    """Indexes the shipped sample at ``path`` (as ``lir-agent index`` does); returns seconds."""
    from lir_agent.cli import main

    start = time.perf_counter()
    if main(["index", str(SAMPLE), "--index", str(path)]) != 0:
        raise SystemExit("indexing the sample failed")
    return time.perf_counter() - start


def run(index: Path, repeats: int) -> None:
    """Takes every measurement and prints the figures (medians; the machine may be shared, so the
    best run of each figure is printed beside it)."""
    cli = lir_agent_command()
    helps = [wall(cli + ["--help"], 0) for _ in range(repeats)]
    errors = [wall(cli + ["search", "--bogus"], 2) for _ in range(repeats)]
    interpreter_s = statistics.median(wall([sys.executable, "-c", "pass"], 0) for _ in range(repeats))
    searches, stages = [], []
    for _ in range(repeats):  # in turn, so that both see the machine in the same state
        searches.append(search_wall(cli + ["search", str(index), QUERY]))
        stages.append(json.loads(subprocess.run([sys.executable, "-c", BREAKDOWN, str(index), QUERY],
                                                capture_output=True, text=True, check=True).stdout))
    help_s, error_s = statistics.median(helps), statistics.median(errors)
    first_s = statistics.median(first for first, _ in searches)
    total_s = statistics.median(total for _, total in searches)
    breakdown = {"interpreter start (python -c pass)": interpreter_s}
    breakdown.update({name: statistics.median(s[name] for s in stages) for name in stages[0]})
    best = min(stages, key=lambda s: sum(s.values()))

    print(f"medians of {repeats} runs (best run), seconds")
    print(f"  lir-agent --help                         {help_s:7.3f} ({min(helps):.3f})   "
          f"floor 1 s: {'met' if help_s <= 1 else 'NOT met'}")
    print(f"  lir-agent search --bogus (usage error)   {error_s:7.3f} ({min(errors):.3f})   "
          f"floor 1 s: {'met' if error_s <= 1 else 'NOT met'}")
    print(f"  lir-agent search, first result printed   {first_s:7.3f} ({min(first for first, _ in searches):.3f})")
    print(f"  lir-agent search, process ended          {total_s:7.3f} ({min(total for _, total in searches):.3f})")
    print("  the search in one fresh process:")
    for name, seconds in breakdown.items():
        print(f"    {name:<44} {seconds:7.3f} ({best.get(name, seconds):.3f})  {seconds / first_s:6.1%}")
    print(f"    {'sum':<44} {sum(breakdown.values()):7.3f} ({interpreter_s + sum(best.values()):.3f})")
    work = breakdown["load the model"] + breakdown["encode the query and search"]
    imports = sum(breakdown[name] for name in list(breakdown)[:3])
    print(f"  first result / (model load + search) = {first_s:.3f} / {work:.3f} = {first_s / work:.2f}x   "
          f"floor 3x: {'met' if first_s <= 3 * work else 'NOT met'}")
    print(f"  the other {first_s - work:.3f} s: interpreter start and imports {imports:.3f}, opening the index "
          f"{breakdown['open the index']:.3f}, not in the breakdown {first_s - sum(breakdown.values()):.3f} "
          "(the console script, run-to-run variation)")
    print(f"  after the first result: {total_s - first_s:.3f} s more until the process has exited "
          "(the interpreter tearing torch down)")


def main() -> None:
    """Parses the options, builds the sample index if needed, and runs the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--index", type=Path, help="an index of the sample to reuse (built there if absent)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lir-cli-startup-") as tmp:
        index = args.index or Path(tmp) / "sample-index"
        if not index.exists():
            print(f"indexed {SAMPLE.name} into {index} in {build_index(index):.1f}s")
        run(index, args.repeats)


if __name__ == "__main__":
    main()
