"""Apps as evaluation candidates: ``modelmill eval --models support`` scores a router as it would
a model; each item goes to the route the router chooses for it and is scored by that model.

Registered with ``evaluate.candidates`` through the ``modelmill.candidates`` entry point (evaluate
sits below apps, so it asks; it never imports this).
"""

from __future__ import annotations

from modelmill.evaluate.candidates import Candidate, LocalModel, register_candidate_source


class RouterCandidate(Candidate):
    """A router: the items grouped by the route chosen for each, every group scored by its model."""

    can_score = True

    def __init__(self, store, row, *, device: str = "auto", dtype: str = "auto"):
        from modelmill.apps.router import Routes

        self.routes = Routes(row)
        models = [*row.spec["routes"], row.spec["fallback"]]
        self.members = {m: LocalModel(store, m, device=device, dtype=dtype) for m in models}
        super().__init__(name=row.name, kind="router", base=row.base_model,
                         lineage={"app": row.name, "updated": str(row.updated_at), "spec": row.spec,
                                  "members": {m: c.key() for m, c in self.members.items()}})

    def _split(self, texts: list[str]) -> dict[str, list[int]]:
        from modelmill.kb.rag import question_of

        groups: dict[str, list[int]] = {}
        for i, choice in enumerate(self.routes.choose([question_of(t) for t in texts])):
            groups.setdefault(choice.model, []).append(i)
            routed = self.info.setdefault("routed", {})
            routed[choice.model] = routed.get(choice.model, 0) + 1
        return groups

    def _each(self, groups: dict[str, list[int]], n: int, run) -> list:
        out: list = [None] * n
        for model, idx in groups.items():
            member = self.members[model]
            try:
                for i, r in zip(idx, run(member, idx)):
                    out[i] = r
            finally:
                member.close()  # one member's weights in memory at a time
        return out

    def choice_scores(self, records, labels, messages, *, batch_size, progress):
        groups = self._split([messages(r, labels, labels[0]) for r in records])
        return self._each(groups, len(records), lambda m, idx: m.choice_scores(
            [records[i] for i in idx], labels, messages, batch_size=batch_size, progress=progress))

    def generate(self, conversations, *, max_new_tokens, batch_size, progress):
        groups = self._split(conversations)
        return self._each(groups, len(conversations), lambda m, idx: m.generate(
            [conversations[i] for i in idx], max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress=progress))

    def close(self) -> None:
        for m in self.members.values():
            m.close()


@register_candidate_source
def app_candidate(store, ref: str, *, device: str = "auto", dtype: str = "auto"):
    """The candidate for an app's name; None for any other name."""
    from modelmill.apps import Apps

    if ":" in ref:
        return None
    row = Apps(store).find(ref)
    if row is None or row.kind != "router":
        return None
    return RouterCandidate(store, row, device=device, dtype=dtype)
