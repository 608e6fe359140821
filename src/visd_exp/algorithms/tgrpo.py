"""Video-R1's T-GRPO (seed 003, section 3.2) as a unit: GRPO + rollouts on shuffled frames + a temporal bonus.

    G ordered rollouts per prompt (GRPO's)                           -> verifier scores, accuracies a_i
    K = G/2 rollouts per VIDEO prompt on the same frames, shuffled    -> accuracies a~_j   (no gradient)
    p = mean_i a_i,  p~ = mean_j a~_j
    r_t = alpha if p >= mu * p~ else 0                                (Video-R1 Eq. 1; mu = 0.8, alpha = 0.3)
    R_i = r_i + r_t  for ordered rollouts with a_i > 0.1 ("correct"), else r_i
    [length reward] R_i += omega for correct ordered rollouts of l_min..l_max tokens, when > 1 is correct

Where the bonus goes (our reading of the paper and its released trainer): the paper writes the
temporally-augmented reward as R_i = r_i + r_t for correct responses; the trainer adds alpha to the
ACCURACY reward column of each ordered rollout whose accuracy exceeds 0.1 and then sums the reward
columns with unit weights, so the bonus lands, unweighted, on the scalar reward the group advantage is
computed from. Here: + alpha on `total` (not on `ans`, which `reward.weights.ans` would scale), and the
verifier's components in `scores` are left as the verifier gave them. p and p~ are means of the accuracy
reward (continuous for ROUGE / IoU answers, not a 0/1 proportion), each over ITS OWN group: the G
ordered and the K shuffled rollouts of the same prompt. Only video prompts (>= 2 frames) are shuffled
and can get r_t; the length reward (Video-R1's `len_control`) applies to every prompt. The shuffled
rollouts only measure p~: they never enter the loss, so the update sees exactly GRPO's G rows.

Shuffling: each video prompt's per-frame blocks of `pixel_values` and rows of `image_grid_thw` are
permuted (one permutation per prompt, shared by its K rollouts, never the identity); the prompt TEXT,
with its "Frame i at t s:" labels in ascending time, is unchanged, so only what the model sees moves.
Video-R1's vLLM path once generated the "shuffled" group on the unshuffled video: tests/test_tgrpo.py
checks what reaches `generate_rollouts`. Permutations are drawn from the global torch RNG right after
the ordered rollouts, so a seed fixes them, and a resumed run (which restores that RNG) redraws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from visd_exp.algorithms.grpo import GRPO, Policy, StepRollouts, answer_accuracy
from visd_exp.rollout.generation import RolloutBatch


@dataclass(frozen=True)
class LengthWindow:
    """Video-R1's length reward: + bonus (omega) for correct completions of min..max tokens (inclusive)."""

    bonus: float = 0.2
    min_tokens: int = 320
    max_tokens: int = 512


@dataclass(frozen=True)
class TemporalRule:
    """T-GRPO's constants (Video-R1: mu = 0.8, alpha = 0.3, "correct" = accuracy > 0.1)."""

    mu: float = 0.8
    alpha: float = 0.3
    acc_threshold: float = 0.1
    length: LengthWindow | None = None  # None: no length reward


@dataclass
class GroupBonus:
    """One prompt's shaped rewards and which ordered rollouts got which bonus."""

    rewards: list[float]
    temporal: list[bool]
    length: list[bool]
    gate: bool | None  # p >= mu * p~ (None: not a video prompt, no shuffled group)


def shape_group(
    rewards: list[float],
    ordered_acc: list[float],
    shuffled_acc: list[float] | None,
    lengths: list[int],
    rule: TemporalRule,
) -> GroupBonus:
    """T-GRPO's reward shaping of ONE prompt's G ordered rollouts: a pure function of numbers.

    `shuffled_acc` is None for a prompt that was not shuffled (an image): no temporal bonus then.
    `lengths` are the completion lengths in tokens (end token included, as Video-R1 counts them).
    """
    correct = [a > rule.acc_threshold for a in ordered_acc]  # Video-R1: "correct" = accuracy reward > 0.1
    gate = None
    temporal = [False] * len(rewards)
    if shuffled_acc:  # video samples only
        p = sum(ordered_acc) / len(ordered_acc)  # p: mean accuracy of the ordered group
        p_tilde = sum(shuffled_acc) / len(shuffled_acc)  # p~: mean accuracy of the shuffled group
        gate = p >= rule.mu * p_tilde  # r_t = alpha if p >= mu * p~ (Eq. 1), else 0
        temporal = [gate and c for c in correct]  # R_i = r_i + r_t only for correct o_i
    length = [False] * len(rewards)
    if rule.length is not None and sum(correct) > 1:  # only when more than one rollout is correct
        window = rule.length
        length = [c and window.min_tokens <= n <= window.max_tokens for c, n in zip(correct, lengths)]
    shaped = [
        r + (rule.alpha if t else 0.0) + (rule.length.bonus if b else 0.0)
        for r, t, b in zip(rewards, temporal, length)
    ]
    return GroupBonus(shaped, temporal, length, gate)


def random_order(n: int) -> list[int]:
    """A permutation of n frames from the global torch RNG; never the identity when n >= 2."""
    while True:
        order = torch.randperm(n).tolist()
        if n < 2 or order != list(range(n)):
            return order


