"""Teacher updates after each optimizer step: EMA (Eq. 8) or a sync every N steps (VISD Algorithm 1, line 29)."""

from __future__ import annotations

import lightning as L


class TeacherUpdate(L.Callback):
    """Calls `teacher.after_optimizer_step` once per optimizer step that actually happened."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        teacher = pl_module.teacher
        if teacher is None or not pl_module.stepped or not pl_module.teacher_active:
            return
        teacher.after_optimizer_step(pl_module.model, trainer.global_step)
