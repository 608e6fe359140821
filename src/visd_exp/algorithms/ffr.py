"""Find, Fix, Reason (FFR, seed 004, section 3.2) as a unit: failed rollouts re-answered under a frozen
teacher's evidence patch, a chosen rollout per item, and the Robust Improvement Reward (RIR).

The paper's equations 4-11 were lost in text extraction; this is our reading of the surviving prose.

  Eq. 4   first pass: G rollouts y_i per prompt from pi_old (GRPO's), scored by the verifier;
          c_i = 1[acc(y_i) >= threshold], acc = `answer_accuracy` (the answer term `ans`, else the answer's
          temporal IoU, else its spatial score), threshold = algorithm.ffr.threshold (0.5).
  Eq. 5   for every FAILED rollout (c_i = 0) the frozen teacher T returns (e_i, p_i) = T(x, a*, y_i, evidence):
          an error type e_i in {temporal, spatial, misconception} and a minimal evidence patch p_i (time
          ranges and regions from the same video, never the answer). `leak_reason` checks every patch; a
          rejected one (ffr/leak_rejected) leaves the rollout unpatched (ffr_teacher.py).
  Eq. 6   the student answers once more with the patch, the question unchanged: y~_i ~ pi_old(. | x (+) p_i),
          where x (+) p_i is the same chat prompt with a short block after the question
          (data/prompts.py, render_prompt's `privileged` slot); one re-answer per patched rollout.
  Eq. 7   chosen rollout: y^_i = y~_i if rollout i was patched, else y_i (the first pass).
  Eq. 8   RIR, the scalar of each chosen rollout that group standardisation sees:
              unpatched   r_i = R(y_i)                                   (the verifier's total, as GRPO)
              patched     r_i = 1[c~_i] * (O(y~_i) - kappa) + F(y~_i)    (strict repair, patch tax, format)
          with c~_i = 1[acc(y~_i) >= threshold]. Eq. 10 of the verifier forms the total as a weighted sum,
          R = sum_{k in K(x)} alpha_k r_k, and the format component is always in K(x); so the format reward
          is its term F = alpha_fmt * fmt and the outcome is everything else, O = R - F (answer, temporal
          and spatial terms). Splitting the total this way keeps a patched row on the same scale as its
          unpatched siblings: a repaired row earns what an unaided correct rollout earns less kappa, a
          failed repair keeps only its format credit (nothing for grounding the teacher handed it).
  Eq. 9   group advantages over the chosen rollouts: the shared step standardises `StepRollouts.rewards`
          within each prompt's G rows (Eq. 14 of VISD, module.py); the rows keep their places.
  Eq. 10  the token ratio of a chosen rollout is computed under the observation it was sampled with:
          pi_theta(y^_t | x^, y^_<t) / pi_old(y^_t | x^, y^_<t), x^ = x (+) p_i for patched rows, x otherwise.
          The merged RolloutBatch (rollout/merge.py) carries each row's OWN prompt ids and the log-probs
          of its OWN sampling pass.
  Eq. 11  the clipped GRPO objective, unchanged, over the chosen rollouts and their advantages.

Metrics (every step, the same keys): ffr/failed_frac (first-pass failures / N), ffr/patched_frac (patched /
N), ffr/repair_rate (correct re-answers / patched; nan when none), ffr/leak_rejected, ffr/teacher_failed
(failed rollouts the teacher gave no valid diagnosis), ffr/error_type/<type> (diagnoses by type, counts).
Timings: timing/ffr_teacher, timing/ffr_patch (the re-answer generation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from omegaconf import OmegaConf

from visd_exp.algorithms.ffr_teacher import ERROR_TYPES, Diagnosis, build_ffr_teacher, leak_reason
from visd_exp.algorithms.grpo import GRPO, Policy, StepRollouts, answer_accuracy
from visd_exp.data.datamodule import collate_prompts, encode_prompt
from visd_exp.data.prompts import render_prompt
from visd_exp.distributed.ranks import all_ranks
from visd_exp.distributed.zero import generate_sync_kwargs
from visd_exp.rollout.generation import RolloutBatch
from visd_exp.rollout.merge import merge_rows

_PROMPT_KEYS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "frames",
)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def format_term(score: Mapping, fmt_weight: float) -> float:
    """F = alpha_fmt * fmt: the format reward's share of the verifier's total (fmt is always in K(x))."""
    return fmt_weight * float(score.get("fmt") or 0.0)


def robust_improvement_reward(
    score: Mapping, patched: bool, correct: bool, kappa: float, fmt_weight: float
) -> float:
    """Eq. 8 for one chosen rollout: the total if unpatched; else 1[correct] (O - kappa) + F, O = total - F."""
    if not patched:
        return float(score["total"])
    fmt = format_term(score, fmt_weight)
    outcome = float(score["total"]) - fmt
    return (outcome - kappa if correct else 0.0) + fmt


def patch_block(diagnosis: Diagnosis) -> str:
    """The short block the student sees after the unchanged question (Eq. 6)."""
    return f"Hint from a reviewer ({diagnosis.error_type} error): {diagnosis.patch}"


def patched_prompts(
    processor, batch: dict, rows: Sequence[int], patches: Sequence[Diagnosis], G: int
) -> dict:
    """Collated prompts x (+) p (Eq. 6) for the rollout rows `rows` (row // G is the prompt): the batch's
    frames and records, the patch in a block after the unchanged question (render_prompt's `privileged`)."""
    items = []
    for row, diagnosis in zip(rows, patches):
        sample, frames = batch["samples"][row // G], batch["frames"][row // G]
        text = render_prompt(
            processor, sample, sample["frame_times"], sample["video_duration"], patch_block(diagnosis)
        )
        items.append(
            {**encode_prompt(processor, text, frames), "sample": sample, "frames": frames, "text": text}
        )
    return collate_prompts(items, processor.tokenizer.pad_token_id)


class FFR(GRPO):
    """GRPO's first pass; failed rollouts re-answered under a teacher's patch; chosen rollouts with RIR."""

    name = "ffr"

    def __init__(self, cfg):
        super().__init__(cfg)
        f = cfg.algorithm.ffr
        self.threshold = float(f.threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"algorithm.ffr.threshold must be in (0, 1], got {self.threshold}")
        self.kappa = float(f.kappa)
        if not math.isfinite(self.kappa):
            raise ValueError(f"algorithm.ffr.kappa must be finite, got {self.kappa}")
        self.fmt_weight = float(self.reward_cfg.weights["fmt"])
        self.teacher = build_ffr_teacher(f.teacher, self.threshold)
        # the re-answer: the same sampling settings, one completion per patched prompt
        algo = OmegaConf.to_container(self.algo, resolve=True)
        self.patch_algo = OmegaConf.create({**algo, "num_generations": 1})

    def correct(self, score: Mapping) -> bool:
        """Eq. 4's c: the answer's accuracy reaches the threshold."""
        return answer_accuracy(score) >= self.threshold

    def step(self, policy: Policy, batch: dict, progress: float, watch) -> StepRollouts:
        G = self.G
        with watch("rollout"):
            first = self.sample(policy, batch)
        samples = [sample for sample in batch["samples"] for _ in range(G)]
        with watch("reward"):
            scores = self.score(first.texts, samples, progress)
        failed = [i for i, s in enumerate(scores) if not self.correct(s)]  # Eq. 4

        # Eq. 5: the teacher's error type and patch for every failed rollout; leaking patches are dropped.
        counts = dict.fromkeys(ERROR_TYPES, 0)
        patches: dict[int, Diagnosis] = {}
        leaks = teacher_failed = 0
        with watch("ffr_teacher"):
            diagnoses = (
                self.teacher.diagnose_batch(
                    [samples[i] for i in failed],
                    [scores[i] for i in failed],
                    [first.texts[i] for i in failed],
                )
                if failed
                else []
            )
            for i, diagnosis in zip(failed, diagnoses):
                if diagnosis is None:
                    teacher_failed += 1
                    continue
                counts[diagnosis.error_type] += 1
                if leak_reason(diagnosis.patch, samples[i]) is not None:
                    leaks += 1
                    continue
                patches[i] = diagnosis
        rows = sorted(patches)
        # hook (multi-process): one decision on every rank; with one process it is just `bool(rows)`
        anyone = not all_ranks(not rows, _device(policy.model))

        # Eq. 6: one re-answer per patched rollout, under its own patched prompt.
        repaired: RolloutBatch | None = None
        with watch("ffr_patch"):
            if rows:
                prompts = patched_prompts(policy.processor, batch, rows, [patches[i] for i in rows], G)
                repaired = policy.generate(prompts, self.patch_algo)
            elif anyone and generate_sync_kwargs(policy.model):
                # hook (ZeRO-3, > 1 rank): another rank re-answers, so this one joins `generate` too (its
                # all-gathers), on one unpatched prompt whose rollout is thrown away
                one = {k: v[:1] for k, v in batch.items() if k in _PROMPT_KEYS}
                policy.generate(one, self.patch_algo)
        chosen_scores = list(scores)
        repaired_correct = []
        if repaired is not None:
            with watch("reward"):
                re_scores = self.score(repaired.texts, [samples[i] for i in rows], progress)
            for j, i in enumerate(rows):
                chosen_scores[i] = re_scores[j]  # Eq. 7: the patched rollout replaces the first pass
                repaired_correct.append(self.correct(re_scores[j]))
            # Eq. 7 and 10: every chosen row with its own prompt and its own sampling pass's log-probs
            where = {i: j for j, i in enumerate(rows)}
            picks = [(1, where[i]) if i in where else (0, i) for i in range(first.num_rollouts)]
            chosen = merge_rows([first, repaired], picks, policy.processor.tokenizer.pad_token_id)
        else:
            chosen = first

        # Eq. 8: RIR; Eq. 9 (group standardisation) is the shared step's.
        correct_of = dict(zip(rows, repaired_correct))
        rewards = torch.tensor(
            [
                robust_improvement_reward(
                    s, i in correct_of, correct_of.get(i, False), self.kappa, self.fmt_weight
                )
                for i, s in enumerate(chosen_scores)
            ],
            dtype=torch.float32,
        )
        n = len(scores)
        metrics = {
            "ffr/failed_frac": len(failed) / n,
            "ffr/patched_frac": len(rows) / n,
            "ffr/repair_rate": sum(repaired_correct) / len(rows) if rows else math.nan,
            "ffr/leak_rejected": float(leaks),
            "ffr/teacher_failed": float(teacher_failed),
            **{f"ffr/error_type/{k}": float(v) for k, v in counts.items()},
        }
        return StepRollouts(chosen, samples, chosen_scores, rewards, metrics)

    def close(self) -> None:
        self.teacher.close()