def shuffle_frames(
    pixel_values: torch.Tensor, grid_thw: torch.Tensor, order: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's frames in `order`: per-image blocks of `pixel_values` [patches, D] and rows of
    `grid_thw` [frames, 3] are permuted together (block k of the result is frame order[k])."""
    if not torch.equal(grid_thw, grid_thw[:1].expand_as(grid_thw)):
        # the prompt's <|image_pad|> runs are sized per position: unequal frames cannot swap places
        raise ValueError(f"T-GRPO shuffles frames of one size only; got grids {grid_thw.tolist()}")
    blocks = pixel_values.split(grid_thw.prod(dim=1).tolist())
    if sum(b.shape[0] for b in blocks) != pixel_values.shape[0]:
        raise ValueError("pixel_values and image_grid_thw disagree on the number of patches")
    return torch.cat([blocks[k] for k in order]), grid_thw[order]


class TGRPO(GRPO):
    """G ordered rollouts (GRPO's) + K shuffled ones per video prompt; the temporal and length bonuses."""

    name = "tgrpo"

    def __init__(self, cfg):
        super().__init__(cfg)
        t = cfg.algorithm.tgrpo
        self.K = self.G // 2 if t.num_shuffled is None else int(t.num_shuffled)  # Video-R1: G/2
        if self.K < 1:
            raise ValueError(f"algorithm.tgrpo.num_shuffled={self.K}: T-GRPO needs >= 1 shuffled rollout")
        lr = t.length_reward
        window = None
        if lr.enabled:
            window = LengthWindow(float(lr.bonus), int(lr.min_tokens), int(lr.max_tokens))
            if window.min_tokens > window.max_tokens:
                raise ValueError(f"algorithm.tgrpo.length_reward: min_tokens > max_tokens ({window})")
        self.rule = TemporalRule(float(t.mu), float(t.alpha), float(t.acc_threshold), window)
        # the shuffled call: the same sampling settings, K rollouts per prompt
        algo = OmegaConf.to_container(self.algo, resolve=True)
        self.shuffled_algo = OmegaConf.create({**algo, "num_generations": self.K})

    def sample_shuffled(self, policy: Policy, batch: dict) -> tuple[RolloutBatch | None, list[int]]:
        """K rollouts per video prompt (>= 2 frames) on its frames in a random non-identity order.

        Returns the rollouts (None if the batch has no video prompt) and the indices of those prompts.
        """
        videos = [i for i, grid in enumerate(batch["image_grid_thw"]) if grid.shape[0] >= 2]
        if not videos:
            return None, videos
        pixels, grids, frames = [], [], []
        for i in videos:
            order = random_order(batch["image_grid_thw"][i].shape[0])
            pv, thw = shuffle_frames(batch["pixel_values"][i], batch["image_grid_thw"][i], order)
            pixels.append(pv)
            grids.append(thw)
            if "frames" in batch:  # what an engine that encodes the frames itself (vLLM) is given
                frames.append(batch["frames"][i][order])
        rows = torch.tensor(videos)
        shuffled = {
            "input_ids": batch["input_ids"][rows],  # the prompt text: timestamps still ascending
            "attention_mask": batch["attention_mask"][rows],
            "mm_token_type_ids": batch["mm_token_type_ids"][rows],
            "pixel_values": pixels,  # only the visual order changed
            "image_grid_thw": grids,
        }
        if "frames" in batch:
            shuffled["frames"] = frames
        rollouts = policy.generate(shuffled, self.shuffled_algo)
        return rollouts, videos

    def step(self, policy: Policy, batch: dict, progress: float, watch) -> StepRollouts:
        G, K = self.G, self.K
        with watch("rollout"):
            rollouts = self.sample(policy, batch)  # the G ordered rollouts per prompt: GRPO's
        with watch("rollout_shuffled"):
            shuffled, videos = self.sample_shuffled(policy, batch)
        with watch("reward"):
            samples = [sample for sample in batch["samples"] for _ in range(G)]
            scores = self.score(rollouts.texts, samples, progress)
            ordered_acc = [answer_accuracy(s) for s in scores]
            shuffled_acc: dict[int, list[float]] = {}
            if shuffled is not None:
                shuffled_samples = [batch["samples"][i] for i in videos for _ in range(K)]
                shuffled_scores = self.score(shuffled.texts, shuffled_samples, progress)
                accs = [answer_accuracy(s) for s in shuffled_scores]
                shuffled_acc = {i: accs[j * K : (j + 1) * K] for j, i in enumerate(videos)}
            lengths = rollouts.completion_mask.sum(dim=1).tolist()
            shaped, temporal, length, gates = [], [], [], []
            for i in range(len(batch["samples"])):
                rows = slice(i * G, (i + 1) * G)
                group = shape_group(
                    [s["total"] for s in scores[rows]],
                    ordered_acc[rows],
                    shuffled_acc.get(i),
                    lengths[rows],
                    self.rule,
                )
                shaped += group.rewards
                temporal += group.temporal
                length += group.length
                if group.gate is not None:
                    gates.append(group.gate)
            rewards = torch.tensor(shaped, dtype=torch.float32)
        all_shuffled = [a for accs in shuffled_acc.values() for a in accs]
        metrics = {
            "tgrpo/ordered_acc": _mean(ordered_acc),
            "tgrpo/shuffled_acc": _mean(all_shuffled),  # nan: no video prompt in the batch
            "tgrpo/bonus_frac": _mean([float(t) for t in temporal]),
            "tgrpo/gate_frac": _mean([float(g) for g in gates]),  # video prompts whose p >= mu p~
        }
        if self.rule.length is not None:
            metrics["tgrpo/length_bonus_frac"] = _mean([float(b) for b in length])
        # only the ordered rows enter the loss: the shuffled rollouts give no gradient
        return StepRollouts(rollouts, samples, scores, rewards, metrics)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
