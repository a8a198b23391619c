"""The paper's tasks, one package each.  ``TASKS`` maps a task name to its class; a new task adds its
class to the tuple below (its config dataclass's ``name`` default is the name users type: ``task=uuid``)."""

from __future__ import annotations

from .base import Task, TaskConfig
from .cpt import CPTTask
from .instruct import InstructTask
from .math import MathTask
from .pretrain import PretrainTask
from .uuid import UUIDTask

TASKS: dict[str, type[Task]] = {task.config_class.name: task for task in (UUIDTask, PretrainTask, CPTTask, InstructTask, MathTask)}
TASK_CONFIGS: dict[str, type[TaskConfig]] = {name: task.config_class for name, task in TASKS.items()}

__all__ = ["TASKS", "TASK_CONFIGS", "Task", "TaskConfig"]
