"""Callbacks that change training state between steps: lambda annealing and teacher updates."""

from visd_exp.callbacks.lambda_schedule import LambdaSchedule, lambda_at
from visd_exp.callbacks.teacher_update import TeacherUpdate
from visd_exp.callbacks.validation import ValidationCallback

__all__ = ["LambdaSchedule", "TeacherUpdate", "ValidationCallback", "lambda_at"]
