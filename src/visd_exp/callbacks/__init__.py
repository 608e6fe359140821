"""Callbacks: lambda annealing, teacher updates, validation, and checkpoints that cannot fill a disk."""

from visd_exp.callbacks.checkpoint import BoundedCheckpoint, CheckpointSpaceError
from visd_exp.callbacks.lambda_schedule import LambdaSchedule, lambda_at
from visd_exp.callbacks.teacher_update import TeacherUpdate
from visd_exp.callbacks.validation import ValidationCallback

__all__ = [
    "BoundedCheckpoint",
    "CheckpointSpaceError",
    "LambdaSchedule",
    "TeacherUpdate",
    "ValidationCallback",
    "lambda_at",
]
