"""Apps as evaluation candidates: ``modelmill eval --models support`` scores a router as it would
a model (each item goes to the route the router chooses for it and is scored by that model), and
``--models flow:NAME`` a workflow (each item's conversation runs the workflow as a chat completion
does; its answer is what is scored) and ``--models bot:NAME`` a dialogue bot (each item's user
turns are one new conversation; the reply to the last is what is scored).

Registered with ``evaluate.candidates`` through the ``modelmill.candidates`` entry point (evaluate
sits below apps, so it asks; it never imports this).
"""

from __future__ import annotations

from modelmill.apps.bots import BOT_PREFIX  # light: no torch at import
from modelmill.apps.flows import FLOW_PREFIX  # light: no torch at import
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


class _OnLocalEngines(Candidate):
    """An app run once per item on this process's engines, as ``/v1/chat/completions`` runs it;
    ``batch_size`` items at a time, so their model calls share engine batches. An item whose run
    fails (any ModelmillError) is a failed item with its error; the others go on. The app's model
    calls bring their own sampling and lengths: ``max_new_tokens`` does not apply."""

    prefix = kind = ""

    def __init__(self, store, row, *, device: str = "auto", dtype: str = "auto"):
        super().__init__(name=f"{self.prefix}{row.name}", kind=self.kind, base=row.base_model,
                         lineage={"app": row.name, "updated": str(row.updated_at), "spec": row.spec})
        self.store, self.app, self.device, self.dtype = store, row.name, device, dtype

    async def _runner(self, services):
        """The coroutine function that answers one conversation (its text), set up once per call."""
        raise NotImplementedError

    def generate(self, conversations, *, max_new_tokens, batch_size, progress):
        import asyncio

        from modelmill.apps.flows import FlowServices
        from modelmill.errors import ModelmillError
        from modelmill.serve.router import ServeConfig

        async def runs() -> list:
            services = FlowServices.local(self.store, ServeConfig(device=self.device, dtype=self.dtype))
            try:
                answer = await self._runner(services)
                room = asyncio.Semaphore(max(1, batch_size))

                async def one(conversation):
                    async with room:
                        try:
                            return await answer(conversation)
                        except ModelmillError as e:
                            return e

                return list(await asyncio.gather(*(one(c) for c in conversations)))
            finally:
                await services.close()

        return asyncio.run(runs())


class FlowCandidate(_OnLocalEngines):
    """A workflow, model id ``flow:NAME``: every conversation is one run (its inputs as a chat
    request fills them) and the answer node's text is scored (labels are parsed from it, as from
    any generating model). A run that fails (FlowFailed too) counts as a failed item."""

    prefix, kind = FLOW_PREFIX, "workflow"

    async def _runner(self, services):
        from modelmill.apps.flows import chat_inputs, run_flow

        wf = services.flow(self.app)

        async def answer(conversation):
            return (await run_flow(services, wf, chat_inputs(wf, conversation), store_run=False)).output["text"]

        return answer


class BotCandidate(_OnLocalEngines):
    """A dialogue bot, model id ``bot:NAME``: each item's conversation is replayed as one new
    conversation (every user message a turn, the state carried from turn to turn as a chat
    carries it, stored nowhere) and the bot's reply to the last user message is scored."""

    prefix, kind = BOT_PREFIX, "bot"

    async def _runner(self, services):
        from modelmill.apps import dialogue as dlg
        from modelmill.apps.bots import get_bot, run_turn
        from modelmill.errors import InputError

        bot = get_bot(self.store, self.app)

        async def answer(conversation):
            turns = [m["content"] for m in conversation
                     if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip()]
            if not turns:
                raise InputError("the item has no user message for the bot to answer", field="messages")
            state, previous = dlg.new_state(), None
            for text in turns:
                previous = (await run_turn(services, bot, text, state, previous))["reply"]
            return previous

        return answer


@register_candidate_source
def app_candidate(store, ref: str, *, device: str = "auto", dtype: str = "auto"):
    """The candidate for an app's name (a router) or a workflow's or bot's model id (``flow:NAME``,
    ``bot:NAME``); None for any other name."""
    from modelmill.apps import Apps
    from modelmill.apps.bots import bot_name
    from modelmill.apps.flows import flow_name

    for name, kind, cls, label in ((bot_name(ref), "bot", BotCandidate, "bot:NAME"),
                                   (flow_name(ref), "workflow", FlowCandidate, "flow:NAME")):
        if name is None:
            continue
        row = Apps(store).find(name)
        if row is None or row.kind != kind:
            from modelmill.errors import NotFoundError

            raise NotFoundError(f"no {kind} named '{name}'", field="--models",
                                fix=f"`modelmill apps list` shows the {kind}s (model id {label})")
        return cls(store, row, device=device, dtype=dtype)
    if ":" in ref:
        return None
    row = Apps(store).find(ref)
    if row is None or row.kind != "router":
        return None
    return RouterCandidate(store, row, device=device, dtype=dtype)
