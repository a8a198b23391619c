"""The paper's tasks, one module each.  ``TASKS`` maps a task name to its class."""

from __future__ import annotations

from .base import Task, TaskConfig

TASKS: dict[str, type[Task]] = {}


def _register_all() -> None:
    from .uuid import UUIDTask

    for task in (UUIDTask,):
        TASKS[task.config_class.name] = task


try:
    _register_all()
except ImportError:  # during bootstrapping, before every task module exists
    pass

TASK_CONFIGS: dict[str, type[TaskConfig]] = {name: task.config_class for name, task in TASKS.items()}

__all__ = ["TASKS", "TASK_CONFIGS", "Task", "TaskConfig"]
