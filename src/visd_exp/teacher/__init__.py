"""The teacher: who it is (current / sync-every-N / EMA) and what it sees (the privileged context)."""

from visd_exp.teacher.context import privileged_block
from visd_exp.teacher.replay import teacher_inputs, teacher_states
from visd_exp.teacher.variants import TeacherState, build_teacher

__all__ = ["TeacherState", "build_teacher", "privileged_block", "teacher_inputs", "teacher_states"]
