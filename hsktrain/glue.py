"""Where a GLUE task's rows come from when a command is given only the task's name.

One lookup for `make demo`, `hsktrain sweep` and `bench --e2e` / `--build`: the task's folder
under $GLUE, then under ../shared/data/glue (beside a checkout, where this project's machines
keep GLUE), then the Hugging Face hub's GLUE when it is reachable. A folder counts when its
name is the task's (SST-2, MRPC, CoLA, ... as GLUE spells them) and it holds `train.tsv`.
"""

from __future__ import annotations

import os
from pathlib import Path

from hskcache.data import load_split
from hskcache.errors import ConfigError, HskError
from hskcache.tasks import get_task

LOCAL_ROOTS = ("../shared/data/glue",)  # after $GLUE
HUB = "glue"  # the data source that `load_split` reads from the hub


def find_task_data(task: str, fix: str = "pass --data GLUE_TASK_FOLDER") -> tuple[str, str]:
    """(data, task name) for a GLUE task: a local folder, else `HUB` when the hub answers.

    Raises:
        ConfigError: neither has it; the message ends with `fix`, the caller's way out.
    """
    spec = get_task(task)
    for root in (os.environ.get("GLUE"), *LOCAL_ROOTS):
        if not root or not Path(root).is_dir():
            continue
        for folder in sorted(Path(root).iterdir()):
            if (folder / "train.tsv").is_file() and _task_of(folder.name) == spec.name:
                return str(folder), spec.name
    try:
        load_split(HUB, spec.name, "dev", limit=1)
    except HskError as e:
        raise ConfigError(
            f"no {spec.name} data: no GLUE folder for it under $GLUE or {LOCAL_ROOTS[0]} and "
            f"the Hugging Face hub's GLUE is not reachable ({e}); {fix} or set "
            "GLUE=/path/to/glue"
        ) from None
    return HUB, spec.name


def _task_of(folder_name: str) -> str | None:
    try:
        return get_task(folder_name).name
    except ConfigError:
        return None
