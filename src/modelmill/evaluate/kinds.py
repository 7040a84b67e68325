"""The built-in task kinds; importing this module registers them (see ``tasks.register_task_kind``)."""

from modelmill.evaluate import classification, dialogue, extraction, generation, judge, multiple_choice  # noqa: F401
