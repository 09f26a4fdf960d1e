"""Several processes that do not know each other publishing to one registry at once, round after round.

Each process publishes its own content (``pipeline.core.publish.registry.publish``, the stage's own call) once per
round. A round starts for all of them together: each says it is ready (a file), the test starts the round
(another file) at the start of a wall-clock second, so that their registrations fall within one second,
as they do for runs that start together (quilt3 named versions by the second).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

_PUBLISHER = """
import sys, time
from pathlib import Path
from pipeline.core.base.errors import run_cli
from pipeline.core.publish.registry import Registry, publish

registry, name, tag, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])

def main(argv):
    for round_ in range(rounds):
        data = work / f"{tag}-{round_}.txt"
        data.write_text(f"{tag} round {round_}")
        (work / f"ready-{round_}-{tag}").touch()
        for _ in range(24000):  # 120 s at most
            if (work / f"go-{round_}").exists():
                break
            time.sleep(0.005)
        published = publish(Registry.parse(registry), name, {"data.txt": data}, {"by": tag, "round": round_},
                            f"{tag} round {round_}")
        print(published.top_hash, published.added, flush=True)

sys.exit(run_cli(main))
"""
WAIT_SECONDS = 120


def publish_at_once(registry: str, name: str, env: dict[str, str], work: Path, publishers: int = 3,
                    rounds: int = 3) -> list[list[str]]:
    """Run the rounds; every process's top hashes, in its order. Each must exit 0 and add a version."""
    work.mkdir(parents=True, exist_ok=True)
    tags = [f"p{i}" for i in range(publishers)]
    logs = [(work / f"{tag}.out").open("w+") for tag in tags]
    procs = [subprocess.Popen([sys.executable, "-c", _PUBLISHER, registry, name, tag, str(work), str(rounds)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
             for tag, log in zip(tags, logs)]
    try:
        for round_ in range(rounds):
            _wait_until_ready(work, tags, round_, procs)
            time.sleep(1 - time.time() % 1)  # the start of a second
            (work / f"go-{round_}").touch()
        for proc in procs:
            proc.wait(timeout=WAIT_SECONDS)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    outputs = [(work / f"{tag}.out").read_text() for tag in tags]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-3000:]
    lines = [[line.split() for line in output.splitlines() if line.endswith((" True", " False"))] for output in outputs]
    assert all(added == "True" for found in lines for _, added in found), outputs
    return [[top_hash for top_hash, _ in found] for found in lines]


def _wait_until_ready(work: Path, tags: list[str], round_: int, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not all((work / f"ready-{round_}-{tag}").exists() for tag in tags):
        for tag, proc in zip(tags, procs):
            if proc.poll() is not None:
                raise AssertionError(f"{tag} ended before round {round_}: {(work / f'{tag}.out').read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"publishers not ready for round {round_}"
        time.sleep(0.01)
