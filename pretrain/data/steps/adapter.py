"""One of our per-document steps inside a datatrove pipeline, with its stats and drops written per task."""

from __future__ import annotations

from collections.abc import Callable

from datatrove.data import Document as DTDocument
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.typeshelper import StatHints

from planner.core.io import atomic_write_json
from pretrain.data.documents import Document
from pretrain.data.steps.base import Step
from pretrain.data.workdir import WorkDir


def _to_ours(d: DTDocument) -> Document:
    return Document(d.id, d.text, d.metadata["domain"], {"key": d.metadata["key"]})


class CurationStep(PipelineStep):
    """One of our per-document steps (`pretrain.data.steps`) inside a datatrove pipeline: same decisions,
    same per-domain, per-reason stats (written per task), and every drop listed with its reason."""

    type = "🔻 - FILTER"

    def __init__(self, build: Callable[[str], Step], step_name: str, wd: WorkDir):
        self.name = step_name  # first: datatrove names the step's stats (its logs, stats.json) in __init__
        super().__init__()
        self.build, self.wd = build, wd  # build(domain) -> Step

    def run(self, data, rank: int = 0, world_size: int = 1):
        steps, excluded = {}, []
        for d in data:
            doc = _to_ours(d)
            step = steps.get(doc.domain) or steps.setdefault(doc.domain, self.build(doc.domain))
            self.stat_update(StatHints.total)
            with self.track_time():  # datatrove's per-document time, as its own filters keep it
                kept = step.apply(doc)
            if kept is None:
                self.stat_update(StatHints.dropped, f"dropped_{step.last_reason}")
                excluded.append({"key": doc.meta["key"], "id": doc.id, "domain": doc.domain, "step": self.name,
                                 "reason": step.last_reason})
                continue
            self.stat_update(StatHints.forwarded)
            d.text = kept.text
            yield d
        stats = {domain: s.stats[domain].to_dict() for domain, s in steps.items() if domain in s.stats}
        atomic_write_json(self.wd.stats(self.name, rank), {"stats": stats, "excluded": excluded})
