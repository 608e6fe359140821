"""VISD's token credit (sections 3.1-3.3): the part of the step that makes it VISD rather than GRPO.

    judge feedback f per rollout (Appendix G) -> teacher inputs r = (a*, e, f) after the question
    -> the teacher replays the SAME completion tokens -> Delta_t (Eq. 4) -> m_t (Eq. 5-6) -> A^_t (Eq. 7)

The replay and the credit run per micro-batch inside `policy_update` (step_forward.py): this unit builds
the `TeacherReplay` it consumes. A remote judge (`judge.overlap`) is asked in a background thread as soon
as the rollouts exist, and its feedback is awaited only when the first teacher forward needs it, after the
first student forward: its HTTP latency overlaps the student's forward (`timing/judge` is the wait that
is left). The rule judge is called in the step. It composes with any sequence-level unit (grpo, tgrpo,
ffr): it reads only the rows that enter the loss and their records. The teacher itself (current / sync /
EMA, Eq. 8) is built by teacher/ and updated by callbacks/teacher_update.py; lambda is annealed by
callbacks/lambda_schedule.py.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from visd_exp.judge import JudgeItem, evidence_from_sample
from visd_exp.rollout.generation import select_rows
from visd_exp.step_forward import TeacherReplay, log_ratio, micro_slices
from visd_exp.teacher import privileged_block, teacher_inputs, teacher_states


class VISDCredit:
    """Builds the teacher replay of one step: feedback, privileged prompts, the teacher's forward."""

    def __init__(self, cfg, processor, teacher, judge, micro_batch_size: int | None):
        self.cfg = cfg
        self.processor = processor
        self.teacher = teacher  # teacher/variants.py (registered on the LightningModule, saved with it)
        self.judge = judge  # None: answer and evidence only (no_feedback)
        self.micro_batch_size = micro_batch_size
        self.pool: ThreadPoolExecutor | None = None  # one thread: the judge beside the update

    def feedback(self, samples: list[dict], completions: list[str]) -> list[str | None]:
        """One feedback string per rollout (None: no judge, or the judge fell back)."""
        if self.judge is None:
            return [None] * len(completions)
        items = [
            JudgeItem(
                task=s["task"],
                question=s["question"],
                standard_answer=s["answer"],
                evidence=evidence_from_sample(s),
                completion=c,
                sample=s,
            )
            for s, c in zip(samples, completions)
        ]
        return self.judge.judge_batch(items)

    def replay_inputs(self, rollouts, samples: list[dict], feedback: list[str | None]):
        """Teacher inputs for every rollout row: prompt + privileged block r, then the same completion tokens."""
        blocks = [
            privileged_block(s["answer"], evidence_from_sample(s), f) for s, f in zip(samples, feedback)
        ]
        grids = _grids_per_row(rollouts)
        return teacher_inputs(self.processor, rollouts, samples, blocks, grids)

    def teacher_forward(self, student, rollouts):
        """(micro-batch teacher inputs, its rows' image counts, image features) -> the teacher's last hidden
        states at the completion positions and its output layer (no grad); the credit takes its top-K from
        them chunk by chunk (step_forward.teacher_terms), never from [n, C, V] logits."""
        completion_len = rollouts.completion_ids.shape[1]
        return lambda inputs, images_per_row=None, image_features=None: teacher_states(
            self.teacher.model(student), inputs, completion_len, images_per_row, image_features
        )

    def ask_judge(self, samples: list[dict], completions: list[str]) -> Future:
        """The feedback of every rollout, computed in a background thread (the judge's own pool sends the
        HTTP requests concurrently); `.result()` waits for it and re-raises a JudgeError."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visd-judge")
        return self.pool.submit(self.feedback, samples, completions)

    def replay(self, student, rollouts, samples: list[dict], lam: float, watch):
        """(TeacherReplay for policy_update, the feedback as a Future) of this step's loss rows.

        A remote judge starts now, beside the step; the teacher's inputs r = (a*, e, f) are built when the
        first teacher forward needs them. `timing/judge` is the time spent waiting for the feedback, not
        the judge's latency (judge/latency_p50). A local judge (the rule judge) answers here.
        """
        if self.judge is None or not getattr(self.judge, "overlap", True):
            asked = Future()
            with watch("judge"):
                asked.set_result(self.feedback(samples, rollouts.texts))
            with watch("teacher"):
                inputs = self.replay_inputs(rollouts, samples, asked.result())
        else:
            asked = self.ask_judge(samples, rollouts.texts)

            def inputs() -> dict:
                with watch("judge"):
                    feedback = asked.result()
                with watch("teacher"):
                    return self.replay_inputs(rollouts, samples, feedback)

        shares = self.teacher.model(student) is student  # teacher=current: one vision pass serves both
        forward = self.teacher_forward(student, rollouts)
        return TeacherReplay(inputs, forward, self.cfg.credit, lam, shares_student_vision=shares), asked

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    @torch.no_grad()
    def dump(
        self,
        student,
        step: int,
        lam: float,
        rollouts,
        samples,
        feedback,
        scores,
        advantages,
        out,
        write: bool,
    ):
        """Save Delta under the feedback and answer-only teachers for M rollouts (Eq. 29-31)."""
        from visd_exp.teacher.dump import write_credit_dump

        m = min(int(self.cfg.dumps.num_rollouts), rollouts.num_rollouts)
        rows = slice(0, m)
        part = rollouts.select(rows)
        with_feedback = self.replay_inputs(part, samples[rows], feedback[rows])  # r = (a*, e, f)
        answer_only = self.replay_inputs(part, samples[rows], [None] * m)  # r = (a*, e)
        forward = self.teacher_forward(student, part)
        # delta^judge (Eq. 31) = log q~^{a,f}(y) - log q~^{a}(y) on the feedback teacher's support: the
        # credit with the feedback teacher as "teacher" and the answer-only teacher as "student" (its
        # logits taken at the feedback teacher's top-K ids: a common support, teacher/dump.py).
        d_judge = torch.zeros(part.completion_ids.shape, dtype=torch.float32)
        for sub in micro_slices(m, self.micro_batch_size):
            images = part.images_per_row[sub]
            t_fb = forward(select_rows(with_feedback, sub, part.images_per_row), images)
            t_ans = forward(select_rows(answer_only, sub, part.images_per_row), images)
            d_judge[sub] = log_ratio(
                self.cfg.credit, t_fb, t_ans, part.completion_ids[sub], part.completion_mask[sub],
                self.cfg.algorithm.temperature,
            )  # fmt: skip
        meta = [
            {
                "id": s.get("id"),
                "task": s["task"],
                "question": s["question"],
                "answer": s["answer"],
                "feedback": f,
                "completion": text,
                "reward": sc["total"],
                "advantage": float(a),
            }
            for s, f, text, sc, a in zip(
                samples[rows], feedback[rows], rollouts.texts[rows], scores[rows], advantages[rows]
            )
        ]
        if not write:
            return  # hook (multi-process): every rank computed its replay (collectives), rank 0 writes
        write_credit_dump(
            Path(self.cfg.paths.output_dir),
            step,
            lam,
            self.cfg.credit,
            self.processor.tokenizer,
            {
                "token_ids": part.completion_ids,
                "mask": part.completion_mask,
                "delta_feedback": out.delta[rows],
                "delta_judge": d_judge,
                "weight": out.weights[rows],
                "token_advantage": out.token_advantages[rows],
                "meta": meta,
            },
        )


def _grids_per_row(rollouts) -> list[torch.Tensor]:
    """Each row's image grids ([images, 3]), cut from the rollouts' concatenated grids."""
    grids, start = [], 0
    for n in rollouts.images_per_row:
        grids.append(rollouts.image_grid_thw[start : start + n])
        start += n
    return grids
