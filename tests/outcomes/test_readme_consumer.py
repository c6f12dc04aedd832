"""The README's example consumer runs against a real sidecar's files-sink folder and gets the figures right."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.outcomes.helpers import MODEL, TOKENS, WRITER, infer, v2_model
from tests.servers import running_sidecar

README = Path(__file__).resolve().parents[2] / "README.md"


def consumer_source() -> str:
    blocks = re.findall(r"```python\n(# consumer\.py:.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one example consumer"
    return blocks[0]


def test_the_readme_consumer_joins_outcomes_per_group(tmp_path: Path) -> None:
    with v2_model() as up, running_sidecar(up.url, model=MODEL, auth={"tokens": TOKENS}) as svc:
        # The model answers "repaid" (p = 0.7) for everyone: selection rate 1 in both groups.
        women = [infer(svc, groups={"gender": "F"}) for _ in range(3)]
        men = [infer(svc, groups="gender=M") for _ in range(2)]
        assert svc.pipeline.drain(5)
        truth = [("repaid", women[0]), ("default", women[1]), ("repaid", men[0])]
        # The second woman's outcome is corrected later: the consumer keeps the latest.
        for outcome, call_id in [*truth, ("repaid", women[1])]:
            r = httpx.post(
                f"{svc.control_url}/outcomes",
                json={
                    "outcomes": [
                        {
                            "decision_id": f"{call_id}/0",
                            "outcome": outcome,
                            "observed_at": "2027-02-01T00:00:00Z",
                        }
                    ]
                },
                headers={"authorization": f"Bearer {WRITER}"},
            )
            assert r.status_code == 200
        folder = tmp_path / "events"
        shutil.copytree(svc.settings.sink.directory, folder)
    script = tmp_path / "consumer.py"
    script.write_text(consumer_source())
    run = subprocess.run(
        [sys.executable, str(script), str(folder)], capture_output=True, text=True, check=True
    )
    assert run.stdout.splitlines() == [
        "F: 3 decisions, selection rate 1.000, accuracy 1.000 over 2 outcomes",
        "M: 2 decisions, selection rate 1.000, accuracy 1.000 over 1 outcomes",
    ]
